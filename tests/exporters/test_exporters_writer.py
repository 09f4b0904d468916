"""export_models: reproducibility, atomic writes under crashes, only-changed re-export."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import exporters.writer as writer
from exporters import (
    AdModelSet,
    ExportInputError,
    ManifestError,
    atomic_write_bytes,
    export_models,
    read_manifest,
)


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def with_ad_weights(ms: AdModelSet, ad_id: str, scale: float) -> AdModelSet:
    weights = ms.weights.copy()
    weights[ms.index_of(ad_id)] *= scale
    return dataclasses.replace(ms, weights=weights)


def assert_every_model_complete(root: Path) -> None:
    import onnxruntime as ort

    models = list(root.rglob("model.onnx"))
    for path in models:
        onnx.checker.check_model(str(path), full_check=True)
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert not [p for p in root.rglob("*.tmp")], "temporary files were left behind"


@pytest.mark.parametrize("layout", ["flat", "triton"])
def test_reexport_is_byte_identical(model_set: AdModelSet, tmp_path: Path, layout: str) -> None:
    export_models(model_set, tmp_path / "a", layout=layout, top_k=3)
    export_models(model_set, tmp_path / "b", layout=layout, top_k=3)
    first = snapshot(tmp_path / "a")
    assert first == snapshot(tmp_path / "b")
    export_models(model_set, tmp_path / "a", layout=layout, top_k=3)  # over itself
    assert snapshot(tmp_path / "a") == first


def test_different_weights_change_bytes(model_set: AdModelSet, tmp_path: Path) -> None:
    export_models(model_set, tmp_path / "a", per_ad=False, core_ops=False)
    export_models(with_ad_weights(model_set, "café", 0.5), tmp_path / "b", per_ad=False, core_ops=False)
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert a["all_ads/model.onnx"] != b["all_ads/model.onnx"]


@pytest.mark.parametrize("fail_after", [0, 1, 5, 13, 30])
def test_crash_in_replace_leaves_only_complete_models(
    model_set: AdModelSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_after: int
) -> None:
    root = tmp_path / "out"
    old = export_models(model_set, root)
    before = snapshot(root)
    new_set = with_ad_weights(with_ad_weights(model_set, "ad-000", -1.0), "plain_1", 2.0)
    export_models(new_set, tmp_path / "reference")
    target = snapshot(tmp_path / "reference")
    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src: str, dst: str) -> None:
        if calls["n"] >= fail_after:
            raise OSError("simulated crash during rename")
        calls["n"] += 1
        real_replace(src, dst)

    monkeypatch.setattr(writer.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated crash"):
        export_models(new_set, root)
    monkeypatch.undo()
    assert_every_model_complete(root)
    after = snapshot(root)
    assert set(after) == set(before)
    # Each file is wholly the old version or wholly the new one.
    assert all(after[rel] in (before[rel], target[rel]) for rel in after)
    assert sum(after[rel] != before[rel] for rel in after) <= fail_after
    if fail_after == 0:
        assert after == before
    assert read_manifest(root) == old  # the manifest is written last
    export_models(new_set, root).verify_files(root)  # a rerun repairs everything
    assert snapshot(root) == target


# File fsyncs in write order: ad 1 skl2onnx vectors 1-3, model 4; ad 1 core vectors 5-6,
# model 7; ad 2 skl2onnx vectors 8-10, model 11. Crashing at a model's own fsync matters most.
@pytest.mark.parametrize("crash_at", [1, 4, 7, 9, 11])
def test_crash_mid_write_leaves_no_partial_file(
    model_set: AdModelSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    import stat

    real_fsync = os.fsync
    calls = {"files": 0}

    def flaky_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            calls["files"] += 1
            if calls["files"] == crash_at:
                os.ftruncate(fd, 10)  # a torn write: the file holds only a prefix
                raise OSError("simulated disk error")
        real_fsync(fd)

    monkeypatch.setattr(writer.os, "fsync", flaky_fsync)
    with pytest.raises(OSError, match="simulated disk error"):
        export_models(model_set, tmp_path)
    monkeypatch.undo()
    complete = len([i for i in (4, 7, 11) if i < crash_at])
    assert len(list(tmp_path.rglob("model.onnx"))) == complete
    assert_every_model_complete(tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def test_atomic_write_keeps_old_content_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    monkeypatch.setattr(writer.os, "replace", lambda *_: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    assert (path.stat().st_mode & 0o777) == 0o644


def test_only_ads_rewrites_just_those_ads(model_set: AdModelSet, tmp_path: Path) -> None:
    export_models(model_set, tmp_path, top_k=2)
    inodes = {rel: (tmp_path / rel).stat().st_ino for rel in snapshot(tmp_path)}
    changed = with_ad_weights(model_set, "brand/shoes", 0.25)
    manifest = export_models(changed, tmp_path, top_k=2, only_ads={"brand/shoes"})
    rewritten = {rel for rel in inodes if (tmp_path / rel).stat().st_ino != inodes[rel]}
    per_ad = {r for r in rewritten if r.startswith("ads/")}
    assert per_ad and all(r.startswith("ads/brand~2Fshoes/") for r in per_ad)
    assert "all_ads/model.onnx" in rewritten and "manifest.json" in rewritten
    assert set(manifest.written) == rewritten
    assert len(manifest.models) == 1 + 2 * model_set.n_ads  # others' entries kept
    manifest.verify_files(tmp_path)
    # The result equals a full export of the new weights, byte for byte.
    export_models(changed, tmp_path / "full", top_k=2)
    incremental = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("full/")}
    assert incremental == snapshot(tmp_path / "full")


def test_only_ads_refuses_stale_or_incompatible(model_set: AdModelSet, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.json.*full export"):
        export_models(model_set, tmp_path, only_ads={"café"})
    export_models(model_set, tmp_path)
    two_changed = with_ad_weights(with_ad_weights(model_set, "café", 2.0), "a~b", 2.0)
    with pytest.raises(ExportInputError, match=r"\['a~b'\] are new or changed.*Add them"):
        export_models(two_changed, tmp_path, only_ads={"café"})
    with pytest.raises(ExportInputError, match=r"not in the model set: \['nope'\]"):
        export_models(model_set, tmp_path, only_ads={"nope"})
    with pytest.raises(ExportInputError, match="not a str"):
        export_models(model_set, tmp_path, only_ads="café")
    with pytest.raises(ManifestError, match="its layout is 'flat'.*'triton'"):
        export_models(model_set, tmp_path, only_ads={"café"}, layout="triton")
    renamed = dataclasses.replace(model_set, feature_hash="other")
    with pytest.raises(ManifestError, match="feature_hash"):
        export_models(renamed, tmp_path, only_ads=set(model_set.ad_ids))
    (tmp_path / "ads/plain_1/model.onnx").write_bytes(b"corrupt")
    with pytest.raises(ManifestError, match="ads/plain_1/model.onnx.*sha256"):
        export_models(model_set, tmp_path, only_ads={"café"})


def test_removed_ads_files_are_deleted(model_set: AdModelSet, tmp_path: Path) -> None:
    export_models(model_set, tmp_path, layout="triton")
    keep = [0, 1, 3]
    smaller = dataclasses.replace(
        model_set,
        ad_ids=[model_set.ad_ids[i] for i in keep],
        weights=model_set.weights[keep].copy(),
        bias=model_set.bias[keep].copy(),
        ad_meta=[model_set.ad_meta[i] for i in keep],
    )
    (tmp_path / "notes.txt").write_text("not ours", encoding="utf-8")
    manifest = export_models(smaller, tmp_path, layout="triton")
    dirs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert dirs == sorted(manifest.models)
    assert (tmp_path / "notes.txt").exists()
    export_models(smaller, tmp_path / "fresh", layout="triton")
    assert {k: v for k, v in snapshot(tmp_path).items() if "/" in k and not k.startswith("fresh/")} == {
        k: v for k, v in snapshot(tmp_path / "fresh").items() if "/" in k
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, r"'top_k'.*\[1, 6\].*Got 0"),
        ({"top_k": 7}, r"'top_k'.*Got 7"),
        ({"top_k": 2, "all_ads": False}, "only applies to the all-ads model"),
        ({"layout": "zoo"}, r"'layout'.*\['flat', 'triton'\].*'zoo'"),
        ({"per_ad": False, "core_ops": False, "all_ads": False}, "at least one"),
        ({"test_users": 0}, r"'test_users'.*>= 1"),
        ({"per_ad": "yes"}, "'per_ad'.*bool"),
    ],
)
def test_bad_arguments(model_set: AdModelSet, tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ExportInputError, match=message):
        export_models(model_set, tmp_path, **kwargs)
    assert not any(tmp_path.iterdir()), "nothing may be written before arguments are checked"


def test_invalid_model_set_writes_nothing(model_set: AdModelSet, tmp_path: Path) -> None:
    weights = model_set.weights.copy()
    weights[0, 0] = np.nan
    with pytest.raises(ExportInputError, match="finite"):
        export_models(dataclasses.replace(model_set, weights=weights), tmp_path)
    assert not any(tmp_path.iterdir())


def test_full_export_repairs_over_corrupt_manifest(
    model_set: AdModelSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "manifest.json").write_text("{broken", encoding="utf-8")
    with caplog.at_level("WARNING", logger="exporters.writer"):
        manifest = export_models(model_set, tmp_path)
    assert "unreadable previous manifest" in caplog.text
    assert read_manifest(tmp_path) == manifest
    (tmp_path / "manifest.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ManifestError, match="not valid JSON"):
        export_models(model_set, tmp_path, only_ads={"café"})
