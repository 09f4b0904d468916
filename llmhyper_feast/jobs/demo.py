"""Job: build the seeded demo world in a repo, apply it and load the online store."""

from __future__ import annotations

import shutil
from pathlib import Path

from llmhyper_feast.datasets.demo_world import WorldSize, build_world
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.layout import RepoLayout


def make_demo_data(repo: str | Path, size: WorldSize, *, fresh: bool = True, progress: bool = True) -> dict[str, int]:
    """Build the demo world under ``<repo>/data``, apply the repo and load the online store."""
    size.check()
    layout = RepoLayout.of(repo)
    if fresh and layout.data.exists():
        shutil.rmtree(layout.data)
    layout.data.mkdir(parents=True, exist_ok=True)
    stats = build_world(layout.data, size, progress=progress)
    fa.apply_repo(layout.root)
    store = fa.open_store(layout.root)
    user_views = sorted({f.view for f in fa.read_feature_schema(store).features})
    fa.materialize_sources(store, [*user_views, fa.view_for_role(store, fa.AD_CONTENT_ROLE).name])
    return stats
