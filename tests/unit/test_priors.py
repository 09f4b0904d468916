"""Weight priors: the kNN prior's arithmetic, the prior registry and the prior as a weight source."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from llmhyper_feast.errors import BackendNotFoundError, ConfigError, DataError
from llmhyper_feast.features import Ad, Neighbour, WarmAd
from llmhyper_feast.generation.priors import (
    PRIORS,
    KnnPrior,
    WeightPrior,
    available_priors,
    get_prior,
    knn_prior,
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
