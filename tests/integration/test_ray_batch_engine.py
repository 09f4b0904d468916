"""``batch_engine: ray.engine``: Feast's Ray compute engine moves the weight views online.

Two repos over the same small world: the reference (no batch_engine, the plugin's SDK write)
and one whose ``feature_store.yaml`` sets ``batch_engine: ray.engine``. train-warm and
materialize (knn prior, no LLM) run on both; on the Ray repo the engine's materialize must be
what wrote the weight views online (spied on), the online rows must equal the reference's and
what ``write_to_online_store`` writes for the same rows, and the ranker the same top-k. A write
left half done, and one whose engine fails, are finished through the engine by the next run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from support.services import local_ray
from test_store_engines import FILE_OFFLINE, SQLITE_ONLINE, TOP_K, WORLD, write_repo

from llmhyper_feast import jobs
from llmhyper_feast.config import load_settings
from llmhyper_feast.errors import UnavailableError
from llmhyper_feast.store import feast_adapter as fa

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY_ENGINE = (
    "batch_engine:\n  type: ray.engine\n  max_workers: 1\n  write_concurrency: 1\n"
    "  ray_conf: {num_cpus: 1, object_store_memory: 104857600, include_dashboard: false}\n"
)
# every stored field but the ones that carry the time of the run
TIMELESS = {"trained_at", "generated_at", "weights_version"}
SECONDS: dict[str, float] = {}


class Spy:
    """Names of the views each route wrote online, in call order."""

    def __init__(self) -> None:
        self.engine: list[str] = []
        self.sdk: list[str] = []


@pytest.fixture(scope="module")
def spy() -> Iterator[Spy]:
    """Record every call of the Ray engine's materialize and of the SDK's ``write_to_online_store``."""
    from feast import FeatureStore
    from feast.infra.compute_engines.ray.compute import RayComputeEngine

    found = Spy()
    engine_one, sdk_write = RayComputeEngine._materialize_one, FeatureStore.write_to_online_store

    def materialize_one(self: Any, registry: Any, task: Any, *args: Any, **kwargs: Any) -> Any:
        found.engine.append(task.feature_view.name)
        return engine_one(self, registry, task, *args, **kwargs)

    def write_to_online_store(self: Any, feature_view_name: str, *args: Any, **kwargs: Any) -> Any:
        found.sdk.append(feature_view_name)
        return sdk_write(self, feature_view_name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RayComputeEngine, "_materialize_one", materialize_one)
        mp.setattr(FeatureStore, "write_to_online_store", write_to_online_store)
        yield found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmhyper_feast.datasets.demo_world import build_world

    data = tmp_path_factory.mktemp("rayengine_world")
    build_world(data, WORLD, progress=False)
    return data


def run(repo: Path, label: str) -> None:
    """apply, load users and ads online, train-warm, materialize (no LLM), export."""
    from llmhyper_feast.serving.export import export_repo

    fa.apply_repo(repo)
    store = fa.open_store(repo)
    user_views = sorted({f.view for f in fa.read_feature_schema(store).features})
    fa.materialize_sources(store, [*user_views, fa.view_for_role(store, fa.AD_CONTENT_ROLE).name])
    settings = load_settings(repo)
    clock = time.perf_counter()
    jobs.train_warm(repo, settings, progress=False)
    jobs.materialize(repo, settings, progress=False)
    SECONDS[label] = time.perf_counter() - clock
    print(f"\n[ray batch engine] {label}: train-warm + materialize {SECONDS[label]:.1f} s")
    export_repo(repo, repo / "data" / "onnx")


@pytest.fixture(scope="module")
def repos(world: Path, spy: Spy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(reference repo, Ray-engine repo), both through the flow; Ray is shut down at the end."""
    reference = write_repo(
        tmp_path_factory.mktemp("ref") / "ref_repo", world, offline=FILE_OFFLINE, online=SQLITE_ONLINE
    )
    run(reference, "no batch_engine (reference)")
    assert not spy.engine, "the reference repo has no batch engine"
    with local_ray():
        ray_repo = write_repo(
            tmp_path_factory.mktemp("ray") / "ray_repo", world, offline=FILE_OFFLINE, online=SQLITE_ONLINE + RAY_ENGINE
        )
        spy.engine.clear()
        spy.sdk.clear()
        run(ray_repo, "batch_engine: ray.engine")
        yield reference, ray_repo


def weight_views(store: Any) -> list[str]:
    return [fa.view_for_role(store, role).name for role in (fa.WARM_ROLE, fa.GENERATED_ROLE)]


def online_rows(repo: Path, view: str) -> pd.DataFrame:
    """Every ad's online row of ``view`` (ads without one dropped), by ad id."""
    store = fa.open_store(repo)
    fv = store.get_feature_view(view)
    _, ads = fa.read_ads(store)
    ids = sorted(ads["ad_id"])
    got = pd.DataFrame(fa.get_online(store, [f"{view}:{f.name}" for f in fv.features], [{"ad_id": a} for a in ids]))
    return got[got["weights"].notna()].sort_values("ad_id").reset_index(drop=True)


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame, skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    assert list(a.columns) == list(b.columns)
    assert list(a["ad_id"]) == list(b["ad_id"]) and len(a)
    for column in a.columns:
        if column in skip:
            continue
        if column == "weights":
            np.testing.assert_array_equal(np.stack(a[column]), np.stack(b[column]))
        else:
            assert a[column].tolist() == b[column].tolist(), column


def test_engine_writes_the_weight_views_online_like_the_sdk(repos: tuple[Path, Path], spy: Spy) -> None:
    import ray
    from feast.infra import ray_initializer

    from llmhyper_feast.serving.ranker import Ranker

    reference, ray_repo = repos
    store = fa.open_store(ray_repo)
    views = weight_views(store)
    assert ray.is_initialized() and ray_initializer.is_ray_initialized()
    assert set(views) <= set(spy.engine), spy.engine  # the engine moved both weight views online
    assert not set(views) & set(spy.sdk), spy.sdk  # and the SDK's online write never ran for them

    for view in views:
        got, ref = online_rows(ray_repo, view), online_rows(reference, view)
        assert_same_rows(got, ref, skip=TIMELESS)
        # the same rows written by the SDK land exactly as the engine wrote them (times included)
        latest = fa.read_latest(store, view)
        columns = [*store.get_feature_view(view).join_keys, *(f.name for f in store.get_feature_view(view).features)]
        store.write_to_online_store(view, latest[[*columns, "event_timestamp"]])
        assert_same_rows(online_rows(ray_repo, view), got)

    users = [f"u{i:06d}" for i in range(0, WORLD.users, WORLD.users // 10)]
    rank_ref = Ranker(reference, reference / "data" / "onnx", reload_interval=None)
    rank_ray = Ranker(ray_repo, ray_repo / "data" / "onnx", reload_interval=None)
    assert rank_ray.ad_ids == rank_ref.ad_ids
    for user in users:
        assert [r.ad_id for r in rank_ray.rank(user, k=TOP_K)] == [r.ad_id for r in rank_ref.rank(user, k=TOP_K)]


def new_warm_rows(store: Any, view: str) -> pd.DataFrame:
    """The warm view's latest rows of three ads with changed weights and a fresh event time."""
    from llmhyper_feast.store.weights import next_timestamp

    fv = store.get_feature_view(view)
    rows = fa.read_latest(store, view).sort_values("ad_id").head(3).reset_index(drop=True)
    rows["weights"] = [np.asarray(w, dtype=np.float32) * 2 + 0.25 for w in rows["weights"]]
    rows["bias"] = rows["bias"] - 1.0
    rows["event_timestamp"] = next_timestamp(store, view)
    return rows[[*fv.join_keys, *(f.name for f in fv.features), "event_timestamp"]]


def test_a_half_done_or_failed_write_is_finished_through_the_engine(
    repos: tuple[Path, Path], spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast.infra.compute_engines.ray.compute import RayComputeEngine

    from llmhyper_feast.store import journal
    from llmhyper_feast.store.layout import RepoLayout

    _, ray_repo = repos
    store = fa.open_store(ray_repo)
    view = fa.view_for_role(store, fa.WARM_ROLE).name
    layout = RepoLayout.of(ray_repo)

    # a run killed between the halves: journaled and offline, not online
    rows = new_warm_rows(store, view)
    journal.record(layout, fa._pending_write(store.get_feature_view(view), rows))
    fa._append_to_file_source(store, store.get_feature_view(view), rows)
    before = online_rows(ray_repo, view).set_index("ad_id")
    assert not np.allclose(before.loc[rows["ad_id"][0], "weights"], rows["weights"][0])
    spy.engine.clear()
    spy.sdk.clear()
    assert fa.finish_pending_writes(fa.open_store(ray_repo)) == {view: 3}
    assert spy.engine == [view] and view not in spy.sdk
    after = online_rows(ray_repo, view).set_index("ad_id")
    for _, row in rows.iterrows():
        np.testing.assert_array_equal(after.loc[row["ad_id"], "weights"], np.asarray(row["weights"], np.float32))
        assert after.loc[row["ad_id"], "bias"] == pytest.approx(row["bias"], abs=1e-6)
    assert not layout.pending_writes.exists() or view not in journal.pending(layout)

    # the engine fails: one line naming it and the fix, the rows offline and journaled, nothing online
    def broken(self: Any, registry: Any, task: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("raylet died\nlong traceback")

    store = fa.open_store(ray_repo)
    rows = new_warm_rows(store, view)
    monkeypatch.setattr(RayComputeEngine, "_materialize_one", broken)
    with pytest.raises(UnavailableError) as caught:
        fa.write_view(store, view, rows)
    message = str(caught.value)
    assert "\n" not in message and "'ray.engine'" in message and "raylet died" in message
    assert "feature_store.yaml" in message and "llmhyper materialize" in message
    assert view in journal.pending(layout)
    latest = fa.read_latest(store, view).set_index("ad_id")
    np.testing.assert_array_equal(latest.loc[rows["ad_id"][0], "weights"], np.asarray(rows["weights"][0], np.float32))
    np.testing.assert_array_equal(
        online_rows(ray_repo, view).set_index("ad_id").loc[rows["ad_id"][0], "weights"],
        after.loc[rows["ad_id"][0], "weights"],
    )
    monkeypatch.undo()  # the engine works again: the next run finishes the write through it
    spy.engine.clear()
    assert fa.finish_pending_writes(fa.open_store(ray_repo)) == {view: 3}
    assert spy.engine == [view]
    fixed = online_rows(ray_repo, view).set_index("ad_id")
    np.testing.assert_array_equal(fixed.loc[rows["ad_id"][0], "weights"], np.asarray(rows["weights"][0], np.float32))
