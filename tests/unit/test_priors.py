"""Weight priors: the kNN prior's arithmetic, the prior registry and the prior as a weight source."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from scipy.special import expit

from llmhyper_feast.backends.embedders import Embedder
from llmhyper_feast.errors import BackendNotFoundError, ConfigError, DataError
from llmhyper_feast.features import Ad, Neighbour, WarmAd
from llmhyper_feast.generation.priors import (
    PRIORS,
    RIDGE_ALPHAS,
    KnnPrior,
    LearnedPrior,
    WeightPrior,
    available_priors,
    fit_ridge_loo,
    get_prior,
    knn_prior,
    prior_alpha,
    register_prior,
)


def test_knn_prior_is_the_similarity_weighted_mean():
    w = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    got = knn_prior(w, np.array([0.6, 0.2, 0.2]))
    np.testing.assert_allclose(got, [0.6 * 1 + 0.2 * 2, 0.2 * 1 + 0.2 * 2])


def test_knn_prior_clips_negative_similarities():
    w = np.array([[1.0, 1.0], [-5.0, 7.0]])
    np.testing.assert_allclose(knn_prior(w, np.array([0.5, -0.9])), [1.0, 1.0])


def test_knn_prior_all_zero_similarities_give_the_plain_mean():
    w = np.array([[1.0, 3.0], [3.0, 5.0]])
    np.testing.assert_allclose(knn_prior(w, np.array([0.0, -0.2])), [2.0, 4.0])


def test_knn_prior_without_neighbours_is_zero():
    np.testing.assert_array_equal(knn_prior(np.zeros((0, 4)), np.zeros(0)), np.zeros(4))


@pytest.mark.parametrize(
    "w, s",
    [(np.zeros(3), np.zeros(3)), (np.zeros((2, 3)), np.zeros(3)), (np.array([[np.nan, 1.0]]), np.ones(1))],
)
def test_knn_prior_rejects_bad_shapes_and_values(w, s):
    with pytest.raises(DataError, match="knn_prior"):
        knn_prior(w, s)


class ConstantPrior(WeightPrior):
    """A third-party prior: every weight is ``value``."""

    name: ClassVar[str] = "constant-test"

    class Options(WeightPrior.Options):
        value: float = 0.5

    def predict(self, ad: Ad, neighbours, n_features: int) -> np.ndarray:
        return np.full(n_features, self.options.value)


def test_prior_registry_resolves_builtins_registered_and_dotted_names():
    assert available_priors()[0] == "knn"
    assert isinstance(get_prior("knn"), KnnPrior)
    register_prior(ConstantPrior)
    try:
        assert get_prior("constant-test", {"value": 2.0}).predict(Ad("a", "t"), [], 3).tolist() == [2.0] * 3
        assert "constant-test" in available_priors()
    finally:
        PRIORS.unregister("constant-test")
    assert type(get_prior("tests.unit.test_priors:ConstantPrior")).__name__ == "ConstantPrior"
    with pytest.raises(BackendNotFoundError, match="Unknown weight prior 'nope'.*knn"):
        get_prior("nope")
    with pytest.raises(ConfigError, match="unknown option 'k'"):
        get_prior("knn", {"k": 3})


def test_knn_prior_predicts_from_neighbours_and_ids_itself():
    prior = get_prior("knn")
    nbs = [
        Neighbour(WarmAd(np.array([1.0, 0.0]), ad=Ad("w1", "t")), 0.75),
        Neighbour(WarmAd(np.array([0.0, 1.0]), ad=Ad("w2", "t")), 0.25),
    ]
    np.testing.assert_allclose(prior.predict(Ad("c", "t"), nbs, 2), [0.75, 0.25])
    np.testing.assert_array_equal(prior.predict(Ad("c", "t"), [], 2), [0.0, 0.0])
    assert prior.source_id == "prior:knn"
    assert ConstantPrior({"value": 1.0}).source_id != ConstantPrior({"value": 2.0}).source_id


# ---------------------------------------------------------------- the learned prior


class VectorEmbedder(Embedder):
    """Embeds an ad whose title is ``"v:<comma-separated floats>"`` as those numbers (a known geometry)."""

    name: ClassVar[str] = "vector-test"

    def _embed_batch(self, ads: list[Ad]) -> np.ndarray:
        return np.array([[float(v) for v in a.title.removeprefix("v:").split(",")] for a in ads])


def _vector_ad(ad_id: str, vec: np.ndarray) -> Ad:
    return Ad(ad_id, "v:" + ",".join(repr(float(v)) for v in vec))


def _world(n_ads: int = 40, d: int = 6, n_features: int = 4, seed: int = 0):
    """Warm ads whose weights, bias and logit mean CTR are linear in their unit embedding, plus noise."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_ads, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    true = rng.normal(size=(d, n_features + 2))
    y = emb @ true + 0.01 * rng.normal(size=(n_ads, n_features + 2))
    y[:, -1] -= 3.5  # logit mean CTR near 3%
    warm = {
        f"w{i}": WarmAd(
            y[i, :n_features], float(y[i, n_features]), ad=_vector_ad(f"w{i}", emb[i]), mean_ctr=expit(y[i, -1])
        )
        for i in range(n_ads)
    }
    return warm, [f"w{i}" for i in range(n_ads)], emb.astype(np.float32), true


def test_ridge_loo_matches_scikit_learn_ridgecv_and_brute_force_refits():
    from sklearn.linear_model import Ridge, RidgeCV

    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 8))
    y = x @ rng.normal(size=(8, 3)) + rng.normal(size=(30, 3)) * np.array([0.05, 1.0, 10.0])
    fit = fit_ridge_loo(x, y)
    ref = RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=True).fit(x, y)
    np.testing.assert_allclose(fit.alphas, ref.alpha_)
    assert fit.alphas[0] < fit.alphas[2]  # the noisy target gets the stronger penalty
    np.testing.assert_allclose(fit.coef, ref.coef_.T, atol=1e-10)
    np.testing.assert_allclose(fit.intercept, ref.intercept_, atol=1e-10)
    for i in (0, 17):  # leave-one-out predictions are what a model refitted without row i predicts
        for t in range(3):
            m = Ridge(alpha=fit.alphas[t]).fit(np.delete(x, i, 0), np.delete(y[:, t], i))
            assert fit.loo[i, t] == pytest.approx(m.predict(x[i : i + 1])[0], abs=1e-9)
    with pytest.raises(DataError, match="n >= 3"):
        fit_ridge_loo(x[:2], y[:2])


def test_learned_prior_maps_content_to_weights_bias_and_mean_ctr():
    warm, ids, emb, true = _world()
    prior = get_prior("learned")
    prior.fit(warm, ids, emb, VectorEmbedder())
    rng = np.random.default_rng(5)
    vec = rng.normal(size=6)
    vec /= np.linalg.norm(vec)
    want = vec @ true
    cold = _vector_ad("cold", vec)
    got = prior.predict(cold, [], 4)
    np.testing.assert_allclose(got, want[:4], atol=0.05)
    assert prior.predict_bias(cold) == pytest.approx(want[4], abs=0.05)
    assert prior.estimate_alpha(cold, []) == pytest.approx(expit(want[5] - 3.5), rel=0.05)
    assert prior.source_id == "prior:learned"
    # fitted once, deterministic: a second fit predicts the same numbers
    again = LearnedPrior()
    again.fit(warm, ids, emb, VectorEmbedder())
    np.testing.assert_array_equal(again.predict(cold, [], 4), got)


def test_a_warm_ad_gets_its_leave_one_out_prediction_not_its_own_weights():
    warm, ids, emb, _ = _world()
    prior = LearnedPrior()
    prior.fit(warm, ids, emb, VectorEmbedder())
    own = warm["w3"]
    got = prior.predict(own.ad, [], 4)
    assert prior.model is not None
    np.testing.assert_array_equal(got, prior.model.loo[3, :4])
    # the full fit (which saw w3) would be closer to w3's own weights than the honest estimate
    seen = prior.model.predict(emb[3:4].astype(np.float64))[0, :4]
    assert np.linalg.norm(seen - own.weights) < np.linalg.norm(got - own.weights)
    np.testing.assert_allclose(got, own.weights, atol=0.1)  # still learned from the other 39


def test_learned_prior_without_enough_warm_ads_answers_like_knn_and_refuses_use_before_fit():
    warm, ids, emb, _ = _world(n_ads=2)
    nbs = [Neighbour(warm["w0"], 0.9), Neighbour(warm["w1"], 0.1)]
    prior = LearnedPrior()
    with pytest.raises(DataError, match="before it was fitted"):
        prior.predict(Ad("c", "v:1,0,0,0,0,0"), nbs, 4)
    prior.fit(warm, ids, emb, VectorEmbedder())
    np.testing.assert_allclose(
        prior.predict(Ad("c", "v:1,0,0,0,0,0"), nbs, 4), KnnPrior().predict(Ad("c", "t"), nbs, 4)
    )
    assert prior.estimate_alpha(Ad("c", "v:1,0,0,0,0,0"), nbs) is None
    assert prior_alpha(prior, Ad("c", "v:1,0,0,0,0,0"), nbs) != prior_alpha(prior, Ad("c", "v:1,0,0,0,0,0"), nbs)  # NaN


def test_learned_prior_refuses_other_feature_counts():
    warm, ids, emb, _ = _world()
    prior = LearnedPrior()
    prior.fit(warm, ids, emb, VectorEmbedder())
    with pytest.raises(DataError, match="fitted on 4 features but is asked for 5"):
        prior.predict(_vector_ad("c", emb[0]), [], 5)


def test_blend_prior_mixes_learned_and_knn_by_its_weight():
    warm, ids, emb, _ = _world()
    nbs = [Neighbour(warm["w0"], 0.8), Neighbour(warm["w1"], 0.4)]
    cold = _vector_ad("c", emb[0] + emb[1])
    learned = LearnedPrior()
    learned.fit(warm, ids, emb, VectorEmbedder())
    knn = KnnPrior().predict(cold, nbs, 4)
    for weight in (0.0, 0.3, 1.0):
        blend = get_prior("blend", {"weight": weight})
        blend.fit(warm, ids, emb, VectorEmbedder())
        np.testing.assert_allclose(
            blend.predict(cold, nbs, 4), weight * learned.predict(cold, nbs, 4) + (1 - weight) * knn
        )
        assert blend.estimate_alpha(cold, nbs) == learned.estimate_alpha(cold, nbs)
    with pytest.raises(ConfigError, match="weight"):
        get_prior("blend", {"weight": 1.5})
    assert {"knn", "learned", "blend"} <= set(available_priors())
    assert KnnPrior().estimate_alpha(cold, nbs) is None  # third-party and knn priors keep working unfitted


def test_third_party_prior_without_fit_still_works_after_fit_is_called():
    prior = ConstantPrior({"value": 1.5})
    prior.fit({}, [], np.zeros((0, 0)), None)
    assert prior.predict(Ad("a", "t"), [], 2).tolist() == [1.5, 1.5]


def test_calibration_targets_the_logged_learned_alpha_when_asked():
    from llmhyper_feast.calibration.rows import calibrate_row
    from llmhyper_feast.config import CalibrationConfig
    from llmhyper_feast.training.warm import LRCold

    rng = np.random.default_rng(2)
    users = rng.normal(size=(500, 3))
    row = {
        "weights": [0.5, -0.2, 0.1],
        "prior_weights": [0.5, -0.2, 0.1],
        "neighbour_ctrs": [0.02, 0.04],
        "similarities": [0.5, 0.5],
        "neighbour_norms": [1.0, 1.0],
        "origin": "prior",
        "fallback_reason": "",
        "prior": "learned",
        "prior_alpha": 0.07,
    }
    cold = LRCold(np.zeros(3), -3.0, 0.03)
    learned = calibrate_row(row, users, CalibrationConfig(scale="unit", alpha_source="learned"), cold)
    neighbours = calibrate_row(row, users, CalibrationConfig(scale="unit"), cold)
    assert learned["alpha"] == pytest.approx(0.07) and neighbours["alpha"] == pytest.approx(0.03)
    assert expit(users @ learned["weights"] + learned["bias"]).mean() == pytest.approx(0.07, abs=1e-8)
    assert learned["reason"] == ""
    # a row from a prior without an estimate (knn, or logged before this column) keeps the neighbours' alpha
    old = {**row, "prior": "knn", "prior_alpha": float("nan")}
    got = calibrate_row(old, users, CalibrationConfig(scale="unit", alpha_source="learned"), cold)
    assert got["alpha"] == pytest.approx(0.03) and "no learned mean-CTR estimate" in got["reason"]
    assert got["origin"] == "prior"
