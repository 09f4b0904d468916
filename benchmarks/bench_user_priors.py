"""User priors: throughput of the openai backend, the local backend's seconds per user, and the change in the
warm per-ad models' AUC / NDCG when the features derived from the priors are added.

The parts share one test-sized demo world (3000 users, seed 11) built in a temporary folder, or ``--repo``.

* ``throughput``: users per minute through the real openai client against the loopback fake server
  answering after ``--delay-ms`` (100) from the schema's enum, at concurrency 32 and 1 (no answer
  cache), plus the prompt tokens per user (the ~4 characters/token estimate) and the share of a
  prompt that is the same for every user (the longest common prefix of the rendered messages:
  what a server's prefix cache can reuse).
* ``local``: seconds per user of the local backend (SmolLM2-135M, k=20) on ``--local-users`` users.
* ``features``: AUC, GAUC and NDCG@5/10 of lr_warm (per-ad regressions fitted on the train users' clicks on
  the active ads, scored on the test users' impressions) with the registered user features, then again
  after ``priors features`` + ``user_priors.use_as_features`` + apply (prior features added; the repo given
  with ``--repo`` keeps them).

    python benchmarks/bench_user_priors.py [--parts throughput,local,features] [--users 128]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402
from support.fake_openai import FakeOpenAI  # noqa: E402
from support.repos import copy_repo  # noqa: E402

from llmhyper_feast import jobs  # noqa: E402
from llmhyper_feast.config import load_settings  # noqa: E402
from llmhyper_feast.datasets.demo_world import WorldSize  # noqa: E402
from llmhyper_feast.jobs.priors import priors_context, write_prior_features  # noqa: E402
from llmhyper_feast.store import feast_adapter as fa  # noqa: E402
from llmhyper_feast.userpriors import history as hist  # noqa: E402
from llmhyper_feast.userpriors.generate import build_request, infer, profiles_for  # noqa: E402
from llmhyper_feast.userpriors.profile import estimate_tokens  # noqa: E402

SMALL_WORLD = dict(users=3000, retired=64, active=16, impressions_per_ad=1500, seed=11)


def build(tmp: Path) -> Path:
    repo = copy_repo(tmp / "feature_repo")
    jobs.make_demo_data(repo, WorldSize(**SMALL_WORLD), progress=False)
    jobs.train_warm(repo, load_settings(repo), progress=False)
    return repo


def common_prefix(texts: list[str]) -> int:
    first, last = min(texts), max(texts)  # the common prefix of all is that of the extremes
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return n


def throughput(repo: Path, users: int, delay_ms: float) -> dict[str, Any]:
    from llmhyper_feast.backends.llm import get_backend

    settings = load_settings(repo).with_overrides(**{"llm.name": "none"})
    _, ctx, history = priors_context(repo, settings, None)
    selected = hist.active_users(history, ctx.as_of, ctx.config.active_days)[:users]
    profiles = profiles_for(ctx, selected)
    requests = [build_request(ctx, p)[0] for p in profiles]
    rendered = ["\n".join(m["content"] for m in r.messages) for r in requests if r is not None]
    prefix = common_prefix(rendered)
    out: dict[str, Any] = {
        "users": len(profiles),
        "delay_ms": delay_ms,
        "prompt_tokens_per_user": round(sum(estimate_tokens(t) for t in rendered) / len(rendered), 1),
        "profile_tokens_per_user": round(sum(p.tokens for p in profiles) / len(profiles), 1),
        "shared_prefix_tokens": estimate_tokens(rendered[0][:prefix]),
        "shared_prefix_share": round(prefix / (sum(len(t) for t in rendered) / len(rendered)), 3),
    }
    with FakeOpenAI(default="enum", delay_ms=delay_ms) as fake:
        options = {"model": "fake-priors", "base_url": fake.base_url, "api_key": "bench-key"}
        for concurrency, n in ((32, len(profiles)), (1, min(len(profiles), 24))):
            backend = get_backend("openai", options, cache=None)
            run = replace(ctx, backend=backend, concurrency=concurrency)
            start = time.perf_counter()
            rows, fatal = infer(run, profiles[:n])
            seconds = time.perf_counter() - start
            assert fatal is None and all(r["origin"] == "llm" for r in rows)
            out[f"users_per_minute@{concurrency}"] = round(60 * n / seconds, 1)
    out["concurrency_ratio"] = round(out["users_per_minute@32"] / out["users_per_minute@1"], 1)
    return out


def local(repo: Path, users: int) -> dict[str, Any]:
    from llmhyper_feast.jobs.generate import make_backend

    settings = load_settings(repo).with_overrides(**{"llm.name": "local"})
    _, ctx, history = priors_context(repo, settings, None)
    backend = make_backend(repo, settings)
    backend.cache = None  # type: ignore[union-attr]  # time the model, not the answer cache
    selected = hist.active_users(history, ctx.as_of, ctx.config.active_days)[: users + 1]
    infer(replace(ctx, backend=backend), profiles_for(ctx, selected[:1]))  # load the model once, untimed
    start = time.perf_counter()
    rows, _ = infer(replace(ctx, backend=backend), profiles_for(ctx, selected[1:]))
    seconds = time.perf_counter() - start
    return {
        "users": len(rows),
        "seconds_per_user": round(seconds / len(rows), 1),
        "origins": {o: sum(r["origin"] == o for r in rows) for o in {r["origin"] for r in rows}},
    }


def features(repo: Path, n_boot: int) -> dict[str, Any]:
    """lr_warm (per-ad regressions on the active ads' train users, scored on the test users' impressions)
    with the registered user features, then with the prior features added through Feast."""
    from llmhyper_feast.evaluation import evaluate as ev
    from llmhyper_feast.jobs.train import read_impressions

    def warm_row() -> dict[str, Any]:
        store = fa.open_store(repo)
        schema = fa.read_feature_schema(store)
        data = ev.load_eval_data(repo, store, schema, read_impressions(repo))
        row = ev.score_table(data, [ev.lr_warm_result(data, load_settings(repo))], n_boot=n_boot)[0]
        return {"features": len(schema.names), **{k: round(row[k], 4) for k in ("auc", "gauc", "ndcg@5", "ndcg@10")}}

    before = warm_row()
    written = write_prior_features(repo, load_settings(repo))
    config = yaml.safe_load((repo / "llmhyper.yaml").read_text()) or {}
    config.setdefault("user_priors", {})["use_as_features"] = True
    (repo / "llmhyper.yaml").write_text(yaml.safe_dump(config))
    fa.apply_repo(repo)
    return {"written": written, "without": before, "with": warm_row()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="throughput,local,features")
    parser.add_argument("--users", type=int, default=128)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--local-users", type=int, default=4)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--repo", type=Path, default=None, help="A built demo repo (default: build one).")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = build(Path(tmp)) if args.repo is None else args.repo
        if "throughput" in parts:
            results["throughput"] = throughput(repo, args.users, args.delay_ms)
            print(json.dumps({"throughput": results["throughput"]}), flush=True)
        if "local" in parts:
            results["local"] = local(repo, args.local_users)
            print(json.dumps({"local": results["local"]}), flush=True)
        if "features" in parts:  # last: it changes the repo's feature schema
            results["features"] = features(repo, args.bootstrap)
            print(json.dumps({"features": results["features"]}), flush=True)


if __name__ == "__main__":
    main()
