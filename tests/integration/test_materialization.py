"""Materialization into Feast: idempotency, online lookups, drift, warm hand-off, precedence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmhyper_feast import jobs
from llmhyper_feast.calibration.solve import calibrate, neighbour_alpha
from llmhyper_feast.config import load_settings
from llmhyper_feast.generation.runner import read_log
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store import online
from llmhyper_feast.store.layout import RepoLayout
from llmhyper_feast.store.weights import resolve_weights

pytestmark = pytest.mark.integration


def _knn(repo: Path, scale: str = "unit"):
    return load_settings(repo).with_overrides(**{"llm.name": "none", "calibration.scale": scale})


def test_materialize_is_idempotent_and_lookup_matches_calibration(demo_copy: Path) -> None:
    settings = _knn(demo_copy)
    first = jobs.materialize(demo_copy, settings, progress=False)
    store = fa.open_store(demo_copy)
    _, active = fa.read_ads(store, status="active")
    assert first.written == len(active) and first.generated == len(active)
    second = jobs.materialize(demo_copy, settings, progress=False)
    assert second.generated == 0 and second.written == 0
    history = pd.read_parquet(demo_copy / "data" / "generated_ad_weights.parquet")
    assert len(history) == len(active)  # nothing appended by the second run

    # the online row equals what the log + calibration imply
    log = read_log(RepoLayout(demo_copy).generation_log).set_index("ad_id")
    ad_id = active["ad_id"].iloc[0]
    row = log.loc[ad_id]
    schema = fa.read_feature_schema(store)
    _, users = fa.read_user_matrix(
        store, schema, sample=settings.calibration.user_sample, seed=settings.generation.seed
    )
    alpha = neighbour_alpha(np.asarray(row["neighbour_ctrs"]), np.asarray(row["similarities"]))
    expected = calibrate(np.asarray(row["weights"]), users, alpha)
    got = online.get_ad_weights(store, [ad_id], schema)
    assert got.found.all()
    np.testing.assert_allclose(got.weights[0], expected.weights, atol=1e-6)
    np.testing.assert_allclose(got.bias[0], expected.delta, atol=1e-5)
    assert got.meta[0]["origin"] == "prior" and got.meta[0]["feature_hash"] == schema.hash
    assert np.linalg.norm(got.weights[0]) == pytest.approx(1.0, abs=1e-5)


def test_force_rewrites_with_a_newer_timestamp(demo_copy: Path) -> None:
    settings = _knn(demo_copy)
    jobs.materialize(demo_copy, settings, progress=False)
    again = jobs.materialize(demo_copy, settings, force=True, progress=False)
    assert again.written > 0
    hist = pd.read_parquet(demo_copy / "data" / "generated_ad_weights.parquet")
    per_ad = hist.groupby("ad_id")["event_timestamp"].agg(["min", "max", "count"])
    assert (per_ad["count"] == 2).all() and (per_ad["max"] > per_ad["min"]).all()


def test_drift_marks_weights_stale_and_materialize_refreshes(demo_copy: Path) -> None:
    settings = _knn(demo_copy)
    jobs.materialize(demo_copy, settings, progress=False)
    assert set(jobs.status(demo_copy, settings)["state"]) == {"warm", "cold-current"}
    defs = demo_copy / "feature_definitions.py"
    defs.write_text(defs.read_text().replace("scaled to a 0-1 score", "scaled to a score between 0 and 1"))
    fa.apply_repo(demo_copy)
    table = jobs.status(demo_copy, settings)
    assert set(table.loc[table["status"] == "active", "state"]) == {"cold-stale"}
    assert set(table.loc[table["status"] == "retired", "state"]) == {"warm"}  # trained weights need names only
    assert table.loc[table["state"] == "cold-stale", "reason"].str.contains("feature definitions changed").all()
    report = jobs.materialize(demo_copy, settings, progress=False)
    assert report.written == (table["status"] == "active").sum()
    assert set(jobs.status(demo_copy, settings)["state"]) == {"warm", "cold-current"}


def test_warm_handoff_takes_precedence(demo_copy: Path) -> None:
    settings = _knn(demo_copy)
    jobs.materialize(demo_copy, settings, progress=False)
    store = fa.open_store(demo_copy)
    schema = fa.read_feature_schema(store)
    _, active = fa.read_ads(store, status="active")
    handed = active["ad_id"].iloc[0]
    lr_cold = jobs.load_lr_cold(demo_copy)
    before = resolve_weights(store, schema, lr_cold, [handed, "ad_unknown"])
    assert before.source == ["generated", "lr_cold"]
    report = jobs.train_warm(demo_copy, settings, ad_ids=[handed], progress=False)
    assert report.trained == 1
    after = resolve_weights(store, schema, lr_cold, [handed])
    assert after.source == ["warm"]
    warm = fa.read_latest(store, "warm_ad_weights").set_index("ad_id")
    np.testing.assert_allclose(after.weights[0], warm.loc[handed, "weights"])
    table = jobs.status(demo_copy, settings).set_index("ad_id")
    assert table.loc[handed, "state"] == "warm"
    assert jobs.materialize(demo_copy, settings, progress=False).generated == 0


def test_zero_weight_answer_falls_back_to_prior(demo_repo: Path) -> None:
    from llmhyper_feast.calibration.rows import calibrate_row
    from llmhyper_feast.config import CalibrationConfig

    lr_cold = jobs.load_lr_cold(demo_repo)
    n = len(lr_cold.weights)
    users = np.random.default_rng(0).random((500, n))
    row = {
        "weights": [0.0] * n,
        "prior_weights": list(np.linspace(-1, 1, n)),
        "origin": "llm",
        "fallback_reason": "",
        "neighbour_ctrs": [0.02, 0.03],
        "similarities": [0.9, 0.5],
        "neighbour_norms": [2.0, 3.0],
    }
    out = calibrate_row(row, users, CalibrationConfig(scale="unit"), lr_cold)
    assert out["origin"] == "fallback" and "llm weights" in out["reason"]
    assert np.linalg.norm(out["weights"]) == pytest.approx(1.0)
    both_zero = {**row, "prior_weights": [0.0] * n}
    out = calibrate_row(both_zero, users, CalibrationConfig(scale="unit"), lr_cold)
    assert out["origin"] == "fallback" and "LR_cold" in out["reason"]
    p = 1 / (1 + np.exp(-(users @ out["weights"] + out["bias"])))
    assert p.mean() == pytest.approx(out["alpha"], abs=1e-9)


def test_neighbour_scale_matches_the_neighbours_norm(demo_repo: Path) -> None:
    from llmhyper_feast.calibration.rows import calibrate_row
    from llmhyper_feast.config import CalibrationConfig

    lr_cold = jobs.load_lr_cold(demo_repo)
    n = len(lr_cold.weights)
    users = np.random.default_rng(1).random((400, n))
    row = {
        "weights": list(np.linspace(-1, 2, n)),
        "prior_weights": [0.1] * n,
        "origin": "llm",
        "fallback_reason": "",
        "neighbour_ctrs": [0.02, 0.03],
        "similarities": [0.75, 0.25],
        "neighbour_norms": [2.0, 6.0],
    }
    out = calibrate_row(row, users, CalibrationConfig(scale="neighbours"), lr_cold)
    assert out["origin"] == "llm" and out["reason"] == ""
    assert np.linalg.norm(out["weights"]) == pytest.approx(0.75 * 2.0 + 0.25 * 6.0)
