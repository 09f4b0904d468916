"""Kill `llmhyper materialize` mid-generation with SIGKILL, then resume it.

The fake OpenAI server runs in its own process (tests/support/serve_fake_openai.py) and logs
every request body, so the test can tell which ads each run asked about.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.fake_openai import fake_weight

from llmhyper_feast import jobs
from llmhyper_feast.config import load_settings
from llmhyper_feast.generation.runner import read_log
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store import online
from llmhyper_feast.store.layout import RepoLayout

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NEW_AD = re.compile(r"New ad to model:\nTitle: (.*)")
MODEL = "fake-kill-resume"
DELAY_MS = 300


def start_server(requests_log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.serve_fake_openai",
            "--delay-ms",
            str(DELAY_MS),
            "--requests-log",
            str(requests_log),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("ready "):
        proc.kill()
        raise AssertionError(f"fake server did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, line.split()[1]


def materialize_cmd(repo: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llmhyper_feast",
        "materialize",
        "--repo",
        str(repo),
        "--llm",
        "openai",
        "--concurrency",
        "1",
        "--batch-size",
        "10",  # two calls per ad, whatever the repo's llmhyper.yaml says
        "--quiet",
    ]


def child_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMHYPER_", "OPENAI_"))}
    env.update(
        OPENAI_BASE_URL=url,
        OPENAI_API_KEY="test-key",
        OPENAI_MODEL=MODEL,
        FEAST_USAGE="False",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def requested_titles(requests_log: Path) -> list[str]:
    # the server may be mid-write: only newline-terminated lines are complete
    lines = requests_log.read_text().split("\n")[:-1] if requests_log.exists() else []
    out = []
    for line in lines:
        user = next(m for m in json.loads(line)["body"]["messages"] if m["role"] == "user")
        out.append(NEW_AD.search(user["content"]).group(1))
    return out


# two CLI generations with a kill between (~2 minutes); the write-point kills of tests/reliability stay default
@pytest.mark.slow
def test_sigkill_mid_generation_leaves_feast_untouched_and_resume_finishes(demo_copy: Path, tmp_path: Path) -> None:
    repo = demo_copy
    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    _, ads = fa.read_ads(store, status="active")
    active, titles = ads["ad_id"].tolist(), dict(zip(ads["ad_id"], ads["title"]))
    assert len(set(titles.values())) == len(active) > 8  # more than one generation chunk; titles name the ads
    log_dir = RepoLayout(repo).generation_log
    offline_path = repo / "data" / "generated_ad_weights.parquet"
    requests_log = tmp_path / "requests.jsonl"
    server, url = start_server(requests_log)
    proc = None
    try:
        # --- run 1: killed once the first chunk of ads is in the generation log
        proc = subprocess.Popen(
            materialize_cmd(repo),
            env=child_env(url),
            start_new_session=True,
            stdout=open(tmp_path / "run1.out", "w"),
            stderr=open(tmp_path / "run1.err", "w"),
        )
        deadline = time.monotonic() + 150
        while not list(log_dir.glob("part-*.parquet")):
            assert proc.poll() is None, f"materialize exited early: {(tmp_path / 'run1.err').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no generation-log part appeared in time"
            time.sleep(0.02)
        # then wait for the next chunk's first request, so the kill lands with HTTP calls in flight
        in_first_part = len(read_log(log_dir, latest=False))
        while len(requested_titles(requests_log)) <= 2 * in_first_part:  # 20 features, 10 per call
            assert proc.poll() is None and time.monotonic() < deadline, "the next chunk never started"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL

        before = read_log(log_dir, latest=False)
        finished = set(before["ad_id"])
        assert 0 < len(finished) < len(active), "the kill must land mid-run"
        assert len(before) == len(finished)
        first_run_titles = requested_titles(requests_log)
        # nothing partial in Feast: neither the offline source nor the online store has any row
        assert pd.read_parquet(offline_path).empty
        assert not online.get_ad_weights(store, active, schema).found.any()

        # --- run 2: to completion
        done = subprocess.run(materialize_cmd(repo), env=child_env(url), capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        remaining = set(active) - finished
        assert f"generated {len(remaining)} ads; wrote {len(active)} rows" in done.stdout
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        server.terminate()
        server.wait(timeout=30)

    # finished ads were not asked again; the rest were
    second_run_titles = requested_titles(requests_log)[len(first_run_titles) :]
    assert second_run_titles and set(second_run_titles) <= {titles[a] for a in remaining}
    assert all(first_run_titles.count(titles[a]) == 2 for a in finished)  # 20 features, 10 per call

    log = read_log(log_dir, latest=False)
    assert sorted(log["ad_id"]) == sorted(active)  # one log row per ad: nothing regenerated
    runs = log.set_index("ad_id")["run_id"]
    assert runs[list(finished)].nunique() == 1 and runs[list(remaining)].nunique() == 1
    assert runs[list(finished)].iloc[0] != runs[list(remaining)].iloc[0]
    fake = np.array([fake_weight(n) for n in schema.names])
    assert (log["origin"] == "llm").all()
    for weights in log["weights"]:
        np.testing.assert_allclose(weights, fake)

    # exactly one stored row per active ad, offline and online, holding the fake weights' direction
    # (the norm comes from calibration.scale)
    offline = pd.read_parquet(offline_path)
    assert offline["ad_id"].value_counts().to_dict() == {a: 1 for a in active}
    assert (offline["origin"] == "llm").all() and (offline["llm_model"] == f"openai:{MODEL}").all()
    unit = fake / np.linalg.norm(fake)
    for weights in offline["weights"]:
        np.testing.assert_allclose(weights / np.linalg.norm(weights), unit, atol=1e-6)
    got = online.get_ad_weights(fa.open_store(repo), active, schema)
    assert got.found.all()
    np.testing.assert_allclose(got.weights, np.stack(offline.set_index("ad_id").loc[active, "weights"]), atol=1e-7)
    assert {m["origin"] for m in got.meta} == {"llm"}
    settings = load_settings(repo).with_overrides(
        llm={"name": "openai", "options": {"model": MODEL, "api_key": "x"}}, **{"generation.batch_size": 10}
    )
    table = jobs.status(repo, settings).set_index("ad_id")
    assert set(table.loc[active, "state"]) == {"cold-current"}
