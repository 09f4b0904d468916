"""The whole flow on real store engines the tests start: the same numbers as the file store.

One small demo world is loaded into a repo per engine combination; apply, train-warm,
materialize (knn prior, no LLM), export, rank and evaluate run through the real jobs on each,
and every number is compared with the file offline + SQLite online reference:

* file offline + SQLite online (the reference, once per module)
* PostgreSQL offline + PostgreSQL online (user features, ad content and impressions in tables)
* file offline + Redis online
* Ray offline + SQLite online

Flow times are printed (``pytest -s``) and collected in ``FLOW_SECONDS``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.services import Postgres, copy_frame_to_postgres, free_port, local_ray, postgres_cluster, redis_server

from llmhyper_feast import jobs
from llmhyper_feast.config import load_settings
from llmhyper_feast.datasets.demo_world import BEHAVIOUR_FEATURES, INTEREST_FEATURES, TRUTH_FILE, WorldSize, build_world
from llmhyper_feast.errors import DataError, FeatureRepoError
from llmhyper_feast.store import feast_adapter as fa

pytestmark = pytest.mark.integration

WORLD = WorldSize(users=600, retired=24, active=6, impressions_per_ad=400, seed=5)
SAMPLE_USERS = 60
TOP_K = 5
N_BOOT = 50
FLOW_SECONDS: dict[str, float] = {}

SQLITE_ONLINE = "online_store:\n  type: sqlite\n  path: data/online_store.db\n"
FILE_OFFLINE = "offline_store:\n  type: file\n"
RAY_OFFLINE = (
    "offline_store:\n  type: ray\n  storage_path: {storage}\n"
    "  ray_conf: {{num_cpus: 1, object_store_memory: 104857600, include_dashboard: false}}\n"
)

DEFINITIONS = '''\
"""Feature definitions of the store-engine test world ({sources} sources)."""

from pathlib import Path

from feast import Entity, Field
from feast.types import Float32
from feast.value_type import ValueType

from llmhyper_feast.definitions import ad_content_view, impressions_view, llmhyper_views, user_features_view

DATA = Path(__file__).resolve().parent / "data"
INTERESTS = {interests!r}
BEHAVIOUR = {behaviour!r}

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A person who sees ads.")
ad = Entity(name="ad", join_keys=["ad_id"], value_type=ValueType.STRING, description="One ad.")


def source(name):
{source_body}


def described(names):
    return [Field(name=n, dtype=Float32, description=f"How much the user engages with {{n}}, 0 to 1.") for n in names]


user_interests = user_features_view(
    "user_interests", user, described(INTERESTS), data_dir=DATA, order=1, source=source("user_interests")
)
user_behaviour = user_features_view(
    "user_behaviour", user, described(BEHAVIOUR), data_dir=DATA, order=2, source=source("user_behaviour")
)
ad_content = ad_content_view(ad, data_dir=DATA, source=source("ad_content"))
ad_impressions = impressions_view(user, ad, data_dir=DATA, source=source("impressions"))
warm_ad_weights, generated_ad_weights, ranking = llmhyper_views(
    ad, data_dir=DATA, user_views=[user_interests, user_behaviour]
)
'''
FILE_SOURCE = (
    "    from feast import FileSource\n\n"
    "    return FileSource(\n"
    '        name=f"{name}_source", path=str(DATA / f"{name}.parquet"), timestamp_field="event_timestamp"\n'
    "    )"
)
POSTGRES_SOURCE = (
    "    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource\n\n"
    '    return PostgreSQLSource(name=f"{name}_source", table=name, timestamp_field="event_timestamp")'
)
SETTINGS = """\
embedder: {name: minilm}
llm: {name: none}
prior: {name: knn}
calibration: {user_sample: 20000}
"""
# the PostgreSQL column types of the world's tables: float4 and float8 user features, smallint clicks
PG_TYPES = {
    "user_interests": {"user_id": "text", **{f: "double precision" for f in INTEREST_FEATURES}},
    "user_behaviour": {"user_id": "text", **{f: "real" for f in BEHAVIOUR_FEATURES}},
    "ad_content": {
        "ad_id": "text",
        "title": "text",
        "caption": "text",
        "image_uri": "text",
        "launch_date": "timestamptz",
        "status": "text",
    },
    "impressions": {"user_id": "text", "ad_id": "text", "clicked": "smallint", "user_split": "text"},
}


@dataclass
class Flow:
    """Every number one run of the flow produced."""

    warm: pd.DataFrame
    generated: pd.DataFrame
    users: list[str]
    scores: np.ndarray
    ad_ids: tuple[str, ...]
    ranks: list[list[str]]
    evaluation: pd.DataFrame
    lookup: str
    seconds: float
    repo: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo world's parquet sources (600 users, 24 retired and 6 active ads), built once."""
    data = tmp_path_factory.mktemp("engines_world")
    build_world(data, WORLD, progress=False)
    return data


def write_repo(
    dest: Path, world: Path, *, offline: str, online: str, postgres: Postgres | None = None, database: str = ""
) -> Path:
    """A repo over ``world``: parquet sources copied in, or tables loaded into ``database`` of ``postgres``."""
    (dest / "data").mkdir(parents=True)
    body = POSTGRES_SOURCE if postgres is not None else FILE_SOURCE
    (dest / "feature_definitions.py").write_text(
        DEFINITIONS.format(
            sources="PostgreSQL" if postgres is not None else "parquet",
            interests=list(INTEREST_FEATURES),
            behaviour=list(BEHAVIOUR_FEATURES),
            source_body=body,
        )
    )
    project = dest.name.replace("-", "_")
    yaml = f"project: {project}\nprovider: local\nregistry: data/registry.db\n{online}{offline}"
    (dest / "feature_store.yaml").write_text(yaml + "entity_key_serialization_version: 3\n")
    (dest / "llmhyper.yaml").write_text(SETTINGS)
    (dest / ".feastignore").write_text("data/\n")
    shutil.copy(world / TRUTH_FILE, dest / "data" / TRUTH_FILE)  # the evaluation's oracle row (not a Feast source)
    for name in PG_TYPES:
        if postgres is None:
            shutil.copy(world / f"{name}.parquet", dest / "data" / f"{name}.parquet")
        else:
            df = pd.read_parquet(world / f"{name}.parquet")
            copy_frame_to_postgres(
                postgres.conninfo(database), name, df, {**PG_TYPES[name], "event_timestamp": "timestamptz"}
            )
    return dest


def run_flow(repo: Path, label: str) -> Flow:
    """apply, load user features and ads online, train-warm, materialize, export, rank, evaluate."""
    from llmhyper_feast.serving.export import export_repo
    from llmhyper_feast.serving.ranker import Ranker

    steps: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[step], clock = now - clock, now

    fa.apply_repo(repo)
    store = fa.open_store(repo)
    user_views = sorted({f.view for f in fa.read_feature_schema(store).features})
    fa.materialize_sources(store, [*user_views, fa.view_for_role(store, fa.AD_CONTENT_ROLE).name])
    lap("apply+load")
    settings = load_settings(repo)
    jobs.train_warm(repo, settings, progress=False)
    lap("train-warm")
    jobs.materialize(repo, settings, progress=False)
    lap("materialize")
    export_repo(repo, repo / "data" / "onnx")
    lap("export")
    ranker = Ranker(repo, repo / "data" / "onnx", reload_interval=None)
    users = [f"u{i:06d}" for i in range(0, WORLD.users, WORLD.users // SAMPLE_USERS)]
    scores = ranker.score_users(users)
    ranks = [[r.ad_id for r in ranker.rank(u, k=TOP_K)] for u in users[:10]]
    lap("rank")
    table = pd.DataFrame(jobs.evaluate(repo, settings, n_boot=N_BOOT, progress=False))
    lap("evaluate")
    seconds = sum(steps.values())
    FLOW_SECONDS[label] = seconds
    detail = ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
    print(f"\n[store engines] {label}: whole flow {seconds:.1f} s ({detail}; lookup={ranker.lookup})")
    store = fa.open_store(repo)
    warm = fa.read_latest(store, fa.view_for_role(store, fa.WARM_ROLE).name)
    generated = fa.read_latest(store, fa.view_for_role(store, fa.GENERATED_ROLE).name)
    return Flow(
        warm.sort_values("ad_id").reset_index(drop=True),
        generated.sort_values("ad_id").reset_index(drop=True),
        users,
        scores,
        ranker.ad_ids,
        ranks,
        table,
        ranker.lookup,
        seconds,
        repo,
    )


@pytest.fixture(scope="module")
def reference(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Flow:
    """The flow on the file offline store and the SQLite online store."""
    repo = write_repo(tmp_path_factory.mktemp("ref") / "ref_repo", world, offline=FILE_OFFLINE, online=SQLITE_ONLINE)
    return run_flow(repo, "file + sqlite (reference)")


def assert_same_numbers(got: Flow, ref: Flow) -> None:
    """Every number of ``got`` equals the reference's (float32 round trips: tight tolerances)."""
    assert len(ref.warm) >= WORLD.retired - 4 and len(ref.generated) == WORLD.active
    for name, a, b in (("warm", got.warm, ref.warm), ("generated", got.generated, ref.generated)):
        assert list(a["ad_id"]) == list(b["ad_id"]), name
        np.testing.assert_allclose(np.stack(a["weights"]), np.stack(b["weights"]), rtol=0, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(a["bias"].astype(float), b["bias"].astype(float), rtol=0, atol=1e-7, err_msg=name)
    for column in ("alpha", "delta", "norm"):
        np.testing.assert_allclose(got.generated[column].astype(float), ref.generated[column].astype(float), atol=1e-7)
    assert list(got.generated["origin"]) == list(ref.generated["origin"])
    assert got.ad_ids == ref.ad_ids
    np.testing.assert_allclose(got.scores, ref.scores, rtol=0, atol=1e-7)
    assert got.ranks == ref.ranks
    a, b = got.evaluation.set_index("model"), ref.evaluation.set_index("model")
    assert list(a.index) == list(b.index)
    # every metric; latency_us times the scoring on this machine, which no store decides
    numeric = [c for c in b.columns if pd.api.types.is_numeric_dtype(b[c]) and c != "latency_us"]
    assert numeric
    np.testing.assert_allclose(a[numeric].to_numpy(float), b[numeric].to_numpy(float), rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with postgres_cluster() as pg:
        yield pg


@pytest.fixture(scope="module")
def pg_flow(world: Path, postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> tuple[Flow, str]:
    """The flow on a repo whose sources are PostgreSQL tables, offline and online store PostgreSQL."""
    database = postgres.create_database("engines_flow")
    repo = write_repo(
        tmp_path_factory.mktemp("pg") / "pg_repo",
        world,
        offline=postgres.yaml_block("offline_store", database),
        online=postgres.yaml_block("online_store", database),
        postgres=postgres,
        database=database,
    )
    return run_flow(repo, "postgres + postgres"), database


def fresh_scores(flow: Flow) -> np.ndarray:
    """The sample users' scores as a new Ranker over ``flow``'s repo and export serves them now."""
    from llmhyper_feast.serving.ranker import Ranker

    return Ranker(flow.repo, flow.repo / "data" / "onnx", reload_interval=None).score_users(flow.users)


@pytest.mark.postgres
def test_postgres_offline_and_online_give_the_same_numbers(reference: Flow, pg_flow: tuple[Flow, str]) -> None:
    flow, _ = pg_flow
    assert flow.lookup == "feast"  # no SQLite file to read directly: the SDK serves the user rows
    assert_same_numbers(flow, reference)


@pytest.mark.postgres
def test_postgres_doctor_repair_and_an_unreachable_online_store(reference: Flow, pg_flow: tuple[Flow, str]) -> None:
    from llmhyper_feast.errors import StoreUnavailableError
    from llmhyper_feast.jobs.doctor import doctor
    from llmhyper_feast.jobs.repair import repair

    flow, _ = pg_flow
    checks = {c.name: c for c in doctor(flow.repo).checks}
    assert not [c.line() for c in checks.values() if c.status == "FAIL"]
    assert checks["online user features"].status == "ok" and checks["online ad content"].status == "ok"
    weights = checks["online weights"]  # warn: the retired ads too sparse to train are served by LR_cold
    assert "cold-current=6" in weights.detail and "online-" not in weights.detail, weights.line()
    # repair re-creates the online tables and reloads every online view; the parquet weights views go
    # through Feast's file store, which the PostgreSQL offline store's materialize could not read
    repair(flow.repo, progress=False)
    np.testing.assert_allclose(fresh_scores(flow), reference.scores, rtol=0, atol=1e-7)

    config = flow.repo / "feature_store.yaml"
    original = config.read_text()
    online = original[original.index("online_store:") : original.index("offline_store:")]
    dead = online.replace(f"port: {online.split('port: ')[1].split()[0]}", f"port: {free_port()}")
    try:
        config.write_text(original.replace(online, dead))
        checks = {c.name: c for c in doctor(flow.repo).checks}
        failed = checks["online user features"]
        assert failed.status == "FAIL" and "PostgreSQL is unreachable" in failed.detail, failed.line()
        assert "feature_store.yaml" in failed.line() and "llmhyper repair" in failed.line()
        with pytest.raises(StoreUnavailableError, match="PostgreSQL is unreachable"):
            fresh_scores(flow)
    finally:
        config.write_text(original)


@pytest.mark.postgres
def test_postgres_table_missing_a_column_is_named(pg_flow: tuple[Flow, str], postgres: Postgres) -> None:
    import psycopg

    flow, database = pg_flow
    store = fa.open_store(flow.repo)
    schema = fa.read_feature_schema(store)
    with psycopg.connect(postgres.conninfo(database), autocommit=True) as conn:
        conn.execute('ALTER TABLE user_behaviour RENAME COLUMN "vegetarian" TO "vegetarian_old"')
        try:
            with pytest.raises(DataError) as caught:
                fa.read_user_matrix(store, schema)
        finally:
            conn.execute('ALTER TABLE user_behaviour RENAME COLUMN "vegetarian_old" TO "vegetarian"')
    message = str(caught.value)
    assert "'user_behaviour'" in message and "['vegetarian']" in message and "postgres offline store" in message
    assert "\n" not in message and "llmhyper apply" in message


@pytest.mark.postgres
def test_postgres_offline_store_refuses_weights_it_cannot_store(pg_flow: tuple[Flow, str]) -> None:
    """Feast's PostgreSQL offline store has no offline_write_batch: a weights view in a table is refused up front."""
    from feast import FeatureView
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

    from llmhyper_feast.definitions import GENERATED_FIELDS, fields
    from llmhyper_feast.store import offline

    flow, _ = pg_flow
    store = fa.open_store(flow.repo)
    assert not offline.can_write(store)
    in_table = FeatureView(
        name="generated_ad_weights",
        entities=[store.get_entity("ad")],
        schema=fields(GENERATED_FIELDS),
        source=PostgreSQLSource(name="weights_table", table="generated_ad_weights", timestamp_field="event_timestamp"),
    )
    with pytest.raises(FeatureRepoError) as caught:
        fa.check_writable(store, in_table)
    message = str(caught.value)
    assert "'postgres' offline store cannot take writes" in message and "offline_write_batch" in message
    assert "FileSource(path='data/generated_ad_weights.parquet'" in message
    fa.check_writable(store, store.get_feature_view("generated_ad_weights"))  # the repo's parquet weights: fine


@pytest.mark.redis
def test_file_offline_redis_online_gives_the_same_numbers(reference: Flow, world: Path, tmp_path: Path) -> None:
    from llmhyper_feast.jobs.doctor import doctor

    with redis_server(tmp_path) as port:
        online = f'online_store:\n  type: redis\n  connection_string: "127.0.0.1:{port}"\n'
        repo = write_repo(tmp_path / "redis_repo", world, offline=FILE_OFFLINE, online=online)
        flow = run_flow(repo, "file + redis")
    assert flow.lookup == "feast"
    assert_same_numbers(flow, reference)
    # the server is gone now: doctor names it and the fix
    failed = {c.name: c for c in doctor(repo).checks}["online user features"]
    assert failed.status == "FAIL" and "Redis is unreachable" in failed.detail, failed.line()


def test_a_copied_sqlite_registry_is_refused_under_a_redis_online_store(reference: Flow, tmp_path: Path) -> None:
    """The registry records the reference's SQLite tables: applying it elsewhere (any online store) drops them."""
    from llmhyper_feast.store import guard

    copy = tmp_path / "copy"
    shutil.copytree(reference.repo, copy, ignore=shutil.ignore_patterns("__pycache__", "onnx", "*.parquet*"))
    text = (
        (copy / "feature_store.yaml")
        .read_text()
        .replace(SQLITE_ONLINE, f'online_store:\n  type: redis\n  connection_string: "127.0.0.1:{free_port()}"\n')
    )
    (copy / "feature_store.yaml").write_text(text)
    with pytest.raises(FeatureRepoError, match="--rebuild-registry") as caught:
        guard.check_registry_is_own(copy)
    assert str(reference.repo / "data" / "online_store.db") in str(caught.value)
    assert (reference.repo / "data" / "online_store.db").exists()


@pytest.mark.ray
@pytest.mark.slow  # starts Ray in the test process on top of the flow
def test_ray_offline_sqlite_online_gives_the_same_numbers(reference: Flow, world: Path, tmp_path: Path) -> None:
    with local_ray():
        offline = RAY_OFFLINE.format(storage=tmp_path / "ray_storage")
        repo = write_repo(tmp_path / "ray_repo", world, offline=offline, online=SQLITE_ONLINE)
        flow = run_flow(repo, "ray + sqlite")
    assert flow.lookup == "sqlite"
    assert_same_numbers(flow, reference)
