"""Warm training of many ads: the Ray engine (2 workers) against the local engine, in the same run.

Builds a demo world in a temp repo (the feature repo's definitions, fresh data), then runs the
whole ``train_warm`` job twice on it: ``engine: local`` and ``engine: ray`` with ``ray.num_cpus``
workers (a local Ray instance started by the script; its start is timed apart). Prints both
times, the ratio, and checks that both runs wrote the same rows (weights, bias, mean CTR, AUC,
counts; only the timestamps differ).

    .venv/bin/python benchmarks/bench_ray_training.py            # 5,000 ads x 500 impressions, 20k users
    .venv/bin/python benchmarks/bench_ray_training.py --ads 500  # a quick look

The default size took 22 min on 2 shared cores at load average 4-12 (world 3.5 min, local
16 min, Ray 2.5 min); the local engine's time there is mostly OpenBLAS thread contention.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local instance needs no token file
ROOT = Path(__file__).resolve().parents[1]
COMPARED = ["bias", "mean_ctr", "train_auc", "impressions", "clicks"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ads", type=int, default=5_000, help="retired ads to train")
    parser.add_argument("--impressions", type=int, default=500, help="impressions per ad")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--keep", action="store_true", help="keep the temp repo")
    args = parser.parse_args()

    import numpy as np
    import ray

    from llmhyper_feast import jobs
    from llmhyper_feast.config import resolve_settings
    from llmhyper_feast.datasets.demo_world import WorldSize
    from llmhyper_feast.store import feast_adapter as fa

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    repo = tmp / "feature_repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    (repo / "llmhyper_policy.yaml").unlink(missing_ok=True)
    size = WorldSize(users=args.users, retired=args.ads, active=4, impressions_per_ad=args.impressions, seed=3)
    t0 = time.perf_counter()
    jobs.make_demo_data(repo, size, progress=False)
    print(
        f"world: {args.ads} retired ads x {args.impressions} impressions, {args.users} users "
        f"(built in {time.perf_counter() - t0:.0f} s); cores here: {os.cpu_count()}"
    )

    store = fa.open_store(repo)
    warm_view = fa.view_for_role(store, fa.WARM_ROLE).name

    local = resolve_settings(repo, {"engine": "local"})
    t0 = time.perf_counter()
    local_report = jobs.train_warm(repo, local, progress=False)
    t_local = time.perf_counter() - t0
    local_rows = fa.read_latest(store, warm_view).set_index("ad_id").sort_index()

    on_ray = resolve_settings(repo, {"engine": "ray", "ray.num_cpus": args.workers})
    t0 = time.perf_counter()
    ray.init(
        num_cpus=args.workers,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp / "ray"),
    )
    t_start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()  # the job reuses the session started above
        ray_report = jobs.train_warm(repo, on_ray, progress=False)
        t_ray = time.perf_counter() - t0
    finally:
        ray.shutdown()
    ray_rows = fa.read_latest(store, warm_view).set_index("ad_id").sort_index()

    assert ray_report.trained == local_report.trained and ray_report.skipped == local_report.skipped
    assert list(ray_rows.index) == list(local_rows.index)
    assert (ray_rows["trained_at"] > local_rows["trained_at"]).all(), "the Ray run did not write new rows"
    same = np.array_equal(np.stack(ray_rows["weights"]), np.stack(local_rows["weights"])) and all(
        np.array_equal(ray_rows[c].to_numpy(), local_rows[c].to_numpy()) for c in COMPARED
    )
    print(f"trained {local_report.trained} ads, skipped {len(local_report.skipped)}")
    print(f"train_warm, engine local:              {t_local:8.1f} s  ({local_report.trained / t_local:7.1f} ads/s)")
    print(
        f"train_warm, engine ray ({args.workers} workers):    {t_ray:8.1f} s  "
        f"({ray_report.trained / t_ray:7.1f} ads/s)  + Ray start {t_start:.1f} s"
    )
    print(f"speed-up ray/local: {t_local / t_ray:.2f}x (with the start: {t_local / (t_ray + t_start):.2f}x)")
    print(f"rows identical (weights, {', '.join(COMPARED)}): {same}")
    if args.keep:
        print(f"repo kept at {repo}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if not same:
        raise SystemExit("the Ray run wrote other rows than the local run")


if __name__ == "__main__":
    main()
