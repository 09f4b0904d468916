"""The test helper clone_repo makes a copy that is its own repo (the guard agrees; the original is untouched)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration


def test_clone_is_its_own_repo_and_applying_it_spares_the_original(demo_repo: Path, tmp_path: Path) -> None:
    from llmhyper_feast.store import feast_adapter as fa
    from llmhyper_feast.store.guard import check_registry_is_own
    from tests.support.repos import clone_repo

    copy = clone_repo(demo_repo, tmp_path / "copy")
    recorded = fa.recorded_online_tables(copy / "data" / "registry.db")
    assert recorded and all(
        Path(path).resolve() == (copy / "data" / "online_store.db").resolve() for path, _ in recorded
    )
    check_registry_is_own(copy)  # raises for a copied, un-retargeted registry

    store = fa.open_store(copy)
    sources = [fv.batch_source.path for fv in store.list_feature_views()]
    assert sources and all(str(copy.resolve()) in p for p in sources if p.startswith("/"))
    user = pd.read_parquet(demo_repo / "data" / "user_interests.parquet")["user_id"].iloc[0]
    schema = fa.read_feature_schema(store)
    first = schema.features[0]
    refs = [f"{first.view}:{first.name}"]
    assert fa.get_online(store, refs, [{"user_id": user}])[first.name][0] is not None

    fa.apply_repo(copy)  # a real feast apply in the copy: must leave the original's online tables alone
    original = fa.open_store(demo_repo)
    assert fa.get_online(original, refs, [{"user_id": user}])[first.name][0] is not None
