"""``engine: ray`` against ``engine: local``, on one Ray instance in local mode (2 CPUs).

Warm training must give the very same weights; generation the same rows with the same number
of LLM calls (the fake OpenAI server counts them), none on a re-run; a worker that dies after
its work is retried without repeating a call; a missing Ray or an unreachable cluster fails
with a clear error before anything is written.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.fake_openai import FakeOpenAI
from support.repos import clone_repo

from llmhyper_feast import jobs
from llmhyper_feast.config import Settings, load_settings
from llmhyper_feast.engine import get_engine
from llmhyper_feast.engine.base import TEST_CRASH_ENV
from llmhyper_feast.errors import ConfigError, UnavailableError
from llmhyper_feast.generation.runner import read_log
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.layout import RepoLayout
from llmhyper_feast.training.warm import train_warm_models

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'llmhyper-feast[ray]'")


@pytest.fixture(scope="module")
def crash_flag(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One Ray instance for the module; its workers kill themselves once while the returned file exists."""
    flag = tmp_path_factory.mktemp("crash") / "crash-once"
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", TEST_CRASH_ENV)}
    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token file, nothing left behind
    os.environ[TEST_CRASH_ENV] = str(flag)  # workers inherit the environment of ray.init
    ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    try:
        yield flag
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the demo repo shared by this module (each test uses its own model names)."""
    return clone_repo(demo_repo, tmp_path_factory.mktemp("engine") / "repo")


def with_engine(settings: Settings, engine: str, **ray_keys: object) -> Settings:
    return settings.with_overrides(engine=engine, **{f"ray.{k}": v for k, v in ray_keys.items()})


def openai_settings(repo: Path, url: str, model: str, engine: str, **ray_keys: object) -> Settings:
    llm = {"name": "openai", "options": {"base_url": url, "api_key": "test", "model": model, "max_retries": 1}}
    base = load_settings(repo).with_overrides(
        llm=llm, **{"generation.batch_size": 10, "generation.samples": 1, "generation.concurrency": 2}
    )
    return with_engine(base, engine, **ray_keys)


def active_ids(repo: Path) -> list[str]:
    _, ads = fa.read_ads(fa.open_store(repo), status="active")
    return sorted(ads["ad_id"])


def data_snapshot(repo: Path) -> dict[str, tuple[int, int]]:
    """Every file under data/ (but the lock) with its size and mtime."""
    data = RepoLayout.of(repo).data
    return {
        str(p.relative_to(data)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in data.rglob("*")
        if p.is_file() and p.name != RepoLayout.of(repo).lock.name
    }


# --- warm training ------------------------------------------------------------------------------


def test_train_warm_on_ray_gives_the_local_weights(crash_flag: Path, repo: Path) -> None:
    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    settings = load_settings(repo)
    _, retired = fa.read_ads(store, status="retired")
    ad_ids = sorted(retired["ad_id"])[:16]
    user_ids, users = fa.read_user_matrix(store, schema)
    local = train_warm_models(
        jobs.read_impressions(repo), user_ids, users, schema, ad_ids, settings.warm, progress=False
    )
    assert len(local.rows) == len(ad_ids)

    # the job: impressions and users read through Feast on the driver, fits as Ray tasks, rows in the warm view
    on_ray = with_engine(settings, "ray")
    assert get_engine(on_ray).distributed and get_engine(on_ray).workers == 2
    report = jobs.train_warm(repo, on_ray, ad_ids=ad_ids, progress=False)
    assert report.trained == len(ad_ids) and not report.skipped
    warm = fa.read_latest(store, fa.view_for_role(store, fa.WARM_ROLE).name).set_index("ad_id").loc[ad_ids]
    np.testing.assert_array_equal(np.stack(warm["weights"].to_numpy()), local.weights.astype(np.float32))
    for col in ("bias", "mean_ctr", "train_auc", "impressions", "clicks"):
        np.testing.assert_array_equal(warm[col].to_numpy(), local.rows[col].to_numpy())


@pytest.mark.slow
def test_train_warm_fits_are_bit_identical_on_every_retired_ad(crash_flag: Path, repo: Path) -> None:
    """Every retired ad in float64 (before the view's float32), with the seconds each engine took."""
    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    settings = load_settings(repo)
    impressions = jobs.read_impressions(repo)
    user_ids, users = fa.read_user_matrix(store, schema)
    ad_ids = fa.read_ads(store, status="retired")[1]["ad_id"].tolist()
    args = (impressions, user_ids, users, schema, ad_ids, settings.warm)
    t0 = time.perf_counter()
    local = train_warm_models(*args, progress=False)
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    remote = train_warm_models(*args, progress=False, engine=get_engine(with_engine(settings, "ray")))
    t_ray = time.perf_counter() - t0
    print(f"\ntrain-warm fits, {len(ad_ids)} demo ads: local {t_local:.2f} s, ray (2 CPUs) {t_ray:.2f} s")
    assert local.rows["ad_id"].tolist() == remote.rows["ad_id"].tolist() and local.skipped == remote.skipped
    np.testing.assert_array_equal(local.weights, remote.weights)


# --- generation -------------------------------------------------------------------------------------

COMPARED = ["ad_id", "weights", "weights_std", "prior_weights", "neighbours", "similarities", "origin", "calls"]


def comparable(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows[COMPARED].sort_values("ad_id").reset_index(drop=True)
    for col in ("weights", "weights_std", "prior_weights", "similarities"):
        out[col] = out[col].map(lambda v: np.round(np.asarray(v, np.float64), 12).tolist())
    return out


def test_generate_on_ray_matches_local_and_a_rerun_calls_nothing(crash_flag: Path, repo: Path) -> None:
    ads = active_ids(repo)[:10]  # two groups of ads (8 + 2)
    with FakeOpenAI() as server:
        local = jobs.generate(
            repo, openai_settings(repo, server.base_url, "fake-engine-local", "local"), ad_ids=ads, progress=False
        )
        local_calls = server.calls
        server.reset()
        on_ray = openai_settings(repo, server.base_url, "fake-engine-ray", "ray")
        remote = jobs.generate(repo, on_ray, ad_ids=ads, progress=False)
        ray_calls = server.calls
        server.reset()
        forced = jobs.generate(repo, on_ray, ad_ids=ads, force=True, progress=False)
        rerun_calls = server.calls

    assert local_calls == ray_calls == len(ads) * 2  # 20 features, 10 per call
    assert remote.attrs["stopped"] == "" and set(remote["origin"]) == {"llm"}
    pd.testing.assert_frame_equal(comparable(local), comparable(remote))
    assert rerun_calls == 0 and int(forced["calls"].sum()) == 0 and len(forced) == len(ads)
    log = read_log(RepoLayout.of(repo).generation_log, latest=False)
    ray_log = log[log["llm_model"] == "openai:fake-engine-ray"]
    assert len(ray_log) == 2 * len(ads) and not ray_log.duplicated(["run_id", "ad_id"]).any()


def test_materialize_on_ray_writes_what_local_writes(crash_flag: Path, repo: Path) -> None:
    with FakeOpenAI() as server:
        on_ray = openai_settings(repo, server.base_url, "fake-engine-mat", "ray")
        report = jobs.materialize(repo, on_ray, progress=False)
        calls = server.calls
        stored = fa.read_latest(fa.open_store(repo), report.view).set_index("ad_id")
        local = jobs.materialize(
            repo, openai_settings(repo, server.base_url, "fake-engine-mat", "local"), force=True, progress=False
        )
        assert server.calls == calls  # the local run finds every answer in the cache the workers filled
    n = len(active_ids(repo))
    assert report.generated == n and report.written == n and report.origins == {"llm": n} and not report.stopped
    assert calls == 2 * n and local.written == n
    again = fa.read_latest(fa.open_store(repo), report.view).set_index("ad_id").loc[stored.index]
    np.testing.assert_allclose(np.stack(again["weights"]), np.stack(stored["weights"]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(again["bias"], stored["bias"], rtol=0, atol=1e-12)


def test_a_killed_worker_is_retried_without_repeating_a_call(crash_flag: Path, repo: Path) -> None:
    ads = active_ids(repo)[:10]
    with FakeOpenAI() as server:
        crash_flag.write_text("armed")
        rows = jobs.generate(
            repo, openai_settings(repo, server.base_url, "fake-crash", "ray"), ad_ids=ads, progress=False
        )
        first = server.calls
        again = jobs.generate(
            repo, openai_settings(repo, server.base_url, "fake-crash", "ray"), ad_ids=ads, progress=False
        )
    assert not crash_flag.exists() and crash_flag.with_name("crash-once.fired").exists()  # a worker did die
    assert len(rows) == len(ads) and rows.attrs["stopped"] == ""
    assert first == 2 * len(ads) and server.calls == first and again.empty  # retried from the cache
    log = read_log(RepoLayout.of(repo).generation_log, latest=False)
    assert log.loc[log["llm_model"] == "openai:fake-crash", "ad_id"].value_counts().max() == 1


@pytest.mark.slow
def test_without_retries_a_killed_worker_stops_the_run_and_the_next_run_finishes(crash_flag: Path, repo: Path) -> None:
    ads = active_ids(repo)[:8]  # one group: the crash stops the run before any row is logged
    crash_flag.with_name("crash-once.fired").unlink(missing_ok=True)
    with FakeOpenAI() as server:
        no_retry = openai_settings(repo, server.base_url, "fake-stop", "ray", max_retries=0)
        crash_flag.write_text("armed")
        with pytest.raises(UnavailableError, match="died 1 time.*Re-run the command"):
            jobs.generate(repo, no_retry, ad_ids=ads, progress=False)
        first = server.calls
        rows = jobs.generate(repo, no_retry, ad_ids=ads, progress=False)
    log = read_log(RepoLayout.of(repo).generation_log, latest=False)
    stop_log = log[log["llm_model"] == "openai:fake-stop"]
    assert set(stop_log["ad_id"]) == set(ads) and not stop_log["ad_id"].duplicated().any()
    # the dead worker had asked everything and cached it: the next run finishes without a call
    assert first == 2 * len(ads) and server.calls == first
    assert len(rows) == len(ads) and int(rows["calls"].sum()) == 0 and rows.attrs["stopped"] == ""


# --- bad input ------------------------------------------------------------------------------------


def test_ray_not_installed_names_the_install_command(
    crash_flag: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    before = data_snapshot(repo)
    with pytest.raises(ConfigError, match=r"pip install 'llmhyper-feast\[ray\]'"):
        jobs.train_warm(repo, with_engine(load_settings(repo), "ray"), progress=False)
    assert data_snapshot(repo) == before


def test_unreachable_cluster_fails_before_writing(crash_flag: Path, repo: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    settings = with_engine(load_settings(repo), "ray", address=address)
    before = data_snapshot(repo)
    for run in (
        lambda: jobs.train_warm(repo, settings, progress=False),
        lambda: jobs.materialize(repo, settings, progress=False),
    ):
        with pytest.raises(UnavailableError, match=f"ray.address={address}.*nothing was written"):
            run()
    assert data_snapshot(repo) == before


def test_engine_settings_are_validated(repo: Path) -> None:
    with pytest.raises(ConfigError, match="'engine'.*local, ray"):
        load_settings(repo).with_overrides(engine="spark")
    with pytest.raises(ConfigError, match="ray.address must be host:port"):
        load_settings(repo).with_overrides(**{"ray.address": "no-port"})
    assert load_settings(repo).with_overrides(engine="ray").engine == "ray"
