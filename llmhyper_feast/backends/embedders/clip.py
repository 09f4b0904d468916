"""Image + text embedder on open_clip: the paper's ``e = CLIP(image, text)``.

Each ad's image (local path or ``file://`` URI in ``Ad.image_uri``) and text (title + caption)
are embedded separately, each L2-normalised, then combined as
``image_weight * image + (1 - image_weight) * text`` and renormalised.

An ad whose image is missing or unreadable is embedded from its text only. Those ads are listed,
after every ``embed`` call, in ``ClipEmbedder.last_fallbacks`` as ``ImageFallback(ad_id, reason)``
and logged as a warning. No CLIP weights are downloaded by this module unless ``checkpoint`` is a
pretrained tag open_clip knows and the hub is reachable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydantic import Field

from llmhyper_feast.backends.embedders.base import Embedder, local_path_from_uri
from llmhyper_feast.errors import BackendError, DataError
from llmhyper_feast.features import Ad
from llmhyper_feast.generation.prompts import MAX_IMAGE_BYTES

log = logging.getLogger(__name__)

_INSTALL_HINT = "pip install 'open_clip_torch>=2.24' torch==2.14.1 torchvision==0.29.1"


class ImageFallback(NamedTuple):
    """An ad embedded from text only, and why its image was not used."""

    ad_id: str
    reason: str


class ClipEmbedder(Embedder):
    """Embeds each ad's image and text with an open_clip model and mixes the two."""

    name = "clip"

    class Options(Embedder.Options):
        #: open_clip architecture name (see ``open_clip.list_models()``).
        model_name: str = "ViT-B-32"
        #: Local checkpoint file, or a pretrained tag open_clip knows (needs the hub or its cache).
        checkpoint: str
        #: Share of the image embedding in the mix; 0 uses text only, 1 image only.
        image_weight: float = Field(0.5, ge=0.0, le=1.0)
        #: Optional open_clip model-config JSON to register before loading (custom architectures).
        model_config_path: str | None = None
        device: str = "cpu"

    def __init__(self, options: Embedder.Options | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        #: Ads of the last ``embed`` call embedded from text only, with the reason.
        self.last_fallbacks: list[ImageFallback] = []

    @property
    def embedder_id(self) -> str:
        ckpt = self.options.checkpoint
        path = Path(ckpt).expanduser()
        if path.is_file():
            resolved = path.resolve()
            tag = hashlib.sha256(f"{resolved}:{resolved.stat().st_size}".encode()).hexdigest()[:12]
        else:
            tag = ckpt
        weight = self.options.image_weight
        suffix = "" if weight == 0.5 else f":w{weight:g}"
        return f"clip:{self.options.model_name}:{tag}{suffix}"

    def embed(self, ads: Sequence[Ad], *, batch_size: int = 32, progress: bool = True) -> np.ndarray:
        """Embed ads (see ``Embedder.embed``); text-only fallbacks land in ``last_fallbacks``."""
        self.last_fallbacks = []
        out = super().embed(ads, batch_size=batch_size, progress=progress)
        if self.last_fallbacks:
            log.warning(
                "%d of %d ads were embedded from text only (image missing or unreadable), e.g. %s",
                len(self.last_fallbacks),
                len(out),
                self.last_fallbacks[0],
            )
        return out

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            import open_clip
        except ImportError as exc:
            raise BackendError(f"The 'clip' embedder needs open_clip_torch. Install it with: {_INSTALL_HINT}") from exc
        opts = self.options
        if opts.model_config_path is not None:
            cfg = Path(opts.model_config_path)
            if not cfg.is_file():
                raise BackendError(
                    f"The 'model_config_path' option of the 'clip' embedder must be an existing "
                    f"open_clip model-config JSON file. Got {str(cfg)!r}."
                )
            open_clip.add_model_config(str(cfg))
        if opts.model_name not in open_clip.list_models():
            raise BackendError(
                f"Unknown open_clip model '{opts.model_name}'. Use a name from open_clip.list_models() "
                "or register a config with the 'model_config_path' option."
            )
        ckpt = Path(opts.checkpoint).expanduser()
        pretrained = str(ckpt.resolve()) if ckpt.is_file() else opts.checkpoint
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                opts.model_name, pretrained=pretrained, device=opts.device
            )
            self._tokenizer = open_clip.get_tokenizer(opts.model_name)
        except Exception as exc:  # noqa: BLE001 - any load failure is a backend failure
            raise BackendError(
                f"Could not load open_clip model '{opts.model_name}' with checkpoint {opts.checkpoint!r}: "
                f"{exc}. 'checkpoint' must be a local checkpoint file for this architecture, or a "
                "pretrained tag whose weights are in the local hub cache."
            ) from exc
        model.eval()
        self._model, self._preprocess = model, preprocess

    def _load_image(self, ad: Ad) -> tuple[Any, str | None]:
        """Return (preprocessed tensor, None) or (None, reason the image cannot be used)."""
        if not ad.image_uri:
            return None, "no image_uri"
        from PIL import Image

        try:
            path = local_path_from_uri(ad.image_uri)
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
                return None, f"{path} is not a regular file"
            if info.st_size > MAX_IMAGE_BYTES:
                return None, f"{path} holds {info.st_size} bytes, over the {MAX_IMAGE_BYTES}-byte cap"
            with Image.open(path) as img:
                return self._preprocess(img.convert("RGB")), None
        except (DataError, OSError, ValueError, SyntaxError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _embed_batch(self, ads: list[Ad]) -> np.ndarray:
        import torch

        self._load()
        weight = self.options.image_weight
        device = self.options.device
        with torch.no_grad():
            text = self._model.encode_text(self._tokenizer([ad.text for ad in ads]).to(device)).float()
            text = torch.nn.functional.normalize(text, dim=-1)
            if weight == 0.0:
                return text.cpu().numpy()
            images, rows = [], []
            for i, ad in enumerate(ads):
                tensor, reason = self._load_image(ad)
                if tensor is None:
                    self.last_fallbacks.append(ImageFallback(ad.ad_id, reason or "unknown"))
                else:
                    images.append(tensor)
                    rows.append(i)
            out = text.clone()
            if images:
                image = self._model.encode_image(torch.stack(images).to(device)).float()
                image = torch.nn.functional.normalize(image, dim=-1)
                mixed = weight * image + (1.0 - weight) * text[rows]
                out[rows] = torch.nn.functional.normalize(mixed, dim=-1)
        return out.cpu().numpy()
