"""Online store integrity: copied registries, repair, unusable stores in ranking/HTTP/CLI, status checks."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from support.repos import clone_repo, copy_repo

from llmhyper_feast import jobs
from llmhyper_feast.config import load_settings
from llmhyper_feast.errors import FeatureRepoError, StoreUnavailableError
from llmhyper_feast.jobs.repair import repair
from llmhyper_feast.serving.ranker import Ranker
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store import online
from llmhyper_feast.store.layout import RepoLayout

pytestmark = pytest.mark.integration

PROJECT = "llmhyper_demo"  # feature_repo/feature_store.yaml


def _tables(repo: Path) -> set[str]:
    """Online tables of ``repo``, read from its SQLite file directly (not through Feast)."""
    conn = sqlite3.connect(repo / "data" / "online_store.db")
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def _rows(repo: Path, table: str) -> int:
    conn = sqlite3.connect(repo / "data" / "online_store.db")
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def _knn(repo: Path):
    return load_settings(repo).with_overrides(**{"llm.name": "none"})


@pytest.fixture(scope="module")
def served(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo repo with generated weights (knn prior) written and exported to data/onnx."""
    from llmhyper_feast.serving.export import export_repo

    repo = clone_repo(demo_repo, tmp_path_factory.mktemp("integrity") / "served")
    jobs.materialize(repo, _knn(repo), progress=False)
    export_repo(repo, RepoLayout.of(repo).onnx, per_ad=False)
    return repo


@pytest.fixture(scope="module")
def no_online(served: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``served`` whose online_store.db was deleted."""
    repo = clone_repo(served, tmp_path_factory.mktemp("integrity") / "no_online")
    (repo / "data" / "online_store.db").unlink()
    return repo


def _lookups(repo: Path) -> dict[str, np.ndarray]:
    """What the online store serves: user features, generated and warm weights of a few entities."""
    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    users, _ = fa.read_user_matrix(store, schema)
    _, ads = fa.read_ads(store)
    cold = list(ads.loc[ads["status"] == "active", "ad_id"])
    warm_view = fa.view_for_role(store, fa.WARM_ROLE).name
    warm = fa.get_online(store, [f"{warm_view}:weights"], [{"ad_id": a} for a in ads["ad_id"]])["weights"]
    gen = online.get_ad_weights(store, cold, schema)
    return {
        "users": online.get_user_features(store, [str(u) for u in users[:50]], schema).values,
        "generated": gen.weights,
        "bias": gen.bias,
        "versions": np.array([m["weights_version"] for m in gen.meta], object),
        "warm": np.array([np.nan if w is None else float(np.sum(w)) for w in warm]),
    }


def test_apply_refuses_a_copied_registry_and_rebuild_registry_leaves_the_original_intact(tmp_path: Path) -> None:
    from llmhyper_feast.cli import cli
    from llmhyper_feast.datasets.demo_world import WorldSize

    orig = copy_repo(tmp_path / "orig")
    jobs.make_demo_data(orig, WorldSize(users=300, retired=4, active=2, impressions_per_ad=100), progress=False)
    before = _tables(orig)
    users_table = f"{PROJECT}_user_interests"
    assert users_table in before and _rows(orig, users_table) > 0

    staging = tmp_path / "staging"
    shutil.copytree(orig, staging)  # the scenario: registry.db copied along with the data
    with pytest.raises(FeatureRepoError) as refused:
        fa.apply_repo(staging)
    message = str(refused.value)
    assert str(orig) in message and f"llmhyper apply --repo {staging} --rebuild-registry" in message
    assert "\n" not in message
    assert _tables(orig) == before and _rows(orig, users_table) > 0

    res = CliRunner().invoke(cli, ["apply", "--repo", str(staging), "--rebuild-registry"])
    assert res.exit_code == 0, res.output
    copied = list((staging / "data").glob("registry.db.copied-*"))
    assert len(copied) == 1 and (staging / "data" / "registry.db").is_file()  # set aside, never deleted
    assert _tables(orig) == before and _rows(orig, users_table) > 0

    fa.apply_repo(staging)  # the fresh registry records only the staging copy's own store
    assert _tables(orig) == before and _rows(orig, users_table) > 0
    store = fa.open_store(staging)
    schema = fa.read_feature_schema(store)
    users, _ = fa.read_user_matrix(store, schema)
    assert online.get_user_features(store, [str(u) for u in users[:5]], schema).found.all()


@pytest.mark.parametrize(
    "damage",
    ["delete", pytest.param("drop_table", marks=pytest.mark.slow), pytest.param("garbage", marks=pytest.mark.slow)],
)
def test_repair_restores_every_lookup(served: Path, tmp_path: Path, damage: str) -> None:
    repo = clone_repo(served, tmp_path / "repo")
    db = repo / "data" / "online_store.db"
    before = _lookups(repo)
    assert not np.isnan(before["generated"]).any()
    ranker = Ranker(repo, RepoLayout.of(repo).onnx, reload_interval=None)
    user = str(fa.read_user_matrix(ranker.store, fa.read_feature_schema(ranker.store))[0][0])
    ranked = ranker.rank(user)  # opens the SQLite connection a running service keeps
    if damage == "delete":
        db.unlink()
    elif damage == "drop_table":
        conn = sqlite3.connect(db)
        conn.execute(f"DROP TABLE {PROJECT}_generated_ad_weights")
        conn.commit()
        conn.close()
    else:
        db.write_bytes(b"this is not a database\n" * 100)
    with pytest.raises(StoreUnavailableError, match=f"llmhyper repair --repo {repo}"):
        _lookups(repo)
    if damage == "delete":
        assert ranker.health()["status"] == "unavailable"

    report = repair(repo, progress=False)
    assert report.rows["generated_ad_weights"] == len(before["generated"])
    assert (report.set_aside is not None) == (damage == "garbage")
    after = _lookups(repo)
    for key, value in before.items():
        if value.dtype == object:
            assert list(after[key]) == list(value), key
        else:
            np.testing.assert_array_equal(after[key], value, err_msg=key)
    if damage == "delete":  # the open connection still reads the deleted file: the ranker must notice
        assert ranker.health()["status"] == "ok"  # probed after the repair: the rebuilt file is picked up
        assert ranker.rank(user) == ranked


def test_ranker_and_http_answer_store_unavailable(no_online: Path) -> None:
    from fastapi.testclient import TestClient

    from llmhyper_feast.serving.http import create_app

    ranker = Ranker(no_online, RepoLayout.of(no_online).onnx, reload_interval=None)
    with pytest.raises(StoreUnavailableError, match=f"llmhyper repair --repo {no_online}"):
        ranker.rank("u000001")
    client = TestClient(create_app(ranker))
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    assert "llmhyper repair" in r.json()["store_error"]
    r = client.post("/rank", json={"user_id": "u000001", "k": 3})
    assert r.status_code == 503
    assert r.json()["error"] == "store_unavailable" and f"llmhyper repair --repo {no_online}" in r.json()["detail"]


def test_cli_rank_prints_one_line_and_exits_4(no_online: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmhyper_feast.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["rank", "--repo", str(no_online), "--user", "u000001"])
    assert exited.value.code == 4
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("Error (unavailable): ") and "llmhyper repair --repo" in err[0]


def test_status_checks_the_online_rows(served: Path, tmp_path: Path) -> None:
    from llmhyper_feast.cli import cli

    repo = clone_repo(served, tmp_path / "repo")
    settings = _knn(repo)
    jobs.materialize(repo, settings, progress=False)  # the clone's image paths differ: its ads are new inputs
    table = jobs.status(repo, settings)
    assert set(table["state"]) == {"warm", "cold-current"} and not table.attrs["hint"]

    # an older version of one ad's weights lands online (e.g. a restored backup)
    store = fa.open_store(repo)
    view = fa.view_for_role(store, fa.GENERATED_ROLE).name
    latest = fa.read_latest(store, view)
    stale_ad = latest["ad_id"].iloc[0]
    old = latest[latest["ad_id"] == stale_ad].copy()
    old["weights_version"] = "0123456789abcdef"
    old["event_timestamp"] = old["event_timestamp"] - pd.Timedelta(days=30)
    store.write_to_online_store(view, old.reset_index(drop=True))
    table = jobs.status(repo, settings).set_index("ad_id")
    assert table.loc[stale_ad, "state"] == "online-stale"
    assert "0123456789abcdef" in table.loc[stale_ad, "reason"]
    assert (table.drop(stale_ad)["state"].isin(["warm", "cold-current"])).all()
    assert f"llmhyper repair --repo {repo}" in table.attrs["hint"]

    (repo / "data" / "online_store.db").unlink()
    table = jobs.status(repo, settings)
    cold = table[table["status"] == "active"]
    assert len(cold) and (cold["state"] == "online-missing").all()
    res = CliRunner().invoke(cli, ["status", "--repo", str(repo), "--llm", "none"])
    assert res.exit_code == 0, res.output
    assert "online-missing=" in res.output and f"llmhyper repair --repo {repo}" in res.output
