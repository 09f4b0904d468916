"""A run that cannot reach its backend exits non-zero and keeps the stored LLM weights unless asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.fake_openai import FakeOpenAI
from support.repos import clone_repo

from llmhyper_feast.store import feast_adapter as fa

pytestmark = pytest.mark.integration


@pytest.fixture
def repo(demo_repo: Path, tmp_path: Path) -> Path:
    return clone_repo(demo_repo, tmp_path / "repo")


def _run(repo: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMHYPER_", "OPENAI_"))}
    env.update(
        FEAST_USAGE="False",
        HF_HUB_OFFLINE="1",
        OPENAI_API_KEY="test-key",
        LLMHYPER_LLM="openai",
        LLMHYPER_MODEL="fake-model",
        LLMHYPER_LLM__OPTIONS__BASE_URL=url,
        LLMHYPER_LLM__OPTIONS__MAX_RETRIES="0",
    )
    cmd = [sys.executable, "-m", "llmhyper_feast", "materialize", "--repo", str(repo), "--quiet", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _stored(repo: Path):
    store = fa.open_store(repo)
    gen = fa.read_latest(store, fa.view_for_role(store, fa.GENERATED_ROLE).name)
    return gen.set_index("ad_id")[["origin", "weights_version"]].sort_index()


@pytest.mark.slow  # three materialize subprocesses
def test_rejected_key_exits_5_and_keeps_llm_weights_unless_asked(repo: Path) -> None:
    with FakeOpenAI() as good:
        first = _run(repo, good.base_url)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _stored(repo)
    assert len(before) and (before["origin"] == "llm").all()

    with FakeOpenAI(default="auth") as down:  # new inputs (--samples 2) but the key is rejected
        failed = _run(repo, down.base_url, "--samples", "2")
        assert down.calls >= 1
    assert failed.returncode == 5, failed.stderr[-2000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("Error (backend):") and "HTTP 401" in last and "stored LLM weights were kept" in last
    after = _stored(repo).reindex(before.index)
    assert after.equals(before)  # nothing overwritten by the prior

    with FakeOpenAI(default="auth") as down:
        forced = _run(repo, down.base_url, "--samples", "2", "--allow-fallback")
    assert forced.returncode == 5
    replaced = _stored(repo).reindex(before.index)
    changed = replaced["weights_version"] != before["weights_version"]
    # generation stops at the first chunk that hits a fatal error: those ads now serve the prior
    assert changed.any() and (replaced.loc[changed, "origin"] == "fallback").all()
    assert replaced.loc[~changed].equals(before.loc[~changed])


def test_unreachable_server_exits_5(repo: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    proc = _run(repo, url)  # nothing listens there
    assert proc.returncode == 5 and "Could not reach" in proc.stderr
    stored = _stored(repo)
    assert (stored["origin"] == "fallback").all()  # ads without weights get the prior, and the run says so
