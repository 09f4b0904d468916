"""End-to-end ranking latency (Feast SQLite user lookup + ONNX scoring) against bare ONNX scoring.

Builds a seeded demo world in a temp dir (or uses ``--repo``, which must already hold warm
models): demo data, warm training, kNN-generated cold-ad weights, ONNX export. Then, in
one process and one run:

* bare ONNX: ``Ranker.score`` on one user's feature vector (the reference);
* Feast lookup alone: ``Ranker.user_vectors`` for one user;
* end-to-end: ``Ranker.rank(user, k=10)`` over random users (target p99 < 5 ms);
* batch: ``Ranker.score_users`` for ``--batch-users`` users x all ads (one Feast lookup
  per chunk + one ONNX call), against bare ONNX on the same feature matrix.

    python benchmarks/bench_ranking.py --repeats 3000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_P99_MS = 5.0


def build_world(dest: Path, users: int, retired: int, active: int, seed: int) -> Path:
    from llmhyper_feast import jobs
    from llmhyper_feast.config import load_settings
    from llmhyper_feast.datasets.demo_world import WorldSize

    repo = dest / "feature_repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    t = time.perf_counter()
    jobs.make_demo_data(
        repo, WorldSize(users=users, retired=retired, active=active, impressions_per_ad=1500, seed=seed), progress=False
    )
    jobs.train_warm(repo, load_settings(repo), progress=False)
    knn = load_settings(repo).with_overrides(**{"llm.name": "none"})
    jobs.materialize(repo, knn, progress=False)
    print(f"built demo world ({users} users, {retired} warm + {active} cold ads) in {time.perf_counter() - t:.0f} s")
    return repo


def timed(fn: Callable[[int], object], repeats: int, warmup: int) -> np.ndarray:
    """Per-call wall times in microseconds (``fn`` gets the call index)."""
    for i in range(warmup):
        fn(i)
    out = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        out[i] = time.perf_counter() - t
    return out * 1e6


def row(name: str, us: np.ndarray, ref: np.ndarray) -> str:
    p50, p99 = np.percentile(us, 50), np.percentile(us, 99)
    r50, r99 = p50 / np.percentile(ref, 50), p99 / np.percentile(ref, 99)
    return f"{name:<34} {p50:>9.1f} {p99:>9.1f} {np.mean(us):>9.1f}   x{r50:>7.1f}  x{r99:>7.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=None, help="Existing repo with warm models (default: build one).")
    ap.add_argument("--users", type=int, default=10_000, help="Users in the built demo world.")
    ap.add_argument("--retired", type=int, default=100, help="Warm ads in the built world.")
    ap.add_argument("--active", type=int, default=20, help="Cold ads in the built world.")
    ap.add_argument("--repeats", type=int, default=3000, help="Timed single-user calls per variant.")
    ap.add_argument("--batch-users", type=int, default=10_000, help="Users scored in the batch test.")
    ap.add_argument("--chunk", type=int, default=1000, help="Users per Feast lookup in the batch test.")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    os.environ.setdefault("FEAST_USAGE", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from llmhyper_feast.serving.export import export_repo
    from llmhyper_feast.serving.ranker import Ranker
    from llmhyper_feast.store import feast_adapter as fa

    with tempfile.TemporaryDirectory(prefix="bench_ranking_") as tmp:
        repo = args.repo or build_world(Path(tmp), args.users, args.retired, args.active, args.seed)
        models = Path(tmp) / "models"
        manifest = export_repo(repo, models, per_ad=False)
        ranker = Ranker(repo, models, reload_interval=1.0)
        ids, _ = fa.read_user_matrix(ranker.store, fa.read_feature_schema(ranker.store))
        rng = np.random.default_rng(args.seed)
        users = [str(u) for u in rng.choice(ids, args.repeats, replace=len(ids) < args.repeats)]
        x_all, _, _ = ranker.user_vectors(users)
        m, n = len(manifest.ad_ids), len(manifest.feature_names)
        print(
            f"python {platform.python_version()}, {os.cpu_count()} CPUs; {m} ads x {n} features; "
            f"{args.repeats} timed calls each (random users), 200 warm-up calls"
        )

        warm = 200
        bare = timed(lambda i: ranker.score(x_all[i : i + 1]), args.repeats, warm)
        bare_top = timed(
            lambda i: np.argsort(-ranker.score(x_all[i : i + 1])[0], kind="stable")[:10], args.repeats, warm
        )
        lookup = timed(lambda i: ranker.user_vectors([users[i]]), args.repeats, warm)
        e2e = timed(lambda i: ranker.rank(users[i], k=10), args.repeats, warm)
        cand = [list(rng.choice(manifest.ad_ids, 20, replace=False)) for _ in range(args.repeats)]
        e2e_cand = timed(lambda i: ranker.rank(users[i], cand[i], k=10), args.repeats, warm)

        print(f"\n{'per call (us)':<34} {'p50':>9} {'p99':>9} {'mean':>9}   {'p50/ref':>8}  {'p99/ref':>8}")
        print(row("bare ONNX score (reference)", bare, bare))
        print(row("bare ONNX score + top-10 argsort", bare_top, bare))
        print(row("Feast online lookup (1 user)", lookup, bare))
        print(row("Ranker.rank, all ads, k=10", e2e, bare))
        print(row("Ranker.rank, 20 candidates, k=10", e2e_cand, bare))
        p99_ms = np.percentile(e2e, 99) / 1e3
        print(
            f"end-to-end p99 {p99_ms:.2f} ms: {'meets' if p99_ms < TARGET_P99_MS else 'MISSES'} the "
            f"{TARGET_P99_MS:.0f} ms target; Feast lookup is "
            f"{np.median(lookup) / np.median(e2e):.0%} of the median end-to-end time"
        )

        batch = [str(u) for u in rng.choice(ids, args.batch_users, replace=len(ids) < args.batch_users)]
        t = time.perf_counter()
        scores = [ranker.score_users(batch[i : i + args.chunk]) for i in range(0, len(batch), args.chunk)]
        t_e2e = time.perf_counter() - t
        x_batch, _, _ = ranker.user_vectors(batch)
        ranker.score(x_batch[:100])
        t = time.perf_counter()
        bare_scores = ranker.score(x_batch)
        t_bare = time.perf_counter() - t
        assert np.array_equal(np.concatenate(scores), bare_scores)
        print(f"\nbatch: {len(batch)} users x {m} ads")
        print(
            f"  Ranker.score_users (Feast lookup in chunks of {args.chunk} + ONNX): "
            f"{len(batch) / t_e2e:>12,.0f} users/s ({t_e2e:.2f} s)"
        )
        print(
            f"  bare ONNX on the [{len(batch)}, {n}] matrix (reference):        "
            f"{len(batch) / t_bare:>12,.0f} users/s ({t_bare * 1e3:.1f} ms); "
            f"end-to-end is x{t_e2e / t_bare:.0f} slower"
        )


if __name__ == "__main__":
    main()
