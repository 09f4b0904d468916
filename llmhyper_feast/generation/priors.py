"""Weight priors: sources of per-ad weights that need no LLM, and their registry.

A prior turns a cold ad (its content and the warm neighbours retrieved for it) into a weight
vector. Generation uses it three ways: as the fallback for an LLM answer that fails
validation, as the blend partner of the deployment gate, and alone (``llm.name: none``) as a
baseline source. Built-in:

* ``knn``: the similarity-weighted mean of the neighbours' trained weights;
* ``learned``: a ridge regression from the ad's embedding to the warm ads' trained weights,
  intercept and mean CTR (regularisation chosen by leave-one-out cross-validation), fitted
  once per run on every warm ad;
* ``blend``: ``weight * learned + (1 - weight) * knn``.

A prior may learn from the warm ads (:meth:`WeightPrior.fit`, called where the warm index is
built) and may estimate the ad's mean CTR (:meth:`WeightPrior.estimate_alpha`), which
calibration targets under ``calibration.alpha_source: learned``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pydantic

from llmhyper_feast.errors import DataError
from llmhyper_feast.features import Ad, Neighbour, WarmAd
from llmhyper_feast.plugins import Registry, coerce_options

__all__ = [
    "PRIORS",
    "BlendPrior",
    "KnnPrior",
    "LearnedPrior",
    "RidgeFit",
    "WeightPrior",
    "available_priors",
    "fit_ridge_loo",
    "get_prior",
    "knn_prior",
    "learned_like",
    "prior_alpha",
    "register_prior",
]

RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 3, 13))
MIN_FIT_ADS = 3  # leave-one-out needs a few ads; with fewer the learned prior answers like knn
_CTR_CLIP = 1e-6


def knn_prior(weights: np.ndarray, similarities: np.ndarray) -> np.ndarray:
    """Similarity-weighted mean of ``weights`` ([K, n]) with ``similarities`` ([K]) -> [n].

    Negative similarities count as 0; when all are 0 the plain mean is used; with K=0 the
    result needs ``weights`` shaped (0, n) and is zeros.
    """
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(similarities, dtype=np.float64)
    if w.ndim != 2:
        raise DataError(f"knn_prior expects weights shaped [K, n]. Got shape {w.shape} instead.")
    if s.shape != (w.shape[0],):
        raise DataError(
            f"knn_prior expects one similarity per neighbour: shape ({w.shape[0]},). Got shape {s.shape} instead."
        )
    if not (np.isfinite(w).all() and np.isfinite(s).all()):
        raise DataError("knn_prior expects finite weights and similarities. Got NaN or infinity.")
    if w.shape[0] == 0:
        return np.zeros(w.shape[1], dtype=np.float64)
    s = np.clip(s, 0.0, None)
    total = s.sum()
    if total <= 0.0:
        return w.mean(axis=0)
    return (s[:, None] * w).sum(axis=0) / total


class WeightPrior(ABC):
    """Base class of weight priors. Subclasses set ``name``, ``Options`` and implement ``predict``."""

    name: ClassVar[str]

    class Options(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    def __init__(self, options: pydantic.BaseModel | dict | None = None) -> None:
        self.options = coerce_options(self.Options, options, f"weight prior '{self.name}'")

    @property
    def source_id(self) -> str:
        """Identifies this prior and its options in hashes and logs (``prior:<name>``)."""
        opts = self.options.model_dump()
        return f"prior:{self.name}" + (f"{sorted(opts.items())}" if opts else "")

    @abstractmethod
    def predict(self, ad: Ad, neighbours: Sequence[Neighbour], n_features: int) -> np.ndarray:
        """Weights [n_features] for ``ad`` (zeros when nothing supports a guess)."""

    def fit(self, warm: Mapping[str, WarmAd], ids: Sequence[str], embeddings: np.ndarray, embedder: Any) -> None:
        """Learn from the warm ads before any ``predict``; row i of ``embeddings`` embeds ``warm[ids[i]]``.

        Called once per run where the warm index is built. ``embedder`` embeds other ads the
        same way. The default learns nothing.
        """
        return None

    def estimate_alpha(self, ad: Ad, neighbours: Sequence[Neighbour]) -> float | None:
        """The ad's expected mean CTR in (0, 1), or None when this prior has no estimate."""
        return None


def prior_alpha(prior: WeightPrior, ad: Ad, neighbours: Sequence[Neighbour]) -> float:
    """``prior``'s mean-CTR estimate for ``ad`` as a float, NaN when it has none (the log's ``prior_alpha``)."""
    est = prior.estimate_alpha(ad, neighbours)
    return float("nan") if est is None else float(est)


class KnnPrior(WeightPrior):
    """The similarity-weighted mean of the retrieved warm ads' trained weights."""

    name: ClassVar[str] = "knn"

    def predict(self, ad: Ad, neighbours: Sequence[Neighbour], n_features: int) -> np.ndarray:
        if not neighbours:
            return np.zeros(n_features)
        return knn_prior(
            np.stack([nb.warm.weights for nb in neighbours]), np.array([nb.similarity for nb in neighbours])
        )


@dataclass(frozen=True)
class RidgeFit:
    """A multi-output ridge regression, one penalty per target chosen by leave-one-out error.

    ``predict(x) = x @ coef + intercept``; ``loo[i]`` is what the model fitted without row i
    predicts for row i (with the chosen penalties); ``loo_mse`` [targets] its mean squared error.
    """

    coef: np.ndarray  # [d, targets]
    intercept: np.ndarray  # [targets]
    alphas: np.ndarray  # [targets] chosen penalty per target
    loo: np.ndarray  # [n, targets]
    loo_mse: np.ndarray  # [targets]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions [m, targets] for rows ``x`` [m, d]."""
        return np.asarray(x, np.float64) @ self.coef + self.intercept


def fit_ridge_loo(x: np.ndarray, y: np.ndarray, alphas: Sequence[float] = RIDGE_ALPHAS) -> RidgeFit:
    """Ridge regression of ``y`` [n, t] on ``x`` [n, d] with an unpenalised intercept.

    Each target gets the penalty from ``alphas`` with the smallest exact leave-one-out error
    (the closed form ``e_i / (1 - h_ii)``, as scikit-learn's RidgeCV does); ties go to the
    larger penalty. Needs n >= 3.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < MIN_FIT_ADS:
        raise DataError(
            f"fit_ridge_loo needs x [n, d] and y [n, t] with the same n >= {MIN_FIT_ADS}. "
            f"Got shapes {x.shape} and {y.shape}."
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataError("fit_ridge_loo got NaN or infinite values; check the warm ads' embeddings and weights.")
    grid = np.asarray(sorted({float(a) for a in alphas}), np.float64)
    if grid.size == 0 or not (grid > 0).all():
        raise DataError(f"Ridge penalties must be > 0. Got {list(alphas)}.")
    n = x.shape[0]
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    uty = u.T @ yc  # [r, t]
    s2 = s**2
    best_err = np.full(y.shape[1], np.inf)
    best_idx = np.zeros(y.shape[1], dtype=int)
    loo_by_alpha = []
    for j, a in enumerate(grid):
        shrink = s2 / (s2 + a)  # [r]
        fitted = u @ (shrink[:, None] * uty) + y_mean  # [n, t]
        h = (u**2) @ shrink + 1.0 / n  # leverage, the 1/n from the intercept
        loo = y - (y - fitted) / np.maximum(1.0 - h, 1e-12)[:, None]
        loo_by_alpha.append(loo)
        err = ((loo - y) ** 2).mean(axis=0)
        better = err <= best_err  # ascending grid: ties go to the larger penalty
        best_err[better], best_idx[better] = err[better], j
    chosen = grid[best_idx]
    coef = np.empty((x.shape[1], y.shape[1]))
    for j in np.unique(best_idx):
        cols = best_idx == j
        coef[:, cols] = vt.T @ ((s / (s2 + grid[j]))[:, None] * uty[:, cols])
    loo_chosen = np.stack([loo_by_alpha[best_idx[t]][:, t] for t in range(y.shape[1])], axis=1)
    return RidgeFit(coef, y_mean - x_mean @ coef, chosen, loo_chosen, best_err)


class LearnedPrior(WeightPrior):
    """Weights, intercept and mean CTR regressed on the ad's embedding over every warm ad.

    A warm ad asked for (the backtest treats warm ads as cold) gets its leave-one-out
    prediction, so it never predicts from itself, as retrieval never returns the ad itself.
    With fewer than 3 warm ads nothing is learned and it answers like ``knn``.
    """

    name: ClassVar[str] = "learned"

    class Options(WeightPrior.Options):
        alphas: tuple[pydantic.PositiveFloat, ...] = pydantic.Field(
            RIDGE_ALPHAS, min_length=1, description="ridge penalties tried by leave-one-out cross-validation"
        )

    def __init__(self, options: pydantic.BaseModel | dict | None = None) -> None:
        super().__init__(options)
        self.model: RidgeFit | None = None
        self.n_features: int = 0
        self.fitted = False
        self._embedder: Any = None
        self._loo: dict[str, np.ndarray] = {}
        self._vectors: dict[Ad, np.ndarray] = {}

    @property
    def source_id(self) -> str:
        """``prior:learned``, plus the options that differ from the defaults."""
        opts = self.options.model_dump(exclude_defaults=True)
        return f"prior:{self.name}" + (f"{sorted(opts.items())}" if opts else "")

    def fit(self, warm: Mapping[str, WarmAd], ids: Sequence[str], embeddings: np.ndarray, embedder: Any) -> None:
        emb = np.asarray(embeddings, np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(ids):
            raise DataError(
                f"The learned prior needs one embedding row per warm ad id: {len(ids)} ids, embeddings "
                f"shaped {emb.shape}. Delete data/warm_index to rebuild it."
            )
        rows = [i for i, ad_id in enumerate(ids) if ad_id in warm]
        self._embedder, self.model, self._loo, self.fitted = embedder, None, {}, True
        self.n_features = len(next(iter(warm.values())).weights) if warm else 0
        if len(rows) < MIN_FIT_ADS:
            return
        targets = np.stack([self._target(warm[ids[i]]) for i in rows])
        self.model = fit_ridge_loo(emb[rows], targets, self.options.alphas)
        self._loo = {ids[i]: self.model.loo[k] for k, i in enumerate(rows)}

    def _target(self, w: WarmAd) -> np.ndarray:
        weights = np.asarray(w.weights, np.float64)
        if weights.shape != (self.n_features,):
            raise DataError(
                f"Warm ad {w.ad.ad_id} has {weights.size} weights, others {self.n_features}; "
                "retrain the warm ads (llmhyper train-warm)."
            )
        ctr = min(max(float(w.mean_ctr), _CTR_CLIP), 1.0 - _CTR_CLIP)
        return np.concatenate([weights, [float(w.bias), math.log(ctr / (1.0 - ctr))]])

    def prepare(self, ads: Sequence[Ad]) -> None:
        """Embed the ``ads`` not seen yet in one batch (``predict`` would embed them one by one)."""
        todo = list(dict.fromkeys(a for a in ads if a not in self._vectors and a.ad_id not in self._loo))
        if todo and self.model is not None:
            for ad, vec in zip(todo, self._embedder.embed(todo, progress=False)):
                self._vectors[ad] = np.asarray(vec, np.float64)

    def _outputs(self, ad: Ad) -> np.ndarray | None:
        """[weights..., bias, logit mean CTR] for ``ad``, None when nothing was learned."""
        if not self.fitted:
            raise DataError(
                "The learned prior is used before it was fitted on the warm ads; build the generation "
                "inputs with jobs.build_index (it calls fit) or call prior.fit(...) first."
            )
        if self.model is None:
            return None
        if ad.ad_id in self._loo:
            return self._loo[ad.ad_id]
        self.prepare([ad])
        return self.model.predict(self._vectors[ad][None, :])[0]

    def predict(self, ad: Ad, neighbours: Sequence[Neighbour], n_features: int) -> np.ndarray:
        out = self._outputs(ad)
        if out is None:
            return KnnPrior().predict(ad, neighbours, n_features)
        if n_features != self.n_features:
            raise DataError(
                f"The learned prior was fitted on {self.n_features} features but is asked for {n_features}; "
                "retrain the warm ads for the current feature definitions (llmhyper train-warm)."
            )
        return np.array(out[:n_features])

    def predict_bias(self, ad: Ad) -> float | None:
        """The ad's predicted intercept (on raw features), None when nothing was learned."""
        out = self._outputs(ad)
        return None if out is None else float(out[self.n_features])

    def estimate_alpha(self, ad: Ad, neighbours: Sequence[Neighbour]) -> float | None:
        out = self._outputs(ad)
        if out is None:
            return None
        return float(1.0 / (1.0 + math.exp(-float(np.clip(out[self.n_features + 1], -30.0, 30.0)))))


class BlendPrior(WeightPrior):
    """``weight * learned + (1 - weight) * knn``; the mean-CTR estimate is the learned one."""

    name: ClassVar[str] = "blend"

    class Options(WeightPrior.Options):
        weight: float = pydantic.Field(0.5, ge=0.0, le=1.0, description="share of the learned prior; the rest is knn")

    def __init__(self, options: pydantic.BaseModel | dict | None = None) -> None:
        super().__init__(options)
        self.learned, self.knn = LearnedPrior(), KnnPrior()

    def fit(self, warm: Mapping[str, WarmAd], ids: Sequence[str], embeddings: np.ndarray, embedder: Any) -> None:
        self.learned.fit(warm, ids, embeddings, embedder)

    def prepare(self, ads: Sequence[Ad]) -> None:
        """Embed ``ads`` in one batch for the learned part."""
        self.learned.prepare(ads)

    def predict(self, ad: Ad, neighbours: Sequence[Neighbour], n_features: int) -> np.ndarray:
        lam = self.options.weight
        knn = self.knn.predict(ad, neighbours, n_features)
        return lam * self.learned.predict(ad, neighbours, n_features) + (1.0 - lam) * knn

    def estimate_alpha(self, ad: Ad, neighbours: Sequence[Neighbour]) -> float | None:
        return self.learned.estimate_alpha(ad, neighbours)


def learned_like(
    prior: WeightPrior, warm: Mapping[str, WarmAd], ids: Sequence[str], embeddings: np.ndarray, embedder: Any
) -> LearnedPrior:
    """``prior`` itself when it is a fitted learned prior, else a learned prior fitted on the same warm ads."""
    if isinstance(prior, LearnedPrior) and prior.fitted:
        return prior
    learned = LearnedPrior()
    learned.fit(warm, ids, embeddings, embedder)
    return learned


PRIORS: Registry[WeightPrior] = Registry(
    "weight prior",
    WeightPrior,
    "llmhyper_feast.priors",
    {
        "knn": "llmhyper_feast.generation.priors:KnnPrior",
        "learned": "llmhyper_feast.generation.priors:LearnedPrior",
        "blend": "llmhyper_feast.generation.priors:BlendPrior",
    },
)


def register_prior(cls: type[WeightPrior], *, replace: bool = False) -> type[WeightPrior]:
    """Make ``cls`` available under ``cls.name``."""
    return PRIORS.register(cls, replace=replace)


def available_priors() -> list[str]:
    """Names that :func:`get_prior` resolves without a dotted path."""
    return PRIORS.available()


def get_prior(name: str = "knn", options: Any = None) -> WeightPrior:
    """An instance of the prior registered as ``name``."""
    return PRIORS.get_class(name)(options)
