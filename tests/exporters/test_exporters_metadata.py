"""metadata_props inside the models and the sidecar manifest.json."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from exporters import (
    AdModelSet,
    ManifestError,
    export_models,
    read_manifest,
    read_model_metadata,
)
from exporters.manifest import sha256_bytes
from exporters.model_set import canonical_meta


def test_metadata_props_round_trip(model_set: AdModelSet, tmp_path: Path) -> None:
    manifest = export_models(model_set, tmp_path, top_k=3)
    for name, entry in manifest.models.items():
        model = onnx.load(str(tmp_path / entry.path))
        raw = {p.key: p.value for p in model.metadata_props}
        assert len(raw) == len(model.metadata_props)  # one entry per key (skl2onnx's own props replaced)
        # structured values are plain JSON text, readable without our decoder
        assert json.loads(raw["feature_names"]) == list(model_set.feature_names)
        assert json.loads(raw["ad_ids"]) == list(entry.ad_ids)
        meta = read_model_metadata(tmp_path / entry.path)
        assert meta["model_kind"] == entry.kind
        assert meta["feature_names"] == list(model_set.feature_names)
        assert meta["feature_hash"] == model_set.feature_hash
        assert meta["ad_ids"] == list(entry.ad_ids)
        assert meta["producer"] == "tests" and meta["producer_version"] == "0.0.1"
        rows = [model_set.index_of(a) for a in entry.ad_ids]
        assert meta["ad_meta"] == [canonical_meta(model_set.ad_meta[r]) for r in rows]
        assert ("top_k" in meta) == (name == "all_ads")
    all_meta = read_model_metadata(tmp_path / "all_ads/model.onnx")
    assert all_meta["ad_ids"] == list(model_set.ad_ids)
    assert all_meta["top_k"] == 3
    assert all_meta["ad_meta"][0]["source"] == "generated"
    assert isinstance(all_meta["ad_meta"][0]["alpha"], float)


def test_manifest_round_trip_and_contents(model_set: AdModelSet, tmp_path: Path) -> None:
    manifest = export_models(model_set, tmp_path)
    again = read_manifest(tmp_path)
    assert again == manifest
    assert read_manifest(tmp_path / "manifest.json").to_json() == manifest.to_json()
    data = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert data["feature_names"] == list(model_set.feature_names)
    assert data["ad_ids"] == list(model_set.ad_ids)
    assert data["onnx"] == {"ir_version": 7, "opset": {"ai.onnx": 13, "ai.onnx.ml": 1}}
    assert data["producer"] == {"name": "tests", "version": "0.0.1"}
    assert data["ads"]["brand/shoes"]["dir"] == "brand~2Fshoes"
    assert data["ads"]["café"]["meta"] == canonical_meta(model_set.ad_meta[3])
    all_ads = data["models"]["all_ads"]
    assert all_ads["inputs"] == [{"name": "user_features", "dtype": "float32", "shape": ["batch", 5]}]
    assert all_ads["outputs"][0] == {"name": "ctr", "dtype": "float32", "shape": ["batch", 6]}
    on_disk = {
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file() and p.name != "manifest.json"
    }
    assert set(manifest.files) == on_disk
    for rel, entry in manifest.files.items():
        blob = (tmp_path / rel).read_bytes()
        assert entry.sha256 == sha256_bytes(blob) and entry.bytes == len(blob)
    assert set(manifest.written) == on_disk | {"manifest.json"}
    manifest.verify_files(tmp_path)


def test_verify_files_detects_change(model_set: AdModelSet, tmp_path: Path) -> None:
    manifest = export_models(model_set, tmp_path, per_ad=False)
    path = tmp_path / "ads/ad-000/core/model.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match=r"'ads/ad-000/core/model.onnx'.*sha256"):
        manifest.verify_files(tmp_path)
    path.unlink()
    with pytest.raises(ManifestError, match="is missing"):
        manifest.verify_files(tmp_path)


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="No manifest at .*full export"):
        read_manifest(tmp_path)
    path = tmp_path / "manifest.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(path)
    path.write_text('{"format_version": 99}', encoding="utf-8")
    with pytest.raises(ManifestError, match="format_version 99.*reads version 1"):
        read_manifest(path)
    path.write_text('{"format_version": 1, "layout": "flat"}', encoding="utf-8")
    with pytest.raises(ManifestError, match="malformed: KeyError"):
        read_manifest(path)
