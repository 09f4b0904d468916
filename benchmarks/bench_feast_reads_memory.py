"""Peak memory and time of train-warm, materialize and evaluate: reads through Feast vs direct parquet.

Builds a demo world (default 100k users, 2k ads, 2M impressions) in a temp repo, then runs each
job twice, each time in a fresh child process whose peak RSS (``ru_maxrss``) and wall time are
reported:

* ``feast``: the shipped code; every offline read goes through Feast's offline store pulls
  (``store/offline.py``, chunked on the pandas side);
* ``direct``: the same job with ``offline.iter_frames`` swapped for a reader that opens the view's
  parquet file with pyarrow (the way the plugin read before it went through Feast), as the
  reference.

Peak RSS is the child's own ``VmHWM`` (read from ``/proc/self/status`` as it exits): the
``ru_maxrss`` that ``wait4`` reports would include the parent's size, which the child inherits
at fork. Both modes run the same job code on the same repo. Materialize runs with ``--llm none`` (the
knn prior) and ``force`` so both modes calibrate and write every cold ad. Figures are ratios
feast / direct measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
JOBS = ("train-warm", "materialize", "evaluate")
MODES = ("feast", "direct")


def _direct_reads() -> None:
    """Swap the Feast read path for pyarrow reads of each view's parquet file (the reference)."""
    import pyarrow.parquet as pq

    from llmhyper_feast.store import feast_adapter as fa
    from llmhyper_feast.store import offline

    def iter_frames(store: Any, fv: Any, *, latest: bool, features: Any = None, chunk_rows: Any = None) -> Any:
        keys, declared, timestamp, created = offline.view_columns(fv)
        columns = [*keys, *(declared if features is None else features), timestamp, *([created] if created else [])]
        df = pq.read_table(fa._source_path(store, fv), columns=columns).to_pandas()
        if latest:
            df = df.sort_values([timestamp, *keys], kind="stable").drop_duplicates(keys, keep="last")
        yield df[columns].rename(columns={timestamp: offline.TIMESTAMP})

    offline.iter_frames = iter_frames  # type: ignore[assignment]


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(job: str, mode: str, repo: Path) -> None:
    """Run one job in this process (called by the parent in a fresh interpreter)."""
    from llmhyper_feast import jobs
    from llmhyper_feast.config import resolve_settings

    if mode == "direct":
        _direct_reads()
    settings = resolve_settings(repo, {"llm.name": "none"})
    if job == "train-warm":
        report: Any = jobs.train_warm(repo, settings, progress=False)
        result = {"trained": report.trained}
    elif job == "materialize":
        report = jobs.materialize(repo, settings, force=True, progress=False)
        result = {"written": report.written}
    else:
        rows = jobs.evaluate(repo, settings, n_boot=50, progress=False)
        result = {"rows": len(rows)}
    print(json.dumps({"peak_mb": _peak_rss_mb(), "result": result}))


def measure(job: str, mode: str, repo: Path) -> dict[str, Any]:
    """Wall seconds and peak RSS (MB) of one child run."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", job, "--mode", mode, "--repo", str(repo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{job} ({mode}) failed:\n{out}\n{err[-3000:]}")
    return {"seconds": seconds, **json.loads(out.strip().splitlines()[-1])}


def build(repo: Path, args: argparse.Namespace) -> dict[str, int]:
    from llmhyper_feast import jobs
    from llmhyper_feast.datasets.demo_world import WorldSize

    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    size = WorldSize(
        users=args.users, retired=args.retired, active=args.active, impressions_per_ad=args.impressions_per_ad
    )
    return jobs.make_demo_data(repo, size, progress=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--retired", type=int, default=1_800)
    parser.add_argument("--active", type=int, default=200)
    parser.add_argument("--impressions-per-ad", type=int, default=1_000)
    parser.add_argument("--keep", action="store_true", help="keep the temp repo")
    parser.add_argument("--built", type=Path, help="reuse a repo built by an earlier --keep run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per job and mode, order alternating (medians)")
    parser.add_argument("--child", choices=JOBS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mode, args.repo)
        return

    if args.built:
        tmp, repo = args.built.parent, args.built
        args.keep = True
        print(f"world: reusing {repo}")
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench_reads_"))
        repo = tmp / "feature_repo"
        start = time.perf_counter()
        stats = build(repo, args)
        print(
            f"world: {stats['users']:,} users, {stats['retired_ads'] + stats['active_ads']:,} ads, "
            f"{stats['impressions']:,} impressions (built in {time.perf_counter() - start:.0f} s)"
        )
    parquet_mb = sum(p.stat().st_size for p in (repo / "data").glob("*.parquet")) / 2**20
    print(f"parquet sources on disk: {parquet_mb:.0f} MB")
    print(f"{'job':<12} {'mode':<7} {'seconds':>8} {'peak RSS MB':>12}  result")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        for job in JOBS:
            for r in range(args.rounds):  # feast, direct, direct, feast, ...: load drifts hit both modes alike
                for mode in MODES if r % 2 == 0 else MODES[::-1]:
                    res = measure(job, mode, repo)
                    results.setdefault(job, {}).setdefault(mode, []).append(res)
                    print(
                        f"{job:<12} {mode:<7} {res['seconds']:>8.1f} {res['peak_mb']:>12.0f}  {res['result']}",
                        flush=True,
                    )
        print(f"\nfeast / direct (same run, medians of {args.rounds} alternating rounds):")
        for job, by_mode in results.items():
            f, d = (
                {key: statistics.median(x[key] for x in by_mode[mode]) for key in ("seconds", "peak_mb")}
                for mode in MODES
            )
            print(
                f"  {job:<12} feast {f['seconds']:.0f} s {f['peak_mb']:.0f} MB, direct {d['seconds']:.0f} s "
                f"{d['peak_mb']:.0f} MB: time x{f['seconds'] / d['seconds']:.2f}, "
                f"peak RSS x{f['peak_mb'] / d['peak_mb']:.2f}"
            )
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    finally:
        if args.keep:
            print(f"repo kept at {repo}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
