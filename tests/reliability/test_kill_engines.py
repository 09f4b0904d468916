"""SIGKILL ``--engine ray`` runs (and ``priors generate``) at random points: the next run leaves a consistent repo.

Each killed run is a CLI subprocess in its own session; the kill takes its whole process group.
The kill points are seeded: a delay drawn within the first 85% of the time a full run took here
(measured first), so a kill may land while Feast or Ray start, while workers fit or call the LLM, or while the
driver writes. After each kill the test checks that no process of the run is left (Ray's
raylet, GCS and workers carry the run's own RAY_TMPDIR in their environment), then re-runs and
checks: every ad has exactly one current row offline and the same version online, the generation
log holds one row per ad for the run's model, and the re-run asked the fake OpenAI server only
what the answer cache did not hold. Kills survived / tried are printed (``-s``).

Every case is marked slow: even the single deterministic one (``materialize --engine ray`` killed
once answers are cached and workers have calls in flight, then finished in-process) takes about
60 s here, mostly the CLI's Feast and Ray start.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from support.fake_openai import FakeOpenAI

from llmhyper_feast import jobs
from llmhyper_feast.config import Settings, load_settings
from llmhyper_feast.generation.cache import AnswerCache
from llmhyper_feast.generation.runner import read_log
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store import online
from llmhyper_feast.store.layout import RepoLayout

pytestmark = pytest.mark.integration

pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'llmhyper-feast[ray]'")

ROOT = Path(__file__).resolve().parents[2]
SEEDS = (0, 1, 2)
GENERATED, WARM = "generated_ad_weights", "warm_ad_weights"
CALLS_PER_AD = 2  # the demo's 20 features, 10 per call
DELAY_MS = 150  # per fake LLM answer: generation takes long enough for a kill to land inside it
KILL_SHARE = 0.85
LEFTOVER_TIMEOUT = 60.0  # Ray's processes die with their driver (kernel fate sharing); allow a slow machine


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short RAY_TMPDIR of the test's own (Ray's socket paths must stay under 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="lhk-", dir="/tmp"))
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def child_env(ray_tmp: Path, url: str = "", model: str = "") -> dict[str, str]:
    """The environment of a CLI run: Ray in local mode with 2 CPUs under ``ray_tmp``; the fake server's LLM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMHYPER_", "OPENAI_", "RAY_"))}
    env.update(
        FEAST_USAGE="False",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        RAY_TMPDIR=str(ray_tmp),
        RAY_AUTH_MODE="disabled",
        LLMHYPER_RAY__NUM_CPUS="2",
    )
    if url:
        env.update(
            OPENAI_API_KEY="test",
            LLMHYPER_LLM="openai",
            LLMHYPER_MODEL=model,
            LLMHYPER_LLM__OPTIONS__BASE_URL=url,
            LLMHYPER_LLM__OPTIONS__MAX_RETRIES="1",
            LLMHYPER_GENERATION__BATCH_SIZE="10",
            LLMHYPER_GENERATION__SAMPLES="1",
            LLMHYPER_CONCURRENCY="2",
        )
    return env


def openai_settings(repo: Path, url: str, model: str) -> Settings:
    """In-process settings asking exactly what :func:`child_env`'s runs ask (same prompts, same cache keys)."""
    llm = {"name": "openai", "options": {"base_url": url, "api_key": "test", "model": model, "max_retries": 1}}
    return load_settings(repo).with_overrides(
        llm=llm, **{"generation.batch_size": 10, "generation.samples": 1, "generation.concurrency": 2}
    )


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmhyper_feast", *args, "--quiet"]


def run_to_end(cmd: list[str], env: dict[str, str]) -> float:
    """Run ``cmd`` to completion; its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.perf_counter() - t0


def start(cmd: list[str], env: dict[str, str], err: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err.open("wb")
    )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def run_and_kill(cmd: list[str], env: dict[str, str], delay: float, err: Path) -> bool:
    """Start ``cmd`` and SIGKILL its process group after ``delay`` s; False when it finished first."""
    proc = start(cmd, env, err)
    try:
        proc.wait(timeout=delay)  # the kill point is a time, not an event: nothing to synchronise with
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return True
    assert proc.returncode == 0, err.read_text()[-3000:]
    return False


def kill_delay(seed: int, full: float) -> float:
    """The seeded kill time: within the first 85% of a full run's time (a later run may go faster)."""
    return random.Random(seed).uniform(0.0, KILL_SHARE * full)


def run_processes(ray_tmp: Path) -> list[str]:
    """Live processes started by a run using ``ray_tmp`` (the driver, raylet, GCS, workers, reaper)."""
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                status = (proc / "status").read_text()
                if "\nState:\tZ" not in status:  # a zombie has already died
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{proc.name} {cmdline[:120]}")
        except OSError:  # exited while we looked, or not ours to read
            continue
    return found


def assert_no_processes_left(ray_tmp: Path) -> None:
    """Every process of the killed run is gone (Ray's die with their driver, within LEFTOVER_TIMEOUT)."""
    deadline = time.monotonic() + LEFTOVER_TIMEOUT
    left = run_processes(ray_tmp)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)  # polling a condition with a deadline
        left = run_processes(ray_tmp)
    assert not left, f"processes of the killed run still alive after {LEFTOVER_TIMEOUT:.0f} s: {left}"


def history(repo: Path, view: str) -> pd.DataFrame:
    return pq.read_table(repo / "data" / f"{view}.parquet").to_pandas()


def assert_one_current_row(repo: Path, view: str, ads: list[str]) -> pd.DataFrame:
    """Each of ``ads`` has exactly one row at its latest event_timestamp offline; those rows are returned."""
    hist = history(repo, view)
    hist = hist[hist["ad_id"].isin(ads)]
    latest = hist.groupby("ad_id")["event_timestamp"].transform("max")
    current = hist[hist["event_timestamp"] == latest]
    counts = current.groupby("ad_id").size()
    assert sorted(counts.index) == sorted(ads), f"ads without a row in {view}: {sorted(set(ads) - set(counts.index))}"
    assert counts.eq(1).all(), f"ads with several current rows in {view}: {counts[counts > 1].to_dict()}"
    return current.set_index("ad_id")


def assert_generated_consistent(repo: Path) -> list[str]:
    """Every active ad: one current generated row offline, and that weights_version online."""
    store = fa.open_store(repo)
    _, ads = fa.read_ads(store, status="active")
    ids = sorted(ads["ad_id"])
    current = assert_one_current_row(repo, GENERATED, ids)
    got = online.get_ad_weights(store, ids)
    served = {a: got.meta[i]["weights_version"] for i, a in enumerate(ids)}
    assert served == {a: str(current.loc[a, "weights_version"]) for a in ids}, "online differs from offline"
    assert not RepoLayout.of(repo).pending_writes.exists(), "a pending write was not finished"
    return ids


def assert_warm_consistent(repo: Path, ads: list[str]) -> None:
    """Every trained ad: one current warm row offline, and its trained_at online."""
    current = assert_one_current_row(repo, WARM, ads)
    data = fa.get_online(fa.open_store(repo), [f"{WARM}:trained_at"], [{"ad_id": a} for a in ads])
    served = {a: pd.Timestamp(t).floor("s") for a, t in zip(ads, data["trained_at"], strict=True)}
    assert served == {a: pd.Timestamp(current.loc[a, "trained_at"]).floor("s") for a in ads}
    assert not RepoLayout.of(repo).pending_writes.exists(), "a pending write was not finished"


def asked(server: FakeOpenAI, since: int = 0) -> list[str]:
    """The messages of each request the server got (from the ``since``-th on), as canonical JSON."""
    return [json.dumps(r["messages"], sort_keys=True) for r in server.requests[since:]]


def assert_log_once(repo: Path, model: str, ads: list[str]) -> None:
    log = read_log(RepoLayout.of(repo).generation_log, latest=False)
    mine = log[log["llm_model"] == f"openai:{model}"]
    assert not mine["ad_id"].duplicated().any(), f"duplicate log rows: {mine['ad_id'].value_counts().head().to_dict()}"
    assert sorted(mine["ad_id"]) == ads


def report(what: str, survived: int, tried: int, finished_first: int = 0) -> None:
    extra = f" ({finished_first} run(s) finished before their kill time)" if finished_first else ""
    print(f"\n{what}: survived {survived}/{tried} SIGKILLs{extra}")


# --- one Ray kill with answers cached and calls in flight ---------------------------------------


@pytest.mark.slow  # ~60 s: a CLI run starting Feast and Ray, then an in-process re-run
def test_killed_ray_materialize_is_finished_without_repeating_a_cached_call(
    demo_copy: Path, ray_tmp: Path, tmp_path: Path
) -> None:
    repo, model = demo_copy, "fake-kill-ray"
    cache = AnswerCache(RepoLayout.of(repo).llm_cache)
    before = len(cache)
    with FakeOpenAI(delay_ms=DELAY_MS) as server:
        proc = start(
            cli("materialize", "--repo", str(repo), "--engine", "ray"),
            child_env(ray_tmp, server.base_url, model),
            tmp_path / "run.err",
        )
        try:  # kill once two answers are cached: workers are mid-generation, calls in flight
            deadline = time.monotonic() + 240
            while len(cache) < before + 2:
                assert proc.poll() is None, (tmp_path / "run.err").read_text()[-3000:]
                assert time.monotonic() < deadline, "no answer was cached in time"
                time.sleep(0.02)
            assert any("ray::" in p or "raylet" in p for p in run_processes(ray_tmp)), "the run is not on Ray"
        finally:
            if proc.poll() is None:
                kill_group(proc)
        assert proc.returncode == -signal.SIGKILL, "the run finished before the kill"
        assert_no_processes_left(ray_tmp)  # no worker keeps calling (or caching) after the kill
        cached = len(cache) - before
        killed_calls = server.calls
        assert pd.read_parquet(repo / "data" / f"{GENERATED}.parquet").empty  # nothing half-written in Feast

        result = jobs.materialize(repo, openai_settings(repo, server.base_url, model), progress=False)
        rerun = asked(server, killed_calls)

    ids = assert_generated_consistent(repo)
    needed = CALLS_PER_AD * len(ids)
    assert 2 <= cached <= killed_calls and result.written == len(ids)
    # each cached answer spared one call; nothing asked twice within the re-run
    assert len(rerun) == needed - cached and len(set(rerun)) == len(rerun)
    assert len(cache) - before == needed
    assert_log_once(repo, model, ids)
    report("materialize --engine ray (answers cached, calls in flight)", 1, 1)


# --- seeded random kill points ------------------------------------------------------------


@pytest.mark.slow  # seven CLI runs, each starting Feast and Ray
def test_train_warm_on_ray_survives_random_kills(demo_copy: Path, ray_tmp: Path, tmp_path: Path) -> None:
    repo = demo_copy
    cmd = cli("train-warm", "--repo", str(repo), "--engine", "ray")
    env = child_env(ray_tmp)
    full = run_to_end(cmd, env)
    trained = sorted(fa.read_latest(fa.open_store(repo), WARM)["ad_id"])
    survived = tried = finished_first = 0
    for seed in SEEDS:
        delay = kill_delay(seed, full)
        killed = run_and_kill(cmd, env, delay, tmp_path / f"kill{seed}.err")
        finished_first += not killed
        tried += killed
        assert_no_processes_left(ray_tmp)
        run_to_end(cmd, env)
        assert_no_processes_left(ray_tmp)
        assert_warm_consistent(repo, trained)
        assert RepoLayout.of(repo).lr_cold.exists()
        survived += killed
    report(f"train-warm --engine ray (full run {full:.1f} s)", survived, tried, finished_first)
    assert tried >= 2 and survived == tried


@pytest.mark.slow  # seven CLI runs, each starting Feast and Ray
def test_materialize_on_ray_survives_random_kills(demo_copy: Path, ray_tmp: Path, tmp_path: Path) -> None:
    repo = demo_copy
    cache = AnswerCache(RepoLayout.of(repo).llm_cache)
    survived = tried = finished_first = 0
    with FakeOpenAI(delay_ms=DELAY_MS) as server:

        def cmd() -> list[str]:
            return cli("materialize", "--repo", str(repo), "--engine", "ray")

        full = run_to_end(cmd(), child_env(ray_tmp, server.base_url, "fake-kill-ref"))
        ids = assert_generated_consistent(repo)
        needed = CALLS_PER_AD * len(ids)
        assert server.calls == needed
        for seed in SEEDS:
            model = f"fake-kill-{seed}"  # a new model: every ad is stale, the run asks everything anew
            env = child_env(ray_tmp, server.base_url, model)
            before, start_calls = len(cache), server.calls
            delay = kill_delay(seed, full)
            killed = run_and_kill(cmd(), env, delay, tmp_path / f"kill{seed}.err")
            finished_first += not killed
            tried += killed
            assert_no_processes_left(ray_tmp)
            cached = len(cache) - before
            mid = server.calls
            run_to_end(cmd(), env)
            assert_no_processes_left(ray_tmp)
            rerun = asked(server, mid)
            assert len(rerun) == needed - cached and len(set(rerun)) == len(rerun), (seed, cached, len(rerun))
            assert len(cache) - before == needed and mid - start_calls >= cached
            assert assert_generated_consistent(repo) == ids
            assert_log_once(repo, model, ids)
            survived += killed
    report(f"materialize --engine ray (full run {full:.1f} s)", survived, tried, finished_first)
    assert tried >= 2 and survived == tried


PRIORS_MODEL = "fake-kill-priors"


def priors_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMHYPER_", "OPENAI_"))}
    env.update(
        FEAST_USAGE="False",
        HF_HUB_OFFLINE="1",
        OPENAI_BASE_URL=url,
        OPENAI_API_KEY="test",
        OPENAI_MODEL=PRIORS_MODEL,
        LLMHYPER_USER_PRIORS__CHUNK_SIZE="6",
        LLMHYPER_CONCURRENCY="1",
    )
    return env


@pytest.mark.slow  # seven CLI runs
def test_priors_generate_survives_random_kills(demo_copy: Path, tmp_path: Path) -> None:
    """tests/integration/test_userpriors.py kills at one chosen point; these kills land anywhere."""
    from llmhyper_feast.userpriors.generate import read_log as read_priors_log

    repo = demo_copy
    users = sorted(pd.read_parquet(RepoLayout.of(repo).user_history)["user_id"].unique())
    cache = AnswerCache(RepoLayout.of(repo).llm_cache)
    survived = tried = finished_first = 0
    with FakeOpenAI(default="enum", delay_ms=DELAY_MS) as server:

        def cmd(chosen: list[str]) -> list[str]:
            base = ["priors", "generate", "--repo", str(repo), "--llm", "openai"]
            return cli(*base, *(a for u in chosen for a in ("--user", u)))

        full = run_to_end(cmd(users[:18]), priors_env(server.base_url))
        assert server.calls == 18
        for seed in SEEDS:
            chosen = users[18 * (seed + 1) : 18 * (seed + 2)]  # new users: each run has everything to ask
            before = len(cache)
            delay = kill_delay(seed, full)
            killed = run_and_kill(cmd(chosen), priors_env(server.base_url), delay, tmp_path / f"kill{seed}.err")
            finished_first += not killed
            tried += killed
            cached, mid = len(cache) - before, server.calls
            run_to_end(cmd(chosen), priors_env(server.base_url))
            rerun = asked(server, mid)
            assert len(rerun) == len(chosen) - cached and len(set(rerun)) == len(rerun), (seed, cached, len(rerun))
            log = read_priors_log(RepoLayout.of(repo).user_priors_log)
            assert sorted(log.loc[log["user_id"].isin(chosen), "user_id"]) == chosen, "a user missing or repeated"
            hist = history(repo, "user_llm_priors")
            hist = hist[hist["user_id"].isin(chosen)]
            latest = hist.groupby("user_id")["event_timestamp"].transform("max")
            current = hist[hist["event_timestamp"] == latest].groupby("user_id").size()
            assert sorted(current.index) == chosen and current.eq(1).all()
            assert not RepoLayout.of(repo).pending_writes.exists()
            survived += killed
    report(f"priors generate (full run {full:.1f} s)", survived, tried, finished_first)
    assert tried >= 2 and survived == tried
