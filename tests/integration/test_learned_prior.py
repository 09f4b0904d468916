"""The learned prior on a real demo repo: fitted where the index is built, logged, calibrated, backtested, evaluated."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from llmhyper_feast import jobs
from llmhyper_feast.config import GateConfig, load_settings
from llmhyper_feast.errors import ConfigError
from llmhyper_feast.evaluation.backtest import gate_decision
from llmhyper_feast.generation.priors import LearnedPrior
from llmhyper_feast.store import feast_adapter as fa

pytestmark = pytest.mark.integration

LEARNED = {"llm.name": "none", "prior.name": "learned"}


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.repos import clone_repo

    return clone_repo(demo_repo, tmp_path_factory.mktemp("learned") / "repo")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_build_index_fits_the_configured_prior_and_the_log_carries_its_alpha(repo: Path) -> None:
    from llmhyper_feast.calibration.rows import generated_rows
    from llmhyper_feast.generation.runner import generate_rows
    from llmhyper_feast.jobs.train import load_lr_cold

    settings = load_settings(repo).with_overrides(**LEARNED, **{"calibration.alpha_source": "learned"})
    store, inputs = jobs.build_index(repo, settings, progress=False)
    assert isinstance(inputs.prior, LearnedPrior) and inputs.prior.model is not None
    assert inputs.source_id == "prior:learned"
    # warm ads treated as cold: their leave-one-out predictions still point the way their trained weights do
    warm = list(inputs.warm.values())
    loo = [_cos(inputs.prior.predict(w.ad, [], len(inputs.schema)), w.weights) for w in warm]
    assert 0.3 < np.mean(loo) < 0.95 and max(loo) < 0.999  # learned from the others, never the ad's own weights
    ads, _ = fa.read_ads(store, status="active")
    rows = generate_rows(ads, replace(inputs, backend=None), progress=False)
    alphas = rows["prior_alpha"].to_numpy(float)
    assert ((alphas > 0.001) & (alphas < 0.2)).all() and np.ptp(alphas) > 0
    np.testing.assert_allclose(np.stack(rows["weights"]), np.stack(rows["prior_weights"]))
    _, users = fa.read_user_matrix(store, inputs.schema, sample=2000, seed=0)
    out = generated_rows(
        rows, users, inputs.schema, settings.calibration, load_lr_cold(repo), rows["generated_at"].max()
    )
    np.testing.assert_allclose(out["alpha"].to_numpy(float), alphas, rtol=1e-6)  # float32 column
    assert (out["origin"] == "prior").all() and (out["reason"] == "").all()


def test_a_learned_alpha_needs_a_prior_that_estimates_it(repo: Path) -> None:
    settings = load_settings(repo).with_overrides(**{"llm.name": "none", "calibration.alpha_source": "learned"})
    with pytest.raises(ConfigError, match="prior.name: learned"):
        jobs.build_index(repo, settings, progress=False)


def test_the_gate_blends_with_the_prior_its_backtest_compared_with() -> None:
    bt = {"backend": "openai:m", "prior": "prior:learned", "cosine": 0.1, "knn_cosine": 0.4, "best_lambda": 0.3}
    assert gate_decision(GateConfig(mode="warn"), bt, "openai:m", prior="prior:learned") == (
        "warn:worse-than-learned",
        1.0,
    )
    assert gate_decision(GateConfig(mode="blend"), bt, "openai:m", prior="prior:learned") == ("blend:0.30", 0.3)
    with pytest.raises(ConfigError, match="same --prior"):
        gate_decision(GateConfig(mode="blend"), bt, "openai:m", prior="prior:knn")
    old = {k: v for k, v in bt.items() if k != "prior"}  # saved before backtests named their prior: knn
    assert gate_decision(GateConfig(mode="warn"), old, "openai:m", prior="prior:knn") == ("warn:worse-than-knn", 1.0)


@pytest.mark.slow
def test_backtest_reports_the_learned_prior_beside_the_configured_one(repo: Path) -> None:
    base = load_settings(repo).with_overrides(**{"llm.name": "none"})
    knn = jobs.run_backtest(repo, base, sample=12, progress=False)
    learned = jobs.run_backtest(repo, base.with_overrides(**{"prior.name": "learned"}), sample=12, progress=False)
    assert knn["ads"] == learned["ads"] and knn["prior"] == "prior:knn" and learned["prior"] == "prior:learned"
    # the learned baseline is the same in both runs; with prior learned it is also the gate's partner
    assert knn["learned_cosine"] == pytest.approx(learned["learned_cosine"])
    assert learned["knn_cosine"] == pytest.approx(learned["learned_cosine"]) == pytest.approx(learned["cosine"])
    assert knn["learned_cosine"] != pytest.approx(knn["knn_cosine"])
    assert 0.3 < knn["learned_cosine"] < 0.95  # learned, not the ads' own trained weights


@pytest.mark.slow
def test_evaluate_has_learned_prior_rows_for_both_alpha_sources(repo: Path) -> None:
    rows = {
        r["model"]: r
        for r in jobs.evaluate(
            repo, load_settings(repo).with_overrides(**{"llm.name": "none"}), n_boot=100, progress=False
        )
    }
    assert {"knn_prior", "learned_prior", "learned_prior[alpha=learned]", "lr_cold", "lr_warm"} <= set(rows)
    assert rows["learned_prior"]["ndcg@10"] > rows["lr_cold"]["ndcg@10"]
    assert rows["learned_prior"]["ndcg@10_gap_closed"] > 0.3
    assert rows["lr_warm"]["ndcg@10_gap_closed"] == pytest.approx(1.0)
    # same weights, other intercepts: only the calibration target differs
    assert rows["learned_prior"]["hr@5"] == rows["learned_prior[alpha=learned]"]["hr@5"]
    assert rows["learned_prior"]["mean_pred"] != pytest.approx(rows["learned_prior[alpha=learned]"]["mean_pred"])
