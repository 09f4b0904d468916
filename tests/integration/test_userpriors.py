"""User priors end to end: fake OpenAI server -> LLM lists -> Feast view (offline + online), incremental
re-runs, a SIGKILLed run resumed, and the evaluation against the baselines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from support.fake_openai import FakeOpenAI
from support.repos import clone_repo

from llmhyper_feast.cli import main as cli_main
from llmhyper_feast.config import load_settings
from llmhyper_feast.jobs.priors import evaluate_user_priors, generate_user_priors, priors_context, read_user_priors
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.layout import RepoLayout
from llmhyper_feast.userpriors.generate import read_log

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "fake-priors"


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the demo world (which holds advertisers and user histories)."""
    return clone_repo(demo_repo, tmp_path_factory.mktemp("userpriors") / "repo")


def settings_for(repo: Path, fake: FakeOpenAI, **priors: object):
    return load_settings(repo).with_overrides(
        llm={"name": "openai", "options": {"model": MODEL, "base_url": fake.base_url, "api_key": "test-key"}},
        **{"generation.concurrency": 1},
        **{f"user_priors.{k}": v for k, v in priors.items()},
    )


def some_users(repo: Path, n: int, skip: int = 0) -> list[str]:
    history = pd.read_parquet(RepoLayout(repo).user_history)
    return sorted(history["user_id"].unique())[skip : skip + n]


def stored(repo: Path) -> pd.DataFrame:
    return pd.read_parquet(repo / "data" / "user_llm_priors.parquet")


def test_generate_writes_the_view_then_reruns_only_changed_users(repo: Path) -> None:
    users = some_users(repo, 12)
    with FakeOpenAI(default="enum") as fake:
        settings = settings_for(repo, fake, chunk_size=5)
        report = generate_user_priors(repo, settings, users=users, progress=False)
        assert (report.inferred, report.calls, report.written, report.origins) == (12, 12, 12, {"llm": 12})

        # what the LLM saw: the pool as the schema's enum, K ids asked for, interests from the registry
        body = fake.requests[0]
        schema = body["response_format"]["json_schema"]["schema"]["properties"]
        pool = schema["advertisers"]["items"]["enum"]
        assert schema["advertisers"]["minItems"] == min(20, len(pool)) and len(pool) > 20
        assert set(schema["interests"]["items"]["enum"]) <= set(fa.read_feature_schema(fa.open_store(repo)).names)
        prompt = body["messages"][1]["content"]
        assert "Conversions, newest first:" in prompt and "population mean" in prompt

        # offline: one row per user; online through the SDK: the same lists (the enum's first K ids)
        offline = stored(repo).set_index("user_id")
        assert sorted(offline.index) == users and (offline["origin"] == "llm").all()
        assert (offline["llm_model"] == f"openai:{MODEL}").all()
        online = read_user_priors(repo, users)
        assert online["advertisers"][0] == pool[:20]  # the first request was users[0]'s
        log = read_log(RepoLayout(repo).user_priors_log).set_index("user_id")
        for i, user in enumerate(users):
            assert online["advertisers"][i] == list(log.loc[user, "advertisers"])
            assert online["origin"][i] == "llm" and len(online["advertisers"][i]) == 20
            assert online["profile_hash"][i] == log.loc[user, "profile_hash"]

        # a second run: nothing changed, no call, nothing written
        calls = fake.calls
        again = generate_user_priors(repo, settings, users=users, progress=False)
        assert (again.unchanged, again.inferred, again.written, fake.calls) == (12, 0, 0, calls)

        # one user has a new conversion: only that user is asked again and rewritten
        path = RepoLayout(repo).user_history
        history = pd.read_parquet(path)
        last = history[history["user_id"] == users[3]].iloc[-1]
        new = last.to_frame().T.assign(
            event="conversion", event_timestamp=last["event_timestamp"] - pd.Timedelta(hours=1)
        )
        pd.concat([history, new], ignore_index=True).to_parquet(path, index=False)
        third = generate_user_priors(repo, settings, users=users, progress=False)
        assert (third.unchanged, third.inferred, third.written, fake.calls) == (11, 1, 1, calls + 1)
        latest = fa.read_latest(fa.open_store(repo), "user_llm_priors").set_index("user_id")
        assert latest.loc[users[3], "profile_hash"] != offline.loc[users[3], "profile_hash"]
        assert (latest.drop(index=users[3])["profile_hash"] == offline.drop(index=users[3])["profile_hash"]).all()

        # an answer with an unknown id twice: the baseline replaces it, and the row says why
        fake.script("enum_unknown", "enum_unknown")
        other = some_users(repo, 1, skip=len(users))
        forced = generate_user_priors(repo, settings, users=other, progress=False)
        assert forced.origins == {"fallback": 1} and fake.calls == calls + 3  # asked, then re-asked once
        row = fa.read_latest(fa.open_store(repo), "user_llm_priors").set_index("user_id").loc[other[0]]
        assert row["origin"] == "fallback" and "unknown advertisers" in row["reason"]
        assert row["llm_model"] == f"openai:{MODEL} -> baseline:frequent" and len(row["advertisers"]) == 20


def child_env(url: str, kill_at: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMHYPER_", "OPENAI_"))}
    env.update(
        OPENAI_BASE_URL=url,
        OPENAI_API_KEY="test-key",
        OPENAI_MODEL=MODEL,
        FEAST_USAGE="False",
        HF_HUB_OFFLINE="1",
        LLMHYPER_USER_PRIORS__CHUNK_SIZE="6",
        LLMHYPER_CONCURRENCY="1",
    )
    if kill_at:
        env[fa.TEST_KILL_ENV] = kill_at
    return env


@pytest.mark.slow  # two CLI subprocesses, each importing Feast
def test_sigkilled_run_resumes_without_missing_or_repeated_users(demo_repo: Path, tmp_path: Path) -> None:
    repo = clone_repo(demo_repo, tmp_path / "repo")
    users = some_users(repo, 18, skip=40)
    args = [sys.executable, "-m", "llmhyper_feast", "priors", "generate", "--repo", str(repo), "--llm", "openai"]
    args += [a for u in users for a in ("--user", u)] + ["--quiet"]
    with FakeOpenAI(default="enum") as fake:
        # run 1 dies before writing the log part of its second chunk (its answers are already cached)
        killed = subprocess.run(
            args,
            cwd=ROOT,
            env=child_env(fake.base_url, "priors-before-part:1"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        log = read_log(RepoLayout(repo).user_priors_log)
        assert sorted(log["user_id"]) == users[:6]  # the first chunk only
        assert stored(repo).empty  # nothing reached Feast
        assert fake.calls == 12

        done = subprocess.run(
            args, cwd=ROOT, env=child_env(fake.base_url, None), capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "6 unchanged, 12 inferred" in done.stdout and "wrote 18 rows" in done.stdout
        assert fake.calls == 18  # the killed chunk's 6 answers came from the cache: no user asked twice

    log = read_log(RepoLayout(repo).user_priors_log)
    assert sorted(log["user_id"]) == users  # each user once
    offline = stored(repo)
    assert sorted(offline["user_id"]) == users
    online = read_user_priors(repo, users)
    assert all(a is not None and len(a) == 20 for a in online["advertisers"])


def test_evaluate_compares_the_llm_with_the_baselines(repo: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAI(default="enum") as fake:
        settings = settings_for(repo, fake, eval_users=40, bootstrap=200)
        _, ctx, _ = priors_context(repo, settings, None, back_days=settings.user_priors.window_days)
        assert ctx.events["event_timestamp"].max() <= ctx.as_of  # profiles and baselines see the past only
        result = evaluate_user_priors(repo, settings, progress=False)
        assert fake.calls == 40
    assert result["users"] == 40 and pd.Timestamp(result["snapshot"]) == ctx.as_of
    assert set(result["methods"]) == {"llm", "popularity", "frequent", "cooccurrence"}
    for m in result["methods"].values():
        for k in ("recall@1", "recall@5", "recall@20"):
            assert 0 <= m[k]["lo"] <= m[k]["mean"] <= m[k]["hi"] <= 1
        assert m["recall@1"]["mean"] <= m["recall@5"]["mean"] <= m["recall@20"]["mean"]
    assert result["llm"]["origins"] == {"llm": 40}
    # the fake answers the pool in order: the user's own advertisers first, so it beats popularity
    assert result["methods"]["llm"]["recall@5"]["mean"] > result["methods"]["popularity"]["recall@5"]["mean"]
    assert json.loads(RepoLayout(repo).user_priors_evaluation.read_text()) == json.loads(json.dumps(result))

    cli_main(["priors", "evaluate", "--repo", str(repo), "--llm", "none", "--format", "json", "--quiet"])
    printed = json.loads(capfd.readouterr().out)
    assert (
        set(printed["methods"]) == {"popularity", "frequent", "cooccurrence"}
        and printed["llm"]["source"] == "baseline:frequent"
    )
