"""Materializing generated weights for many ads: Feast offline + online write, rows/s.

Builds a small demo repo in a temp dir, then writes N synthetic calibrated rows to the
generated-weights view (offline parquet append + SQLite online store) and reports seconds and
rows/s, beside a reference measured in the same run: writing the same frame with plain
pandas.to_parquet.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("FEAST_USAGE", "False")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ads", type=int, default=10_000)
    args = parser.parse_args()

    from llmhyper_feast import jobs
    from llmhyper_feast.datasets.demo_world import WorldSize
    from llmhyper_feast.store import feast_adapter as fa

    tmp = Path(tempfile.mkdtemp())
    repo = tmp / "feature_repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    jobs.make_demo_data(repo, WorldSize(users=500, retired=4, active=2, impressions_per_ad=100), progress=False)
    store = fa.open_store(repo)
    n = len(fa.read_feature_schema(store))
    rng = np.random.default_rng(0)
    now = datetime.now(UTC)
    rows = pd.DataFrame(
        {
            "ad_id": [f"bench{i:06d}" for i in range(args.ads)],
            "weights": list(rng.normal(size=(args.ads, n)).astype(np.float32)),
            "bias": rng.normal(-4, 0.5, args.ads).astype(np.float32),
            "alpha": np.float32(0.02),
            "delta": np.float32(-4.0),
            "norm": np.float32(1.0),
            "llm_model": "bench:none",
            "prompt_hash": "0" * 16,
            "prompt_version": "v1",
            "feature_hash": "0" * 16,
            "input_hash": "0" * 16,
            "samples": 1,
            "source": "llm",
            "reason": "",
            "decision": "no gate",
            "generated_at": now,
            "event_timestamp": now,
        }
    )
    t0 = time.perf_counter()
    rows.to_parquet(tmp / "reference.parquet", index=False)
    ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.write_to_offline_store("generated_ad_weights", rows)
    offline = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.write_to_online_store("generated_ad_weights", rows)
    online = time.perf_counter() - t0
    total = offline + online
    print(f"{args.ads} ads x {n} features")
    print(f"reference pandas.to_parquet: {ref:8.3f} s  ({args.ads / ref:10.0f} rows/s)")
    print(
        f"Feast offline append:        {offline:8.3f} s  ({args.ads / offline:10.0f} rows/s, {offline / ref:5.1f}x ref)"
    )
    print(f"Feast online (SQLite) write: {online:8.3f} s  ({args.ads / online:10.0f} rows/s, {online / ref:5.1f}x ref)")
    print(f"materialize total:           {total:8.3f} s  ({args.ads / total:10.0f} rows/s)")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
