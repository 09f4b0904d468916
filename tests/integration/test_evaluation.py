"""evaluate (CLI, JSON), the demo world's expected model order, backtest, gate and warm hand-off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmhyper_feast import feast_adapter as fa
from llmhyper_feast import online, pipeline
from llmhyper_feast.backtest import gate_decision
from llmhyper_feast.cli import cli
from llmhyper_feast.config import GateConfig, load_settings
from llmhyper_feast.errors import ConfigError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.repos import clone_repo

    return clone_repo(demo_repo, tmp_path_factory.mktemp("evaluation") / "repo")


def test_evaluate_json_orders_models_as_the_world_implies(repo: Path) -> None:
    result = CliRunner().invoke(cli, ["evaluate", "--repo", str(repo), "--llm", "knn", "--format", "json",
                                      "--bootstrap", "200", "--ablate", "scale", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.stdout)}
    assert {"lr_cold", "lr_warm", "knn_prior", "emb_cosine", "oracle",
            "knn_prior[scale=unit]", "knn_prior[scale=neighbours]"} <= set(rows)
    for row in rows.values():
        assert {"model", "auc", "gauc", "ndcg@5", "ndcg@10", "ece"} <= set(row)
    ndcg = {m: r["ndcg@10"] for m, r in rows.items()}
    assert ndcg["oracle"] > ndcg["lr_warm"] >= ndcg["knn_prior"] > ndcg["lr_cold"]
    d, lo, hi = rows["knn_prior"]["d_ndcg@10_vs_lr_cold"]
    assert lo <= d <= hi and lo > 0  # the prior beats the median model beyond noise
    assert rows["knn_prior[scale=neighbours]"]["ndcg@10"] == pytest.approx(rows["knn_prior"]["ndcg@10"])
    assert rows["oracle"]["hr@5"] == 1.0 and rows["oracle"]["coverage@5"] == 1.0


def test_prompt_ablations_need_an_llm(repo: Path) -> None:
    result = CliRunner().invoke(cli, ["evaluate", "--repo", str(repo), "--llm", "knn", "--ablate", "shots", "--quiet"])
    assert result.exit_code != 0 and "needs an LLM backend" in str(result.exception)


def test_backtest_and_blend_gate_are_recorded(repo: Path) -> None:
    settings = load_settings(repo).with_overrides(llm={"name": "knn", "options": {}})
    result = pipeline.run_backtest(repo, settings, sample=10, progress=False)
    assert len(result["ads"]) == 10 and len(result["per_ad_cosine"]) == 10
    assert result["cosine"] == pytest.approx(result["knn_cosine"])  # knn is its own prior
    assert 0 < result["cosine"] <= 1 and result["trained_click_gauc"] > 0.5
    assert 0 <= result["best_lambda"] <= 1


def test_gate_decisions() -> None:
    bt = {"backend": "openai:m", "cosine": 0.3, "knn_cosine": 0.5, "best_lambda": 0.4}
    assert gate_decision(GateConfig(mode="off"), None, "openai:m") == ("no gate", 1.0)
    assert gate_decision(GateConfig(mode="warn"), bt, "openai:m") == ("warn:worse-than-knn", 1.0)
    assert gate_decision(GateConfig(mode="warn"), {**bt, "cosine": 0.6}, "openai:m") == ("pass", 1.0)
    assert gate_decision(GateConfig(mode="blend"), bt, "openai:m") == ("blend:0.40", 0.4)
    with pytest.raises(ConfigError, match="worse than the kNN prior"):
        gate_decision(GateConfig(mode="refuse"), bt, "openai:m")
    with pytest.raises(ConfigError, match="llmhyper backtest"):
        gate_decision(GateConfig(mode="refuse"), bt, "openai:other-model")


def test_handoff_trains_cold_ads_with_enough_impressions(repo: Path) -> None:
    settings = load_settings(repo).with_overrides(llm={"name": "knn", "options": {}})
    pipeline.materialize(repo, settings, progress=False)
    store = fa.open_store(repo)
    _, active = fa.read_ads(store, status="active")
    assert (pipeline.status(repo, settings).set_index("ad_id").loc[active["ad_id"], "state"] == "cold-current").all()
    report = pipeline.train_warm(repo, settings, handoff=True, progress=False)
    table = pipeline.status(repo, settings).set_index("ad_id")
    assert (table.loc[active["ad_id"], "state"] == "warm").all()
    assert report.trained >= len(active)
    got = online.get_ad_weights(store, list(active["ad_id"][:1]))
    assert got.meta[0]["decision"] == "no gate"
