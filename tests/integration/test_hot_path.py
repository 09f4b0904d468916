"""Ranker.rank's hot path (per-thread buffers, IOBinding, partial top-k, cheap float parse) against the plain route.

The plain route (``Ranker._hot_path = False``: ``session.run`` on fresh arrays, a full stable argsort)
is the reference: every RankResult must be equal, scores bit for bit, for ties, content-rule masks,
missing values, unknown users, after a reload and from several threads at once.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.repos import ROOT, clone_repo

from llmhyper_feast.errors import LLMHyperError
from llmhyper_feast.generation.policy import POLICY_FILE
from llmhyper_feast.serving import ranker as ranker_module
from llmhyper_feast.serving.export import export_repo
from llmhyper_feast.serving.ranker import Ranker, _top_k
from llmhyper_feast.store import feast_adapter as fa

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo repo and two exports of it (every cold ad on LR_cold: equal scores): "masked" with the example
    content rules (an ``excluded`` output), "plain" without them."""
    root = tmp_path_factory.mktemp("hot_path")
    repo = clone_repo(demo_repo, root / "repo")
    shutil.copy(ROOT / "feature_repo" / POLICY_FILE, repo / POLICY_FILE)
    export_repo(repo, root / "masked", per_ad=False)
    (repo / POLICY_FILE).unlink()
    export_repo(repo, root / "plain", per_ad=False)
    store = fa.open_store(repo)
    ids, users = fa.read_user_matrix(store, fa.read_feature_schema(store))
    # a user with one view's row only and a null value in it: imputed features
    row = fa.read_latest(store, "user_behaviour").iloc[[0]].copy()
    row["user_id"], row["vegetarian"] = "partial_user", None
    row["event_timestamp"] = pd.Timestamp.now(tz="UTC")
    store.write_to_online_store("user_behaviour", row.reset_index(drop=True))
    veg = list(fa.read_feature_schema(store).names).index("vegetarian")
    order = np.argsort(-users[:, veg], kind="stable")  # the most vegetarian users first: the rules drop ads for them
    sample = [str(ids[i]) for i in order[:60]] + [str(u) for u in ids[:240]]
    return {"repo": repo, "root": root, "users": [*dict.fromkeys(sample), "partial_user", "ghost_user"]}


def _outcome(ranker: Ranker, hot: bool, *args, **kwargs):
    ranker._hot_path = hot
    try:
        return ranker.rank(*args, **kwargs)
    except LLMHyperError as exc:
        return type(exc), str(exc)
    finally:
        ranker._hot_path = True


def _assert_same(ranker: Ranker, users: list[str], ads: list[str] | None = None) -> list:
    results = []
    for u in users:
        for k in (1, 7, 1000):
            for candidates in ("all", "priors"):
                hot = _outcome(ranker, True, u, ads, k, candidates=candidates)
                plain = _outcome(ranker, False, u, ads, k, candidates=candidates)
                assert hot == plain, (u, k, candidates)
                if isinstance(hot, tuple) and candidates == "all":
                    raise AssertionError(f"plain ranking failed for {u}: {hot}")
                if k == 1000 and candidates == "all":
                    results.append(hot)
    return results


@pytest.mark.parametrize("export", ["plain", "masked"])
def test_hot_path_equals_the_plain_route(world: dict, export: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ranker = Ranker(world["repo"], world["root"] / export, reload_interval=None, unknown_user="population_mean")
    assert ranker._hot_state(ranker._model) is not None  # IOBinding writes into the buffers here
    users = world["users"]
    results = _assert_same(ranker, users)
    by_user = dict(zip(users, results, strict=True))
    assert by_user["ghost_user"].user_fallback == "population_mean"
    assert "vegetarian" in by_user["partial_user"].imputed and by_user["partial_user"].user_fallback is None
    ties = sum(any(a.ctr == b.ctr for a, b in zip(r.items, r.items[1:])) for r in results)
    assert ties == len(results)  # every list holds the cold ads' equal LR_cold scores
    dropped = sum(r.excluded for r in results)
    assert ranker._model.masked == (export == "masked") and (dropped > 0) == (export == "masked")
    # the scores equal the batch path's, in a top-k of the allowed ads
    sample = users[:50]
    scores = ranker.score_users(sample)
    for u, row, res in zip(sample, scores, results, strict=False):
        assert [a.ctr for a in res.items] == [float(row[ranker._model.column[a.ad_id]]) for a in res.items], u
    # candidate subsets, and the partial sort for every list size (ties at the k-th place included)
    _assert_same(ranker, users[:40], ads=list(ranker.ad_ids[::3]))
    monkeypatch.setattr(ranker_module, "FULL_SORT_UP_TO", 0)
    _assert_same(ranker, users[:80])


def test_top_k_keeps_column_order_among_ties() -> None:
    rng = np.random.default_rng(3)
    for trial in range(400):
        m = int(rng.integers(1, 3000))
        scores = rng.choice(np.float32([0.1, 0.2, 0.2, 0.5, -1.0, 0.7]), m)  # many ties, masked ads at -1
        if trial % 3 == 0:
            scores = rng.random(m).astype(np.float32)
        if trial % 7 == 0:
            scores[rng.integers(0, m, 5)] = np.nan
        for k in (1, 2, 10, m, m + 5):
            want = np.argsort(-scores, kind="stable")[:k]
            for limit in (0, 256, 10_000):
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(ranker_module, "FULL_SORT_UP_TO", limit)
                    np.testing.assert_array_equal(_top_k(scores, k), want)


def test_reload_remakes_the_thread_buffers(world: dict, tmp_path: Path) -> None:
    live = tmp_path / "live"
    shutil.copytree(world["root"] / "plain", live)
    ranker = Ranker(world["repo"], live, reload_interval=None, unknown_user="population_mean")
    users = world["users"][:40]
    _assert_same(ranker, users[:10])
    old_model, old_hot = ranker._model, ranker._hot_state(ranker._model)
    assert old_hot is not None and not old_model.masked
    shutil.rmtree(live)
    shutil.copytree(world["root"] / "masked", live)
    assert ranker.reload()
    new_hot = ranker._hot_state(ranker._model)
    assert new_hot is not None and new_hot is not old_hot and new_hot.model is ranker._model
    assert new_hot.excluded is not None and new_hot.x.ctypes.data != 0
    _assert_same(ranker, users)
    fresh = Ranker(world["repo"], world["root"] / "masked", reload_interval=None, unknown_user="population_mean")
    for u in users:
        assert ranker.rank(u, k=1000) == fresh.rank(u, k=1000)


def test_threads_get_their_own_buffers_and_the_same_results(world: dict) -> None:
    ranker = Ranker(world["repo"], world["root"] / "masked", reload_interval=None, unknown_user="population_mean")
    users = world["users"]
    ranker._hot_path = False
    want = {u: ranker.rank(u, k=20) for u in users}
    ranker._hot_path = True
    n_threads = 6
    start = threading.Barrier(n_threads)
    buffers: dict[int, int] = {}
    errors: list[BaseException] = []

    def serve(t: int) -> None:
        try:
            start.wait(timeout=60)
            for i in range(3):
                for u in users[t::2] if i % 2 else users[::-1]:
                    assert ranker.rank(u, k=20) == want[u], u
            hot = ranker._hot_state(ranker._model)
            assert hot is not None
            buffers[t] = hot.x.ctypes.data
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]
    assert len(set(buffers.values())) == n_threads  # one input buffer per thread


def test_read_into_reuses_the_buffer_and_equals_the_feast_sdk(world: dict) -> None:
    ranker = Ranker(world["repo"], world["root"] / "masked", reload_interval=None)
    sdk = Ranker(world["repo"], world["root"] / "masked", reload_interval=None, online_lookup="feast")
    reader = ranker._model.reader
    assert reader is not None
    users = world["users"]
    buffer = np.zeros((2, reader.n), np.float32)
    for u in users:
        got = reader.read_into(u, buffer[1])
        assert got is buffer[1] or got.base is buffer
        want = sdk._sdk_vectors(sdk._model, [u])[0]
        assert np.array_equal(buffer[1], want, equal_nan=True), u
    assert not buffer[0].any()  # only the row passed in was written
