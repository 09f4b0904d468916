"""Label-free normalisation and intercept calibration of generated weight vectors.

A generated weight vector theta is first rescaled (to unit norm, or to the typical norm of
the neighbouring warm ads' weights), then an intercept delta is chosen so that the mean
predicted CTR over a sample of users equals a target alpha (the neighbours' average CTR):

    mean_u sigmoid(theta~ . x_u + delta) = alpha
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit, logit

from llmhyper_feast.errors import CalibrationError
from llmhyper_feast.features import LinearModel

__all__ = [
    "Calibrated",
    "calibrate",
    "neighbour_alpha",
    "normalise",
    "solve_delta",
    "solve_deltas",
]

_MIN_NORM = 1e-12
_BLOCK_ELEMENTS = 1 << 17  # 1 MiB of float64 per block of ads in solve_deltas
_EPS = np.finfo(np.float64).eps
# Once the tolerance is met, keep refining until the relative error reaches this level or
# the Newton step is a few ulps of delta: beyond that float64 rounding dominates.
_RTOL = 1e-13


@dataclass(frozen=True, eq=False)
class Calibrated(LinearModel):
    """A normalised, calibrated linear CTR model: p(u) = sigmoid(weights . x_u + bias).

    ``bias`` equals ``delta``; ``norm`` is the L2 norm of the weights before normalisation and
    ``achieved_mean`` the mean predicted CTR over the calibration users.
    """

    alpha: float = 0.0
    delta: float = 0.0
    norm: float = 0.0
    achieved_mean: float = 0.0


def _as_vector(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise CalibrationError(f"{name} must be a non-empty 1-D array. Got shape {arr.shape} instead.")
    return arr


def _check_alpha(alpha: object, name: str = "alpha") -> float:
    try:
        a = float(alpha)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CalibrationError(f"{name} must be a float in (0, 1). Got {alpha!r} instead.") from None
    if not (0.0 < a < 1.0):
        raise CalibrationError(
            f"{name} must be a float in the open interval (0, 1) (a mean CTR). Got {a!r} "
            "instead. Check the neighbours' mean CTRs."
        )
    return a


def _similarity_weights(similarities: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1; negative sims count as 0, all-zero -> uniform."""
    w = np.clip(similarities, 0.0, None)
    total = w.sum()
    if total <= 0.0:
        return np.full(w.shape, 1.0 / w.size)
    return w / total


def normalise(
    theta: ArrayLike,
    *,
    scale: Literal["unit", "neighbours"] = "unit",
    neighbour_weights: ArrayLike | None = None,
    similarities: ArrayLike | None = None,
) -> tuple[np.ndarray, float]:
    """Rescale a weight vector; return (theta_tilde, original L2 norm).

    ``scale="unit"`` gives a unit-norm vector. ``scale="neighbours"`` gives the direction of
    ``theta`` with the similarity-weighted mean L2 norm of ``neighbour_weights`` (shape
    [k, n]); negative similarities count as 0, and all-zero (or absent) similarities give the
    plain mean.
    """
    theta = _as_vector(theta, "theta")
    if not np.all(np.isfinite(theta)):
        raise CalibrationError(
            "theta contains non-finite values (NaN or inf); it cannot be normalised. "
            "Use the prior (e.g. the median warm-ad weights) for this ad instead."
        )
    norm = float(np.linalg.norm(theta))
    if norm < _MIN_NORM:
        raise CalibrationError(
            f"theta has zero or near-zero L2 norm ({norm:.3g} < {_MIN_NORM:g}); it has no "
            "direction to normalise. Use the prior (e.g. the median warm-ad weights) for "
            "this ad instead."
        )
    direction = theta / norm
    if scale == "unit":
        return direction, norm
    if scale != "neighbours":
        raise CalibrationError(
            f"The 'scale' parameter of normalise must be 'unit' or 'neighbours'. Got {scale!r} instead."
        )
    if neighbour_weights is None:
        raise CalibrationError(
            "scale='neighbours' needs neighbour_weights (array [k, n] of the retrieved warm "
            "ads' weights). Got None. Pass them, or use scale='unit'."
        )
    nw = np.asarray(neighbour_weights, dtype=np.float64)
    if nw.ndim != 2 or nw.shape[0] == 0 or nw.shape[1] != theta.size:
        raise CalibrationError(
            f"neighbour_weights must have shape [k >= 1, {theta.size}] (one row per neighbour, "
            f"one column per feature). Got shape {nw.shape} instead."
        )
    if not np.all(np.isfinite(nw)):
        raise CalibrationError("neighbour_weights contains non-finite values (NaN or inf).")
    norms = np.linalg.norm(nw, axis=1)
    if similarities is None:
        w = np.full(norms.shape, 1.0 / norms.size)
    else:
        sims = _as_vector(similarities, "similarities")
        if sims.size != norms.size or not np.all(np.isfinite(sims)):
            raise CalibrationError(
                f"similarities must hold {norms.size} finite values (one per neighbour). "
                f"Got {sims.size} values: {sims.tolist()}."
            )
        w = _similarity_weights(sims)
    target = float(w @ norms)
    if target < _MIN_NORM:
        raise CalibrationError(
            f"The neighbours' weighted mean norm is zero or near zero ({target:.3g}); it cannot "
            "be used as a scale. Use scale='unit' or the prior for this ad instead."
        )
    return direction * target, norm


def neighbour_alpha(
    mean_ctrs: ArrayLike,
    similarities: ArrayLike,
    *,
    weighting: Literal["similarity", "mean"] = "similarity",
) -> float:
    """Target mean CTR from the retrieved warm ads' mean predicted CTRs.

    ``weighting="similarity"`` weights each neighbour by its similarity (negatives count as
    0; all-zero gives the plain mean); ``"mean"`` is the plain mean.
    """
    ctrs = _as_vector(mean_ctrs, "mean_ctrs")
    if not np.all((ctrs > 0.0) & (ctrs < 1.0)):
        raise CalibrationError(f"mean_ctrs must all lie in the open interval (0, 1). Got {ctrs.tolist()}.")
    if weighting == "mean":
        return float(ctrs.mean())
    if weighting != "similarity":
        raise CalibrationError(
            f"The 'weighting' parameter of neighbour_alpha must be 'similarity' or 'mean'. Got {weighting!r} instead."
        )
    sims = _as_vector(similarities, "similarities")
    if sims.size != ctrs.size or not np.all(np.isfinite(sims)):
        raise CalibrationError(
            f"similarities must hold {ctrs.size} finite values (one per mean CTR). "
            f"Got {sims.size} values: {sims.tolist()}."
        )
    # A convex combination of values in (0, 1) stays in (0, 1) up to rounding; clip anyway.
    return float(np.clip(_similarity_weights(sims) @ ctrs, ctrs.min(), ctrs.max()))


def _check_logits(z: np.ndarray) -> None:
    if z.size == 0:
        raise CalibrationError("logits is empty: calibration needs at least one user.")
    if not np.all(np.isfinite(z)):
        bad = int(np.size(z) - np.count_nonzero(np.isfinite(z)))
        raise CalibrationError(
            f"logits contains {bad} non-finite value(s) (NaN or inf). Check the user features "
            "(missing values?) and the weights."
        )


def _sigmoid_inplace(x: np.ndarray) -> np.ndarray:
    """x <- sigmoid(x), in place.

    1 / (1 + exp(-x)) keeps a relative error of a few ulps for every x: exp(-x) only
    overflows (to inf, giving exactly 0) for x < -709, where the true value is below the
    smallest normal float64 anyway. It is several times faster than scipy.special.expit.
    """
    with np.errstate(over="ignore"):
        np.negative(x, out=x)
        np.exp(x, out=x)
    x += 1.0
    return np.reciprocal(x, out=x)


def _solve_rows(
    z: np.ndarray, alphas: np.ndarray, tol: float, max_iter: int, *, owned: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Core solver for each row of z [n_ads, n_users]; returns (deltas, achieved means).

    Rows with alpha > 0.5 are solved as the mirrored problem (-z, 1 - alpha), so that the
    target is always <= 0.5 and tiny values of 1 - alpha keep their relative precision.
    Newton runs on g(d) = log(mean sigmoid(z + d)) - log(alpha), which is nearly linear in d
    when CTRs are small; a per-row bracket [lo, hi] with bisection keeps it safe. ``owned``
    says z may be modified in place.
    """
    m, n = z.shape
    flip = alphas > 0.5
    if flip.any():
        if not owned:
            z = z.copy()
        z[flip] *= -1.0
    a = np.where(flip, 1.0 - alphas, alphas)
    zmax, zmin = z.max(axis=1), z.min(axis=1)
    la = logit(a)
    work = np.empty_like(z)
    # At lo every user's p <= alpha; at hi every p >= alpha. mean(sigmoid) <= mean(exp) gives
    # a second lower bound that is tight when all CTRs are small.
    np.subtract(z, zmax[:, None], out=work)
    log_mean_exp = np.log(np.exp(work, out=work).mean(axis=1)) + zmax
    lo = np.maximum(la - zmax, np.log(a) - log_mean_exp)
    hi = la - zmin
    d = lo.copy()
    achieved = np.full(m, np.nan)
    # All-equal logits (incl. all-zero and a single user) have a closed form.
    const = zmax == zmin
    d[const] = la[const] - zmax[const]
    achieved[const] = expit(zmax[const] + d[const])
    done = const.copy()
    best_d, best_err = d.copy(), np.full(m, np.inf)
    best_err[const] = np.abs(achieved[const] - a[const])
    prev_step = hi - lo
    for _ in range(max_iter):
        idx = np.flatnonzero(~done)
        if idx.size == 0:
            break
        dc = d[idx]
        s = work[: idx.size]
        if idx.size == m:
            np.add(z, dc[:, None], out=s)
        else:
            np.take(z, idx, axis=0, out=s)
            s += dc[:, None]
        _sigmoid_inplace(s)
        mean = s.mean(axis=1)
        # mean(s (1 - s)) without a temporary; only steers Newton, so rounding is harmless.
        deriv = np.maximum(mean - np.einsum("ij,ij->i", s, s) / n, 0.0)
        ac = a[idx]
        err = np.abs(mean - ac)
        better = err < best_err[idx]
        best_d[idx[better]], best_err[idx[better]] = dc[better], err[better]
        achieved[idx[better]] = mean[better]
        below = mean < ac
        lo[idx[below]] = dc[below]
        hi[idx[~below]] = dc[~below]
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.log(mean) - np.log(ac)
            step = -g * mean / deriv
        lo_c, hi_c = lo[idx], hi[idx]
        scale = 4.0 * _EPS * np.maximum(1.0, np.abs(dc))
        conv = (err <= tol) & ((err <= _RTOL * ac) | (np.abs(step) <= scale) | (hi_c - lo_c <= scale))
        newton = dc + step
        ok = np.isfinite(newton) & (newton > lo_c) & (newton < hi_c) & (np.abs(step) <= 0.5 * prev_step[idx])
        nxt = np.where(ok, newton, 0.5 * (lo_c + hi_c))
        prev_step[idx] = np.abs(nxt - dc)
        # A collapsed bracket that still misses the tolerance cannot improve in float64.
        stuck = ~conv & (hi_c - lo_c <= scale)
        d[idx] = np.where(conv | stuck, dc, nxt)
        done[idx[conv | stuck]] = True
    bad = best_err > tol
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise CalibrationError(
            f"Could not solve delta to |mean - alpha| < {tol:g} for {int(bad.sum())} ad(s) "
            f"(first: ad {j}, alpha={float(alphas[j])!r}, best error {best_err[j]:.3g}) within "
            f"{max_iter} iterations. The logits span [{zmin[j]:.10g}, {zmax[j]:.10g}]; logits "
            "this large leave too few float64 digits for delta. Normalise the weights first, or "
            "loosen tol."
        )
    deltas = np.where(flip, -best_d, best_d)
    means = np.where(flip, 1.0 - achieved, achieved)
    return deltas, means


def _check_tol(tol: float, max_iter: int) -> None:
    if not (tol > 0.0 and np.isfinite(tol)):
        raise CalibrationError(f"The 'tol' parameter must be a finite float > 0. Got {tol!r} instead.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise CalibrationError(f"The 'max_iter' parameter must be an int >= 1. Got {max_iter!r} instead.")


def solve_delta(logits: ArrayLike, alpha: float, *, tol: float = 1e-9, max_iter: int = 100) -> float:
    """Intercept shift delta with |mean(sigmoid(logits + delta)) - alpha| < tol."""
    a = _check_alpha(alpha)
    _check_tol(tol, max_iter)
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 1:
        raise CalibrationError(f"logits must be a 1-D array (one per user). Got shape {z.shape} instead.")
    _check_logits(z)
    zc = np.ascontiguousarray(z)  # a strided column would slow every pass over the users
    owned = not np.may_share_memory(zc, logits)
    deltas, _ = _solve_rows(zc[None, :], np.array([a]), tol, max_iter, owned=owned)
    return float(deltas[0])


def solve_deltas(logits_matrix: ArrayLike, alphas: ArrayLike, *, tol: float = 1e-9, max_iter: int = 100) -> np.ndarray:
    """One delta per ad (column) of ``logits_matrix`` [n_users, n_ads], solved together."""
    _check_tol(tol, max_iter)
    z = np.asarray(logits_matrix, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        raise CalibrationError(f"logits_matrix must be a 2-D array [n_users, n_ads >= 1]. Got shape {z.shape} instead.")
    a = np.asarray(alphas, dtype=np.float64)
    if a.shape != (z.shape[1],):
        raise CalibrationError(
            f"alphas must hold one value per ad: shape ({z.shape[1]},). Got shape {a.shape} instead."
        )
    if not np.all((a > 0.0) & (a < 1.0)):
        j = int(np.flatnonzero(~((a > 0.0) & (a < 1.0)))[0])
        raise CalibrationError(f"Every alpha must lie in the open interval (0, 1). Got alphas[{j}] = {float(a[j])!r}.")
    _check_logits(z)
    deltas = np.empty(z.shape[1])
    # Blocks of ads small enough to stay in cache: every Newton step streams the block
    # several times, so one big block is memory-bound and slower than a loop over ads.
    step = max(1, _BLOCK_ELEMENTS // z.shape[0])
    for j0 in range(0, z.shape[1], step):
        j1 = min(j0 + step, z.shape[1])
        # Rows = ads, so each ad's users are contiguous for reductions and row selection.
        zt = np.ascontiguousarray(z[:, j0:j1].T)
        owned = not np.may_share_memory(zt, z)
        deltas[j0:j1], _ = _solve_rows(zt, a[j0:j1], tol, max_iter, owned=owned)
    return deltas


def calibrate(
    theta: ArrayLike,
    users: ArrayLike,
    alpha: float,
    *,
    scale: Literal["unit", "neighbours"] = "unit",
    neighbour_weights: ArrayLike | None = None,
    similarities: ArrayLike | None = None,
    tol: float = 1e-9,
    max_iter: int = 100,
) -> Calibrated:
    """Normalise ``theta`` and choose the bias so the mean CTR over ``users`` equals alpha.

    ``users`` is the feature matrix [n_users, n] of a user sample, columns in the same order
    as ``theta``.
    """
    a = _check_alpha(alpha)
    _check_tol(tol, max_iter)
    weights, norm = normalise(theta, scale=scale, neighbour_weights=neighbour_weights, similarities=similarities)
    x = np.asarray(users, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != weights.size:
        raise CalibrationError(
            f"users must have shape [n_users >= 1, {weights.size}] (one column per feature of "
            f"theta). Got shape {x.shape} instead."
        )
    if not np.all(np.isfinite(x)):
        cols = [int(j) for j in np.flatnonzero(~np.isfinite(x).all(axis=0))]
        raise CalibrationError(
            f"users contains {int(np.size(x) - np.count_nonzero(np.isfinite(x)))} non-finite value(s) (NaN or inf) "
            f"in feature column(s) {cols[:10]}. Impute missing user features first: "
            "store.feast_adapter.read_user_matrix replaces them with the feature's finite mean."
        )
    deltas, means = _solve_rows((x @ weights)[None, :], np.array([a]), tol, max_iter, owned=True)
    weights.setflags(write=False)
    delta = float(deltas[0])
    return Calibrated(weights=weights, bias=delta, alpha=a, delta=delta, norm=norm, achieved_mean=float(means[0]))
