"""The input of every export: per-ad linear CTR models sharing one user-feature order."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from exporters.errors import ExportInputError

__all__ = [
    "AD_SOURCES",
    "EXCLUDED_SCORE",
    "AdModelSet",
    "ad_digest",
    "canonical_meta",
    "decode_ad_id",
    "encode_ad_id",
]

AD_SOURCES = frozenset({"warm", "generated", "lr_cold"})
MAX_ENCODED_AD_ID = 200  # leaves room under the usual 255-byte file-name limit
_SAFE_CHARS = re.compile(r"[A-Za-z0-9_.\-]")
EXCLUDED_SCORE = -1.0  # the all-ads model's ``ctr`` of an excluded ad: never a probability, ranks last


@dataclass(frozen=True, eq=False)
class AdModelSet:
    """M per-ad models ``p(u, ad) = sigmoid(weights[ad] . x_u + bias[ad])`` to export.

    ``weights`` is float32 [M, n] with columns in ``feature_names`` order, ``bias`` is
    float32 [M], rows follow ``ad_ids``. ``ad_meta[i]`` describes ad i (``source`` is one
    of warm/generated/lr_cold; alpha, delta, model, prompt_hash, weights_version, ...).
    ``exclusions`` (optional) lists per ad (pairs of feature index, threshold): the all-ads
    model excludes ad i for a user whose feature j is strictly above t for any (j, t) in
    ``exclusions[i]`` (its ``ctr`` becomes :data:`EXCLUDED_SCORE`, its ``excluded`` output true).
    Nothing is checked on construction: call :meth:`validate`.
    """

    feature_names: Sequence[str]
    feature_hash: str
    ad_ids: Sequence[str]
    weights: np.ndarray
    bias: np.ndarray
    ad_meta: Sequence[Mapping[str, str | float]]
    producer_name: str
    producer_version: str
    exclusions: Sequence[Sequence[tuple[int, float]]] | None = None

    @property
    def has_exclusions(self) -> bool:
        """True when at least one ad has an exclusion pair."""
        return self.exclusions is not None and any(len(e) for e in self.exclusions)

    @property
    def n_features(self) -> int:
        """Number of user features (columns of ``weights``)."""
        return int(np.shape(self.weights)[1])

    @property
    def n_ads(self) -> int:
        """Number of ads (rows of ``weights``)."""
        return int(np.shape(self.weights)[0])

    def index_of(self, ad_id: str) -> int:
        """Row of ``ad_id`` in ``weights``; ValueError if absent."""
        try:
            return self._rows[ad_id]
        except KeyError:
            raise ValueError(f"{ad_id!r} is not in ad_ids") from None

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {ad_id: i for i, ad_id in enumerate(self.ad_ids)}

    def validate(self) -> None:
        """Raise :class:`ExportInputError` if any field is malformed or inconsistent."""
        _check_names("feature_names", self.feature_names, "feature")
        _check_names("ad_ids", self.ad_ids, "ad id")
        _check_text("feature_hash", self.feature_hash)
        _check_text("producer_name", self.producer_name)
        _check_text("producer_version", self.producer_version)
        n, m = len(self.feature_names), len(self.ad_ids)
        w, b = self.weights, self.bias
        if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 2:
            raise ExportInputError(
                "The 'weights' field of AdModelSet must be a 2-D float32 numpy array "
                f"[n_ads, n_features]. Got {_describe(w)} instead. Cast it with "
                "np.asarray(weights, dtype=np.float32)."
            )
        if w.shape != (m, n):
            raise ExportInputError(
                "The 'weights' field of AdModelSet must have shape (len(ad_ids), "
                f"len(feature_names)) = ({m}, {n}). Got {w.shape} instead."
            )
        if not isinstance(b, np.ndarray) or b.dtype != np.float32 or b.shape != (m,):
            raise ExportInputError(
                "The 'bias' field of AdModelSet must be a 1-D float32 numpy array of "
                f"shape ({m},), one intercept per ad. Got {_describe(b)} instead."
            )
        self._check_finite()
        if isinstance(self.ad_meta, (str, bytes, Mapping)) or len(self.ad_meta) != m:
            got = len(self.ad_meta) if isinstance(self.ad_meta, Sequence) else self.ad_meta
            raise ExportInputError(
                f"The 'ad_meta' field of AdModelSet must be a list with one dict per ad ({m}). Got {got!r} instead."
            )
        for ad_id, meta in zip(self.ad_ids, self.ad_meta, strict=True):
            _check_meta(ad_id, meta)
        _check_encoded_ids(self.ad_ids)
        self._check_exclusions()

    def _check_exclusions(self) -> None:
        if self.exclusions is None:
            return
        n, m = len(self.feature_names), len(self.ad_ids)
        if isinstance(self.exclusions, (str, bytes, Mapping)) or len(self.exclusions) != m:
            raise ExportInputError(
                f"The 'exclusions' field of AdModelSet must be None or a list with one list of "
                f"(feature index, threshold) pairs per ad ({m}). Got {self.exclusions!r:.100} instead."
            )
        for ad_id, pairs in zip(self.ad_ids, self.exclusions, strict=True):
            for pair in pairs:
                ok = isinstance(pair, (tuple, list)) and len(pair) == 2
                j, t = pair if ok else (None, None)
                ok = ok and isinstance(j, numbers.Integral) and not isinstance(j, bool) and 0 <= int(j) < n
                ok = ok and isinstance(t, numbers.Real) and not isinstance(t, bool) and math.isfinite(float(t))
                if not ok:
                    raise ExportInputError(
                        f"The 'exclusions' of ad {ad_id!r} must be (feature index in [0, {n}), finite "
                        f"threshold) pairs. Got {pair!r:.100} instead."
                    )

    def _check_finite(self) -> None:
        bad = np.argwhere(~np.isfinite(self.weights))
        if bad.size:
            row, col = (int(i) for i in bad[0])
            raise ExportInputError(
                "The 'weights' field of AdModelSet must contain only finite numbers. Got "
                f"{len(bad)} NaN/inf value(s), first {self.weights[row, col]} for ad "
                f"{self.ad_ids[row]!r}, feature {self.feature_names[col]!r} (row {row}, "
                f"column {col}). Regenerate or drop that ad before exporting."
            )
        bad_b = np.flatnonzero(~np.isfinite(self.bias))
        if bad_b.size:
            row = int(bad_b[0])
            raise ExportInputError(
                "The 'bias' field of AdModelSet must contain only finite numbers. Got "
                f"{self.bias[row]} for ad {self.ad_ids[row]!r} (row {row})."
            )


def encode_ad_id(ad_id: str) -> str:
    """Return a file- and URL-safe directory name for ``ad_id``; injective.

    Letters, digits, '_', '-' and a non-leading '.' are kept; every other character
    becomes '~' plus two upper-case hex digits per UTF-8 byte (so '/' -> '~2F').
    """
    out = []
    for i, ch in enumerate(ad_id):
        if _SAFE_CHARS.fullmatch(ch) and not (ch == "." and i == 0):
            out.append(ch)
        else:
            out.extend(f"~{byte:02X}" for byte in ch.encode("utf-8"))
    return "".join(out)


def decode_ad_id(dirname: str) -> str:
    """Invert :func:`encode_ad_id`."""
    raw = bytearray()
    i = 0
    while i < len(dirname):
        if dirname[i] == "~":
            raw.append(int(dirname[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(dirname[i].encode("ascii"))
            i += 1
    return raw.decode("utf-8")


def canonical_meta(meta: Mapping[str, Any]) -> dict[str, str | int | float]:
    """Return ``meta`` with numpy scalars turned into plain int/float, keys sorted."""
    out: dict[str, str | int | float] = {}
    for key in sorted(meta):
        value = meta[key]
        if isinstance(value, str):
            out[key] = value
        elif isinstance(value, numbers.Integral):
            out[key] = int(value)
        else:
            out[key] = float(value)
    return out


def ad_digest(model_set: AdModelSet, index: int) -> str:
    """sha256 of one ad's weights, bias and metadata (tells if its per-ad files are stale)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(model_set.weights[index], dtype="<f4").tobytes())
    h.update(np.asarray(model_set.bias[index], dtype="<f4").tobytes())
    meta = canonical_meta(model_set.ad_meta[index])
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"a {type(value).__name__}"


def _check_text(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ExportInputError(f"The '{field}' field of AdModelSet must be a non-empty str. Got {value!r} instead.")


def _check_names(field: str, names: object, what: str) -> None:
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or not names:
        raise ExportInputError(
            f"The '{field}' field of AdModelSet must be a non-empty list of str. Got {names!r} instead."
        )
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise ExportInputError(
                f"The '{field}' field of AdModelSet must hold non-empty str values. "
                f"Got {name!r} at position {i} instead."
            )
        if name in seen:
            raise ExportInputError(
                f"The '{field}' field of AdModelSet must not repeat a {what}. Got "
                f"duplicate {what} {name!r} (second time at position {i}). Each {what} "
                "must appear once."
            )
        seen.add(name)


def _check_meta(ad_id: str, meta: object) -> None:
    if not isinstance(meta, Mapping):
        raise ExportInputError(
            f"The 'ad_meta' entry of ad {ad_id!r} must be a dict. Got {type(meta).__name__} instead."
        )
    for key, value in meta.items():
        if not isinstance(key, str) or not key:
            raise ExportInputError(f"The 'ad_meta' keys of ad {ad_id!r} must be non-empty str. Got {key!r} instead.")
        is_number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
        if not (isinstance(value, str) or is_number):
            raise ExportInputError(
                f"The 'ad_meta' value {key!r} of ad {ad_id!r} must be a str or a number. "
                f"Got {value!r} ({type(value).__name__}) instead."
            )
        if is_number and not math.isfinite(float(value)):
            raise ExportInputError(
                f"The 'ad_meta' value {key!r} of ad {ad_id!r} must be finite (JSON has no "
                f"NaN/inf). Got {value!r} instead."
            )
    source = meta.get("source")
    if source not in AD_SOURCES:
        raise ExportInputError(
            f"The 'ad_meta' of ad {ad_id!r} must have a 'source' in {sorted(AD_SOURCES)}. Got {source!r} instead."
        )


def _check_encoded_ids(ad_ids: Sequence[str]) -> None:
    # Case-folded so that two ads cannot share a directory on case-insensitive disks.
    folded: dict[str, str] = {}
    for ad_id in ad_ids:
        enc = encode_ad_id(ad_id)
        if len(enc) > MAX_ENCODED_AD_ID:
            raise ExportInputError(
                f"Ad id {ad_id[:40]!r}... is too long for a directory name: it encodes to "
                f"{len(enc)} characters, at most {MAX_ENCODED_AD_ID} are allowed. Use a "
                "shorter id."
            )
        other = folded.setdefault(enc.casefold(), ad_id)
        if other != ad_id:
            raise ExportInputError(
                f"Ad ids {other!r} and {ad_id!r} differ only by letter case, so their model "
                "directories would collide on case-insensitive file systems. Rename one."
            )
