"""Batch generation end to end: jobs/batch.py -> real openai SDK -> the fake server's Batch API.

The fake server answers each ad from its title (``responder``), so a custom_id mapped back to
the wrong request gives the wrong ad's weights. Each test uses its own model name: cache keys,
input hashes and log rows of one test never satisfy another's.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.fake_openai import FakeOpenAI
from support.repos import clone_repo

from llmhyper_feast import jobs
from llmhyper_feast.config import load_settings
from llmhyper_feast.jobs import batch as batch_job
from llmhyper_feast.store import feast_adapter as fa

pytestmark = pytest.mark.integration

NEW_AD = re.compile(r"New ad to model:\nTitle: (.*)")


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One private writable copy for the module (tests keep apart by model name)."""
    return clone_repo(demo_repo, tmp_path_factory.mktemp("openai_batch") / "repo")


@pytest.fixture(scope="module")
def ads(repo: Path) -> list[str]:
    _, df = fa.read_ads(fa.open_store(repo))
    active = df.loc[df["status"] == "active", "ad_id"].tolist()
    return active[:4]


def by_title(body: dict, keys: list[str], choice: int) -> dict[str, float]:
    """A deterministic answer that depends on the ad in the prompt, the feature and the choice."""
    content = next(m for m in body["messages"] if m["role"] == "user")["content"]
    text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
    title = NEW_AD.search(text).group(1)
    return {k: round(((zlib.crc32(f"{title}|{k}".encode()) + 37 * choice) % 201 - 100) / 100, 2) for k in keys}


def settings_for(repo: Path, url: str, model: str, **options):
    llm = {
        "name": "openai",
        "options": {"base_url": url, "api_key": "test", "model": model, "max_retries": 1, "timeout_s": 5, **options},
    }
    gen = {"generation.shots": 3, "generation.samples": 2, "generation.batch_size": 10, "generation.concurrency": 2}
    return load_settings(repo).with_overrides(llm=llm, **gen)


def run(repo: Path, settings, ad_ids: list[str], **kw) -> batch_job.BatchReport:
    return batch_job.run(repo, settings, ad_ids=ad_ids, progress=False, poll_s=0.0, **kw)


def weights(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    return {r.ad_id: np.asarray(r.weights) for r in rows.itertuples()}


def test_batch_gives_the_online_weights_and_maps_shuffled_output_back(repo: Path, ads: list[str]) -> None:
    with FakeOpenAI(responder=by_title) as server:
        online = jobs.generate(repo, settings_for(repo, server.base_url, "m-online"), ad_ids=ads, progress=False)
        online_calls = server.calls
        assert online_calls == 2 * len(ads) and (online["origin"] == "llm").all()

        report = run(repo, settings_for(repo, server.base_url, "m-batch"), ads)

        assert server.calls == online_calls  # batch mode made no online call
        assert server.batches_created == 1 and server.batch_lines_run == 2 * len(ads)
        assert report.submitted == 2 * len(ads) and report.ingested == 2 * len(ads) and not report.pending_ads
        rows = report.rows
        assert sorted(rows["ad_id"]) == sorted(ads) and (rows["origin"] == "llm").all()
        assert (rows["calls"] == 0).all() and (rows["samples"] == 2).all()
        want, got = weights(online), weights(rows)
        assert len({tuple(v) for v in want.values()}) == len(ads)  # each ad gets its own answer
        for ad_id in ads:
            np.testing.assert_allclose(got[ad_id], want[ad_id], atol=1e-12)

        # the output file really came back in another order than the input
        (entry,) = server.batches.values()
        sent = [json.loads(line)["custom_id"] for line in server.files[entry["batch"]["input_file_id"]].splitlines()]
        back = [json.loads(line)["custom_id"] for line in server.files[entry["batch"]["output_file_id"]].splitlines()]
        assert sorted(sent) == sorted(back) and sent != back
        body = json.loads(server.files[entry["batch"]["input_file_id"]].splitlines()[0])["body"]
        assert body["n"] == 2 and body["model"] == "m-batch" and body["response_format"]["type"] == "json_schema"

        # nothing left to do: a re-run neither creates a batch nor calls
        again = run(repo, settings_for(repo, server.base_url, "m-batch"), ads)
        assert again.submitted == 0 and again.rows.empty and server.batches_created == 1
        assert server.calls == online_calls


def test_a_killed_run_resumes_the_same_batch(repo: Path, ads: list[str]) -> None:
    with FakeOpenAI(responder=by_title) as server:
        settings = settings_for(repo, server.base_url, "m-resume")

        def killed(record: dict) -> None:
            raise KeyboardInterrupt("killed while waiting")

        with pytest.raises(KeyboardInterrupt):
            run(repo, settings, ads, on_poll=killed)
        (record,) = [r for r in batch_job.load_records(repo) if r["model"] == "m-resume"]
        assert record["batch_id"] == "batch_fake1" and record["status"] in batch_job.OPEN
        assert (
            "waiting for LLM batch batch_fake1" in jobs.status(repo, settings).set_index("ad_id").loc[ads[0], "reason"]
        )

        report = run(repo, settings, ads)
        assert server.batches_created == 1 and report.resumed == ["batch_fake1"] and report.submitted == 0
        assert server.calls == 0 and server.batch_lines_run == 2 * len(ads)
        assert sorted(report.rows["ad_id"]) == sorted(ads) and (report.rows["origin"] == "llm").all()


def test_a_run_killed_inside_batches_create_adopts_its_batch(repo: Path, ads: list[str]) -> None:
    with FakeOpenAI(responder=by_title) as server:
        settings = settings_for(repo, server.base_url, "m-adopt")
        batch_job.submit(repo, settings, ad_ids=ads[:2], progress=False)
        # what a kill after the server created the batch, before the record was updated, leaves on disk
        records = batch_job.load_records(repo)
        mine = next(r for r in records if r["model"] == "m-adopt")
        mine.update(status="submitting", batch_id=None, input_file_id=None)
        batch_job._save(repo, records)

        report = run(repo, settings, ads[:2])
        assert server.batches_created == 1 and report.resumed == ["batch_fake1"] and report.submitted == 0
        assert sorted(report.rows["ad_id"]) == sorted(ads[:2]) and server.calls == 0


def test_failed_then_expired_batches_leave_ads_pending_and_status_names_them(repo: Path, ads: list[str]) -> None:
    with FakeOpenAI(responder=by_title) as server:
        settings = settings_for(repo, server.base_url, "m-faults")
        server.script_batches("failed", "expired")

        failed = run(repo, settings, ads)
        assert failed.rows.empty and sorted(failed.pending_ads) == sorted(ads)
        record = [r for r in batch_job.load_records(repo) if r["model"] == "m-faults"][-1]
        assert record["status"] == "failed" and "fake: the batch failed" in record["error"]
        table = jobs.status(repo, settings).set_index("ad_id")
        assert (table.loc[ads, "state"] == "cold-missing").all()
        assert all("LLM batch batch_fake1 failed" in r for r in table.loc[ads, "reason"])

        expired = run(repo, settings, ads)  # submits again; the server answers the first half only
        assert server.batches_created == 2 and expired.ingested == len(ads)
        done, pending = sorted(expired.rows["ad_id"]), sorted(expired.pending_ads)
        assert len(done) == len(pending) == len(ads) // 2 and sorted(done + pending) == sorted(ads)
        table = jobs.status(repo, settings).set_index("ad_id")
        assert all("LLM batch batch_fake2 expired" in r for r in table.loc[pending, "reason"])

        last = run(repo, settings, ads)  # only the pending ads' requests go into the third batch
        assert server.batches_created == 3 and last.submitted == len(pending) * 2
        assert sorted(last.rows["ad_id"]) == pending and not last.pending_ads
        assert server.calls == 0


def test_vllm_run_batch_results_file_is_ingested_through_the_cli(
    repo: Path, ads: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from llmhyper_feast.cli import cli

    with FakeOpenAI(responder=by_title) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setenv("LLMHYPER_LLM__OPTIONS__BASE_URL", server.base_url)
        flags = ["--repo", str(repo), "--llm", "openai", "--model", "m-vllm", "--shots", "3", "--samples", "2"]
        flags += ["--batch-size", "10", "--concurrency", "2", *[x for a in ads for x in ("--ads", a)]]
        runner = CliRunner()
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        written = runner.invoke(cli, ["batch", "submit", *flags, "--write-only", str(inp), "--quiet"])
        assert written.exit_code == 0, written.output
        assert f"wrote {inp}" in written.output and server.batches_created == 0
        assert len(inp.read_text().splitlines()) == 2 * len(ads)
        out.write_text(server.run_batch_file(inp.read_text(), style="vllm"))
        assert "status_code" not in out.read_text().splitlines()[0]  # the bare vLLM shape

        done = runner.invoke(
            cli, ["batch", "collect", *flags, "--batch-results", str(out), "--quiet", "--format", "json"]
        )
        assert done.exit_code == 0, done.output
        doc = json.loads(done.stdout)
        assert doc["ingested"] == 2 * len(ads) and doc["generated"] == len(ads) and doc["origins"] == {"llm": len(ads)}
        assert server.calls == 0 and doc["online_calls"] == 0

        rows = batch_job.load_records(repo)[-1]
        assert rows["source"] == str(out.resolve()) and sorted(rows["ads"]) == sorted(ads)
        from llmhyper_feast.generation.runner import read_log
        from llmhyper_feast.store.layout import RepoLayout

        log = read_log(RepoLayout(repo).generation_log, latest=False)
        log = log[log["llm_model"] == "openai:m-vllm"]
        names = fa.read_feature_schema(fa.open_store(repo)).names
        _, df = fa.read_ads(fa.open_store(repo))
        title = dict(zip(df["ad_id"], df["title"]))
        assert sorted(log["ad_id"]) == sorted(ads)
        for r in log.itertuples():
            prompt = {"messages": [{"role": "user", "content": f"New ad to model:\nTitle: {title[r.ad_id]}"}]}
            want = np.mean([list(by_title(prompt, names, j).values()) for j in range(2)], axis=0)
            np.testing.assert_allclose(r.weights, want, atol=1e-12)


def test_error_lines_and_bad_answers_are_asked_online(repo: Path, ads: list[str]) -> None:
    with FakeOpenAI(responder=by_title) as server:
        settings = settings_for(repo, server.base_url, "m-lines")
        server.batch_shuffle = False
        server.batch_garbage_lines = 1
        server.script_batch_lines("server_error", "reject_n", "malformed")  # 500, 400, an invalid answer

        report = run(repo, settings, ads)

        assert report.line_errors == 2 and report.malformed == 1 and report.ingested == 2 * len(ads) - 2
        # 500 and 400 lines: asked online once each; the malformed answer: one online re-ask
        assert server.calls == 3
        rows = report.rows.set_index("ad_id")
        assert (rows["origin"] == "llm").all() and sorted(rows.index) == sorted(ads)
        assert rows.loc[ads[1], "retried"] and not rows.loc[ads[2:], "retried"].any()
