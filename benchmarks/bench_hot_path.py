"""Ranker.rank hot path, before vs after, on a SQLite and a Redis online store side by side.

Builds a seeded demo world in a temp dir (or uses ``--repo``, which must already hold warm
models), exports the all-ads model, and times, in one process, for random users:

* end to end: ``Ranker.rank(user, k=10)`` on the hot path (per-thread buffers, IOBinding,
  the cheap float parse) and on the route it replaced ("before": ``session.run`` on fresh
  arrays, full argsort, and the ValueProto parse through ``WhichOneof``, reproduced here);
* its parts: the user lookup, the ONNX call and the top-k, each before and after, and the
  numpy floor of the ONNX part (``sigmoid(x @ W.T + b)`` on the export's own weights);
* the same on Redis (a ``redis-server`` started on a free port; the repo's sources applied to
  a fresh repo with a Redis online store): lookups there go through the Feast SDK.

The machine is shared: each variant runs ``--rounds`` rounds interleaved with the others; the
table shows the median of the rounds' p50 and p99 and the minimum p99 over rounds (the least
disturbed round), with the load average.

    python benchmarks/bench_hot_path.py --repeats 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_P99_US = 1000.0
K = 10


def old_read(reader: Any, user_id: str) -> np.ndarray:
    """SqliteUserReader.read as it was before the hot path: every value through ValueProto.WhichOneof."""
    numeric = {"float_val", "double_val", "int32_val", "int64_val", "bool_val"}
    out = np.full(reader.n, np.nan, np.float32)
    rows = reader._connection().execute(reader.sql, (reader._entity_key(user_id),)).fetchall()
    for view, name, blob in rows:
        j = reader._columns[view].get(name)
        if j is None:
            continue
        value = reader._parse(blob)
        kind = value.WhichOneof("val")
        if kind in numeric:
            out[j] = getattr(value, kind)
    return out


def numpy_floor(model_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(W^T [n, M], b [M]) of the all-ads model: the first MatMul's weight and the Add's bias."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    matmul = next(n for n in graph.node if n.op_type == "MatMul")
    add = next(n for n in graph.node if n.op_type == "Add")
    wt = init[next(i for i in matmul.input if i in init)]
    b = init[next(i for i in add.input if i in init)]
    return np.ascontiguousarray(wt, np.float32), np.asarray(b, np.float32).reshape(-1)


class Timer:
    """Interleaved rounds of per-call timings (microseconds) for named variants."""

    def __init__(self, repeats: int, warmup: int) -> None:
        self.repeats, self.warmup = repeats, warmup
        self.rounds: dict[str, list[np.ndarray]] = {}

    def run(self, name: str, fn: Callable[[int], object]) -> None:
        for i in range(self.warmup):
            fn(i)
        out = np.empty(self.repeats)
        clock = time.perf_counter_ns
        for i in range(self.repeats):
            start = clock()
            fn(i)
            out[i] = clock() - start
        self.rounds.setdefault(name, []).append(out / 1e3)

    def stats(self, name: str) -> tuple[float, float, float]:
        """(median of round p50s, median of round p99s, minimum round p99)."""
        p50 = [float(np.percentile(r, 50)) for r in self.rounds[name]]
        p99 = [float(np.percentile(r, 99)) for r in self.rounds[name]]
        return float(np.median(p50)), float(np.median(p99)), min(p99)


def redis_copy(repo: Path, dest: Path, port: int) -> Path:
    """A fresh repo with ``repo``'s definitions and data but a Redis online store (never its registry)."""
    from llmhyper_feast.store import feast_adapter as fa

    skip = shutil.ignore_patterns("__pycache__", "registry.db", "online_store.db", ".llmhyper.lock")
    shutil.copytree(repo, dest, ignore=skip)
    yaml = (dest / "feature_store.yaml").read_text()
    sqlite_block = "online_store:\n  type: sqlite\n  path: data/online_store.db\n"
    if sqlite_block not in yaml:
        raise SystemExit(f"{repo / 'feature_store.yaml'} has no plain SQLite online_store block to swap for Redis")
    yaml = yaml.replace(sqlite_block, f'online_store:\n  type: redis\n  connection_string: "127.0.0.1:{port}"\n')
    (dest / "feature_store.yaml").write_text(yaml)
    fa.apply_repo(dest)
    store = fa.open_store(dest)
    fa.materialize_sources(store, [fv.name for fv in fa.online_views(store)])
    return dest


def bench_store(label: str, ranker: Any, users: list[str], wt: np.ndarray, b: np.ndarray, t: Timer) -> list[str]:
    """Time one store's variants (one round); returns the variant names in print order."""
    from exporters import INPUT_NAME
    from llmhyper_feast.serving.ranker import _top_k

    m = ranker._model
    hot = ranker._hot_state(m)
    assert hot is not None, "IOBinding unusable: the hot path would fall back to session.run"
    reader = m.reader
    names = ["ctr", "excluded"] if m.masked else ["ctr"]
    x = ranker.user_vectors(users[:1])[0]
    n_users = len(users)
    plain_read_many = None
    if reader is not None:
        plain_read_many = reader.read_many

    def before_rank(i: int) -> object:
        ranker._hot_path = False
        return ranker.rank(users[i % n_users], k=K)

    def after_rank(i: int) -> object:
        ranker._hot_path = True
        return ranker.rank(users[i % n_users], k=K)

    if reader is not None:
        row = hot.x[0]

        def before_lookup(i: int) -> object:
            return ranker._user_vectors(m, [users[i % n_users]])

        def after_lookup(i: int) -> object:
            return reader.read_into(users[i % n_users], row)
    else:

        def before_lookup(i: int) -> object:
            return ranker._user_vectors(m, [users[i % n_users]])

        def after_lookup(i: int) -> object:
            row = hot.x[0]
            row[:] = ranker._sdk_vectors(m, [users[i % n_users]])[0]
            return row

    ctr = ranker.score(x)[0]
    variants: list[tuple[str, Callable[[int], object]]] = [
        ("rank, before", before_rank),
        ("rank, after", after_rank),
        ("  lookup, before", before_lookup),
        ("  lookup, after", after_lookup),
        ("  ONNX session.run (before)", lambda i: m.session.run(names, {INPUT_NAME: x})),
        ("  ONNX IOBinding (after)", lambda i: hot.run()),
        ("  numpy floor sigmoid(xW^T+b)", lambda i: 1.0 / (1.0 + np.exp(-(x @ wt + b)))),
        ("  top-k argsort (before)", lambda i: np.argsort(-ctr, kind="stable")[:K]),
        ("  top-k _top_k (after)", lambda i: _top_k(ctr, K)),
    ]
    if reader is not None:  # "before" reads through the old parse
        reader.read_many = lambda ids: np.stack([old_read(reader, u) for u in ids])  # type: ignore[method-assign]
    try:
        for name, fn in variants:
            t.run(f"{label}|{name}", fn)
    finally:
        if reader is not None:
            reader.read_many = plain_read_many  # type: ignore[method-assign]
        ranker._hot_path = True
    return [name for name, _ in variants]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=None, help="Existing repo with warm models (default: build one).")
    ap.add_argument("--users", type=int, default=3000, help="Users in the built demo world.")
    ap.add_argument("--retired", type=int, default=100, help="Warm ads in the built world.")
    ap.add_argument("--active", type=int, default=20, help="Cold ads in the built world.")
    ap.add_argument("--repeats", type=int, default=2000, help="Timed calls per variant and round.")
    ap.add_argument("--rounds", type=int, default=5, help="Interleaved rounds per variant.")
    ap.add_argument("--no-redis", action="store_true", help="SQLite only.")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    os.environ.setdefault("FEAST_USAGE", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "benchmarks"))

    from bench_ranking import build_world

    from exporters import read_manifest
    from llmhyper_feast.serving.export import export_repo
    from llmhyper_feast.serving.ranker import Ranker
    from llmhyper_feast.store import feast_adapter as fa

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_hot_path_") as tmp:
        repo = args.repo or build_world(Path(tmp), args.users, args.retired, args.active, args.seed)
        models = Path(tmp) / "models"
        export_repo(repo, models, per_ad=False)
        manifest = read_manifest(models)
        wt, b = numpy_floor(models / manifest.models["all_ads"].path)
        rankers = {"sqlite": Ranker(repo, models, reload_interval=1.0)}
        ids, _ = fa.read_user_matrix(rankers["sqlite"].store, fa.read_feature_schema(rankers["sqlite"].store))
        rng = np.random.default_rng(args.seed)
        users = [str(u) for u in rng.choice(ids, args.repeats, replace=len(ids) < args.repeats)]

        stack = []
        if not args.no_redis:
            if shutil.which("redis-server") is None:
                print("redis-server is not on PATH (apt-get install redis-server): Redis column skipped")
            else:
                # after `exporters` is imported: tests/exporters would otherwise shadow the package
                sys.path.append(str(ROOT / "tests"))
                from support.services import redis_server

                ctx = redis_server(Path(tmp))
                port = ctx.__enter__()
                stack.append(ctx)
                rrepo = redis_copy(repo, Path(tmp) / "redis_repo", port)
                rankers["redis"] = Ranker(rrepo, models, reload_interval=1.0)
        try:
            for label, r in rankers.items():  # both stores serve the same numbers on both routes
                for u in users[:200]:
                    r._hot_path = True
                    hot = r.rank(u, k=K)
                    r._hot_path = False
                    assert hot == r.rank(u, k=K) == rankers["sqlite"].rank(u, k=K), (label, u)
                r._hot_path = True
            m = rankers["sqlite"]._model
            print(
                f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {load_start[0]:.1f}; "
                f"{len(m.ids)} ads x {len(m.names)} features, content rules {'on' if m.masked else 'off'}; k={K}; "
                f"{args.repeats} calls x {args.rounds} interleaved rounds per variant (random users)"
            )
            t = Timer(args.repeats, warmup=200)
            order: dict[str, list[str]] = {}
            for _ in range(args.rounds):
                for label, r in rankers.items():
                    order[label] = bench_store(label, r, users, wt, b, t)
        finally:
            for ctx in stack:
                ctx.__exit__(None, None, None)

    labels = list(rankers)
    head = "".join(f" | {lab + ' p50':>11} {'p99':>8} {'min p99':>8}" for lab in labels)
    print(f"\n{'per call (us)':<32}{head}")
    for name in order["sqlite"]:
        cells = ""
        for lab in labels:
            p50, p99, p99min = t.stats(f"{lab}|{name}")
            cells += f" | {p50:>11.1f} {p99:>8.1f} {p99min:>8.1f}"
        print(f"{name:<32}{cells}")

    for lab in labels:
        before = t.stats(f"{lab}|rank, before")
        after = t.stats(f"{lab}|rank, after")
        onnx = t.stats(f"{lab}|  ONNX IOBinding (after)")
        floor = t.stats(f"{lab}|  numpy floor sigmoid(xW^T+b)")
        lookup = t.stats(f"{lab}|  lookup, after")
        print(
            f"{lab}: rank p50 {before[0]:.0f} -> {after[0]:.0f} us, p99 {before[1]:.0f} -> {after[1]:.0f} us "
            f"(min over rounds {before[2]:.0f} -> {after[2]:.0f}); lookup is {lookup[0] / after[0]:.0%} of the "
            f"median; ONNX/numpy floor p50 x{onnx[0] / floor[0]:.2f}, p99 x{onnx[1] / floor[1]:.2f}"
        )
    p50, p99, p99min = t.stats("sqlite|rank, after")
    load_end = os.getloadavg()
    verdict = "MET" if p99 < TARGET_P99_US else "MISSED"
    if p99 >= TARGET_P99_US and p99min < TARGET_P99_US:
        verdict = "met in the least disturbed round only"
    print(
        f"target p99 < {TARGET_P99_US / 1e3:.0f} ms on SQLite in-process: {verdict} (median-round p99 {p99:.0f} us, "
        f"min-round p99 {p99min:.0f} us); load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end "
        f"on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
