"""AnswerCache: stable keys, atomic JSON entries, and zero backend calls on a re-run."""

from __future__ import annotations

import json
import os
import re
import threading
from typing import ClassVar

import pydantic
import pytest

from llmhyper_feast.backends.llm.base import ChatRequest, ChatResult, LLMBackend
from llmhyper_feast.errors import BackendError
from llmhyper_feast.generation.cache import AnswerCache, key_for

MESSAGES = [{"role": "user", "content": "hello"}]
PARAMS = {"n": 2, "temperature": 0.5, "feature_names": ["a", "b"]}


def test_key_is_stable_and_ignores_dict_order():
    k1 = key_for("openai", "m", MESSAGES, PARAMS)
    k2 = key_for("openai", "m", [{"content": "hello", "role": "user"}], dict(reversed(PARAMS.items())))
    assert k1 == k2 and re.fullmatch(r"[0-9a-f]{64}", k1)  # the form AnswerCache accepts


@pytest.mark.parametrize(
    "change",
    [
        dict(backend="local"),
        dict(model="m2"),
        dict(messages=[{"role": "user", "content": "hello!"}]),
        dict(params={**PARAMS, "temperature": 0.7}),
        dict(params={**PARAMS, "feature_names": ["b", "a"]}),
    ],
)
def test_key_changes_with_every_part(change):
    base = dict(backend="openai", model="m", messages=MESSAGES, params=PARAMS)
    assert key_for(**base) != key_for(**{**base, **change})


def test_key_rejects_non_json_values():
    with pytest.raises(ValueError, match="JSON-serialisable"):
        key_for("openai", "m", MESSAGES, {"temperature": float("nan")})


def test_put_get_round_trip_and_missing(tmp_path):
    cache = AnswerCache(tmp_path / "answers")
    key = key_for("openai", "m", MESSAGES, PARAMS)
    assert cache.get(key) is None and key not in cache and len(cache) == 0
    cache.put(key, {"samples": ["{}"], "model": "m"})
    assert cache.get(key) == {"samples": ["{}"], "model": "m"}
    assert key in cache and len(cache) == 1
    path = tmp_path / "answers" / key[:2] / f"{key}.json"
    assert json.loads(path.read_text()) == {"samples": ["{}"], "model": "m"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_put_replaces_atomically_via_os_replace(tmp_path, monkeypatch):
    cache = AnswerCache(tmp_path)
    key = key_for("openai", "m", MESSAGES, PARAMS)
    cache.put(key, {"v": 1})
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((os.path.dirname(src), os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    cache.put(key, {"v": 2})
    assert cache.get(key) == {"v": 2}
    assert calls == [(str(tmp_path / key[:2]), f"{key}.json")]


def test_failed_write_keeps_the_old_entry_and_no_temp_file(tmp_path, monkeypatch):
    cache = AnswerCache(tmp_path)
    key = key_for("openai", "m", MESSAGES, PARAMS)
    cache.put(key, {"v": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        cache.put(key, {"v": 2})
    monkeypatch.undo()
    assert cache.get(key) == {"v": 1}
    assert len(list((tmp_path / key[:2]).iterdir())) == 1


def test_corrupt_entry_reads_as_a_miss(tmp_path):
    cache = AnswerCache(tmp_path)
    key = key_for("openai", "m", MESSAGES, PARAMS)
    cache.put(key, {"v": 1})
    (tmp_path / key[:2] / f"{key}.json").write_text("{not json")
    assert cache.get(key) is None


def test_bad_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="64 lowercase hex"):
        AnswerCache(tmp_path).get("../etc/passwd")


def test_concurrent_writers_leave_a_complete_entry(tmp_path):
    cache = AnswerCache(tmp_path)
    key = key_for("openai", "m", MESSAGES, PARAMS)
    payloads = [{"writer": i, "samples": ["x" * 20000]} for i in range(8)]
    threads = [threading.Thread(target=cache.put, args=(key, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.get(key) in payloads


class CountingBackend(LLMBackend):
    name: ClassVar[str] = "counting"

    class Options(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
        fail_on: str | None = None

    calls = 0

    @property
    def model_id(self) -> str:
        return "count-1"

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        type(self).calls += 1
        if request.messages[0]["content"] == self.options.fail_on:
            raise BackendError("scripted failure")
        return ChatResult(
            samples=[f"answer to {request.messages[0]['content']}"] * request.n,
            model="count-1",
            prompt_tokens=7,
            completion_tokens=3,
            calls=1,
            latency_s=0.5,
        )


def test_rerun_of_identical_requests_makes_zero_backend_calls(tmp_path):
    requests = [ChatRequest(messages=({"role": "user", "content": f"ad {i}"},), feature_names=("a",)) for i in range(5)]
    CountingBackend.calls = 0
    first = CountingBackend(cache=AnswerCache(tmp_path))
    results1 = first.complete_many(requests, progress=False)
    assert CountingBackend.calls == 5 and first.stats.cache_hits == 0 and first.stats.calls == 5

    second = CountingBackend(cache=AnswerCache(tmp_path))
    results2 = second.complete_many(requests, progress=False)
    assert CountingBackend.calls == 5
    assert second.stats.cache_hits == 5 and second.stats.calls == 0 and second.stats.prompt_tokens == 0
    assert [r.samples for r in results2] == [r.samples for r in results1]
    assert all(r.cached and r.calls == 0 and r.prompt_tokens == 7 for r in results2)
    assert not any(r.cached for r in results1)

    changed = [ChatRequest(messages=requests[0].messages, feature_names=("a",), temperature=0.9)]
    second.complete_many(changed, progress=False)
    assert CountingBackend.calls == 6


def test_failures_are_not_cached(tmp_path):
    CountingBackend.calls = 0
    backend = CountingBackend({"fail_on": "bad"}, cache=AnswerCache(tmp_path))
    requests = [ChatRequest(messages=({"role": "user", "content": c},), feature_names=("a",)) for c in ("bad", "ok")]
    out = backend.complete_many(requests, progress=False)
    assert isinstance(out[0], BackendError) and isinstance(out[1], ChatResult)
    assert backend.stats.failures == 1 and len(AnswerCache(tmp_path)) == 1
    backend.complete_many(requests, progress=False)
    assert CountingBackend.calls == 3  # only the failed one was asked again
