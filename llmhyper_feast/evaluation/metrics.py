"""Evaluation metrics: ranking (AUC, GAUC, NDCG@k), calibration (ECE), explainability
(HR@k, Coverage@k) and a paired bootstrap over users.

Conventions used throughout:

- Ties in scores are broken deterministically by position: among equal scores the item with
  the lower index ranks first (a stable sort on descending score). AUC/GAUC instead give
  tied pairs half credit (Mann-Whitney with averaged ranks).
- NDCG uses linear gains, DCG@k = sum_i rel_i / log2(i + 1) for ranks i = 1..k, so a click
  count of 2 counts twice as much as 1.
- The "top-k features" of a weight vector are the k largest *signed* weights: the most
  important feature of an ad is one that raises its CTR, so large negative weights do not
  count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata, spearmanr

from llmhyper_feast.errors import DataError

__all__ = [
    "auc",
    "calibration_table",
    "cosine",
    "coverage_at_k",
    "expected_calibration_error",
    "gauc",
    "hit_rate_at_k",
    "ndcg_at_k",
    "ndcg_at_k_per_user",
    "paired_bootstrap_ci",
    "spearman",
    "top_k_features",
]

_BOOT_CHUNK_ELEMENTS = 4_000_000


def _labels(labels: object) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise DataError(f"labels must be a non-empty 1-D array. Got shape {y.shape} instead.")
    yf = y.astype(np.float64)
    if not np.all((yf == 0.0) | (yf == 1.0)):
        raise DataError(f"labels must be binary (0/1 or bool). Got values {np.unique(yf)[:10].tolist()}.")
    return yf


def _finite_vector(x: object, name: str, size: int | None = None) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise DataError(f"{name} must be a non-empty 1-D array. Got shape {v.shape} instead.")
    if size is not None and v.size != size:
        raise DataError(f"{name} must have {size} entries (one per label). Got {v.size} instead.")
    if not np.all(np.isfinite(v)):
        raise DataError(f"{name} contains NaN or inf; every value must be finite.")
    return v


def _check_k(k: object, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"The '{name}' parameter must be an int >= 1. Got {k!r} instead.")
    return int(k)


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC (Mann-Whitney U; tied scores count half). Needs both classes."""
    y = _labels(labels)
    s = _finite_vector(scores, "scores", y.size)
    n_pos = float(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError(
            f"AUC needs both positive and negative labels. Got {int(n_pos)} positives and {int(n_neg)} negatives."
        )
    ranks = rankdata(s, method="average")
    return float((ranks @ y - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(
    user_ids: Sequence[object] | np.ndarray,
    labels: ArrayLike,
    scores: ArrayLike,
) -> float:
    """Group AUC: per-user AUC weighted by the user's impression count.

    Only users with at least one positive and one negative label count (in both the
    numerator and the weights).
    """
    y = _labels(labels)
    s = _finite_vector(scores, "scores", y.size)
    u = np.asarray(user_ids)
    if u.shape != y.shape:
        raise DataError(f"user_ids must have shape {y.shape} (one per label). Got {u.shape} instead.")
    _, codes = np.unique(u, return_inverse=True)
    codes = codes.ravel()
    order = np.lexsort((s, codes))
    c, ss, yy = codes[order], s[order], y[order]
    n = c.size
    pos = np.arange(n, dtype=np.float64)
    new_user = np.r_[True, c[1:] != c[:-1]]
    new_tie = new_user | np.r_[True, ss[1:] != ss[:-1]]
    # Average 0-based position within each (user, score) tie group, then rank within user.
    tie_id = np.cumsum(new_tie) - 1
    tie_first = pos[new_tie]
    tie_last = np.r_[tie_first[1:] - 1, n - 1]
    avg_pos = ((tie_first + tie_last) / 2)[tie_id]
    user_start = pos[new_user][np.cumsum(new_user) - 1]
    rank = avg_pos - user_start + 1
    n_users = int(c.max()) + 1
    count = np.bincount(c, minlength=n_users).astype(np.float64)
    n_pos = np.bincount(c, weights=yy, minlength=n_users)
    n_neg = count - n_pos
    rank_sum = np.bincount(c, weights=rank * yy, minlength=n_users)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        raise DataError(
            f"GAUC needs at least one user with both a positive and a negative label. None of "
            f"the {n_users} users has both."
        )
    per_user = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    return float(per_user @ count[valid] / count[valid].sum())


def _as_matrix(
    x: Sequence[Sequence[float]] | Sequence[np.ndarray] | np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """2-D float matrix from a 2-D array or ragged rows; returns (matrix, row lengths)."""
    if isinstance(x, np.ndarray) and x.ndim == 2:
        m = x.astype(np.float64)
        return m, np.full(m.shape[0], m.shape[1])
    rows = [np.asarray(r, dtype=np.float64) for r in x]
    if not rows or any(r.ndim != 1 for r in rows):
        raise DataError(f"{name} must be a 2-D array or a non-empty list of 1-D arrays.")
    lengths = np.array([r.size for r in rows])
    m = np.zeros((len(rows), int(lengths.max())))
    for i, r in enumerate(rows):
        m[i, : r.size] = r
    return m, lengths


def ndcg_at_k_per_user(
    relevance_per_user: Sequence[Sequence[float]] | Sequence[np.ndarray] | np.ndarray,
    scores_per_user: Sequence[Sequence[float]] | Sequence[np.ndarray] | np.ndarray,
    k: int,
) -> np.ndarray:
    """NDCG@k of each user over their candidate ads; NaN for users with no relevant item.

    Rows may be ragged (a list of 1-D arrays, one per user). Equal scores rank by
    candidate index (lower first). The NaNs keep rows aligned across models for
    :func:`paired_bootstrap_ci`.
    """
    k = _check_k(k)
    rel, lengths = _as_matrix(relevance_per_user, "relevance_per_user")
    sc, s_lengths = _as_matrix(scores_per_user, "scores_per_user")
    if rel.shape[0] != sc.shape[0] or not np.array_equal(lengths, s_lengths):
        raise DataError(
            "relevance_per_user and scores_per_user must have the same users and the same "
            f"number of candidates per user. Got {rel.shape[0]} and {sc.shape[0]} users."
        )
    if not (np.all(np.isfinite(rel)) and np.all(np.isfinite(sc))):
        raise DataError("relevance and scores must be finite (no NaN or inf).")
    if np.any(rel < 0):
        raise DataError("relevance must be >= 0 (clicks or 0/1).")
    # Padding of ragged rows gets score -inf and relevance 0: it sorts last and adds nothing.
    sc[np.arange(sc.shape[1])[None, :] >= lengths[:, None]] = -np.inf
    kk = min(k, sc.shape[1])
    discounts = 1.0 / np.log2(np.arange(2, kk + 2))
    order = np.argsort(-sc, axis=1, kind="stable")[:, :kk]
    dcg = np.take_along_axis(rel, order, axis=1) @ discounts
    idcg = -np.sort(-rel, axis=1)[:, :kk] @ discounts
    out = np.full(rel.shape[0], np.nan)
    has = idcg > 0
    out[has] = dcg[has] / idcg[has]
    return out


def ndcg_at_k(
    relevance_per_user: Sequence[Sequence[float]] | Sequence[np.ndarray] | np.ndarray,
    scores_per_user: Sequence[Sequence[float]] | Sequence[np.ndarray] | np.ndarray,
    k: int,
) -> float:
    """Mean NDCG@k over users that have at least one relevant item (see module notes)."""
    per_user = ndcg_at_k_per_user(relevance_per_user, scores_per_user, k)
    if np.all(np.isnan(per_user)):
        raise DataError("NDCG is undefined: no user has a relevant (clicked) item.")
    return float(np.nanmean(per_user))


def _probs(labels: object, probs: object, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = _labels(labels)
    p = _finite_vector(probs, "probs", y.size)
    if np.any((p < 0) | (p > 1)):
        raise DataError("probs must lie in [0, 1].")
    n_bins = _check_k(n_bins, "n_bins")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are [lo, hi) except the last, which also holds p == 1.
    idx = np.minimum(np.searchsorted(edges, p, side="right") - 1, n_bins - 1)
    return y, p, idx


def calibration_table(labels: ArrayLike, probs: ArrayLike, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per equal-width bin: edges, count, mean predicted probability and observed rate.

    Keys: ``bin_lower``, ``bin_upper``, ``count``, ``mean_predicted``, ``observed_rate``
    (NaN for empty bins); ``pandas.DataFrame(table)`` gives a plottable frame.
    """
    y, p, idx = _probs(labels, probs, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        obs = np.bincount(idx, weights=y, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "count": count,
        "mean_predicted": mean_p,
        "observed_rate": obs,
    }


def expected_calibration_error(labels: ArrayLike, probs: ArrayLike, n_bins: int = 10) -> float:
    """ECE: bin-count-weighted mean |mean predicted - observed rate| over equal-width bins."""
    t = calibration_table(labels, probs, n_bins)
    filled = t["count"] > 0
    gap = np.abs(t["mean_predicted"][filled] - t["observed_rate"][filled])
    return float(gap @ t["count"][filled] / t["count"].sum())


def paired_bootstrap_ci(
    per_user_a: ArrayLike,
    per_user_b: ArrayLike,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean of (a - b) over users and its percentile bootstrap interval (users resampled).

    Users where either value is NaN (e.g. skipped by NDCG) are dropped.
    """
    a = np.asarray(per_user_a, dtype=np.float64)
    b = np.asarray(per_user_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise DataError(
            f"per_user_a and per_user_b must be 1-D and aligned by user. Got shapes {a.shape} and {b.shape}."
        )
    n_boot = _check_k(n_boot, "n_boot")
    if not (0.0 < level < 1.0):
        raise DataError(f"The 'level' parameter must be a float in (0, 1). Got {level!r} instead.")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = (a - b)[keep]
    if d.size < 2 or not np.all(np.isfinite(d)):
        raise DataError(f"The paired bootstrap needs >= 2 users with finite values in both arrays. Got {d.size}.")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // d.size)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = d[rng.integers(0, d.size, size=(stop - start, d.size))].mean(axis=1)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(d.mean()), float(lo), float(hi)


def top_k_features(pred_weights: np.ndarray, k: int = 5) -> np.ndarray:
    """Indices [n_ads, k] of each ad's k largest signed weights (ties: lower index first)."""
    k = _check_k(k)
    w = np.asarray(pred_weights, dtype=np.float64)
    if w.ndim != 2 or w.size == 0:
        raise DataError(f"pred_weights must be a 2-D array [n_ads, n_features]. Got shape {w.shape}.")
    if k > w.shape[1]:
        raise DataError(f"k must be <= the number of features ({w.shape[1]}). Got {k}.")
    if not np.all(np.isfinite(w)):
        raise DataError("pred_weights contains NaN or inf.")
    return np.argsort(-w, axis=1, kind="stable")[:, :k]


def _labelled_sets(true_top_features: Sequence[set[int]], n_ads: int, n_features: int) -> list[set[int]]:
    if len(true_top_features) != n_ads:
        raise DataError(f"true_top_features must hold one set per ad ({n_ads}). Got {len(true_top_features)}.")
    sets = [set(int(i) for i in s) for s in true_top_features]
    for j, s in enumerate(sets):
        if not s or min(s) < 0 or max(s) >= n_features:
            raise DataError(
                f"true_top_features[{j}] must be a non-empty set of feature indices in "
                f"[0, {n_features}). Got {sorted(s)}."
            )
    return sets


def hit_rate_at_k(pred_weights: np.ndarray, true_top_features: Sequence[set[int]], k: int = 5) -> float:
    """HR@k: share of ads with a labelled feature among their k largest signed weights."""
    top = top_k_features(pred_weights, k)
    sets = _labelled_sets(true_top_features, *np.shape(pred_weights))
    return float(np.mean([bool(s.intersection(row.tolist())) for s, row in zip(sets, top)]))


def coverage_at_k(pred_weights: np.ndarray, true_top_features: Sequence[set[int]], k: int = 5) -> float:
    """Coverage@k: mean Jaccard index of each ad's top-k feature set and its labelled set."""
    top = top_k_features(pred_weights, k)
    sets = _labelled_sets(true_top_features, *np.shape(pred_weights))
    jac = [len(s & set(row.tolist())) / len(s | set(row.tolist())) for s, row in zip(sets, top)]
    return float(np.mean(jac))


def cosine(a: ArrayLike, b: ArrayLike) -> float:
    """Cosine similarity of two vectors (undefined, so an error, if either is zero)."""
    x = _finite_vector(a, "a")
    y = _finite_vector(b, "b", x.size)
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        raise DataError("cosine is undefined for a zero vector. Got a vector with norm 0.")
    return float(np.clip(x @ y / (nx * ny), -1.0, 1.0))


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation (average ranks for ties); needs non-constant inputs."""
    x = _finite_vector(a, "a")
    y = _finite_vector(b, "b", x.size)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        raise DataError("spearman needs >= 2 values and non-constant inputs.")
    return float(spearmanr(x, y).statistic)
