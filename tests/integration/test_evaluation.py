"""evaluate (CLI, JSON), the demo world's expected model order, backtest, gate and warm hand-off."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support.fake_openai import FakeOpenAI, fake_weight

from llmhyper_feast import jobs
from llmhyper_feast.cli import cli
from llmhyper_feast.config import GateConfig, load_settings
from llmhyper_feast.errors import ConfigError, GateRefusedError
from llmhyper_feast.evaluation.backtest import gate_decision
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store import online

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.repos import clone_repo

    return clone_repo(demo_repo, tmp_path_factory.mktemp("evaluation") / "repo")


def test_evaluate_json_orders_models_as_the_world_implies(repo: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--repo",
            str(repo),
            "--llm",
            "none",
            "--format",
            "json",
            "--bootstrap",
            "200",
            "--ablate",
            "scale",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.stdout)}
    assert {
        "lr_cold",
        "lr_warm",
        "knn_prior",
        "emb_cosine",
        "oracle",
        "knn_prior[scale=unit]",
        "knn_prior[scale=neighbours]",
    } <= set(rows)
    for row in rows.values():
        assert {"model", "auc", "gauc", "ndcg@5", "ndcg@10", "ece"} <= set(row)
    ndcg = {m: r["ndcg@10"] for m, r in rows.items()}
    assert ndcg["oracle"] > ndcg["lr_warm"] >= ndcg["knn_prior"] > ndcg["lr_cold"]
    d, lo, hi = rows["knn_prior"]["d_ndcg@10_vs_lr_cold"]
    assert lo <= d <= hi and lo > 0  # the prior beats the median model beyond noise
    assert rows["oracle"]["hr@5"] == 1.0 and rows["oracle"]["coverage@5"] == 1.0
    # the scale ablation reaches calibration: unit-norm weights for "unit", the neighbours' norm otherwise
    weights = {
        m: np.asarray(w) for m, w in json.loads((repo / "data" / "evaluation.json").read_text())["weights"].items()
    }
    np.testing.assert_allclose(np.linalg.norm(weights["knn_prior[scale=unit]"], axis=1), 1.0, atol=1e-9)
    assert not np.allclose(np.linalg.norm(weights["knn_prior[scale=neighbours]"], axis=1), 1.0, atol=1e-3)
    # the repo's own setting is scale=neighbours, so the plain row is that variant
    np.testing.assert_allclose(weights["knn_prior"], weights["knn_prior[scale=neighbours]"])


def test_prompt_ablations_need_an_llm(repo: Path) -> None:
    result = CliRunner().invoke(cli, ["evaluate", "--repo", str(repo), "--llm", "none", "--ablate", "shots", "--quiet"])
    assert result.exit_code != 0 and "ablation needs an LLM backend" in str(result.exception)


def _mean_cosine(w: np.ndarray, trained: np.ndarray) -> float:
    return float(np.mean(np.sum(w * trained, axis=1) / (np.linalg.norm(w, axis=1) * np.linalg.norm(trained, axis=1))))


def test_backtest_and_blend_gate_are_recorded(repo: Path) -> None:
    base = load_settings(repo)
    with FakeOpenAI() as server:
        options = {"base_url": server.base_url, "api_key": "test", "model": "fake-backtest", "max_retries": 0}
        llm = jobs.run_backtest(
            repo, base.with_overrides(llm={"name": "openai", "options": options}), sample=10, progress=False
        )
    knn = jobs.run_backtest(repo, base.with_overrides(**{"llm.name": "none"}), sample=10, progress=False)
    assert len(knn["ads"]) == 10 and len(knn["per_ad_cosine"]) == 10 and llm["ads"] == knn["ads"]
    assert knn["cosine"] == pytest.approx(knn["knn_cosine"])  # knn is its own prior
    assert knn["cosine"] > 0 and knn["trained_click_gauc"] > 0.5

    # the fake LLM answers the same weights for every ad; the prior is the knn run's weights
    gen, prior, trained = np.asarray(llm["generated"]), np.asarray(knn["generated"]), np.asarray(llm["trained"])
    names = fa.read_feature_schema(fa.open_store(repo)).names
    np.testing.assert_allclose(gen, np.tile([fake_weight(n) for n in names], (10, 1)))
    assert llm["cosine"] == pytest.approx(_mean_cosine(gen, trained))
    assert llm["knn_cosine"] == pytest.approx(knn["cosine"]) and llm["cosine"] != pytest.approx(llm["knn_cosine"])
    # every blend on the grid is scored against an independent recomputation, and the best one is picked
    blend = {float(lam): cos for lam, cos in llm["blend_cosine"].items()}
    np.testing.assert_allclose(sorted(blend), np.linspace(0.0, 1.0, 11))
    for lam, cos in blend.items():
        assert cos == pytest.approx(_mean_cosine(lam * gen + (1 - lam) * prior, trained)), lam
    assert blend[llm["best_lambda"]] == max(blend.values())
    assert gate_decision(GateConfig(mode="blend"), llm, llm["backend"])[1] == llm["best_lambda"]


def test_gate_decisions() -> None:
    bt = {"backend": "openai:m", "cosine": 0.3, "knn_cosine": 0.5, "best_lambda": 0.4}
    assert gate_decision(GateConfig(mode="off"), None, "openai:m") == ("no gate", 1.0)
    assert gate_decision(GateConfig(mode="warn"), bt, "openai:m") == ("warn:worse-than-knn", 1.0)
    assert gate_decision(GateConfig(mode="warn"), {**bt, "cosine": 0.6}, "openai:m") == ("pass", 1.0)
    assert gate_decision(GateConfig(mode="blend"), bt, "openai:m") == ("blend:0.40", 0.4)
    with pytest.raises(GateRefusedError, match="worse than the kNN prior"):
        gate_decision(GateConfig(mode="refuse"), bt, "openai:m")
    with pytest.raises(ConfigError, match="llmhyper backtest"):
        gate_decision(GateConfig(mode="refuse"), bt, "openai:other-model")


def test_handoff_trains_cold_ads_with_enough_impressions(repo: Path) -> None:
    settings = load_settings(repo).with_overrides(**{"llm.name": "none"})
    jobs.materialize(repo, settings, progress=False)
    store = fa.open_store(repo)
    _, active = fa.read_ads(store, status="active")
    assert (jobs.status(repo, settings).set_index("ad_id").loc[active["ad_id"], "state"] == "cold-current").all()
    report = jobs.train_warm(repo, settings, handoff=True, progress=False)
    table = jobs.status(repo, settings).set_index("ad_id")
    assert (table.loc[active["ad_id"], "state"] == "warm").all()
    assert report.trained >= len(active)
    got = online.get_ad_weights(store, list(active["ad_id"][:1]))
    assert got.meta[0]["decision"] == "no gate"


@pytest.mark.slow  # CLI subprocesses that load the local LLM and CLIP: ~3 minutes on a busy 2-core machine
def test_json_stdout_holds_only_the_document_even_when_models_load(repo: Path, tmp_path: Path) -> None:
    """A real process: the embedder loads (its bars and logs must not reach stdout), then one JSON document."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FEAST_USAGE": "False", "LLMHYPER_LLM": "none"}
    env.pop("TQDM_DISABLE", None)
    cmd = [sys.executable, "-m", "llmhyper_feast", "evaluate", "--repo", str(repo), "--format", "json"]
    proc = subprocess.run([*cmd, "--bootstrap", "50"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)  # fails on any stray line
    assert {r["model"] for r in rows} >= {"lr_cold", "lr_warm", "knn_prior"}
    quiet = subprocess.run([*cmd, "--bootstrap", "50", "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == 0
    timed = {"latency_us"}  # measured per run
    strip = [{k: v for k, v in r.items() if k not in timed} for r in rows]
    assert [{k: v for k, v in r.items() if k not in timed} for r in json.loads(quiet.stdout)] == strip
    assert "%|" not in quiet.stderr  # no tqdm bar, ours or third-party


def test_exit_codes_name_the_error_family(repo: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmhyper_feast", *args], capture_output=True, text=True)

    bad_flag = run("evaluate", "--repo", str(repo), "--shots", "-3")
    assert (
        bad_flag.returncode == 2
        and bad_flag.stderr.startswith("Error (input):")
        and "generation.shots" in bad_flag.stderr
    )
    unknown = run("status", "--repo", str(repo), "--llm", "gpt-magic")
    assert unknown.returncode == 2 and "Unknown LLM backend 'gpt-magic'" in unknown.stderr
    no_repo = run("status", "--repo", str(tmp_path / "nowhere"))
    assert no_repo.returncode == 3 and no_repo.stderr.startswith("Error (repo):")
