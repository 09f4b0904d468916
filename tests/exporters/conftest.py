"""Fixtures for the exporters tests: seeded model sets and onnxruntime helpers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from exporters import AdModelSet


def make_model_set(
    n_ads: int = 6,
    n_features: int = 5,
    seed: int = 0,
    ad_ids: list[str] | None = None,
) -> AdModelSet:
    """A valid AdModelSet with seeded weights in roughly [-1, 1] and mixed ad sources."""
    rng = np.random.default_rng(seed)
    ids = ad_ids if ad_ids is not None else [f"ad-{i:03d}" for i in range(n_ads)]
    sources = ["generated", "warm", "lr_cold"]
    meta = []
    for i in range(len(ids)):
        entry: dict[str, str | float] = {"source": sources[i % 3], "weights_version": f"v{i}"}
        if entry["source"] == "generated":
            entry.update(
                alpha=float(rng.uniform(0.005, 0.05)),
                delta=float(rng.normal()),
                model="fake-llm",
                prompt_hash=f"{i:08x}",
            )
        meta.append(entry)
    return AdModelSet(
        feature_names=[f"user_feature_{j}" for j in range(n_features)],
        feature_hash="feat-hash-1",
        ad_ids=ids,
        weights=rng.uniform(-1, 1, size=(len(ids), n_features)).astype(np.float32),
        bias=rng.normal(-2, 0.5, size=len(ids)).astype(np.float32),
        ad_meta=meta,
        producer_name="tests",
        producer_version="0.0.1",
    )


@pytest.fixture(scope="session")
def model_set_factory() -> Callable[..., AdModelSet]:
    return make_model_set


@pytest.fixture
def model_set() -> AdModelSet:
    # Ids that need encoding: a slash, a leading dot, non-ASCII and a tilde.
    ids = ["ad-000", "brand/shoes", ".hidden", "café", "a~b", "plain_1"]
    return make_model_set(ad_ids=ids, n_features=5, seed=3)


@pytest.fixture(scope="session")
def ort_session() -> Callable[[Path], object]:
    """Open an onnxruntime CPU session on a model file."""
    import onnxruntime as ort

    def open_session(path: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    return open_session
