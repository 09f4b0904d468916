"""Kill runs mid-write, run two at once, kill an export: the next run always finds a consistent repo.

Kills are SIGKILLs at precise points of ``feast_adapter.write_view``, injected with the test
hook ``LLMHYPER_TEST_KILL_AT`` (``offline-write:<bytes>``, ``between-writes``, ``after-online``),
or, for exports, by a child process that patches ``os.replace`` to kill itself. Each test
counts the kills it survived; ``-s`` prints them.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from exporters import AdModelSet, export_models, read_manifest
from llmhyper_feast import jobs
from llmhyper_feast.cli import main as cli_main
from llmhyper_feast.config import load_settings
from llmhyper_feast.errors import DataError, RepoLockedError
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store import journal, online
from llmhyper_feast.store.layout import RepoLayout, backup_of
from llmhyper_feast.store.lock import repo_lock

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GENERATED, WARM = "generated_ad_weights", "warm_ad_weights"
# bytes of the new history file written when the kill hits: none, part of it, all but the last byte
OFFLINE_KILLS = ["offline-write:0", "offline-write:4096", f"offline-write:{10**9}"]


def child_env(kill_at: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMHYPER_", "OPENAI_"))}
    env.update(FEAST_USAGE="False", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if kill_at:
        env[fa.TEST_KILL_ENV] = kill_at
    return env


def llmhyper(*args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "llmhyper_feast", *args]
    return subprocess.run(cmd, cwd=ROOT, env=child_env(kill_at), capture_output=True, text=True, timeout=600)


def materialize_args(repo: Path) -> list[str]:
    return ["materialize", "--repo", str(repo), "--llm", "none", "--quiet"]


def assert_killed(proc: subprocess.CompletedProcess[str], point: str) -> None:
    assert proc.returncode == -signal.SIGKILL, (
        f"the run was not killed at {point} (exit {proc.returncode}): {proc.stderr[-1500:]}"
    )


def knn(repo: Path):
    return load_settings(repo).with_overrides(**{"llm.name": "none"})


def history(repo: Path, view: str) -> pd.DataFrame:
    return pq.read_table(repo / "data" / f"{view}.parquet").to_pandas()  # raises if unreadable


def active_ads(repo: Path) -> list[str]:
    _, ads = fa.read_ads(fa.open_store(repo), status="active")
    return sorted(ads["ad_id"])


def generated_versions(repo: Path) -> tuple[dict[str, str], dict[str, str | None]]:
    """(offline latest weights_version, online weights_version) per active ad."""
    store = fa.open_store(repo)
    ids = active_ads(repo)
    latest = fa.read_latest(store, GENERATED).set_index("ad_id")
    offline = {a: str(latest.loc[a, "weights_version"]) for a in ids if a in latest.index}
    got = online.get_ad_weights(store, ids)
    return offline, {a: got.meta[i]["weights_version"] for i, a in enumerate(ids)}


def warm_trained_at(repo: Path) -> tuple[dict[str, pd.Timestamp], dict[str, pd.Timestamp]]:
    """(offline latest trained_at, online trained_at) per warm ad, in whole seconds as the online store keeps them."""
    store = fa.open_store(repo)
    latest = fa.read_latest(store, WARM)
    ids = latest["ad_id"].tolist()
    data = fa.get_online(store, [f"{WARM}:trained_at"], [{"ad_id": a} for a in ids])
    offline = {a: pd.Timestamp(t).floor("s") for a, t in zip(ids, latest["trained_at"], strict=True)}
    return offline, {a: pd.Timestamp(t).floor("s") for a, t in zip(ids, data["trained_at"], strict=True)}


def assert_clean_data_dir(repo: Path) -> None:
    data = repo / "data"
    assert not list(data.glob("*.tmp")) and not list(data.glob(".*.tmp")), "temporary files left in data/"
    assert not RepoLayout(repo).pending_writes.exists(), "a pending write was not finished"


@pytest.mark.slow  # five killed subprocess runs
def test_materialize_survives_kills_at_every_write_point(demo_copy: Path) -> None:
    survived = tried = 0
    assert len(history(demo_copy, GENERATED)) == 0
    for point in OFFLINE_KILLS:
        tried += 1
        assert_killed(llmhyper(*materialize_args(demo_copy), kill_at=point), point)
        assert len(history(demo_copy, GENERATED)) == 0, f"{point}: a killed offline write changed the history"
        survived += 1

    tried += 1
    assert_killed(llmhyper(*materialize_args(demo_copy), kill_at="between-writes"), "between-writes")
    ads = active_ads(demo_copy)
    assert sorted(history(demo_copy, GENERATED)["ad_id"]) == ads  # offline written once, whole
    offline, online_before = generated_versions(demo_copy)
    assert set(online_before.values()) == {None}  # the online half never happened
    assert sorted(journal.pending(RepoLayout(demo_copy))[GENERATED].entities) == [(a,) for a in ads]

    report = jobs.materialize(demo_copy, knn(demo_copy), progress=False)
    assert report.written == 0  # offline was already current: only the journal can converge online
    offline, online_after = generated_versions(demo_copy)
    assert online_after == offline and len(offline) == len(ads)
    assert_clean_data_dir(demo_copy)
    survived += 1

    tried += 1  # killed after both writes, before the journal is cleared: the next run only re-syncs
    assert_killed(
        llmhyper(*materialize_args(demo_copy), "--force", kill_at="after-online"),
        "after-online",
    )
    hist = history(demo_copy, GENERATED)
    assert (hist.groupby("ad_id").size() == 2).all() and sorted(hist["ad_id"].unique()) == ads
    assert jobs.materialize(demo_copy, knn(demo_copy), progress=False).written == 0
    offline, online_after = generated_versions(demo_copy)
    assert online_after == offline
    assert_clean_data_dir(demo_copy)
    survived += 1
    print(f"materialize: survived {survived}/{tried} kills")
    assert survived == tried


@pytest.mark.slow  # four killed subprocess runs
def test_train_warm_survives_kills_and_export_converges_the_stores(demo_copy: Path, tmp_path: Path) -> None:
    survived = tried = 0
    before = (demo_copy / "data" / f"{WARM}.parquet").read_bytes()
    rows_before = len(history(demo_copy, WARM))
    for point in OFFLINE_KILLS:
        tried += 1
        assert_killed(llmhyper("train-warm", "--repo", str(demo_copy), "--quiet", kill_at=point), point)
        assert (demo_copy / "data" / f"{WARM}.parquet").read_bytes() == before, f"{point}: history changed"
        offline, on = warm_trained_at(demo_copy)
        assert offline == on
        survived += 1

    tried += 1
    assert_killed(
        llmhyper("train-warm", "--repo", str(demo_copy), "--quiet", kill_at="between-writes"), "between-writes"
    )
    hist = history(demo_copy, WARM)
    assert len(hist) == 2 * rows_before  # the new run's rows, appended whole
    assert hist.groupby("ad_id")["event_timestamp"].nunique().eq(2).all()  # one current row per ad
    offline, on = warm_trained_at(demo_copy)
    assert offline != on  # offline new, online old: what the journal must repair

    from llmhyper_feast.serving.export import export_repo

    export_repo(demo_copy, tmp_path / "onnx", per_ad=False)
    offline, on = warm_trained_at(demo_copy)
    assert offline == on
    assert_clean_data_dir(demo_copy)
    survived += 1
    print(f"train-warm: survived {survived}/{tried} kills")
    assert survived == tried


def test_unreadable_history_names_the_file_and_the_fix(demo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = demo_copy / "data" / f"{WARM}.parquet"
    assert backup_of(path).exists()  # the version before train-warm's write
    path.write_bytes(path.read_bytes()[:100])  # a torn write, as Feast's in-place rewrite left it
    store = fa.open_store(demo_copy)
    with pytest.raises(DataError, match="unreadable") as err:
        fa.read_latest(store, WARM)
    assert str(path) in str(err.value) and f"cp {backup_of(path)} {path}" in str(err.value)

    backup_of(path).unlink()
    with pytest.raises(SystemExit) as exit_:
        cli_main(["status", "--repo", str(demo_copy), "--llm", "none"])
    assert exit_.value.code == 3
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert f"mv {path} {path}.corrupt" in message and "llmhyper train-warm" in message


HOLD_LOCK = """
import sys
from llmhyper_feast.store.lock import repo_lock
with repo_lock(sys.argv[1], "materialize"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_second_materialize_is_refused_and_a_killed_holder_frees_the_lock(demo_copy: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(demo_copy)],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 120)
        assert ready and holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        second = llmhyper(*materialize_args(demo_copy))
        assert second.returncode == 4, second.stderr[-1500:]
        assert f"pid {holder.pid}" in second.stderr and "`llmhyper materialize`" in second.stderr
        assert "released automatically" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert len(history(demo_copy, GENERATED)) == 0  # refused before any work
    finally:
        holder.kill()  # SIGKILL: the kernel drops the flock with the process
        holder.wait()
    report = jobs.materialize(demo_copy, knn(demo_copy), progress=False)
    assert report.written == len(active_ads(demo_copy))
    assert history(demo_copy, GENERATED).groupby("ad_id").size().eq(1).all()


@pytest.mark.slow
def test_two_concurrent_materialize_runs_write_once(demo_copy: Path) -> None:
    cmd = [sys.executable, "-m", "llmhyper_feast", *materialize_args(demo_copy)]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.pid, *p.communicate(timeout=600), p.returncode) for p in procs]
    codes = sorted(r[3] for r in results)
    print(f"concurrent materialize exit codes: {codes}")
    assert codes in ([0, 0], [0, 4]), results
    for pid, _, err, code in results:
        if code == 4:
            other = next(r[0] for r in results if r[0] != pid)
            assert f"pid {other}" in err
    hist = history(demo_copy, GENERATED)
    assert sorted(hist["ad_id"]) == active_ads(demo_copy)  # one row per ad: nothing paid or written twice


def test_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(empty_repo: Path) -> None:
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            with repo_lock(empty_repo, "generate"):
                pass
        except BaseException as exc:
            errors.append(exc)

    with repo_lock(empty_repo, "materialize"), repo_lock(empty_repo, "generate"):  # re-entered
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], RepoLockedError)
    assert f"pid {os.getpid()}" in str(errors[0]) and "`llmhyper materialize`" in str(errors[0])
    with repo_lock(empty_repo, "export"):  # released on exit
        pass


KILL_EXPORT = """
import os, signal, sys
import exporters.writer as writer
out, kill_at, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
real, calls = os.replace, [0]

def replace(src, dst):
    if str(dst).startswith(out):
        calls[0] += 1
        if calls[0] == kill_at or (kill_at == 0 and str(dst).endswith("manifest.json")):
            os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)

writer.os.replace = replace
if what == "repo":
    from llmhyper_feast.serving.export import export_repo
    export_repo(sys.argv[4], out)
else:
    import pickle
    from exporters import export_models
    export_models(pickle.load(open(what, "rb")), out, layout=sys.argv[4])
"""


def kill_export(out: Path, kill_at: int, what: str, *extra: str) -> None:
    cmd = [sys.executable, "-c", KILL_EXPORT, str(out), str(kill_at), what, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert_killed(proc, f"export rename {kill_at}")


def own_files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}


def test_killed_export_is_repaired_by_the_next_export(demo_copy: Path, tmp_path: Path) -> None:
    from llmhyper_feast.serving.export import export_repo

    out = tmp_path / "onnx"
    export_repo(demo_copy, out)
    jobs.materialize(demo_copy, knn(demo_copy), progress=False)  # cold ads: LR_cold -> generated weights
    survived = tried = 0
    for kill_at in (37, 0):  # mid-way through the files, just before the manifest
        tried += 1
        kill_export(out, kill_at, "repo", str(demo_copy))
        assert list(out.rglob(".*.tmp")), "the kill should leave the file being renamed behind"
        manifest = export_repo(demo_copy, out)
        assert not list(out.rglob("*.tmp"))
        read_manifest(out).verify_files(out)
        assert own_files(out) == set(manifest.files)
        survived += 1
    print(f"export: survived {survived}/{tried} kills")


def small_model_set(ids: list[str]) -> AdModelSet:
    rng = np.random.default_rng(0)
    return AdModelSet(
        feature_names=["a", "b", "c"],
        feature_hash="h",
        ad_ids=ids,
        weights=rng.uniform(-1, 1, (len(ids), 3)).astype(np.float32),
        bias=np.full(len(ids), -2.0, np.float32),
        ad_meta=[{"source": "generated"} for _ in ids],
        producer_name="tests",
        producer_version="0",
    )


@pytest.mark.parametrize("layout", ["flat", "triton"])
def test_files_of_a_killed_export_that_the_next_manifest_does_not_list_are_removed(tmp_path: Path, layout: str) -> None:
    out = tmp_path / "out"
    export_models(small_model_set(["x1", "x2"]), out, layout=layout)
    bigger = tmp_path / "bigger.pkl"
    bigger.write_bytes(pickle.dumps(small_model_set(["x1", "x2", "gone"])))
    kill_export(out, 0, str(bigger), layout)  # killed just before its manifest replaces the old one
    gone = out / ("ads/gone/model.onnx" if layout == "flat" else "ad-gone/1/model.onnx")
    assert gone.exists() and list(out.glob(".manifest.json.*.tmp"))
    manifest = export_models(small_model_set(["x1", "x2"]), out, layout=layout)
    assert not list(out.rglob("*.tmp"))
    manifest.verify_files(out)
    assert own_files(out) == set(manifest.files)
