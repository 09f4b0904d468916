"""Write an :class:`AdModelSet` as ONNX files, test vectors and a manifest.

Layouts (``<dir>`` is :func:`encode_ad_id` of the ad id)::

    flat:    all_ads/model.onnx, ads/<dir>/model.onnx, ads/<dir>/core/model.onnx
    triton:  all_ads/{config.pbtxt,1/model.onnx}, ad-<dir>/..., ad_core-<dir>/...

Each model directory also holds ``test_data_set_0/`` and the root holds ``manifest.json``.
Every model is built and checked in memory first; only then are the files written, each
replaced atomically, ``model.onnx`` after its test vectors and config and the manifest last.
So an interrupted export never leaves a partial file, and the previous manifest stays in
place until the new one is complete. A kill during the short write phase can leave files of
the new export next to the old manifest (``Manifest.verify_files`` reports them); the next
export of the directory repairs it: it first removes temporary files left by a killed export
and, once its manifest is written, every file of its layout that the manifest does not list.
Run one export per directory at a time. Same inputs give byte-identical files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from exporters._version import EXPORTER_NAME, EXPORTER_VERSION
from exporters.errors import ExportInputError, ManifestError
from exporters.manifest import (
    MANIFEST_NAME,
    AdEntry,
    FileEntry,
    Manifest,
    ModelEntry,
    read_manifest,
    sha256_bytes,
)
from exporters.model_set import AdModelSet, ad_digest, canonical_meta, encode_ad_id
from exporters.onnx_graphs import (
    IR_VERSION,
    KIND_ALL_ADS,
    KIND_PER_AD,
    KIND_PER_AD_CORE,
    ML_OPSET,
    OPSET,
    build_all_ads_model,
    build_core_ad_model,
    build_skl2onnx_ad_model,
)
from exporters.triton import io_specs, triton_config
from exporters.vectors import random_users, reference_outputs, vector_files

__all__ = ["LAYOUTS", "atomic_write_bytes", "export_models", "model_name"]

LAYOUTS = ("flat", "triton")
logger = logging.getLogger(__name__)
_OWN_FILE_NAMES = {"model.onnx", "config.pbtxt"}
# atomic_write_bytes' temp files: "." + target name + "." + mkstemp's 8 random characters + ".tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def export_models(
    model_set: AdModelSet,
    out_dir: str | Path,
    *,
    per_ad: bool = True,
    core_ops: bool = True,
    all_ads: bool = True,
    top_k: int | None = None,
    layout: str = "flat",
    only_ads: Iterable[str] | None = None,
    test_users: int = 8,
    seed: int = 0,
) -> Manifest:
    """Export ``model_set`` under ``out_dir`` and return the manifest written there.

    ``per_ad``: skl2onnx LinearClassifier per ad; ``core_ops``: per-ad MatMul+Add+Sigmoid
    model; ``all_ads``: one [batch, n] -> [batch, M] model, ranked in-graph when ``top_k``
    is set. ``only_ads`` re-exports the per-ad models of just those ads and keeps the
    other ads' files and manifest entries from the previous export in ``out_dir`` (their
    weights and metadata must be unchanged); the all-ads model is always rebuilt.
    ``test_users`` seeded random users (``seed``) make each model's test vectors.
    """
    import onnx

    model_set.validate()
    _check_args(model_set, per_ad, core_ops, all_ads, top_k, layout, test_users)
    out = Path(out_dir)
    previous = _previous_manifest(out, required=only_ads is not None)
    ad_ids = list(model_set.ad_ids)
    variants = {"all_ads": all_ads, "per_ad": per_ad, "core_ops": core_ops}
    if only_ads is None:
        rebuild = ad_ids
    else:
        rebuild = _check_only_ads(model_set, only_ads, previous, out, layout, variants)
    users = random_users(test_users, model_set.n_features, seed)
    _remove_temp_files(out)

    files: dict[str, FileEntry] = {}
    models: dict[str, ModelEntry] = {}
    written: list[str] = []
    payloads: list[tuple[str, dict[str, bytes]]] = []  # (model path, files): built first, written after

    def emit(name: str, kind: str, model: onnx.ModelProto, rows: slice) -> None:
        onnx.checker.check_model(model, full_check=True)
        expected = reference_outputs(
            kind,
            model_set.weights[rows],
            model_set.bias[rows],
            users,
            top_k=top_k if kind == KIND_ALL_ADS else None,
            exclusions=model_set.exclusions if kind == KIND_ALL_ADS else None,
        )
        model_dir, model_rel = _model_paths(name, layout)
        vectors = vector_files(users, expected)
        payload = {f"{model_dir}/{rel}": data for rel, data in vectors.items()}
        if layout == "triton":
            payload[f"{name}/config.pbtxt"] = triton_config(name, model).encode("utf-8")
        payload[model_rel] = model.SerializeToString(deterministic=True)  # last: see docstring
        payloads.append((model_rel, payload))
        for rel, data in payload.items():
            files[rel] = FileEntry(sha256=sha256_bytes(data), bytes=len(data))
        inputs, outputs = io_specs(model)
        ids = tuple(model_set.ad_ids[rows])
        models[name] = ModelEntry(kind, model_rel, ids, tuple(inputs), tuple(outputs))

    builders: list[tuple[str, Callable[[AdModelSet, str], onnx.ModelProto]]] = []
    if per_ad:
        builders.append((KIND_PER_AD, build_skl2onnx_ad_model))
    if core_ops:
        builders.append((KIND_PER_AD_CORE, build_core_ad_model))
    rebuild_set = set(rebuild)
    for i, ad_id in enumerate(ad_ids):
        if ad_id in rebuild_set:
            for kind, build in builders:
                emit(model_name(kind, ad_id), kind, build(model_set, ad_id), slice(i, i + 1))
        else:
            assert previous is not None  # guaranteed by _check_only_ads
            for name, entry in previous.models_for_ad(ad_id).items():
                models[name] = entry
                for rel in _files_of(previous, entry.path, name, layout):
                    files[rel] = previous.files[rel]
    if all_ads:
        model = build_all_ads_model(model_set, top_k=top_k)
        emit(KIND_ALL_ADS, KIND_ALL_ADS, model, slice(0, model_set.n_ads))

    for model_rel, payload in payloads:
        dirs: set[Path] = set()
        for rel, data in payload.items():
            is_model = rel == model_rel
            if is_model:  # make the vectors' renames durable before the model appears
                for directory in sorted(dirs):
                    _fsync_dir(directory)
            atomic_write_bytes(out / rel, data, sync_dir=is_model)
            dirs.add((out / rel).parent)
            written.append(rel)

    manifest = Manifest(
        exporter={"name": EXPORTER_NAME, "version": EXPORTER_VERSION},
        producer={"name": model_set.producer_name, "version": model_set.producer_version},
        onnx={"ir_version": IR_VERSION, "opset": {"ai.onnx": OPSET, "ai.onnx.ml": ML_OPSET}},
        layout=layout,
        variants=variants,
        top_k=top_k if all_ads else None,
        feature_names=tuple(model_set.feature_names),
        feature_hash=model_set.feature_hash,
        ad_ids=tuple(ad_ids),
        ads={
            a: AdEntry(encode_ad_id(a), ad_digest(model_set, i), canonical_meta(model_set.ad_meta[i]))
            for i, a in enumerate(ad_ids)
        },
        models=dict(sorted(models.items())),
        files=dict(sorted(files.items())),
    )
    atomic_write_bytes(out / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
    _remove_unlisted(out, previous, manifest)
    return dataclasses.replace(manifest, written=(*written, MANIFEST_NAME))


def _previous_manifest(out: Path, *, required: bool) -> Manifest | None:
    if not (out / MANIFEST_NAME).is_file():
        return None
    try:
        return read_manifest(out)
    except ManifestError as exc:
        if required:
            raise
        # A full export rewrites everything; it only loses the clean-up of stale files.
        logger.warning("Ignoring unreadable previous manifest: %s", exc)
        return None


def model_name(kind: str, ad_id: str | None = None) -> str:
    """Model (and Triton directory) name: ``all_ads``, ``ad-<dir>`` or ``ad_core-<dir>``."""
    if kind == KIND_ALL_ADS:
        return "all_ads"
    prefix = {KIND_PER_AD: "ad-", KIND_PER_AD_CORE: "ad_core-"}[kind]
    return prefix + encode_ad_id(str(ad_id))


def atomic_write_bytes(path: str | Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file in the same directory + os.replace.

    ``sync_dir=False`` leaves fsyncing the directory (the rename's durability) to the caller.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; models are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        _fsync_dir(path.parent)


def _model_paths(name: str, layout: str) -> tuple[str, str]:
    """(model directory, model.onnx path), relative to the export root."""
    if layout == "triton":
        return f"{name}/1", f"{name}/1/model.onnx"
    if name == "all_ads":
        base = "all_ads"
    elif name.startswith("ad_core-"):
        base = f"ads/{name.removeprefix('ad_core-')}/core"
    else:
        base = f"ads/{name.removeprefix('ad-')}"
    return base, f"{base}/model.onnx"


def _files_of(manifest: Manifest, model_path: str, name: str, layout: str) -> list[str]:
    model_dir = model_path.rsplit("/", 1)[0]
    config = f"{name}/config.pbtxt" if layout == "triton" else None
    return [
        rel for rel in manifest.files if rel in (model_path, config) or rel.startswith(f"{model_dir}/test_data_set_")
    ]


def _check_args(
    model_set: AdModelSet,
    per_ad: object,
    core_ops: object,
    all_ads: object,
    top_k: int | None,
    layout: str,
    test_users: int,
) -> None:
    flags = {"per_ad": per_ad, "core_ops": core_ops, "all_ads": all_ads}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ExportInputError(f"The '{key}' parameter of export_models must be a bool. Got {value!r} instead.")
    if not any(flags.values()):
        raise ExportInputError(
            "export_models needs at least one of per_ad, core_ops, all_ads set to True. Got all three False."
        )
    if layout not in LAYOUTS:
        raise ExportInputError(
            f"The 'layout' parameter of export_models must be one of {list(LAYOUTS)}. Got {layout!r} instead."
        )
    if top_k is not None:
        if not all_ads:
            raise ExportInputError(
                f"The 'top_k' parameter only applies to the all-ads model. Got top_k={top_k!r} "
                "with all_ads=False; drop top_k or set all_ads=True."
            )
        m = model_set.n_ads
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= m:
            raise ExportInputError(
                f"The 'top_k' parameter of export_models must be None or an int in [1, {m}] "
                f"(the number of ads). Got {top_k!r} instead."
            )
    if isinstance(test_users, bool) or not isinstance(test_users, int) or test_users < 1:
        raise ExportInputError(
            f"The 'test_users' parameter of export_models must be an int >= 1. Got {test_users!r} instead."
        )


def _check_only_ads(
    model_set: AdModelSet,
    only_ads: Iterable[str],
    previous: Manifest | None,
    out: Path,
    layout: str,
    variants: dict[str, bool],
) -> list[str]:
    if isinstance(only_ads, (str, bytes)):
        raise ExportInputError(
            f"The 'only_ads' parameter of export_models must be a set of ad ids, not a str. "
            f"Got {only_ads!r}; pass {{{only_ads!r}}}."
        )
    wanted = set(only_ads)
    unknown = sorted(wanted - set(model_set.ad_ids), key=str)
    if unknown:
        raise ExportInputError(
            f"The 'only_ads' parameter of export_models names ad ids that are not in the "
            f"model set: {unknown[:5]!r}. Pass a subset of model_set.ad_ids."
        )
    if previous is None:
        raise ManifestError(
            f"only_ads needs a previous export in {out}, but it has no {MANIFEST_NAME}. "
            "Run a full export (only_ads=None) first."
        )
    mismatches = {
        "layout": (previous.layout, layout),
        "variants": (dict(previous.variants), variants),
        "feature_names": (list(previous.feature_names), list(model_set.feature_names)),
        "feature_hash": (previous.feature_hash, model_set.feature_hash),
    }
    for key, (old, new) in mismatches.items():
        if old != new:
            raise ManifestError(
                f"only_ads cannot reuse the export in {out}: its {key} is {old!r}, this export "
                f"has {new!r}. Run a full export (only_ads=None)."
            )
    stale = [
        a
        for i, a in enumerate(model_set.ad_ids)
        if a not in wanted and (a not in previous.ads or previous.ads[a].digest != ad_digest(model_set, i))
    ]
    if stale:
        raise ExportInputError(
            f"Ads {stale[:5]!r} are new or changed since the export in {out} but are not in "
            "only_ads, so their per-ad models would be stale. Add them to only_ads."
        )
    kept = [a for a in model_set.ad_ids if a not in wanted]
    keep_files = {
        rel: previous.files[rel]
        for a in kept
        for name, entry in previous.models_for_ad(a).items()
        for rel in _files_of(previous, entry.path, name, layout)
    }
    dataclasses.replace(previous, files=keep_files).verify_files(out)
    return [a for a in model_set.ad_ids if a in wanted]


def _is_own_file(rel: str) -> bool:
    """Whether ``rel`` (relative, '/'-separated) names a kind of file this writer creates."""
    parts = PurePosixPath(rel).parts
    if not parts or ".." in parts or PurePosixPath(rel).is_absolute():
        return False
    return parts[-1] in _OWN_FILE_NAMES or parts[-2:-1] == ("test_data_set_0",)


def _layout_files(out: Path, layout: str) -> list[str]:
    """Files under the model directories ``layout`` writes (all_ads and the per-ad ones)."""
    if layout == "triton":
        tops = [p for p in out.glob("*") if p.name == "all_ads" or p.name.startswith(("ad-", "ad_core-"))]
    else:
        tops = [out / "all_ads", out / "ads"]
    return [p.relative_to(out).as_posix() for top in tops if top.is_dir() for p in top.rglob("*") if p.is_file()]


def _remove_unlisted(out: Path, previous: Manifest | None, current: Manifest) -> None:
    """Delete own files the new manifest does not list: the previous export's and a killed export's."""
    candidates = set(_layout_files(out, current.layout))
    if previous is not None:
        candidates |= set(previous.files)
    root = out.resolve()
    for rel in sorted(candidates - set(current.files)):
        if not _is_own_file(rel):
            continue  # never delete outside the export or anything we did not write
        path = out / rel
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parent = path.parent.resolve()
        while parent != root and root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def _remove_temp_files(out: Path) -> None:
    """Delete the temporary files a killed export left (only names :func:`atomic_write_bytes` makes)."""
    if not out.is_dir():
        return
    for path in out.rglob(".*.tmp"):
        match = _TEMP_NAME.match(path.name)
        target = (path.parent / match["target"]).relative_to(out).as_posix() if match else ""
        if match and path.is_file() and (target == MANIFEST_NAME or _is_own_file(target)):
            logger.info("Removing %s, left by an interrupted export.", path)
            path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable on POSIX; not possible on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
