"""Helpers to copy the project's feature repo into temporary folders for tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def copy_repo(dest: Path, *, policy: bool = False) -> Path:
    """Copy the project's feature repo definitions (not its data) to ``dest``.

    The example content rules (llmhyper_policy.yaml) are left out unless ``policy``: they drop ads
    for some users, which only the content-rules tests expect.
    """
    skip = ["data", "__pycache__"] + ([] if policy else ["llmhyper_policy.yaml"])
    shutil.copytree(ROOT / "feature_repo", dest, ignore=shutil.ignore_patterns(*skip))
    return dest


def clone_repo(src: Path, dest: Path) -> Path:
    """Copy a built repo (data included) so that it is the copy's own: sources, images and registry.

    Instead of a fresh ``feast apply`` (seconds per test on a busy machine), the copied registry is
    retargeted: every string in it that names ``src`` (the sources' absolute paths, the SQLite
    online tables its infra records) is rewritten to name ``dest``. The copy's registry then records
    only the copy's own online store, as a fresh apply would, so applying it later is safe.
    """
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    old, new = str(src.resolve()), str(dest.resolve())
    content = dest / "data" / "ad_content.parquet"
    if content.exists():  # image paths are absolute: point them at the copy's own images
        import pandas as pd

        df = pd.read_parquet(content)
        df["image_uri"] = df["image_uri"].str.replace(old, new, regex=False)
        df.to_parquet(content, index=False)
    registry = dest / "data" / "registry.db"
    if registry.exists():
        retarget_registry(registry, old, new)
    else:
        from llmhyper_feast.store import feast_adapter as fa

        fa.apply_repo(dest)
    return dest


def retarget_registry(path: Path, old: str, new: str) -> int:
    """Rewrite every string field of a file registry that contains ``old``; returns how many changed."""
    from feast.protos.feast.core.Registry_pb2 import Registry

    proto = Registry()
    proto.ParseFromString(path.read_bytes())
    changed = _replace_strings(proto, old, new)
    path.write_bytes(proto.SerializeToString())
    return changed


def _replace_strings(message: Any, old: str, new: str) -> int:
    changed = 0
    for field, value in message.ListFields():
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            items = message_type.fields_by_name["value"]
            for key in list(value):
                if items.message_type is not None:
                    changed += _replace_strings(value[key], old, new)
                elif isinstance(value[key], str) and old in value[key]:
                    value[key] = value[key].replace(old, new)
                    changed += 1
        elif message_type is not None:
            for item in value if field.is_repeated else [value]:
                changed += _replace_strings(item, old, new)
        elif field.is_repeated:
            for i, item in enumerate(value):
                if isinstance(item, str) and old in item:
                    value[i] = item.replace(old, new)
                    changed += 1
        elif isinstance(value, str) and old in value:
            setattr(message, field.name, value.replace(old, new))
            changed += 1
    return changed
