"""Weight priors: sources of per-ad weights that need no LLM, and their registry.

A prior turns the warm neighbours retrieved for a cold ad into a weight vector. Generation
uses it three ways: as the fallback for an LLM answer that fails validation, as the blend
partner of the deployment gate, and alone (``llm.name: none``) as a baseline source.
Built-in: ``knn``, the similarity-weighted mean of the neighbours' trained weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pydantic

from llmhyper_feast.errors import DataError
from llmhyper_feast.features import Ad, Neighbour
from llmhyper_feast.plugins import Registry, coerce_options

__all__ = ["PRIORS", "KnnPrior", "WeightPrior", "available_priors", "get_prior", "knn_prior", "register_prior"]


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


class KnnPrior(WeightPrior):
    """The similarity-weighted mean of the retrieved warm ads' trained weights."""

    name: ClassVar[str] = "knn"

    def predict(self, ad: Ad, neighbours: Sequence[Neighbour], n_features: int) -> np.ndarray:
        if not neighbours:
            return np.zeros(n_features)
        return knn_prior(
            np.stack([nb.warm.weights for nb in neighbours]), np.array([nb.similarity for nb in neighbours])
        )


PRIORS: Registry[WeightPrior] = Registry(
    "weight prior",
    WeightPrior,
    "llmhyper_feast.priors",
    {
        "knn": "llmhyper_feast.generation.priors:KnnPrior",
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
