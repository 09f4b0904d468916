"""Tests for llmhyper_feast.calibration.solve."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit, logit

from llmhyper_feast.calibration.solve import (
    Calibrated,
    calibrate,
    neighbour_alpha,
    normalise,
    solve_delta,
    solve_deltas,
)
from llmhyper_feast.errors import CalibrationError


def _mean_ctr(z: np.ndarray, delta: float) -> float:
    return float(expit(z + delta).mean())


# ---------------------------------------------------------------- normalise


def test_normalise_unit_gives_unit_norm_and_keeps_direction() -> None:
    theta = np.array([3.0, -4.0, 0.0])
    tilde, norm = normalise(theta)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(tilde, [0.6, -0.8, 0.0])


def test_normalise_neighbours_uses_similarity_weighted_mean_norm() -> None:
    theta = np.array([1.0, 1.0])
    nb = np.array([[3.0, 4.0], [0.0, 1.0], [10.0, 0.0]])  # norms 5, 1, 10
    tilde, norm = normalise(theta, scale="neighbours", neighbour_weights=nb, similarities=[0.6, 0.2, -0.5])
    # Negative similarity is clipped to 0: target = (0.6 * 5 + 0.2 * 1) / 0.8 = 4.0
    assert norm == pytest.approx(np.sqrt(2))
    assert np.linalg.norm(tilde) == pytest.approx(4.0)
    np.testing.assert_allclose(tilde / np.linalg.norm(tilde), theta / np.sqrt(2))


def test_normalise_neighbours_all_zero_similarities_gives_plain_mean() -> None:
    nb = np.array([[3.0, 4.0], [0.0, 1.0]])
    tilde, _ = normalise(np.array([0.0, 2.0]), scale="neighbours", neighbour_weights=nb, similarities=[0.0, -1.0])
    np.testing.assert_allclose(tilde, [0.0, 3.0])
    tilde2, _ = normalise(np.array([0.0, 2.0]), scale="neighbours", neighbour_weights=nb)
    np.testing.assert_allclose(tilde2, [0.0, 3.0])


@pytest.mark.parametrize(
    ("theta", "word"),
    [
        (np.zeros(4), "near-zero"),
        (np.full(3, 1e-14), "near-zero"),
        (np.array([1.0, np.nan]), "non-finite"),
        (np.array([np.inf, 1.0]), "non-finite"),
    ],
)
def test_normalise_rejects_degenerate_theta_and_points_to_prior(theta: np.ndarray, word: str) -> None:
    with pytest.raises(CalibrationError, match=word) as info:
        normalise(theta)
    assert "prior" in str(info.value)


def test_normalise_rejects_bad_scale_and_missing_neighbours() -> None:
    with pytest.raises(CalibrationError, match="'scale'"):
        normalise(np.ones(2), scale="nope")  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match="neighbour_weights"):
        normalise(np.ones(2), scale="neighbours")
    with pytest.raises(CalibrationError, match=r"shape \[k >= 1, 2\]"):
        normalise(np.ones(2), scale="neighbours", neighbour_weights=np.ones((2, 3)))
    with pytest.raises(CalibrationError, match="similarities"):
        normalise(np.ones(2), scale="neighbours", neighbour_weights=np.ones((2, 2)), similarities=[1.0])


# ---------------------------------------------------------------- neighbour_alpha


def test_neighbour_alpha_weightings() -> None:
    ctrs = np.array([0.01, 0.03, 0.5])
    sims = np.array([0.75, 0.25, -0.2])
    assert neighbour_alpha(ctrs, sims) == pytest.approx(0.75 * 0.01 + 0.25 * 0.03)
    assert neighbour_alpha(ctrs, sims, weighting="mean") == pytest.approx(0.18)
    assert neighbour_alpha(ctrs, np.zeros(3)) == pytest.approx(0.18)


def test_neighbour_alpha_errors() -> None:
    with pytest.raises(CalibrationError, match=r"open interval \(0, 1\)"):
        neighbour_alpha([0.0, 0.1], [1.0, 1.0])
    with pytest.raises(CalibrationError, match="one per mean CTR"):
        neighbour_alpha([0.1, 0.2], [1.0])
    with pytest.raises(CalibrationError, match="'weighting'"):
        neighbour_alpha([0.1], [1.0], weighting="max")  # type: ignore[arg-type]


# ---------------------------------------------------------------- solve_delta


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_users=st.integers(1, 400),
    n_features=st.integers(1, 64),
    weight_scale=st.floats(0.01, 30.0),
    alpha=st.floats(1e-4, 1 - 1e-4),
)
def test_solve_delta_reaches_alpha(seed: int, n_users: int, n_features: int, weight_scale: float, alpha: float) -> None:
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(n_users, n_features))
    theta = rng.normal(size=n_features) * weight_scale
    z = users @ theta
    delta = solve_delta(z, alpha)
    assert abs(_mean_ctr(z, delta) - alpha) < 1e-9


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    a1=st.floats(1e-4, 1 - 1e-4),
    a2=st.floats(1e-4, 1 - 1e-4),
    spread=st.floats(0.1, 20.0),
)
def test_solve_delta_is_monotone_in_alpha(seed: int, a1: float, a2: float, spread: float) -> None:
    z = np.random.default_rng(seed).normal(size=200) * spread
    lo, hi = sorted((a1, a2))
    if hi - lo < 1e-7:  # the solution is only as exact as tol; tiny gaps are not ordered
        return
    assert solve_delta(z, lo) < solve_delta(z, hi)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shift=st.floats(-50, 50), alpha=st.floats(1e-4, 1 - 1e-4))
def test_solve_delta_is_shift_equivariant(seed: int, shift: float, alpha: float) -> None:
    z = np.random.default_rng(seed).normal(size=300)
    assert solve_delta(z + shift, alpha) == pytest.approx(solve_delta(z, alpha) - shift, abs=1e-6)


@pytest.mark.parametrize("alpha", [1e-6, 1e-4, 0.02, 0.5, 0.9, 1 - 1e-6])
def test_all_zero_logits_give_closed_form(alpha: float) -> None:
    assert solve_delta(np.zeros(50), alpha) == pytest.approx(float(logit(alpha)), rel=1e-12)


@pytest.mark.parametrize("alpha", [1e-6, 0.02, 0.5, 1 - 1e-6])
def test_single_user(alpha: float) -> None:
    delta = solve_delta(np.array([2.5]), alpha)
    assert delta == pytest.approx(float(logit(alpha)) - 2.5, rel=1e-12)


@pytest.mark.parametrize("alpha", [1e-6, 1e-3, 0.02, 0.3, 0.5, 0.8, 1 - 1e-6])
@pytest.mark.parametrize("spread", [1.0, 1e2, 1e4])
def test_extreme_alphas_and_huge_logits_converge(alpha: float, spread: float) -> None:
    z = np.random.default_rng(7).normal(size=2000) * spread
    delta = solve_delta(z, alpha)
    assert np.isfinite(delta)
    if alpha < 0.5:  # expit(x) is exact in relative terms for small values
        err = abs(_mean_ctr(z, delta) - alpha)
    else:  # measure 1 - alpha on the mirrored side, where float64 keeps its digits
        err = abs(float(expit(-(z + delta)).mean()) - (1 - alpha))
    assert err < 1e-9
    # "as far as float64 allows": relative error far below the absolute tolerance
    assert err <= 1e-10 * min(alpha, 1 - alpha)


def test_huge_logits_with_mixed_signs() -> None:
    z = np.array([1e4, -1e4, 3.0])
    for alpha in (1e-6, 0.2, 0.5, 0.6, 0.99):
        assert abs(_mean_ctr(z, solve_delta(z, alpha)) - alpha) < 1e-9


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), "x"])
def test_solve_delta_rejects_bad_alpha(alpha: object) -> None:
    with pytest.raises(CalibrationError, match="alpha"):
        solve_delta(np.zeros(3), alpha)  # type: ignore[arg-type]


def test_solve_delta_rejects_empty_and_non_finite_logits() -> None:
    with pytest.raises(CalibrationError, match="empty"):
        solve_delta(np.array([]), 0.1)
    with pytest.raises(CalibrationError, match="1 non-finite"):
        solve_delta(np.array([0.0, np.nan]), 0.1)
    with pytest.raises(CalibrationError, match="2 non-finite"):
        solve_delta(np.array([np.inf, -np.inf, 1.0]), 0.1)
    with pytest.raises(CalibrationError, match="1-D"):
        solve_delta(np.zeros((2, 2)), 0.1)


def test_solve_delta_rejects_bad_tol_and_max_iter() -> None:
    with pytest.raises(CalibrationError, match="'tol'"):
        solve_delta(np.zeros(3), 0.1, tol=0.0)
    with pytest.raises(CalibrationError, match="'max_iter'"):
        solve_delta(np.zeros(3), 0.1, max_iter=0)


def test_solve_delta_reports_unreachable_tolerance() -> None:
    # With logits ~1e9 the float64 spacing of delta alone moves the mean by more than tol.
    z = np.array([1e9, 1e9 + 1e3, 1e9 - 1e3])
    with pytest.raises(CalibrationError, match="Could not solve delta"):
        solve_delta(z, 0.4, tol=1e-12)


# ---------------------------------------------------------------- solve_deltas


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_users=st.integers(1, 300), n_ads=st.integers(1, 12))
def test_solve_deltas_matches_per_column(seed: int, n_users: int, n_ads: int) -> None:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_users, n_ads)) * rng.uniform(0.1, 50.0, size=n_ads)
    alphas = np.exp(rng.uniform(np.log(1e-4), np.log(0.9999), size=n_ads))
    deltas = solve_deltas(z, alphas)
    assert deltas.shape == (n_ads,)
    for j in range(n_ads):
        assert abs(_mean_ctr(z[:, j], deltas[j]) - alphas[j]) < 1e-9
        assert deltas[j] == pytest.approx(solve_delta(z[:, j], alphas[j]), abs=1e-7)


def test_solve_deltas_mixes_easy_and_hard_columns() -> None:
    rng = np.random.default_rng(3)
    z = np.column_stack([np.zeros(100), rng.normal(size=100) * 1e4, rng.normal(size=100)])
    alphas = np.array([0.3, 1e-6, 1 - 1e-6])
    deltas = solve_deltas(z, alphas)
    assert deltas[0] == pytest.approx(float(logit(0.3)))
    for j in range(3):
        assert deltas[j] == pytest.approx(solve_delta(z[:, j], alphas[j]), abs=1e-7)


def test_solve_deltas_errors() -> None:
    with pytest.raises(CalibrationError, match="2-D"):
        solve_deltas(np.zeros(3), np.array([0.1]))
    with pytest.raises(CalibrationError, match=r"shape \(2,\)"):
        solve_deltas(np.zeros((3, 2)), np.array([0.1]))
    with pytest.raises(CalibrationError, match=r"alphas\[1\] = 1.0"):
        solve_deltas(np.zeros((3, 2)), np.array([0.1, 1.0]))


# ---------------------------------------------------------------- calibrate


def test_calibrate_unit() -> None:
    rng = np.random.default_rng(0)
    users = rng.normal(size=(500, 8))
    theta = rng.normal(size=8) * 3
    cal = calibrate(theta, users, 0.02)
    assert isinstance(cal, Calibrated)
    assert cal.weights.dtype == np.float64
    assert np.linalg.norm(cal.weights) == pytest.approx(1.0)
    assert cal.norm == pytest.approx(np.linalg.norm(theta))
    assert cal.bias == cal.delta
    assert cal.alpha == 0.02
    achieved = _mean_ctr(users @ cal.weights, cal.bias)
    assert achieved == pytest.approx(cal.achieved_mean, abs=1e-15)
    assert abs(achieved - 0.02) < 1e-9
    with pytest.raises(ValueError):
        cal.weights[0] = 1.0  # read-only: the result is frozen


def test_calibrate_neighbours_scale() -> None:
    rng = np.random.default_rng(1)
    users = rng.normal(size=(300, 4))
    nb = np.array([[2.0, 0, 0, 0], [0, 4.0, 0, 0]])
    cal = calibrate(np.ones(4), users, 0.9, scale="neighbours", neighbour_weights=nb, similarities=[1.0, 1.0])
    assert np.linalg.norm(cal.weights) == pytest.approx(3.0)
    assert abs(_mean_ctr(users @ cal.weights, cal.delta) - 0.9) < 1e-9


def test_calibrate_errors() -> None:
    with pytest.raises(CalibrationError, match=r"shape \[n_users >= 1, 3\]"):
        calibrate(np.ones(3), np.ones((5, 2)), 0.1)
    with pytest.raises(CalibrationError, match="missing user features"):
        calibrate(np.ones(2), np.array([[1.0, np.nan]]), 0.1)
    with pytest.raises(CalibrationError, match="prior"):
        calibrate(np.zeros(2), np.ones((3, 2)), 0.1)
    with pytest.raises(CalibrationError, match="alpha"):
        calibrate(np.ones(2), np.ones((3, 2)), 1.0)


@pytest.mark.parametrize("order", ["C", "F"])
def test_solvers_do_not_modify_inputs(order: Literal["C", "F"]) -> None:
    z = np.asarray(np.random.default_rng(5).normal(size=(50, 3)), order=order)
    before = z.copy()
    solve_deltas(z, np.array([0.9, 0.1, 0.99]))  # alpha > 0.5 mirrors the logits internally
    solve_delta(z[:, 0], 0.9)
    np.testing.assert_array_equal(z, before)


def test_solve_deltas_in_several_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    import llmhyper_feast.calibration.solve as cal

    monkeypatch.setattr(cal, "_BLOCK_ELEMENTS", 64)  # 64 // 20 users -> blocks of 3 ads
    rng = np.random.default_rng(11)
    z = rng.normal(size=(20, 10)) * 4
    alphas = rng.uniform(0.01, 0.99, size=10)
    deltas = solve_deltas(z, alphas)
    for j in range(10):
        assert deltas[j] == pytest.approx(solve_delta(z[:, j], alphas[j]), abs=1e-7)
        assert abs(_mean_ctr(z[:, j], deltas[j]) - alphas[j]) < 1e-9
