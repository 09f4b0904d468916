"""Helpers to copy the project's feature repo into temporary folders for tests."""

from __future__ import annotations

import shutil
from pathlib import Path

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
    """Copy a built repo (data included) and re-apply it so its sources point at the copy."""
    from llmhyper_feast.store import feast_adapter as fa

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "data" / "registry.db").unlink()
    content = dest / "data" / "ad_content.parquet"
    if content.exists():  # image paths are absolute: point them at the copy's own images
        import pandas as pd

        df = pd.read_parquet(content)
        df["image_uri"] = df["image_uri"].str.replace(str(src.resolve()), str(dest.resolve()), regex=False)
        df.to_parquet(content, index=False)
    fa.apply_repo(dest)
    return dest
