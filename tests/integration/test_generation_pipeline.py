"""Generation and materialization end to end: pipeline -> openai backend -> real SDK -> fake server.

Every test talks HTTP to tests/support/fake_openai.FakeOpenAI on 127.0.0.1 through the real
``openai`` SDK. The tests share one writable copy of the demo repo; each uses its own model
name (part of every input hash and cache key), so one test's log rows and cached answers
never satisfy another's.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.fake_openai import FakeOpenAI, fake_weight
from support.repos import clone_repo

from llmhyper_feast import jobs
from llmhyper_feast.calibration.solve import calibrate
from llmhyper_feast.config import load_settings
from llmhyper_feast.generation.runner import read_log
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store import online
from llmhyper_feast.store.layout import RepoLayout

pytestmark = pytest.mark.integration

NEW_AD = re.compile(r"New ad to model:\nTitle: (.*)")


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy whose ads point at the copy's own image files (the session repo stays untouched)."""
    path = clone_repo(demo_repo, tmp_path_factory.mktemp("generation_pipeline") / "repo")
    content = path / "data" / "ad_content.parquet"
    ads = pd.read_parquet(content)
    ads["image_uri"] = [str(path / "data" / "images" / Path(u).name) for u in ads["image_uri"]]
    assert all(Path(u).is_file() for u in ads["image_uri"])
    ads.to_parquet(content, index=False)
    return path


@pytest.fixture(scope="module")
def world(repo: Path) -> dict:
    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    ads, df = fa.read_ads(store)
    active = df.loc[df["status"] == "active", "ad_id"].tolist()
    unique = ~df["title"].duplicated(keep=False)  # requests are matched to ads by title
    retired = df.loc[(df["status"] == "retired") & unique, "ad_id"].tolist()
    assert unique[df["status"] == "active"].all()
    titles = dict(zip(df["ad_id"], df["title"]))
    warm = fa.read_latest(store, fa.view_for_role(store, fa.WARM_ROLE).name)["ad_id"].tolist()
    return {
        "names": schema.names,
        "active": active,
        "retired": retired,
        "titles": titles,
        "warm": warm,
        "images": {a.ad_id: a.image_uri for a in ads},
    }


def settings_for(repo: Path, url: str, model: str, *, max_retries: int = 1, timeout_s: float = 5, **generation):
    """The repo's settings with the openai backend on ``url`` and ``generation.<key>`` overrides."""
    llm = {
        "name": "openai",
        "options": {
            "base_url": url,
            "api_key": "test",
            "model": model,
            "max_retries": max_retries,
            "timeout_s": timeout_s,
        },
    }
    return load_settings(repo).with_overrides(llm=llm, **{f"generation.{k}": v for k, v in generation.items()})


def fake_vector(names: list[str], choices: int = 1) -> np.ndarray:
    """What good answers average to: the mean over choices 0..choices-1 of fake_weight."""
    return np.mean([[fake_weight(n, j) for n in names] for j in range(choices)], axis=0)


def user_text(body: dict) -> str:
    """The text of the first user message (the prompt before any re-ask turns)."""
    content = next(m for m in body["messages"] if m["role"] == "user")["content"]
    return content if isinstance(content, str) else "\n".join(p["text"] for p in content if p["type"] == "text")


def user_content(body: dict):
    return next(m for m in body["messages"] if m["role"] == "user")["content"]


def requests_by_title(bodies: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for body in bodies:
        out.setdefault(NEW_AD.search(user_text(body)).group(1), []).append(body)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def generate(repo: Path, settings, ad_ids: list[str], **kw) -> pd.DataFrame:
    rows = jobs.generate(repo, settings, ad_ids=ad_ids, progress=False, **kw)
    return rows.set_index("ad_id") if len(rows) else rows


# --- 1. happy path, cache, idempotency -------------------------------------------------------------


def test_generate_writes_llm_weights_and_a_rerun_calls_nothing(repo: Path, world: dict) -> None:
    names, titles = world["names"], world["titles"]
    # three cold ads and one warm ad (its own trained model is in the index: it must not retrieve itself)
    ad_ids = [*world["active"][:3], world["retired"][0]]
    assert ad_ids[-1] in world["warm"]
    with FakeOpenAI() as server:
        settings = settings_for(repo, server.base_url, "fake-happy", shots=3, samples=2, batch_size=10, concurrency=2)
        rows = generate(repo, settings, ad_ids)

        assert sorted(rows.index) == sorted(ad_ids)
        assert (rows["origin"] == "llm").all() and (rows["fallback_reason"] == "").all()
        expected = fake_vector(names, choices=2)
        spread = np.std([[fake_weight(n, j) for n in names] for j in range(2)], axis=0)
        assert spread.max() > 0  # the two choices differ, so a mean of one sample would be caught
        for ad_id, row in rows.iterrows():
            np.testing.assert_allclose(row["weights"], expected, atol=1e-12)
            np.testing.assert_allclose(row["weights_std"], spread, atol=1e-12)
            assert row["samples"] == 2 and row["calls"] == 2 and not row["retried"]
            neighbours = json.loads(row["neighbours"])
            assert len(neighbours) == 5 and ad_id not in neighbours and set(neighbours) <= set(world["warm"])
            assert list(row["similarities"]) == sorted(row["similarities"], reverse=True)

        # what the server saw: one call per (ad, batch of 10 features), n=2, a strict schema per batch
        batches = [names[:10], names[10:]]
        assert server.calls == len(ad_ids) * len(batches)
        by_title = requests_by_title(server.requests)
        assert sorted(by_title) == sorted(titles[a] for a in ad_ids)
        for ad_id, row in rows.iterrows():
            bodies = by_title[titles[ad_id]]
            fmt = [b["response_format"] for b in bodies]
            assert all(f["type"] == "json_schema" and f["json_schema"]["strict"] is True for f in fmt)
            assert sorted(f["json_schema"]["schema"]["required"] for f in fmt) == sorted(batches)
            assert all(f["json_schema"]["schema"]["additionalProperties"] is False for f in fmt)
            assert all(b["n"] == 2 and b["model"] == "fake-happy" for b in bodies)
            # the fake server counts prompt tokens as len(json(messages)) // 4 + 1 per call
            assert row["prompt_tokens"] == sum(len(json.dumps(b["messages"])) // 4 + 1 for b in bodies) > 0
            # 3 shots: the prompt shows the three nearest neighbours, nearest first, and no fourth
            text = user_text(bodies[0])
            shown = json.loads(row["neighbours"])[:3]
            positions = [text.index(f"Title: {titles[n]}") for n in shown]
            assert positions == sorted(positions) and "Example 3 " in text and "Example 4 " not in text

        log = read_log(RepoLayout(repo).generation_log).set_index("ad_id")
        assert (log.loc[ad_ids, "origin"] == "llm").all()
        assert log.loc[ad_ids, "run_id"].nunique() == 1

        calls = server.calls
        again = jobs.generate(repo, settings, ad_ids=ad_ids, progress=False)
        assert again.empty and server.calls == calls  # input hashes unchanged: nothing to do

        forced = generate(repo, settings, ad_ids, force=True)
        assert server.calls == calls  # every answer comes from the cache
        assert (forced["calls"] == 0).all() and (forced["origin"] == "llm").all()
        for ad_id in ad_ids:
            np.testing.assert_allclose(forced.loc[ad_id, "weights"], rows.loc[ad_id, "weights"])
            assert forced.loc[ad_id, "prompt_tokens"] == rows.loc[ad_id, "prompt_tokens"]


# --- 2. faults -------------------------------------------------------------------------------------


def _one_call_settings(repo: Path, url: str, model: str, **kw):
    """All features in one call, one request at a time: the n-th server call is predictable."""
    opts = dict(shots=3, samples=1, batch_size=0, concurrency=1)
    opts.update(kw.pop("generation", {}))
    return settings_for(repo, url, model, **kw, **opts)


def test_malformed_twice_falls_back_to_the_prior_and_keeps_the_good_ad(repo: Path, world: dict) -> None:
    good, bad = world["active"][3:5]
    with FakeOpenAI() as server:
        server.script("good", "malformed", "malformed")
        rows = generate(repo, _one_call_settings(repo, server.base_url, "fake-malformed"), [good, bad])
        assert server.behaviours_used == ["good", "malformed", "malformed"]
        assert user_text(server.requests[2]) == user_text(server.requests[1])  # the re-ask of the same ad
    assert rows.loc[good, "origin"] == "llm"
    np.testing.assert_allclose(rows.loc[good, "weights"], fake_vector(world["names"]))
    row = rows.loc[bad]
    assert row["origin"] == "fallback" and row["retried"] and row["samples"] == 0
    assert "malformed JSON" in row["fallback_reason"] and "No valid answer after one re-ask" in row["fallback_reason"]
    np.testing.assert_allclose(row["weights"], row["prior_weights"])
    assert np.linalg.norm(row["prior_weights"]) > 0
    log = read_log(RepoLayout(repo).generation_log).set_index("ad_id")
    assert log.loc[good, "origin"] == "llm" and log.loc[bad, "origin"] == "fallback"


def test_malformed_then_good_is_llm_and_marked_retried(repo: Path, world: dict) -> None:
    ad = world["active"][5]
    with FakeOpenAI() as server:
        server.script("malformed")
        rows = generate(repo, _one_call_settings(repo, server.base_url, "fake-reask"), [ad])
        assert server.calls == 2
        assert server.requests[1]["messages"][-1]["content"].startswith("Your previous answer was rejected")
    row = rows.loc[ad]
    assert row["origin"] == "llm" and row["retried"] and row["calls"] == 2 and row["fallback_reason"] == ""
    np.testing.assert_allclose(row["weights"], fake_vector(world["names"]))


def test_401_is_recorded_as_a_fallback_naming_the_key(repo: Path, world: dict) -> None:
    ads = world["active"][6:8]
    with FakeOpenAI(default="auth") as server:
        rows = generate(repo, _one_call_settings(repo, server.base_url, "fake-auth", max_retries=3), ads)
        assert server.calls == len(ads)  # a rejected key is not retried, nor re-asked
    for ad in ads:
        reason = rows.loc[ad, "fallback_reason"]
        assert rows.loc[ad, "origin"] == "fallback"
        assert "HTTP 401" in reason and "OPENAI_API_KEY" in reason and "rejected the API key" in reason
        np.testing.assert_allclose(rows.loc[ad, "weights"], rows.loc[ad, "prior_weights"])


def test_429_storm_that_clears_gives_llm_weights(repo: Path, world: dict) -> None:
    ad = world["active"][8]
    with FakeOpenAI() as server:
        server.script("rate_limit", "rate_limit", "rate_limit")
        rows = generate(repo, _one_call_settings(repo, server.base_url, "fake-429", max_retries=4), [ad])
        assert server.behaviours_used == ["rate_limit"] * 3 + ["good"]
    assert rows.loc[ad, "origin"] == "llm" and not rows.loc[ad, "retried"]
    np.testing.assert_allclose(rows.loc[ad, "weights"], fake_vector(world["names"]))


def test_hanging_server_falls_back_with_a_timeout_reason(repo: Path, world: dict) -> None:
    ad = world["active"][9]
    with FakeOpenAI(default="hang", hang_s=5) as server:
        rows = generate(
            repo, _one_call_settings(repo, server.base_url, "fake-hang", timeout_s=0.3, max_retries=0), [ad]
        )
    row = rows.loc[ad]
    assert row["origin"] == "fallback"
    assert "did not answer within 0.3 s" in row["fallback_reason"] and "timeout_s" in row["fallback_reason"]
    np.testing.assert_allclose(row["weights"], row["prior_weights"])


def test_unreachable_endpoint_falls_back_naming_the_url(repo: Path, world: dict) -> None:
    ad = world["active"][10]
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    rows = generate(repo, _one_call_settings(repo, url, "fake-unreachable", max_retries=0), [ad])
    row = rows.loc[ad]
    assert row["origin"] == "fallback" and row["calls"] == 0
    assert url in row["fallback_reason"] and "Could not reach" in row["fallback_reason"]
    assert "OPENAI_BASE_URL" in row["fallback_reason"]


def test_truncated_twice_falls_back_naming_the_token_limit(repo: Path, world: dict) -> None:
    ad = world["active"][11]
    with FakeOpenAI(default="truncated") as server:
        rows = generate(repo, _one_call_settings(repo, server.base_url, "fake-truncated"), [ad])
        first, reask = server.requests
        assert reask["max_tokens"] == 2 * first["max_tokens"]  # the re-ask doubles the budget
    row = rows.loc[ad]
    assert row["origin"] == "fallback" and row["retried"]
    assert "cut off at max_tokens" in row["fallback_reason"] and "finish_reason 'length'" in row["fallback_reason"]
    np.testing.assert_allclose(row["weights"], row["prior_weights"])


def test_an_ad_that_fell_back_on_a_backend_error_is_retried_by_the_next_run(repo: Path, world: dict) -> None:
    ad = world["active"][4]
    with FakeOpenAI(default="auth") as server:
        first = generate(repo, _one_call_settings(repo, server.base_url, "fake-retry-later", max_retries=0), [ad])
    assert first.loc[ad, "origin"] == "fallback"
    with FakeOpenAI() as server:  # the key is fixed
        again = generate(repo, _one_call_settings(repo, server.base_url, "fake-retry-later", max_retries=0), [ad])
        assert server.calls == 1
    assert again.loc[ad, "origin"] == "llm"


# --- 3. images ---------------------------------------------------------------------------------------


def test_missing_image_is_noted_and_sent_as_text_only(repo: Path, world: dict) -> None:
    missing, present = world["active"][12:14]
    image = Path(world["images"][missing])
    assert image.parent.parent == repo / "data"  # the copy's own file, not the session repo's
    image.unlink()
    with FakeOpenAI() as server:
        settings = _one_call_settings(repo, server.base_url, "fake-image", generation={"send_image": True})
        rows = generate(repo, settings, [missing, present])
        by_title = requests_by_title(server.requests)
    (sent_missing,) = by_title[world["titles"][missing]]
    (sent_present,) = by_title[world["titles"][present]]
    assert isinstance(user_content(sent_missing), str) and "Image: attached" not in user_content(sent_missing)
    parts = user_content(sent_present)
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 1 and images[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert (rows["origin"] == "llm").all()
    assert "image unreadable" in rows.loc[missing, "image_note"] and image.name in rows.loc[missing, "image_note"]
    assert rows.loc[present, "image_note"] == ""
    np.testing.assert_allclose(rows.loc[missing, "weights"], fake_vector(world["names"]))


# --- 4. shots: zero, more than the warm set, no warm set -----------------------------------------------


def test_zero_shot_prompts_have_no_examples(repo: Path, world: dict) -> None:
    ads = world["active"][14:16]
    with FakeOpenAI() as server:
        rows = generate(repo, _one_call_settings(repo, server.base_url, "fake-zero-shot", generation={"shots": 0}), ads)
        texts = [user_text(b) for b in server.requests]
    assert len(texts) == len(ads)
    for text in texts:
        assert "Examples: none" in text and "Trained weights" not in text and "Example 1" not in text
    for ad in ads:
        assert rows.loc[ad, "origin"] == "llm"
        np.testing.assert_allclose(rows.loc[ad, "weights"], fake_vector(world["names"]))
        # neighbours are still retrieved for the prior and alpha, only not shown
        assert len(json.loads(rows.loc[ad, "neighbours"])) == 5 and np.linalg.norm(rows.loc[ad, "prior_weights"]) > 0


@contextmanager
def warm_subset(repo: Path, keep: int):
    """Keep only the first ``keep`` rows of the warm weights source; restore it afterwards."""
    path = repo / "data" / "warm_ad_weights.parquet"
    saved = path.with_name("warm_ad_weights.saved")
    shutil.copy2(path, saved)
    try:
        pd.read_parquet(path).iloc[:keep].to_parquet(path, index=False)
        yield
    finally:
        shutil.copy2(saved, path)
        saved.unlink()


def test_more_shots_than_warm_ads_uses_every_warm_ad(repo: Path, world: dict) -> None:
    ad = world["active"][0]
    with warm_subset(repo, 7), FakeOpenAI() as server:
        warm_ids = pd.read_parquet(repo / "data" / "warm_ad_weights.parquet")["ad_id"].tolist()
        rows = generate(
            repo, _one_call_settings(repo, server.base_url, "fake-50-shots", generation={"shots": 50}), [ad]
        )
        (body,) = server.requests
    assert len(warm_ids) == 7
    assert sorted(json.loads(rows.loc[ad, "neighbours"])) == sorted(warm_ids)
    text = user_text(body)
    assert "Examples: 7 running ads" in text and "Example 7 " in text and "Example 8 " not in text
    assert rows.loc[ad, "origin"] == "llm"
    np.testing.assert_allclose(rows.loc[ad, "weights"], fake_vector(world["names"]))


def test_no_warm_ads_generates_zero_shot_and_materialize_serves_lr_cold_for_failures(repo: Path, world: dict) -> None:
    good, bad = world["active"][1:3]
    names = world["names"]
    with warm_subset(repo, 0), FakeOpenAI() as server:
        settings = _one_call_settings(repo, server.base_url, "fake-no-warm", generation={"shots": 3})
        rows = generate(repo, settings, [good])
        server.default = "malformed"
        rows = pd.concat([rows, generate(repo, settings, [bad])])
        assert "Examples: none" in user_text(server.requests[0])
        server.default = "good"
        report = jobs.materialize(repo, settings, progress=False)

        for ad in (good, bad):
            assert json.loads(rows.loc[ad, "neighbours"]) == [] and list(rows.loc[ad, "similarities"]) == []
            np.testing.assert_array_equal(rows.loc[ad, "prior_weights"], np.zeros(len(names)))
        assert rows.loc[good, "origin"] == "llm"
        np.testing.assert_allclose(rows.loc[good, "weights"], fake_vector(names))
        assert rows.loc[bad, "origin"] == "fallback" and "malformed JSON" in rows.loc[bad, "fallback_reason"]

        store = fa.open_store(repo)
        schema = fa.read_feature_schema(store)
        lr_cold = jobs.load_lr_cold(repo)
        assert report.written >= len(world["active"])
        got = online.get_ad_weights(store, [good, bad], schema)
        assert got.found.all()
        offline = fa.read_latest(store, "generated_ad_weights").set_index("ad_id")
        # the good answer is served (no neighbours: alpha comes from LR_cold's mean CTR)
        assert got.meta[0]["origin"] == offline.loc[good, "origin"] == "llm"
        fake = fake_vector(names)
        np.testing.assert_allclose(got.weights[0], fake / np.linalg.norm(fake), atol=1e-6)
        assert got.meta[0]["alpha"] == pytest.approx(lr_cold.mean_ctr, rel=1e-6)
        # the failed ad has only a zero prior: LR_cold is served instead, calibrated to the same alpha
        assert got.meta[1]["origin"] == offline.loc[bad, "origin"] == "fallback"
        assert "served LR_cold" in got.meta[1]["reason"] and "malformed JSON" in got.meta[1]["reason"]
        _, users = fa.read_user_matrix(
            store, schema, sample=settings.calibration.user_sample, seed=settings.generation.seed
        )
        expected = calibrate(lr_cold.weights, users, lr_cold.mean_ctr)
        np.testing.assert_allclose(got.weights[1], expected.weights, atol=1e-6)
        assert got.bias[1] == pytest.approx(expected.delta, abs=1e-4)
        log = read_log(RepoLayout(repo).generation_log).set_index("ad_id")
        assert log.loc[bad, "origin"] == "fallback" and "malformed JSON" in log.loc[bad, "fallback_reason"]
