"""Tests for llmhyper_feast.evaluation.metrics against hand-computed cases and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import ndcg_score, roc_auc_score

from llmhyper_feast.errors import DataError
from llmhyper_feast.evaluation.metrics import (
    auc,
    calibration_table,
    cosine,
    coverage_at_k,
    expected_calibration_error,
    gauc,
    hit_rate_at_k,
    ndcg_at_k,
    ndcg_at_k_per_user,
    paired_bootstrap_ci,
    spearman,
    top_k_features,
)

# ---------------------------------------------------------------- AUC


def test_auc_hand_computed() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([True, False], [0.2, 0.9]) == 0.0


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 1], [0.5, 0.5], 0.5),
        ([0, 1, 0, 1], [1.0, 1.0, 1.0, 1.0], 0.5),
        # pairs (pos, neg): (.9,.9)=.5, (.9,.1)=1, (.3,.9)=0, (.3,.1)=1 -> 2.5 / 4
        ([1, 0, 1, 0], [0.9, 0.9, 0.3, 0.1], 0.625),
    ],
)
def test_auc_ties_count_half(labels: list[int], scores: list[float], expected: float) -> None:
    assert auc(labels, scores) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 300), levels=st.integers(1, 20))
def test_auc_matches_sklearn(seed: int, n: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    y[0], y[1] = 0, 1
    s = rng.integers(0, levels, size=n) / levels  # few levels: many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_errors() -> None:
    with pytest.raises(ValueError, match="both positive and negative"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="binary"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(DataError, match="2 entries"):
        auc([0, 1], [0.1])
    with pytest.raises(DataError, match="NaN"):
        auc([0, 1], [0.1, np.nan])


# ---------------------------------------------------------------- GAUC


def test_gauc_hand_computed() -> None:
    users = ["a", "a", "a", "b", "b", "c", "c", "d", "e", "e"]
    labels = [1, 0, 0, 0, 1, 1, 1, 0, 1, 0]
    scores = [0.9, 0.2, 0.5, 0.7, 0.3, 0.1, 0.2, 0.4, 0.4, 0.4]
    # a: AUC 1 (3 rows), b: 0 (2 rows), e: tie -> 0.5 (2 rows); c, d have one class only.
    assert gauc(users, labels, scores) == pytest.approx((3 * 1 + 2 * 0 + 2 * 0.5) / 7)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 400), n_users=st.integers(1, 30))
def test_gauc_matches_per_user_sklearn_loop(seed: int, n: int, n_users: int) -> None:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, size=n)
    y = rng.integers(0, 2, size=n)
    s = rng.integers(0, 5, size=n) / 5.0
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * roc_auc_score(y[m], s[m])
            den += m.sum()
    if den == 0:
        with pytest.raises(DataError, match="both a positive and a negative"):
            gauc(users, y, s)
    else:
        assert gauc(users, y, s) == pytest.approx(num / den, abs=1e-12)


def test_gauc_rejects_misaligned_users() -> None:
    with pytest.raises(DataError, match="user_ids"):
        gauc([1, 2], [0, 1, 1], [0.1, 0.2, 0.3])


# ---------------------------------------------------------------- NDCG


def test_ndcg_hand_computed() -> None:
    rel = np.array([[0.0, 1.0, 0.0, 2.0]])
    scores = np.array([[0.1, 0.9, 0.8, 0.2]])
    # ranking: idx1 (rel 1), idx2 (rel 0), idx3 (rel 2)
    dcg = 1 / math.log2(2) + 0 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(rel, scores, 3) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(rel, scores, 1) == pytest.approx(1 / 2)
    # k larger than the candidate list uses the whole list
    dcg_all = dcg + 0 / math.log2(5)
    idcg_all = idcg
    assert ndcg_at_k(rel, scores, 10) == pytest.approx(dcg_all / idcg_all)


def test_ndcg_ties_break_by_lower_index() -> None:
    assert ndcg_at_k([[0, 1]], [[0.5, 0.5]], 1) == 0.0
    assert ndcg_at_k([[1, 0]], [[0.5, 0.5]], 1) == 1.0


def test_ndcg_skips_users_without_clicks_and_accepts_ragged_rows() -> None:
    rel = [[0, 0, 0], [1, 0], [0, 0, 0, 1]]
    scores = [[0.3, 0.2, 0.1], [0.1, 0.9], [0.4, 0.3, 0.2, 0.1]]
    per_user = ndcg_at_k_per_user(rel, scores, 2)
    assert np.isnan(per_user[0])
    assert per_user[1] == pytest.approx(1 / math.log2(3))
    assert per_user[2] == 0.0  # the click is ranked 4th, outside the top 2
    assert ndcg_at_k(rel, scores, 2) == pytest.approx((1 / math.log2(3) + 0.0) / 2)


def test_ndcg_errors() -> None:
    with pytest.raises(DataError, match="no user has a relevant"):
        ndcg_at_k([[0, 0]], [[0.1, 0.2]], 2)
    with pytest.raises(DataError, match="'k'"):
        ndcg_at_k([[1, 0]], [[0.1, 0.2]], 0)
    with pytest.raises(DataError, match="same number of candidates"):
        ndcg_at_k([[1, 0]], [[0.1, 0.2, 0.3]], 2)
    with pytest.raises(DataError, match=">= 0"):
        ndcg_at_k([[1, -1]], [[0.1, 0.2]], 2)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_users=st.integers(1, 20), n_ads=st.integers(2, 30), k=st.integers(1, 12))
def test_ndcg_matches_sklearn_without_ties(seed: int, n_users: int, n_ads: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    rel = rng.integers(0, 3, size=(n_users, n_ads)).astype(float)
    rel[:, 0] = 1.0  # every user has a click, so sklearn and we average the same users
    scores = rng.permuted(np.tile(np.arange(n_ads, dtype=float), (n_users, 1)), axis=1)
    assert ndcg_at_k(rel, scores, k) == pytest.approx(ndcg_score(rel, scores, k=k), abs=1e-12)


# ---------------------------------------------------------------- calibration error


def test_ece_hand_computed() -> None:
    labels = [0, 1, 1, 0]
    probs = [0.05, 0.15, 0.95, 0.85]
    assert expected_calibration_error(labels, probs) == pytest.approx((0.05 + 0.85 + 0.05 + 0.85) / 4)
    # two bins: [0, .5): mean .1 vs rate .5; [.5, 1]: mean .9 vs rate .5
    assert expected_calibration_error(labels, probs, n_bins=2) == pytest.approx(0.4)
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0


def test_calibration_table_bins_and_edges() -> None:
    t = calibration_table([1, 0, 1, 1], [0.5, 0.2, 1.0, 0.75], n_bins=2)
    np.testing.assert_array_equal(t["count"], [1, 3])  # 0.5 opens bin 1; 1.0 stays in bin 1
    np.testing.assert_allclose(t["mean_predicted"], [0.2, 0.75])
    np.testing.assert_allclose(t["observed_rate"], [0.0, 1.0])
    np.testing.assert_allclose(t["bin_lower"], [0.0, 0.5])
    t4 = calibration_table([1], [0.1], n_bins=4)
    assert t4["count"].tolist() == [1, 0, 0, 0]
    assert np.isnan(t4["mean_predicted"][1]) and np.isnan(t4["observed_rate"][3])


def test_ece_rejects_probs_outside_unit_interval() -> None:
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        expected_calibration_error([0, 1], [0.2, 1.2])


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_constant_difference_has_zero_width() -> None:
    b = np.random.default_rng(0).normal(size=50)
    mean, lo, hi = paired_bootstrap_ci(b + 0.25, b, n_boot=200)
    assert mean == pytest.approx(0.25)
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)


def test_bootstrap_matches_normal_approximation_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0.1, 1.0, size=2000)
    b = rng.normal(0.0, 1.0, size=2000)
    mean, lo, hi = paired_bootstrap_ci(a, b, n_boot=2000, seed=3)
    d = a - b
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert mean == pytest.approx(d.mean())
    assert lo < mean < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert paired_bootstrap_ci(a, b, n_boot=2000, seed=3) == (mean, lo, hi)
    _, lo90, hi90 = paired_bootstrap_ci(a, b, n_boot=2000, seed=3, level=0.9)
    assert hi90 - lo90 < hi - lo


def test_bootstrap_drops_nan_users_and_validates() -> None:
    a = np.array([1.0, np.nan, 3.0, 5.0])
    b = np.array([0.0, 1.0, np.nan, 4.0])
    mean, _, _ = paired_bootstrap_ci(a, b, n_boot=50)
    assert mean == pytest.approx(1.0)  # users 0 and 3 only
    with pytest.raises(DataError, match="aligned"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(DataError, match="'level'"):
        paired_bootstrap_ci([1.0, 2.0], [1.0, 0.0], level=1.0)
    with pytest.raises(DataError, match=">= 2 users"):
        paired_bootstrap_ci([1.0, np.nan], [1.0, 0.0])


# ---------------------------------------------------------------- explainability


W = np.array([[0.9, -2.0, 0.1, 0.5], [0.0, 0.3, 0.3, -1.0]])


def test_top_k_uses_signed_weights_and_stable_ties() -> None:
    np.testing.assert_array_equal(top_k_features(W, 2), [[0, 3], [1, 2]])
    np.testing.assert_array_equal(top_k_features(np.array([[0.2, 0.2, 0.2]]), 1), [[0]])


def test_hit_rate_and_coverage_hand_computed() -> None:
    labelled = [{1}, {2, 0}]
    # ad 0: top2 {0, 3} misses {1} (the large *negative* weight does not count); ad 1: {1, 2} hits.
    assert hit_rate_at_k(W, labelled, k=2) == pytest.approx(0.5)
    # Jaccard: ad 0: 0 / 3; ad 1: |{2}| / |{0, 1, 2}| = 1/3
    assert coverage_at_k(W, labelled, k=2) == pytest.approx((0 + 1 / 3) / 2)
    assert hit_rate_at_k(W, [{0}, {1}], k=1) == 1.0
    assert coverage_at_k(W, [{0}, {1}], k=1) == 1.0


def test_explainability_errors() -> None:
    with pytest.raises(DataError, match="one set per ad"):
        hit_rate_at_k(W, [{0}], k=2)
    with pytest.raises(DataError, match=r"non-empty set of feature indices in \[0, 4\)"):
        coverage_at_k(W, [{0}, set()], k=2)
    with pytest.raises(DataError, match=r"\[0, 4\)"):
        hit_rate_at_k(W, [{0}, {4}], k=2)
    with pytest.raises(DataError, match="<= the number of features"):
        hit_rate_at_k(W, [{0}, {1}], k=5)


# ---------------------------------------------------------------- similarity helpers


def test_cosine_and_spearman() -> None:
    assert cosine([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / math.sqrt(2))
    assert cosine([1.0, 2.0], [-2.0, -4.0]) == pytest.approx(-1.0)
    # d = [0, 0, 1, -1]: 1 - 6 * 2 / (4 * 15)
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    with pytest.raises(DataError, match="zero vector"):
        cosine([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(DataError, match="non-constant"):
        spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
