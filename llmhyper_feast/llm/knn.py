"""The 'knn' backend: no LLM at all, the similarity-weighted average of the neighbours' weights.

It is the retrieval prior that generation falls back to, and a baseline in its own right.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pydantic

from llmhyper_feast.errors import BackendError
from llmhyper_feast.llm.base import ChatRequest, ChatResult, LLMBackend

__all__ = ["KnnBackend", "knn_prior"]


def knn_prior(weights: np.ndarray, similarities: np.ndarray) -> np.ndarray:
    """Similarity-weighted mean of ``weights`` ([K, n]) with ``similarities`` ([K]) -> [n].

    Negative similarities count as 0; when all are 0 the plain mean is used; with K=0 the
    result needs ``weights`` shaped (0, n) and is zeros.
    """
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(similarities, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"knn_prior expects weights shaped [K, n]. Got shape {w.shape} instead.")
    if s.shape != (w.shape[0],):
        raise ValueError(
            f"knn_prior expects one similarity per neighbour: shape ({w.shape[0]},). Got shape {s.shape} instead."
        )
    if not (np.isfinite(w).all() and np.isfinite(s).all()):
        raise ValueError("knn_prior expects finite weights and similarities. Got NaN or infinity.")
    if w.shape[0] == 0:
        return np.zeros(w.shape[1], dtype=np.float64)
    s = np.clip(s, 0.0, None)
    total = s.sum()
    if total <= 0.0:
        return w.mean(axis=0)
    return (s[:, None] * w).sum(axis=0) / total


class KnnBackend(LLMBackend):
    """Retrieval prior as a backend: generation averages neighbour weights instead of prompting."""

    name: ClassVar[str] = "knn"
    uses_prompts: ClassVar[bool] = False

    class Options(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    @property
    def model_id(self) -> str:
        return "knn-prior"

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        raise BackendError(
            "The 'knn' backend does not answer prompts (uses_prompts is False): it averages the weights of the "
            "retrieved warm ads with knn_prior(weights, similarities). Call knn_prior directly, or choose a "
            "prompting backend such as 'openai' or 'local'."
        )
