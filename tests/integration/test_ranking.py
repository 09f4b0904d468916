"""Export + Ranker: parity ONNX / numpy / Feast-stored weights, top-K, candidates, unknowns, reload, Redis."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support.services import redis_server

from exporters import INPUT_NAME, export_models, read_manifest
from llmhyper_feast import jobs
from llmhyper_feast.config import load_settings
from llmhyper_feast.errors import ExportError, InputError
from llmhyper_feast.serving.export import build_model_set, export_repo
from llmhyper_feast.serving.ranker import Ranker, StaleExportError, UnknownAdError, UnknownUserError
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store import online
from llmhyper_feast.store.weights import resolve_weights

pytestmark = pytest.mark.integration
N_USERS = 1000
TOL = 1e-6


def clone(src: Path, dest: Path) -> Path:
    """Copy a built repo (data included) and re-apply it so its sources point at the copy."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "data" / "registry.db").unlink()
    fa.apply_repo(dest)
    return dest


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def served(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(repo with kNN-generated cold-ad weights materialized, its full export)."""
    repo = clone(demo_repo, tmp_path_factory.mktemp("ranking") / "repo")
    settings = load_settings(repo).with_overrides(**{"llm.name": "none"})
    assert jobs.materialize(repo, settings, progress=False).written > 0
    models = repo.parent / "models"
    export_repo(repo, models)
    return repo, models


@pytest.fixture(scope="module")
def ranker(served: tuple[Path, Path]) -> Ranker:
    return Ranker(*served, reload_interval=None)


@pytest.fixture(scope="module")
def world(served: tuple[Path, Path], ranker: Ranker):
    """1000 random users, their online features and the resolved weights (float64 numpy reference)."""
    repo, _ = served
    store, schema = ranker.store, fa.read_feature_schema(ranker.store)
    all_ids, _ = fa.read_user_matrix(store, schema)
    users = list(np.random.default_rng(5).choice(all_ids, N_USERS, replace=False))
    feats = online.get_user_features(store, users, schema)
    assert feats.found.all()
    resolved = resolve_weights(store, schema, jobs.load_lr_cold(repo))
    p64 = sigmoid(feats.values.astype(np.float64) @ resolved.weights.astype(np.float64).T + resolved.bias)
    return users, feats.values, resolved, p64


def test_export_records_sources_and_provenance(served: tuple[Path, Path], world) -> None:
    repo, models = served
    _, _, resolved, _ = world
    manifest = read_manifest(models)
    schema = fa.read_feature_schema(fa.open_store(repo))
    assert list(manifest.feature_names) == schema.names and manifest.feature_hash == schema.hash
    assert manifest.producer["name"] == "llmhyper-feast"
    assert list(manifest.ad_ids) == resolved.ad_ids
    assert [manifest.ads[a].meta["source"] for a in resolved.ad_ids] == resolved.source
    assert {"warm", "generated"} <= set(resolved.source)
    for ad_id, meta in zip(resolved.ad_ids, resolved.meta):
        got = manifest.ads[ad_id].meta
        assert got["weights_version"] == meta["weights_version"]
        if manifest.ads[ad_id].meta["source"] == "generated":
            assert {"alpha", "delta", "model", "prompt_hash"} <= set(got)
            assert got["alpha"] == pytest.approx(meta["alpha"]) and got["model"] == meta["model"]


def test_parity_onnx_numpy_and_feast_stored_weights(served: tuple[Path, Path], ranker: Ranker, world) -> None:
    _, models = served
    users, x, resolved, p64 = world
    manifest = read_manifest(models)
    all_ads = session(models / manifest.models["all_ads"].path).run(["ctr"], {INPUT_NAME: x})[0]
    assert np.abs(all_ads - p64).max() < TOL
    np.testing.assert_array_equal(ranker.score(x), all_ads)
    np.testing.assert_array_equal(ranker.score_users(users), all_ads)

    for j, ad_id in enumerate(resolved.ad_ids):  # every per-ad model, both variants
        entries = manifest.models_for_ad(ad_id)
        assert {e.kind for e in entries.values()} == {"per_ad", "per_ad_core"}
        for entry in entries.values():
            out = session(models / entry.path).run(None, {INPUT_NAME: x})
            ctr = out[1][:, 1] if entry.kind == "per_ad" else out[0][:, 0]
            assert np.abs(ctr - p64[:, j]).max() < TOL, (ad_id, entry.kind)

    # weights stored in Feast's online store score the same
    store = ranker.store
    gen = [i for i, s in enumerate(resolved.source) if s == "generated"]
    stored = online.get_ad_weights(store, [resolved.ad_ids[i] for i in gen])
    assert stored.found.all()
    np.testing.assert_allclose(stored.weights, resolved.weights[gen], atol=1e-7)
    p_stored = sigmoid(x.astype(np.float64) @ stored.weights.astype(np.float64).T + stored.bias)
    assert np.abs(all_ads[:, gen] - p_stored).max() < TOL
    warm = [i for i, s in enumerate(resolved.source) if s == "warm"]
    rows = fa.get_online(
        store, ["warm_ad_weights:weights", "warm_ad_weights:bias"], [{"ad_id": resolved.ad_ids[i]} for i in warm]
    )
    w_warm = np.asarray(rows["weights"], np.float64)
    p_warm = sigmoid(x.astype(np.float64) @ w_warm.T + np.asarray(rows["bias"], np.float64))
    assert np.abs(all_ads[:, warm] - p_warm).max() < TOL


def test_rank_top_k_equals_numpy_argsort(ranker: Ranker, world) -> None:
    users, _, resolved, p64 = world
    k, strict = 10, 0
    col = {a: j for j, a in enumerate(resolved.ad_ids)}
    for u, p in zip(users, p64):
        res = ranker.rank(u, k=k)
        expected = np.argsort(-p, kind="stable")[:k]
        got = [col[r.ad_id] for r in res]
        assert len(res) == k and res.user_fallback is None and res.imputed == ()
        assert np.abs(np.array([r.ctr for r in res]) - p[got]).max() < TOL
        assert [r.source for r in res] == [resolved.source[j] for j in got]
        gaps = -np.diff(np.sort(p)[::-1][: k + 1])
        if gaps.min() > TOL:  # no near-tie: float32 and float64 must agree exactly
            strict += 1
            assert got == list(expected), u
        else:
            np.testing.assert_allclose(p[got], p[expected], atol=TOL)
    assert strict >= 0.95 * len(users)


def test_candidate_subsets(ranker: Ranker, world) -> None:
    users, _, resolved, p64 = world
    rng = np.random.default_rng(1)
    ids = np.array(resolved.ad_ids)
    for u, p in list(zip(users, p64))[:100]:
        size = int(rng.integers(1, 25))
        cand = list(rng.choice(ids, size, replace=False))
        k = int(rng.integers(1, 30))
        res = ranker.rank(u, cand, k)
        scores = p[[resolved.ad_ids.index(a) for a in cand]]
        expected = [cand[i] for i in np.argsort(-scores, kind="stable")[:k]]
        assert [r.ad_id for r in res] == expected
        assert len(res) == min(k, size) and res.candidates == size
    dup = ranker.rank(users[0], [ids[0], ids[1], ids[0]], 10)
    assert sorted(r.ad_id for r in dup) == sorted(ids[:2])


def test_unknown_ads_are_listed(ranker: Ranker, world) -> None:
    users, _, resolved, _ = world
    with pytest.raises(UnknownAdError, match="ad_nope_1") as err:
        ranker.rank(users[0], [resolved.ad_ids[0], "ad_nope_1", "ad_nope_2"])
    assert err.value.ad_ids == ["ad_nope_1", "ad_nope_2"] and "llmhyper export" in str(err.value)
    for bad in ([], "ad00001"):
        with pytest.raises(InputError):
            ranker.rank(users[0], bad)
    with pytest.raises(InputError, match="'k' parameter"):
        ranker.rank(users[0], k=0)


def test_unknown_user_raises_or_gets_population_mean(served: tuple[Path, Path], ranker: Ranker, world) -> None:
    _, _, resolved, _ = world
    with pytest.raises(UnknownUserError, match="no_such_user") as err:
        ranker.rank("no_such_user")
    assert err.value.user_ids == ["no_such_user"]
    fallback = Ranker(*served, unknown_user="population_mean", reload_interval=None)
    schema = fa.read_feature_schema(fallback.store)
    _, offline_users = fa.read_user_matrix(fallback.store, schema)
    mean = offline_users.mean(axis=0)
    np.testing.assert_allclose(fallback.population_mean, mean, rtol=1e-6)
    res = fallback.rank("no_such_user", k=len(resolved.ad_ids))
    assert res.user_fallback == "population_mean" and len(res) == len(resolved.ad_ids)
    p = sigmoid(mean.astype(np.float32).astype(np.float64) @ resolved.weights.T.astype(np.float64) + resolved.bias)
    got = {r.ad_id: r.ctr for r in res}
    assert max(abs(got[a] - p[j]) for j, a in enumerate(resolved.ad_ids)) < TOL


def test_missing_features_use_the_population_mean(ranker: Ranker, world) -> None:
    import pandas as pd

    _, _, resolved, _ = world
    store, names = ranker.store, list(ranker.feature_names)
    behaviour = [f.name for f in store.get_feature_view("user_behaviour").features]
    now = pd.Timestamp.now(tz="UTC")
    row = {"user_id": ["half_user"], "event_timestamp": [now]}
    values = {n: float(i) / 10 for i, n in enumerate(behaviour)}
    values[behaviour[1]] = float("nan")  # a NaN value as well as a whole missing view
    store.write_to_online_store("user_behaviour", pd.DataFrame({**row, **{n: [v] for n, v in values.items()}}))
    res = ranker.rank("half_user", k=len(resolved.ad_ids))
    expected_missing = [n for n in names if n not in behaviour or n == behaviour[1]]
    assert list(res.imputed) == expected_missing and res.user_fallback is None
    x = np.array(
        [values[n] if n in values and n != behaviour[1] else ranker.population_mean[i] for i, n in enumerate(names)],
        np.float32,
    )
    p = sigmoid(x.astype(np.float64) @ resolved.weights.T.astype(np.float64) + resolved.bias)
    got = {r.ad_id: r.ctr for r in res}
    assert max(abs(got[a] - p[j]) for j, a in enumerate(resolved.ad_ids)) < TOL


def _edit_manifest(src: Path, dest: Path, **changes) -> Path:
    shutil.copytree(src, dest)
    data = json.loads((dest / "manifest.json").read_text())
    data.update(changes)
    (dest / "manifest.json").write_text(json.dumps(data))
    return dest


def test_stale_export_is_rejected(served: tuple[Path, Path], tmp_path: Path) -> None:
    repo, models = served
    manifest = read_manifest(models)
    bad_hash = _edit_manifest(models, tmp_path / "a", feature_hash="0123456789abcdef")
    with pytest.raises(StaleExportError, match="llmhyper export"):
        Ranker(repo, bad_hash)
    names = list(manifest.feature_names)
    swapped = _edit_manifest(models, tmp_path / "b", feature_names=[names[1], names[0], *names[2:]])
    with pytest.raises(StaleExportError, match="stale"):
        Ranker(repo, swapped)
    with pytest.raises(ExportError, match="llmhyper export"):
        Ranker(repo, tmp_path / "empty")


def test_reload_while_serving(served: tuple[Path, Path], world, tmp_path: Path) -> None:
    repo, models = served
    users, x, resolved, _ = world
    live = tmp_path / "live"
    shutil.copytree(models, live)
    r = Ranker(repo, live, reload_interval=0)
    old_version, stop = r.model_version, threading.Event()
    errors: list[BaseException] = []
    versions: list[str] = []

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            try:
                versions.append(r.rank(users[i % len(users)], k=5).model_version)
            except BaseException as exc:  # noqa: BLE001 - every failure counts
                errors.append(exc)
            i += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        model_set, _ = build_model_set(repo)
        j = 3
        model_set.bias[j] += 2.0  # a visibly different export
        export_models(model_set, live, per_ad=False, core_ops=False)
        deadline = time.monotonic() + 60
        while r.model_version == old_version and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors[:3]
    assert r.model_version != old_version and r.reloads == 1
    assert versions[0] == old_version and versions[-1] == r.model_version
    ad = resolved.ad_ids[j]
    p = sigmoid(float(x[0].astype(np.float64) @ resolved.weights[j] + resolved.bias[j] + 2.0))
    assert r.rank(users[0], [ad], 1)[0].ctr == pytest.approx(p, abs=TOL)

    # a manifest that does not match its model file is not loaded; the old model keeps serving
    version = r.model_version
    data = json.loads((live / "manifest.json").read_text())
    data["files"]["all_ads/model.onnx"]["sha256"] = "0" * 64
    (live / "manifest.json").write_text(json.dumps(data))
    assert r.reload() is False and r.model_version == version
    assert "does not match its manifest" in (r.last_reload_error or "")
    assert r.rank(users[0], k=3).model_version == version


def test_only_changed_rebuilds_only_changed_ads(served: tuple[Path, Path], tmp_path: Path) -> None:
    repo, models = served
    out = tmp_path / "out"
    shutil.copytree(models, out)
    first = read_manifest(out)
    before = {p: (out / p).read_bytes() for p in [*first.files, "manifest.json"]}
    again = export_repo(repo, out, only_changed=True)
    assert not [p for p in again.written if p.startswith("ads/")]  # nothing per-ad rewritten
    assert {p: (out / p).read_bytes() for p in before} == before  # byte-identical

    # an ad whose recorded digest differs is rebuilt alone, and the result is again identical
    data = json.loads((out / "manifest.json").read_text())
    victim = first.ad_ids[7]
    data["ads"][victim]["digest"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(data))
    inc = export_repo(repo, out, only_changed=True)
    assert {p.split("/")[1] for p in inc.written if p.startswith("ads/")} == {first.ads[victim].dir}
    assert {p: (out / p).read_bytes() for p in before} == before


@pytest.mark.slow
def test_only_changed_after_a_warm_handoff_equals_a_full_export(demo_repo: Path, tmp_path: Path) -> None:
    repo = clone(demo_repo, tmp_path / "repo")  # cold ads served by LR_cold: no materialize needed
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    first = export_repo(repo, out)

    store = fa.open_store(repo)
    _, active = fa.read_ads(store, status="active")
    handed = str(active["ad_id"].iloc[0])
    jobs.train_warm(repo, load_settings(repo), ad_ids=[handed], progress=False)  # also refits LR_cold
    inc = export_repo(repo, out, only_changed=True)
    assert inc.ads[handed].meta["source"] == "warm"
    rebuilt = {p.split("/")[1] for p in inc.written if p.startswith("ads/")}
    changed = {a for a in inc.ad_ids if inc.ads[a].digest != first.ads[a].digest}
    # the refitted LR_cold median changes the other LR_cold ads too, with the same weights_version
    assert handed in changed and len(changed) > 1 and rebuilt == {inc.ads[a].dir for a in changed}
    full = export_repo(repo, fresh)
    assert inc.to_json() == full.to_json()
    assert all((out / p).read_bytes() == (fresh / p).read_bytes() for p in full.files)


def test_cli_export_and_rank(served: tuple[Path, Path], world, tmp_path: Path) -> None:
    from llmhyper_feast.cli import cli as group

    repo, _ = served
    users, _, resolved, p64 = world
    assert {"export", "rank", "serve"} <= set(group.commands)
    runner = CliRunner()
    out = tmp_path / "cli_models"
    res = runner.invoke(group, ["export", "--repo", str(repo), "--out", str(out), "--no-per-ad", "--top-k", "5"])
    assert res.exit_code == 0, res.output
    assert f"exported {len(resolved.ad_ids)} ads" in res.output and read_manifest(out).top_k == 5
    ads = resolved.ad_ids[:6]
    res = runner.invoke(
        group,
        [
            "rank",
            "--repo",
            str(repo),
            "--models",
            str(out),
            "--user",
            users[0],
            "--ads",
            ",".join(ads[:3]),
            "--ads",
            ads[3],
            "--k",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1].split() == ["rank", "ad", "ctr", "source", "title"] and len(lines) == 5
    expected = sorted(range(4), key=lambda j: -p64[0, j])[:3]
    assert [ln.split()[1] for ln in lines[2:]] == [ads[j] for j in expected]
    res = runner.invoke(group, ["rank", "--repo", str(repo), "--models", str(out), "--user", "nobody"])
    assert isinstance(res.exception, UnknownUserError)


@pytest.mark.redis
def test_redis_online_store_gives_the_same_scores(
    served: tuple[Path, Path], ranker: Ranker, world, tmp_path: Path
) -> None:
    repo, models = served
    users, _, _, _ = world
    with redis_server(tmp_path) as port:
        dest = tmp_path / "redis_repo"
        shutil.copytree(repo, dest, ignore=shutil.ignore_patterns("__pycache__"))
        (dest / "data" / "registry.db").unlink()
        (dest / "data" / "online_store.db").unlink()
        yaml = (dest / "feature_store.yaml").read_text()
        sqlite_block = "online_store:\n  type: sqlite\n  path: data/online_store.db\n"
        assert sqlite_block in yaml
        yaml = yaml.replace(sqlite_block, f'online_store:\n  type: redis\n  connection_string: "127.0.0.1:{port}"\n')
        (dest / "feature_store.yaml").write_text(yaml)
        fa.apply_repo(dest)
        store = fa.open_store(dest)
        fa.materialize_sources(store, [fv.name for fv in fa.online_views(store)])
        on_redis = Ranker(dest, models, reload_interval=None)
        sample = users[:200]
        np.testing.assert_array_equal(on_redis.score_users(sample), ranker.score_users(sample))
        assert list(on_redis.rank(sample[0], k=10)) == list(ranker.rank(sample[0], k=10))
        with pytest.raises(UnknownUserError):
            on_redis.rank("no_such_user")
