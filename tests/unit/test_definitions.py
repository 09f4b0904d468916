"""llmhyper_feast.definitions: the demo repo, built with the helpers, registers what it did by hand; init scaffolds."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "feature_repo" / "feature_definitions.py"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def describe(obj: Any) -> tuple[Any, ...]:
    """What `feast apply` registers of a view, service or entity; source paths reduced to their file name."""
    from feast import Entity, FeatureService, FeatureView

    if isinstance(obj, FeatureView):
        source = obj.batch_source
        return (
            "view",
            obj.name,
            tuple(sorted(obj.entities)),
            tuple((f.name, str(f.dtype), f.description, tuple(sorted(f.tags.items()))) for f in obj.features),
            tuple(sorted(obj.tags.items())),
            obj.description,
            obj.owner,
            obj.ttl,
            obj.online,
            source.name,
            Path(source.path).name,
            source.timestamp_field,
        )
    if isinstance(obj, FeatureService):
        views = tuple((p.name, tuple(f.name for f in p.features)) for p in obj.feature_view_projections)
        return ("service", obj.name, views, obj.description, tuple(sorted(obj.tags.items())))
    assert isinstance(obj, Entity)
    return ("entity", obj.name, obj.join_key, str(obj.value_type), obj.description)


def registered(module: ModuleType) -> dict[str, tuple[Any, ...]]:
    from feast import Entity, FeatureService, FeatureView

    objs = [getattr(module, n) for n in dir(module)]
    return {
        f"{type(o).__name__}:{o.name}": describe(o)
        for o in objs
        if isinstance(o, (Entity, FeatureService, FeatureView))
    }


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    return load(DEMO, "demo_feature_definitions")


def _plain(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_plain(v) for v in x]
    return x if isinstance(x, (str, int, float, bool)) or x is None else str(x)


def test_demo_repo_registers_exactly_the_golden_views(demo: ModuleType) -> None:
    """The demo repo, written with the helpers, registers what the hand-written file registered.

    tests/golden/demo_registry.json was taken from the hand-written definitions (every field's
    name, dtype, description and tags; view tags, ttl, online flag, owner, source file; the
    ranking service's columns). Regenerate it only for an intended change of the demo's views.
    """
    import json

    golden = json.loads((ROOT / "tests" / "golden" / "demo_registry.json").read_text())
    got = {k: _plain(v) for k, v in registered(demo).items()}
    assert sorted(got) == sorted(golden)
    for key in golden:
        assert got[key] == golden[key], key


def test_helpers_are_what_the_demo_repo_registers(demo: ModuleType) -> None:
    """Each helper, called on the demo's entities, builds the view the demo registers."""
    from llmhyper_feast import definitions as d

    warm, generated = d.weight_views(demo.ad, data_dir="/nowhere")
    assert describe(warm)[1:10] == describe(demo.warm_ad_weights)[1:10]
    assert describe(generated)[1:10] == describe(demo.generated_ad_weights)[1:10]
    assert describe(d.impressions_view(demo.user, demo.ad, data_dir="/x"))[1:] == describe(demo.ad_impressions)[1:]
    served = [p for p in demo.ranking.feature_view_projections if p.name == demo.generated_ad_weights.name]
    assert tuple(f.name for f in served[0].features) == d.RANKING_COLUMNS


def test_tagging_existing_views(demo: ModuleType) -> None:
    from feast import FeatureView, Field
    from feast.types import Float32

    from llmhyper_feast import definitions as d

    views = [
        FeatureView(name=n, entities=[demo.user], schema=[Field(name=f"{n}_x", dtype=Float32, description="x")])
        for n in ("b_view", "a_view")
    ]
    d.tag_user_views(*views)
    assert [v.tags for v in views] == [
        {"llmhyper.role": "user_features", "llmhyper.order": "1"},
        {"llmhyper.role": "user_features", "llmhyper.order": "2"},
    ]


def test_init_scaffolds_and_refuses_to_overwrite(tmp_path: Path) -> None:
    import yaml

    from llmhyper_feast.config import resolve_settings
    from llmhyper_feast.errors import InputError
    from llmhyper_feast.jobs.init import init_repo

    repo = tmp_path / "shop-repo"
    report = init_repo(repo)
    assert {p.name for p in report.written} == {
        "feature_store.yaml",
        "feature_definitions.py",
        "llmhyper.yaml",
        ".feastignore",
    }
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert config["project"] == "shop_repo" and config["online_store"]["type"] == "sqlite"
    assert (repo / "data").is_dir() and "data/" in (repo / ".feastignore").read_text()
    assert resolve_settings(repo, environ={}).generation.shots == 5  # valid, defaults
    defs = load(repo / "feature_definitions.py", "scaffolded_definitions")
    assert defs.user_profile.tags["llmhyper.role"] == "user_features"
    assert all(f.description for f in defs.user_profile.features)
    assert defs.ranking.name == "ranking"
    before = (repo / "llmhyper.yaml").read_text()
    (repo / "llmhyper.yaml").write_text("generation: {shots: 2}\n")
    with pytest.raises(InputError, match=r"Refusing to overwrite .*llmhyper\.yaml.*--force"):
        init_repo(repo)
    assert (repo / "llmhyper.yaml").read_text() == "generation: {shots: 2}\n"  # untouched
    init_repo(repo, force=True)
    assert (repo / "llmhyper.yaml").read_text() == before


def test_init_existing_imports_the_repos_entity(tmp_path: Path) -> None:
    from llmhyper_feast.errors import FeatureRepoError
    from llmhyper_feast.jobs.init import init_existing

    repo = tmp_path / "theirs"
    (repo / "features").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text("project: theirs\nprovider: local\n")
    own = (
        "from feast import Entity, FeatureView\n"
        "creative = Entity(name='creative', join_keys=['ad_id'])\n"
        "people = Entity(name='person', join_keys=['user_id'])\n"
        "prefs = FeatureView(name='preferences', entities=[people], schema=[])\n"
    )
    (repo / "features" / "core.py").write_text(own)
    with pytest.raises(FeatureRepoError, match=r"Entity 'ad'.*Known: \['creative', 'person'\].*--ad-entity"):
        init_existing(repo, ad_entity="ad")
    init_existing(repo, ad_entity="creative", user_views=["preferences"])
    text = (repo / "llmhyper_views.py").read_text()
    assert "from features.core import creative, prefs" in text
    assert "weight_views(creative, data_dir=DATA)" in text and "tag_user_views(prefs)" in text
    assert (repo / "features" / "core.py").read_text() == own
    compile(text, "llmhyper_views.py", "exec")
