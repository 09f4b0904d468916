"""Plain data types shared across the package: user features, ads and per-ad linear models."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Control characters: line-like ones become a space, the rest (and the bidi overrides, which
# can make text display in another order than it is stored) are dropped.
_AS_SPACE = {*range(0x09, 0x0E), *range(0x1C, 0x20), 0x85, 0x2028, 0x2029}
_CONTROL_TABLE: dict[int, str | None] = {
    c: (" " if c in _AS_SPACE else None)
    for c in (*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def clean_text(text: str) -> str:
    """``text`` without control characters: newlines and tabs become spaces, the others are removed.

    Printable Unicode (accents, CJK, emoji with their joiners) is kept as it is.
    """
    return text.translate(_CONTROL_TABLE)


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


@dataclass(frozen=True, eq=False)
class LinearModel:
    """One ad's CTR model, ``p(u) = sigmoid(weights . x_u + bias)``, weights in schema order.

    Every per-ad model is one of these or a subclass that adds how it was made (trained,
    calibrated, the LR_cold baseline).
    """

    weights: np.ndarray = field(repr=False)
    bias: float = 0.0

    def predict(self, users: np.ndarray) -> np.ndarray:
        """Predicted CTR of each user row of ``users`` [m, n]."""
        z = np.asarray(users, np.float64) @ np.asarray(self.weights, np.float64) + float(self.bias)
        return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True, eq=False)
class WarmAd(LinearModel):
    """A warm ad: its trained model and, keyword-only, its content and mean CTR."""

    ad: Ad = field(default=Ad("", ""), kw_only=True)
    mean_ctr: float = field(default=0.0, kw_only=True)


@dataclass
class AdModels:
    """Many ads' linear models as one table: row i is ``ad_ids[i]``, weights [ads, n] in schema order.

    ``source`` says which model serves each ad (``warm``, ``generated`` or ``lr_cold``);
    ``found[i]`` is False when a lookup had no row for ad i (its row is then NaN).
    """

    ad_ids: list[str]
    weights: np.ndarray
    bias: np.ndarray
    meta: list[dict[str, Any]] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    found: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ad_ids)

    def model(self, i: int) -> LinearModel:
        """The model of row ``i``."""
        return LinearModel(self.weights[i], float(self.bias[i]))


@dataclass(frozen=True)
class Neighbour:
    """A warm ad retrieved for a cold ad, with its cosine similarity."""

    warm: WarmAd
    similarity: float
