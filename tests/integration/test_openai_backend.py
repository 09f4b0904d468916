"""The 'openai' backend through the real openai SDK against a fake OpenAI server on 127.0.0.1."""

from __future__ import annotations

import json
import socket

import pytest
from support.fake_openai import FakeOpenAI, fake_weight

from llmhyper_feast.backends.llm import get_backend
from llmhyper_feast.backends.llm.base import ChatRequest, is_fatal
from llmhyper_feast.errors import AnswerError, BackendError
from llmhyper_feast.generation.answers import answer_schema, request_weights
from llmhyper_feast.generation.cache import AnswerCache

pytestmark = pytest.mark.integration

NAMES = ("age_norm", "sports_interest", "gaming_interest", "fashion_interest", "tech_affinity")


@pytest.fixture
def server():
    with FakeOpenAI() as srv:
        yield srv


def backend_for(srv: FakeOpenAI, **options):
    opts = {"base_url": srv.base_url, "api_key": "sk-test", "model": "fake-model", "max_retries": 2, **options}
    return get_backend("openai", opts)


def req(i: int = 0, **kw) -> ChatRequest:
    return ChatRequest(
        messages=({"role": "system", "content": "Write weights."}, {"role": "user", "content": f"ad {i}"}),
        feature_names=NAMES,
        **kw,
    )


def expected(choice: int = 0) -> dict[str, float]:
    return {k: fake_weight(k, choice) for k in NAMES}


# --- good answers ----------------------------------------------------------------------------


def test_good_answers_with_n_in_one_call_and_a_strict_schema(server):
    backend = backend_for(server)
    (outcome,) = request_weights(backend, [req(n=3, temperature=0.5, seed=7)], progress=False)
    assert outcome.failed is None and not outcome.retried
    assert outcome.samples == [expected(0), expected(1), expected(2)]
    assert server.calls == 1
    body = server.requests[0]
    assert body["n"] == 3 and body["seed"] == 7 and body["temperature"] == 0.5 and body["model"] == "fake-model"
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == answer_schema(NAMES)
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False
    assert server.headers[0]["authorization"] == "Bearer sk-test"
    assert outcome.prompt_tokens == len(json.dumps(body["messages"])) // 4 + 1
    assert outcome.completion_tokens > 0 and outcome.calls == 1
    assert backend.stats.calls == 1 and backend.stats.prompt_tokens == outcome.prompt_tokens


def test_reasoning_variant_sends_its_schema_and_keeps_the_texts(server):
    (outcome,) = request_weights(backend_for(server), [req(reasoning=True)], progress=False)
    assert outcome.failed is None and outcome.samples == [expected(0)]
    assert set(outcome.reasoning[0]) == {"analysis", "alignment", "key_factors", "summary"}
    assert server.requests[0]["response_format"]["json_schema"]["schema"] == answer_schema(NAMES, reasoning=True)


def test_image_parts_reach_the_server_unchanged(server):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    content = [{"type": "text", "text": "The new ad:"}, image]
    request = ChatRequest(messages=({"role": "user", "content": content},), feature_names=NAMES)
    (outcome,) = request_weights(backend_for(server), [request], progress=False)
    assert outcome.failed is None
    assert server.requests[0]["messages"][0]["content"] == content


def test_code_fences_are_accepted_without_reask(server):
    server.default = "fenced"
    (outcome,) = request_weights(backend_for(server), [req()], progress=False)
    assert outcome.samples == [expected(0)] and not outcome.retried and server.calls == 1


def test_base_url_and_model_from_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    backend = get_backend("openai")
    assert backend.model_id == "env-model" and backend.base_url == server.base_url
    (outcome,) = request_weights(backend, [req()], progress=False)
    assert outcome.failed is None
    assert server.requests[0]["model"] == "env-model" and server.headers[0]["authorization"] == "Bearer sk-env"


# --- invalid answers: re-ask once, then fail ---------------------------------------------------


INVALID = {
    "malformed": "malformed JSON",
    "string_numbers": "not JSON numbers",
    "nan": "non-finite",
    "extra_key": "unexpected keys ['bonus_feature']",
    "missing_key": "missing keys ['tech_affinity']",
    "duplicate_key": "duplicate keys ['age_norm']",
    "out_of_range": "far beyond the examples' range +/-3",
    "refusal": "refusal",
    "empty": "empty",
    "truncated": "finish_reason 'length'",
}


@pytest.mark.parametrize("behaviour", sorted(INVALID))
def test_invalid_answer_is_reasked_with_the_error_then_accepted(server, behaviour):
    server.script(behaviour)
    (outcome,) = request_weights(backend_for(server), [req(max_tokens=300)], progress=False)
    assert outcome.failed is None and outcome.retried
    assert outcome.samples == [expected(0)]
    assert INVALID[behaviour] in outcome.errors[0]
    assert server.calls == 2 and outcome.calls == 2
    reask = server.requests[1]["messages"]
    assert reask[:2] == server.requests[0]["messages"]
    assert reask[-1]["role"] == "user" and reask[-1]["content"].startswith("Your previous answer was rejected because")
    assert INVALID[behaviour] in reask[-1]["content"]
    assert server.requests[1]["max_tokens"] == (600 if behaviour == "truncated" else 300)


@pytest.mark.parametrize("behaviour", ["string_numbers", "truncated", "refusal"])
def test_invalid_twice_fails_with_answer_error(server, behaviour):
    server.default = behaviour
    (outcome,) = request_weights(backend_for(server), [req()], progress=False)
    assert isinstance(outcome.failed, AnswerError) and outcome.samples == []
    assert outcome.retried and server.calls == 2 and len(outcome.errors) == 2
    assert INVALID[behaviour] in str(outcome.failed)


# --- transport errors -------------------------------------------------------------------------


def test_429_storm_that_clears_succeeds(server):
    server.script("rate_limit", "rate_limit")
    (outcome,) = request_weights(backend_for(server, max_retries=2), [req()], progress=False)
    assert outcome.failed is None and outcome.samples == [expected(0)]
    assert server.behaviours_used == ["rate_limit", "rate_limit", "good"]
    assert int(server.headers[-1]["x-stainless-retry-count"]) == 2


def test_permanent_429_ends_in_rate_limited_error(server):
    server.default = "rate_limit"
    (outcome,) = request_weights(backend_for(server, max_retries=3), [req()], progress=False)
    assert isinstance(outcome.failed, BackendError) and not isinstance(outcome.failed, AnswerError)
    assert "rate limited after 3 retries" in str(outcome.failed)
    assert server.calls == 4 and not outcome.retried


def test_5xx_is_retried_and_permanent_5xx_reported(server):
    server.script("server_error")
    (ok,) = request_weights(backend_for(server), [req()], progress=False)
    assert ok.failed is None and server.calls == 2
    server.default = "server_error"
    (bad,) = request_weights(backend_for(server, max_retries=1), [req(1)], progress=False)
    assert "HTTP 500 after 1 retries" in str(bad.failed) and server.calls == 4


def test_hanging_server_times_out(server):
    server.default = "hang"
    backend = backend_for(server, timeout_s=0.3, max_retries=1)
    (outcome,) = request_weights(backend, [req()], progress=False)
    assert isinstance(outcome.failed, BackendError)
    assert "did not answer within 0.3 s" in str(outcome.failed) and "timeout_s" in str(outcome.failed)
    assert server.calls == 2  # the first try and one retry


def test_401_names_the_env_var_and_is_not_retried(server):
    server.default = "auth"
    (outcome,) = request_weights(backend_for(server, max_retries=3), [req()], progress=False)
    assert "OPENAI_API_KEY" in str(outcome.failed) and "401" in str(outcome.failed)
    assert is_fatal(outcome.failed) and server.calls == 1 and not outcome.retried


def test_unreachable_server_names_the_base_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    backend = get_backend("openai", {"base_url": url, "api_key": "sk", "max_retries": 0})
    (outcome,) = request_weights(backend, [req()], progress=False)
    assert isinstance(outcome.failed, BackendError) and is_fatal(outcome.failed)
    assert url in str(outcome.failed) and "OPENAI_BASE_URL" in str(outcome.failed)


def test_missing_api_key_names_env_var_and_option(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError) as info:
        get_backend("openai", {"base_url": "http://127.0.0.1:9/v1"})
    assert "OPENAI_API_KEY" in str(info.value) and "'api_key'" in str(info.value)


def test_one_failure_does_not_lose_the_others(server):
    server.script("auth")
    outcomes = request_weights(backend_for(server), [req(0), req(1), req(2)], concurrency=1, progress=False)
    assert isinstance(outcomes[0].failed, BackendError)
    assert [o.failed for o in outcomes[1:]] == [None, None]


# --- parameters the server rejects ------------------------------------------------------------


def test_server_rejecting_n_falls_back_to_repeated_calls_and_remembers(server):
    server.default = "reject_n"
    backend = backend_for(server)
    (first,) = request_weights(backend, [req(n=3, seed=5)], progress=False)
    assert first.failed is None and len(first.samples) == 3 and first.calls == 3
    assert [r.get("n") for r in server.requests] == [3, None, None, None]
    assert [r["seed"] for r in server.requests[1:]] == [5, 6, 7]
    server.reset()
    request_weights(backend, [req(1, n=2)], progress=False)
    assert [r.get("n") for r in server.requests] == [None, None]


def test_use_n_false_never_sends_n(server):
    request_weights(backend_for(server, use_n=False), [req(n=2)], progress=False)
    assert [r.get("n") for r in server.requests] == [None, None]


def test_server_rejecting_response_format_is_asked_without_it(server):
    server.default = "reject_schema"
    server.keys = list(NAMES)
    (outcome,) = request_weights(backend_for(server), [req()], progress=False)
    assert outcome.failed is None and outcome.samples == [expected(0)]
    assert ["response_format" in r for r in server.requests] == [True, False]


def test_structured_false_sends_no_schema(server):
    server.keys = list(NAMES)
    (outcome,) = request_weights(backend_for(server, structured=False), [req()], progress=False)
    assert outcome.failed is None and "response_format" not in server.requests[0]


def test_server_rejecting_max_tokens_gets_max_completion_tokens(server):
    server.default = "reject_max_tokens"
    (outcome,) = request_weights(backend_for(server), [req(max_tokens=123)], progress=False)
    assert outcome.failed is None
    assert server.requests[1].get("max_completion_tokens") == 123 and "max_tokens" not in server.requests[1]


# --- cache and concurrency --------------------------------------------------------------------


def test_cached_rerun_makes_zero_http_calls(server, tmp_path):
    requests = [req(i, n=2) for i in range(4)]
    options = {"base_url": server.base_url, "api_key": "sk", "model": "fake-model"}
    first = request_weights(get_backend("openai", options, cache=AnswerCache(tmp_path)), requests, progress=False)
    assert server.calls == 4
    backend = get_backend("openai", options, cache=AnswerCache(tmp_path))
    second = request_weights(backend, requests, progress=False)
    assert server.calls == 4
    assert [o.samples for o in second] == [o.samples for o in first]
    assert all(o.cached for o in second) and not any(o.cached for o in first)
    assert backend.stats.cache_hits == 4 and backend.stats.calls == 0


def test_each_answer_is_cached_as_soon_as_it_arrives(server, tmp_path):
    """A run killed while one request hangs keeps the answers that already came back."""
    import threading
    import time

    server.hang_s = 3
    server.script("good", "hang")
    cache = AnswerCache(tmp_path)
    backend = get_backend(
        "openai",
        {"base_url": server.base_url, "api_key": "sk", "model": "fake-model", "timeout_s": 2, "max_retries": 0},
        cache=cache,
    )
    worker = threading.Thread(
        target=backend.complete_many, args=([req(0), req(1)],), kwargs={"concurrency": 1, "progress": False}
    )
    worker.start()
    deadline = time.monotonic() + 2
    while len(cache) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(cache) == 1 and worker.is_alive()  # the first answer is on disk while the second still hangs
    worker.join()


def test_concurrency_is_bounded(server):
    server.delay_ms = 100
    backend = backend_for(server)
    results = backend.complete_many([req(i) for i in range(12)], concurrency=3, progress=False)
    assert all(not isinstance(r, Exception) for r in results)
    assert server.calls == 12
    assert 2 <= server.max_in_flight <= 3


def test_complete_many_works_inside_a_running_event_loop(server):
    import asyncio

    backend = backend_for(server)

    async def inside() -> list:
        return backend.complete_many([req(0), req(1)], progress=False)

    results = asyncio.run(inside())
    assert [r.samples[0] for r in results] == [json.dumps(expected(0))] * 2
