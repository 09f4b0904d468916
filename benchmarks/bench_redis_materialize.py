"""Generated weight rows into a Redis online store: our write path against Feast's materialize, same rows, same run.

Starts a redis-server on a free port (tests/support/services.redis_server; stopped at the end),
builds a small demo repo whose online store is that Redis, and makes N generated-weight rows
(synthetic values, every column of the generated view, one row per ad). Then:

* ours: ``feast_adapter.write_view(..., online=False)`` (the offline append, timed apart) and the
  online half ``write_view`` runs next, ``FeatureStore.write_to_online_store`` of the rows in hand;
* Feast's: ``FeatureStore.materialize`` of the generated view: reads the latest rows from the
  offline source and writes them to Redis (the database is flushed first).

Prints rows/s of each and the ratio, and checks a sample of ads reads back identical online
after each path (and equal to the rows written).

    .venv/bin/python benchmarks/bench_redis_materialize.py               # 100,000 ads
    .venv/bin/python benchmarks/bench_redis_materialize.py --ads 10000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("FEAST_USAGE", "False")
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = 500


def synthetic_rows(fields: list[Any], n: int, n_features: int, when: datetime) -> Any:
    """``n`` rows of the generated view (one per ad), typed as its Fields say."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    ids = [f"bench{i:06d}" for i in range(n)]
    cols: dict[str, Any] = {"ad_id": ids}
    for f in fields:
        kind = str(f.dtype)
        if f.name == "weights":
            cols[f.name] = list(rng.normal(0, 0.3, (n, n_features)).astype(np.float32))
        elif "Float32" in kind:
            cols[f.name] = rng.normal(-4 if f.name in ("bias", "delta") else 0.5, 0.5, n).astype(np.float32)
        elif "Int64" in kind:
            cols[f.name] = np.ones(n, np.int64)
        elif "UnixTimestamp" in kind:
            cols[f.name] = pd.Series([when] * n)
        elif f.name == "weights_version":
            cols[f.name] = [f"v-{i:06d}" for i in range(n)]
        elif f.name == "policy_tags":
            cols[f.name] = "[]"
        else:
            cols[f.name] = {"llm_model": "bench:none", "origin": "llm", "decision": "no gate"}.get(f.name, "0" * 16)
    cols["event_timestamp"] = pd.Series([when] * n)
    return pd.DataFrame(cols)


def online_sample(store: Any, view: str, names: list[str], ids: list[str]) -> dict[str, list[Any]]:
    from llmhyper_feast.store import feast_adapter as fa

    return fa.get_online(store, [f"{view}:{n}" for n in names], [{"ad_id": a} for a in ids])


def same_values(got: dict[str, list[Any]], rows: Any, names: list[str]) -> bool:
    """Online values equal the rows written (float32 columns compared after the store's widening)."""
    import numpy as np
    import pandas as pd

    for name in names:
        want = rows[name].tolist()
        for a, b in zip(got[name], want, strict=True):
            if isinstance(b, np.ndarray) or isinstance(b, (float, np.floating)):
                if not np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32)):
                    return False
            elif isinstance(b, (datetime, pd.Timestamp)):
                if pd.Timestamp(a).floor("s") != pd.Timestamp(b).floor("s"):
                    return False
            elif a != b:
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ads", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the temp repo")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH: install it (`apt-get install redis-server`) and re-run.")

    import random

    import redis

    sys.path.insert(0, str(ROOT / "tests"))
    from support.services import redis_server

    from llmhyper_feast import jobs
    from llmhyper_feast.datasets.demo_world import WorldSize
    from llmhyper_feast.store import feast_adapter as fa

    tmp = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    with redis_server(tmp) as port:
        repo = tmp / "feature_repo"
        shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
        config = repo / "feature_store.yaml"
        text = config.read_text()
        start, end = text.index("online_store:"), text.index("offline_store:")
        redis_block = f'online_store:\n  type: redis\n  connection_string: "127.0.0.1:{port}"\n'
        config.write_text(text[:start] + redis_block + text[end:])
        jobs.make_demo_data(repo, WorldSize(users=500, retired=4, active=2, impressions_per_ad=100), progress=False)

        store = fa.open_store(repo)
        view = fa.view_for_role(store, fa.GENERATED_ROLE).name
        fv = store.get_feature_view(view)
        names = [f.name for f in fv.features]
        n_features = len(fa.read_feature_schema(store))
        when = datetime.now(UTC).replace(microsecond=0)
        rows = synthetic_rows(list(fv.features), args.ads, n_features, when)
        sample_ids = sorted(random.Random(0).sample(list(rows["ad_id"]), min(SAMPLE, args.ads)))
        sample_rows = rows.set_index("ad_id").loc[sample_ids]

        t0 = time.perf_counter()
        fa.write_view(store, view, rows, online=False)  # the offline half of write_view
        t_offline = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.write_to_online_store(view, rows[[*fv.join_keys, *names, "event_timestamp"]])
        t_ours = time.perf_counter() - t0
        ours = online_sample(store, view, names, sample_ids)

        client = redis.Redis(host="127.0.0.1", port=port)
        client.flushdb()
        assert online_sample(store, view, ["weights"], sample_ids[:3])["weights"] == [None] * 3, "flush failed"
        t0 = time.perf_counter()
        store.materialize(
            start_date=when - timedelta(days=1), end_date=when + timedelta(minutes=1), feature_views=[view]
        )
        t_feast = time.perf_counter() - t0
        theirs = online_sample(store, view, names, sample_ids)
        keys = client.dbsize()

    n = args.ads
    identical = ours == theirs
    equal_to_rows = same_values(ours, sample_rows, names)
    print(f"{n} ads x {n_features} weights, {len(names)} fields; Redis keys after Feast's path: {keys}")
    print(f"ours, offline append (write_view online=False): {t_offline:8.2f} s  ({n / t_offline:9.0f} rows/s)")
    print(f"ours, online write (write_to_online_store):     {t_ours:8.2f} s  ({n / t_ours:9.0f} rows/s)")
    print(
        f"ours, offline + online:                         {t_offline + t_ours:8.2f} s  "
        f"({n / (t_offline + t_ours):9.0f} rows/s)"
    )
    print(f"Feast materialize (offline read + online):      {t_feast:8.2f} s  ({n / t_feast:9.0f} rows/s)")
    print(
        f"ratio ours online / Feast materialize: {t_feast / t_ours:.2f}x rows/s; "
        f"ours offline+online / Feast materialize: {t_feast / (t_offline + t_ours):.2f}x"
    )
    print(
        f"sample of {len(sample_ids)} ads online: identical after both paths: {identical}; "
        f"equal to the rows written: {equal_to_rows}"
    )
    if args.keep:
        print(f"repo kept at {repo} (Redis stopped)")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if not (identical and equal_to_rows):
        raise SystemExit("the two write paths left different rows online")


if __name__ == "__main__":
    main()
