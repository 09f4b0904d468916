"""The embedder interface: turns ads into L2-normalised float32 vectors for retrieval."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
from pydantic import BaseModel, ConfigDict

from llmhyper_feast.errors import BackendError, ConfigError, DataError
from llmhyper_feast.features import Ad
from llmhyper_feast.plugins import coerce_options


class Embedder(ABC):
    """Base class of every ad embedder.

    Subclasses implement ``_embed_batch`` (raw vectors for one batch of ads) and may declare a
    nested ``Options`` pydantic model; ``embed`` adds input checks, batching, a progress bar and
    L2 normalisation, so every embedder returns unit-norm float32 rows usable for cosine search.
    """

    #: Registry name of the backend ("minilm", "clip", ...).
    name: ClassVar[str] = "embedder"

    class Options(BaseModel):
        """Backend options; subclasses extend this model."""

        model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        self.options = self._coerce_options(options)

    @classmethod
    def _coerce_options(cls, options: BaseModel | dict[str, Any] | None) -> Any:
        return coerce_options(cls.Options, options, f"embedder '{cls.name}'")

    @property
    def embedder_id(self) -> str:
        """Identifies the model behind the vectors; vectors with different ids are not comparable."""
        payload = json.dumps(self.options.model_dump(mode="json"), sort_keys=True)
        return f"{self.name}:{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    @abstractmethod
    def _embed_batch(self, ads: list[Ad]) -> np.ndarray:
        """Return raw (not necessarily normalised) vectors, one row per ad, shape [len(ads), d]."""

    def embed(self, ads: Sequence[Ad], *, batch_size: int = 32, progress: bool = True) -> np.ndarray:
        """Embed ads into unit-norm float32 vectors of shape [N, d].

        An empty input returns an array of shape (0, 0).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(
                f"The 'batch_size' parameter of {type(self).__name__}.embed must be an int >= 1. "
                f"Got {batch_size!r} instead."
            )
        ads = list(ads)
        for i, ad in enumerate(ads):
            if not isinstance(ad, Ad):
                raise DataError(
                    f"{type(self).__name__}.embed expects a list of Ad objects. "
                    f"Item {i} is a {type(ad).__name__}; wrap it as Ad(ad_id=..., title=...)."
                )
        if not ads:
            return np.zeros((0, 0), dtype=np.float32)

        from tqdm.auto import tqdm

        chunks: list[np.ndarray] = []
        with tqdm(total=len(ads), desc=f"embedding [{self.embedder_id}]", unit="ad", disable=not progress) as bar:
            for start in range(0, len(ads), batch_size):
                batch = ads[start : start + batch_size]
                chunks.append(self._checked(batch, self._embed_batch(batch), chunks))
                bar.update(len(batch))
        return _l2_normalise(np.concatenate(chunks, axis=0), [a.ad_id for a in ads], self.embedder_id)

    def _checked(self, batch: list[Ad], vectors: Any, previous: list[np.ndarray]) -> np.ndarray:
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != len(batch) or arr.shape[1] == 0:
            raise BackendError(
                f"Embedder '{self.embedder_id}' returned an array of shape {arr.shape} for "
                f"{len(batch)} ads; expected shape ({len(batch)}, d) with d >= 1."
            )
        if previous and arr.shape[1] != previous[0].shape[1]:
            raise BackendError(
                f"Embedder '{self.embedder_id}' changed its output size from {previous[0].shape[1]} "
                f"to {arr.shape[1]} between batches."
            )
        if not np.isfinite(arr).all():
            bad = [batch[i].ad_id for i in np.where(~np.isfinite(arr).all(axis=1))[0]]
            raise BackendError(f"Embedder '{self.embedder_id}' returned NaN/inf vectors for ads {bad[:5]}.")
        return arr


def _l2_normalise(arr: np.ndarray, ad_ids: list[str], embedder_id: str) -> np.ndarray:
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    zero = np.where(norms[:, 0] == 0)[0]
    if len(zero):
        raise BackendError(
            f"Embedder '{embedder_id}' returned all-zero vectors for ads "
            f"{[ad_ids[i] for i in zero[:5]]}; a zero vector has no direction to compare. "
            "Check that these ads have non-empty text."
        )
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def local_path_from_uri(uri: str | Path) -> Path:
    """Turn a local path or a ``file://`` URI into a Path; other schemes raise DataError."""
    if isinstance(uri, Path):
        return uri
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DataError(f"Only local file:// URIs are supported. Got host '{parsed.netloc}' in {uri!r}.")
        return Path(url2pathname(unquote(parsed.path)))
    # A one-letter scheme is a Windows drive letter, not a URI scheme.
    if parsed.scheme == "" or len(parsed.scheme) == 1:
        return Path(uri)
    raise DataError(
        f"Unsupported image URI scheme '{parsed.scheme}' in {uri!r}. "
        "Expected a local path or a file:// URI; download the image first."
    )
