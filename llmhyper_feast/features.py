"""Plain data types shared across the package: user feature definitions and ads."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FeatureDefinition:
    """One user feature as registered in Feast: its name, description and type."""

    name: str
    description: str
    dtype: str = "Float32"
    view: str = ""


@dataclass(frozen=True)
class FeatureSchema:
    """The ordered user features that weight vectors are indexed by."""

    features: tuple[FeatureDefinition, ...]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def __len__(self) -> int:
        return len(self.features)

    @property
    def hash(self) -> str:
        """Stable hash of names, descriptions and order (first 16 hex chars of sha256)."""
        payload = json.dumps(
            [[f.name, f.description] for f in self.features], ensure_ascii=False, separators=(",", ":")
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    @property
    def names_hash(self) -> str:
        """Hash of names and order only: what trained weight vectors depend on (descriptions do not)."""
        return hashlib.sha256(json.dumps(self.names).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Ad:
    """An ad's content: what the prompt and the embedders see."""

    ad_id: str
    title: str
    caption: str = ""
    image_uri: str | None = None

    @property
    def text(self) -> str:
        """Title and caption joined, the text the text embedders use."""
        return f"{self.title}. {self.caption}".strip() if self.caption else self.title


@dataclass(frozen=True)
class WarmAd:
    """A warm (trained) ad: its content and its trained model, weights in schema order."""

    ad: Ad
    weights: np.ndarray = field(repr=False)
    bias: float = 0.0
    mean_ctr: float = 0.0


@dataclass(frozen=True)
class Neighbour:
    """A warm ad retrieved for a cold ad, with its cosine similarity."""

    warm: WarmAd
    similarity: float
