"""An LLM that knows the right answer, through the whole pipeline: how much does validation cost it?

A loopback OpenAI-compatible server answers each cold ad's true weights (the demo world knows
them) plus small noise (with ``max_abs: auto`` the answer scale is the weights' own scale).
Every answer is right, so every batch should be kept. Two rules, in one run, on the same world:

* before: the old fixed range (|w| <= 3 stated, anything beyond rejected, examples shown as
  they are, so a model copying a strong example is rejected and the batch falls back);
* after: the answer scale derived from the examples (``generation.max_abs: auto``), mild excess
  clipped and recorded, only garbage rejected.

Prints, per rule, the ads that fell back for at least one batch, the values clipped, and
NDCG@10 / AUC of LLM-HYPER against the true weights' own ranking (the oracle row).

    python benchmarks/bench_informed_llm.py --users 20000 --retired 300 --active 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import pandas as pd  # noqa: E402
from support.fake_openai import FakeOpenAI  # noqa: E402
from support.repos import copy_repo  # noqa: E402

from llmhyper_feast import jobs  # noqa: E402
from llmhyper_feast.config import load_settings  # noqa: E402
from llmhyper_feast.datasets.demo_world import WorldSize  # noqa: E402
from llmhyper_feast.generation import answers, runner  # noqa: E402
from llmhyper_feast.store.layout import RepoLayout  # noqa: E402


def informed(truth: pd.DataFrame, noise: float) -> Any:
    by_title = truth.drop_duplicates("title", keep="first").set_index("title")

    def respond(body: dict, keys: list[str], choice: int) -> dict[str, float]:
        text = body["messages"][1]["content"]
        title = text.split("New ad to model:\nTitle: ", 1)[1].split("\n", 1)[0]
        row = by_title.loc[title]
        jitter = {k: ((zlib.crc32(f"{title}{k}{choice}".encode()) % 201) - 100) / 100 * noise for k in keys}
        return {k: round(float(row[k]) + jitter[k], 3) for k in keys}

    return respond


@contextmanager
def old_rule() -> Any:
    """The rule before the fix: a fixed stated range of 3, anything beyond it rejected."""
    saved = answers.GARBAGE_FACTOR, runner.answer_limit
    answers.GARBAGE_FACTOR = 1.0
    runner.answer_limit = lambda warm, configured: (3.0, 1.0)  # type: ignore[assignment]
    try:
        yield
    finally:
        answers.GARBAGE_FACTOR, runner.answer_limit = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--retired", type=int, default=300)
    parser.add_argument("--active", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = copy_repo(Path(tmp) / "feature_repo")
        size = WorldSize(users=args.users, retired=args.retired, active=args.active, seed=7)
        jobs.make_demo_data(repo, size, progress=False)
        settings = load_settings(repo)
        jobs.train_warm(repo, settings, progress=False)
        truth = pd.read_parquet(RepoLayout(repo).demo_truth)
        results = {}
        with FakeOpenAI(responder=informed(truth, args.noise)) as server:
            with old_rule():
                results["before"] = collect(repo, server.base_url, "informed-before")
            results["after"] = collect(repo, server.base_url, "informed-after")
    for name, res in results.items():
        print(
            f"{name:6s}: ads with a fallback batch {res['fallback_ads']:3d} / {res['ads']}, values clipped "
            f"{res['clipped']:4d}, NDCG@10 {res['ndcg']:.4f} (true weights {res['oracle_ndcg']:.4f}), "
            f"AUC {res['auc']:.4f}"
        )
    print(json.dumps(results))


def collect(repo: Path, url: str, model: str) -> dict[str, Any]:
    """Generate through the pipeline, then evaluate; figures of one rule."""
    llm = {"name": "openai", "options": {"base_url": url, "api_key": "bench", "model": model, "max_retries": 0}}
    settings = load_settings(repo).with_overrides(llm=llm, **{"generation.shots": 5})
    rows = jobs.generate(repo, settings, force=True, progress=False)
    table = {r["model"]: r for r in jobs.evaluate(repo, settings, n_boot=200, progress=False)}
    llm_row = next(r for name, r in table.items() if name.startswith("llm_hyper"))
    oracle = table["oracle"]
    return {
        "ads": len(rows),
        "fallback_ads": int((rows["origin"] != "llm").sum()),
        "clipped": sum(len(json.loads(c)) for c in rows["clipped"]),
        "ndcg": float(llm_row["ndcg@10"]),
        "auc": float(llm_row["auc"]),
        "oracle_ndcg": float(oracle["ndcg@10"]),
    }


if __name__ == "__main__":
    main()
