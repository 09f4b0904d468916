"""User priors as a candidate filter: recall of the next converting ad and coverage, all ads versus
``candidates="priors"`` (restrict and boost), with the non-LLM baselines as the prior source, and the
ranker's cost per request with and without the filter.

Builds its own test-sized demo world (3000 users, seed 11) in a temporary folder (or uses ``--repo``),
exports the all-ads model, then:

* ``recall``: :func:`llmhyper_feast.jobs.priors.evaluate_priors_filter` for each ``--sources`` (held-out
  users, snapshot = newest event minus 30 days, label = the first converted ad in the 30 days after);
* ``latency``: ``priors generate --llm none`` for ``--latency-users`` users, then the median
  microseconds of ``Ranker.rank(user, k=10)`` with ``candidates="all"`` and ``"priors"``.

    python benchmarks/bench_priors_filter.py [--sources frequent,popularity,cooccurrence] [--users 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))  # before tests/: tests/exporters holds tests, not the package
os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from support.repos import copy_repo  # noqa: E402

from llmhyper_feast import jobs  # noqa: E402
from llmhyper_feast.config import load_settings  # noqa: E402
from llmhyper_feast.datasets.demo_world import WorldSize  # noqa: E402
from llmhyper_feast.jobs.priors import evaluate_priors_filter, format_filter_table, generate_user_priors  # noqa: E402
from llmhyper_feast.serving.export import export_repo  # noqa: E402

SMALL_WORLD = dict(users=3000, retired=64, active=16, impressions_per_ad=1500, seed=11)


def latency(repo: Path, models: Path, users: int, rounds: int) -> dict[str, Any]:
    import pandas as pd

    from llmhyper_feast.serving.ranker import Ranker
    from llmhyper_feast.store.layout import RepoLayout

    ids = sorted(pd.read_parquet(RepoLayout(repo).user_history)["user_id"].unique())[:users]
    generate_user_priors(repo, load_settings(repo).with_overrides(**{"llm.name": "none"}), users=ids, progress=False)
    ranker = Ranker(repo, models, reload_interval=None)
    out: dict[str, Any] = {"users": len(ids), "rounds": rounds}
    for mode in ("all", "priors", "all"):  # "all" twice: warm-up effects show as a difference
        times = []
        for _ in range(rounds):
            for u in ids:
                start = time.perf_counter()
                ranker.rank(u, k=10, candidates=mode)
                times.append(time.perf_counter() - start)
        out[f"{mode}_p50_us"] = round(1e6 * statistics.median(times), 1)
        out[f"{mode}_p99_us"] = round(1e6 * sorted(times)[int(0.99 * len(times))], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=None, help="A built demo repo (default: build one).")
    parser.add_argument("--sources", default="frequent,popularity,cooccurrence")
    parser.add_argument("--users", type=int, default=300, help="Held-out users sampled (at most).")
    parser.add_argument("--event", default="conversion", choices=["conversion", "click"])
    parser.add_argument("--latency-users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.repo is None:
            repo = copy_repo(Path(tmp) / "feature_repo")
            jobs.make_demo_data(repo, WorldSize(**SMALL_WORLD), progress=False)
            jobs.train_warm(repo, load_settings(repo), progress=False)
        else:
            repo = args.repo
        models = Path(tmp) / "models"
        export_repo(repo, models, per_ad=False)
        settings = load_settings(repo)
        for source in [s.strip() for s in args.sources.split(",") if s.strip()]:
            result = evaluate_priors_filter(
                repo, models, settings, source=source, event=args.event, max_users=args.users
            )
            print(format_filter_table(result), flush=True)
            print(json.dumps({"recall": result}), flush=True)
        if args.latency_users > 0:
            print(json.dumps({"latency": latency(repo, models, args.latency_users, args.rounds)}), flush=True)


if __name__ == "__main__":
    main()
