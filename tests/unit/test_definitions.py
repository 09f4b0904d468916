"""llmhyper_feast.definitions: the helpers build the same views the demo repo defines by hand; init scaffolds."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "feature_repo" / "feature_definitions.py"
SHORT = ROOT / "docs" / "examples" / "feature_definitions_short.py"


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


def test_field_lists_are_the_demo_repos(demo: ModuleType) -> None:
    """The helper's field lists (the one source of truth) match what the demo repo defines by hand."""
    from llmhyper_feast import definitions as d

    def spec(view: Any) -> list[tuple[str, str, str]]:
        return [(f.name, str(f.dtype), f.description) for f in view.features]

    warm, generated = d.weight_views(demo.ad, data_dir="/nowhere")
    assert spec(warm) == spec(demo.warm_ad_weights)
    assert spec(generated) == spec(demo.generated_ad_weights)
    assert describe(warm)[1:10] == describe(demo.warm_ad_weights)[1:10]
    assert describe(generated)[1:10] == describe(demo.generated_ad_weights)[1:10]
    assert spec(d.user_priors_view(demo.user, data_dir="/nowhere")) == spec(demo.user_llm_priors)
    content = spec(demo.ad_content)
    assert [tuple(s) for s in d.AD_CONTENT_FIELDS] == content[: len(d.AD_CONTENT_FIELDS)]
    if hasattr(demo, "ad_impressions"):
        assert describe(d.impressions_view(demo.user, demo.ad, data_dir="/x"))[1:] == describe(demo.ad_impressions)[1:]
    served = [p for p in demo.ranking.feature_view_projections if p.name == demo.generated_ad_weights.name]
    assert tuple(f.name for f in served[0].features) == d.RANKING_COLUMNS


def test_short_example_defines_the_demo_repo(demo: ModuleType) -> None:
    """docs/examples/feature_definitions_short.py (helpers) defines exactly what feature_repo defines by hand."""
    short = registered(load(SHORT, "short_feature_definitions"))
    full = registered(demo)
    assert sorted(short) == sorted(full)
    for key in full:
        assert short[key] == full[key], key


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
