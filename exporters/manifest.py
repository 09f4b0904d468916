"""The sidecar ``manifest.json`` describing an export (JS runtimes cannot read metadata_props).

JSON shape (keys sorted, two-space indent, UTF-8, trailing newline)::

    {"format_version": 1, "exporter": {...}, "producer": {"name", "version"},
     "onnx": {"ir_version": 7, "opset": {"ai.onnx": 13, "ai.onnx.ml": 1}},
     "layout": "flat" | "triton", "variants": {"all_ads", "per_ad", "core_ops"}, "top_k",
     "feature_names": [...], "feature_hash": "...", "ad_ids": [... column order ...],
     "ads": {ad_id: {"dir", "digest", "meta"}},
     "models": {name: {"kind", "path", "ad_ids", "inputs", "outputs"}},
     "files": {relative path: {"sha256", "bytes"}}}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.errors import ManifestError

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "AdEntry",
    "FileEntry",
    "Manifest",
    "ModelEntry",
    "read_manifest",
    "sha256_bytes",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class AdEntry:
    """One ad: its directory name, digest of weights+bias+meta, and metadata."""

    dir: str
    digest: str
    meta: Mapping[str, str | int | float]


@dataclass(frozen=True)
class ModelEntry:
    """One exported model. ``path`` is relative to the export root, '/'-separated."""

    kind: str
    path: str
    ad_ids: tuple[str, ...]
    inputs: tuple[Mapping[str, Any], ...]
    outputs: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class FileEntry:
    """A written file's sha256 and size."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """What an export wrote; ``written`` (files written by this call) is not serialised."""

    exporter: Mapping[str, str]
    producer: Mapping[str, str]
    onnx: Mapping[str, Any]
    layout: str
    variants: Mapping[str, bool]
    top_k: int | None
    feature_names: tuple[str, ...]
    feature_hash: str
    ad_ids: tuple[str, ...]
    ads: Mapping[str, AdEntry]
    models: Mapping[str, ModelEntry]
    files: Mapping[str, FileEntry]
    format_version: int = MANIFEST_FORMAT
    written: tuple[str, ...] = field(default=(), compare=False)

    def models_for_ad(self, ad_id: str) -> dict[str, ModelEntry]:
        """Per-ad models of ``ad_id`` keyed by model name."""
        return {name: m for name, m in self.models.items() if m.kind != "all_ads" and m.ad_ids == (ad_id,)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "format_version": self.format_version,
            "exporter": dict(self.exporter),
            "producer": dict(self.producer),
            "onnx": dict(self.onnx),
            "layout": self.layout,
            "variants": dict(self.variants),
            "top_k": self.top_k,
            "feature_names": list(self.feature_names),
            "feature_hash": self.feature_hash,
            "ad_ids": list(self.ad_ids),
            "ads": {a: {"dir": e.dir, "digest": e.digest, "meta": dict(e.meta)} for a, e in self.ads.items()},
            "models": {
                n: {
                    "kind": m.kind,
                    "path": m.path,
                    "ad_ids": list(m.ad_ids),
                    "inputs": [dict(t) for t in m.inputs],
                    "outputs": [dict(t) for t in m.outputs],
                }
                for n, m in self.models.items()
            },
            "files": {p: {"sha256": f.sha256, "bytes": f.bytes} for p, f in self.files.items()},
        }

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys), ending in a newline."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Manifest:
        """Build a Manifest from :meth:`to_dict` output; :class:`ManifestError` if malformed."""
        try:
            version = data["format_version"]
            if version != MANIFEST_FORMAT:
                raise ManifestError(
                    f"Manifest {source} has format_version {version!r}; this exporter reads "
                    f"version {MANIFEST_FORMAT}. Re-export with this version."
                )
            return cls(
                exporter=dict(data["exporter"]),
                producer=dict(data["producer"]),
                onnx=dict(data["onnx"]),
                layout=str(data["layout"]),
                variants={k: bool(v) for k, v in data["variants"].items()},
                top_k=data["top_k"],
                feature_names=tuple(data["feature_names"]),
                feature_hash=str(data["feature_hash"]),
                ad_ids=tuple(data["ad_ids"]),
                ads={
                    a: AdEntry(dir=e["dir"], digest=e["digest"], meta=dict(e["meta"])) for a, e in data["ads"].items()
                },
                models={
                    n: ModelEntry(
                        kind=m["kind"],
                        path=m["path"],
                        ad_ids=tuple(m["ad_ids"]),
                        inputs=tuple(dict(t) for t in m["inputs"]),
                        outputs=tuple(dict(t) for t in m["outputs"]),
                    )
                    for n, m in data["models"].items()
                },
                files={p: FileEntry(sha256=f["sha256"], bytes=int(f["bytes"])) for p, f in data["files"].items()},
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ManifestError(
                f"Manifest {source} is malformed: {type(exc).__name__}: {exc}. Expected the "
                "JSON written by exporters.export_models; re-export to regenerate it."
            ) from exc

    def verify_files(self, root: str | Path) -> None:
        """Raise :class:`ManifestError` if a listed file under ``root`` is missing or changed."""
        root = Path(root)
        for rel, entry in sorted(self.files.items()):
            path = root / rel
            if not path.is_file():
                raise ManifestError(f"File {rel!r} listed in the manifest of {root} is missing. Re-export.")
            digest = sha256_bytes(path.read_bytes())
            if digest != entry.sha256:
                raise ManifestError(
                    f"File {rel!r} under {root} has sha256 {digest}, the manifest expects "
                    f"{entry.sha256}. It was changed after export (or an export was "
                    "interrupted); re-export."
                )


def read_manifest(path: str | Path) -> Manifest:
    """Read ``manifest.json`` (pass the file or the export directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"No manifest at {path}. Expected the {MANIFEST_NAME} written by "
            "exporters.export_models; run a full export first."
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"Manifest {path} is not valid JSON: {exc}. Re-export.") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"Manifest {path} must hold a JSON object. Got {type(data).__name__}. Re-export.")
    return Manifest.from_dict(data, source=str(path))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
