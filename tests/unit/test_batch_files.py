"""Batch files: custom_ids, input lines, splitting at the limits, both output shapes, answers to the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmhyper_feast.backends.llm import get_backend
from llmhyper_feast.backends.llm.base import ChatRequest
from llmhyper_feast.errors import DataError, InputError
from llmhyper_feast.generation.batch import (
    ENDPOINT,
    chat_result,
    custom_id,
    input_line,
    parse_custom_id,
    parse_output,
    split_lines,
)
from llmhyper_feast.generation.cache import AnswerCache
from llmhyper_feast.jobs.batch import _ingest, request_lines

KEY_A, KEY_B, KEY_C = "a" * 64, "b" * 64, "c" * 64


def completion(*contents: str, finish: str = "stop", model: str = "m") -> dict:
    choices = [
        {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": finish}
        for i, c in enumerate(contents)
    ]
    return {
        "object": "chat.completion",
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }


def openai_line(cid: str, body: dict, status: int = 200) -> str:
    return json.dumps(
        {
            "id": "r",
            "custom_id": cid,
            "response": {"status_code": status, "request_id": "q", "body": body},
            "error": None,
        }
    )


def test_custom_id_round_trips_and_rejects_foreign_ids() -> None:
    assert parse_custom_id(custom_id(KEY_A, 1, 3)) == (KEY_A, 1, 3)
    for bad in ("ad1-0", f"llmh-{KEY_A}-3of3", f"llmh-{KEY_A[:-1]}-0of1", None, 7):
        assert parse_custom_id(bad) is None
    with pytest.raises(InputError):
        custom_id("not-hex", 0, 1)


def test_input_line_has_the_batch_api_shape() -> None:
    line = input_line(KEY_A, {"model": "m", "messages": [{"role": "user", "content": "é"}]})
    obj = json.loads(line.text)
    assert obj == {"custom_id": f"llmh-{KEY_A}-0of1", "method": "POST", "url": ENDPOINT, "body": obj["body"]}
    assert obj["body"]["messages"][0]["content"] == "é" and line.size == len(line.text.encode()) + 1


def test_split_keeps_a_requests_lines_together_within_both_limits() -> None:
    lines = [input_line(KEY_A, {"x": 1}, i, 2) for i in range(2)] + [input_line(KEY_B, {"x": 2})]
    lines += [input_line(KEY_C, {"x": 3})]
    assert [[x.key for x in f] for f in split_lines(lines, max_requests=2)] == [[KEY_A, KEY_A], [KEY_B, KEY_C]]
    assert [[x.key for x in f] for f in split_lines(lines, max_requests=3)] == [[KEY_A, KEY_A, KEY_B], [KEY_C]]
    one = lines[2].size
    by_bytes = split_lines(lines, max_bytes=2 * one + 1)
    assert [[x.key for x in f] for f in by_bytes] == [[KEY_A, KEY_A], [KEY_B, KEY_C]]
    with pytest.raises(InputError, match="lower generation.samples"):
        split_lines(lines, max_requests=1)


def test_parse_output_accepts_openai_and_vllm_shapes_and_lists_bad_lines() -> None:
    ok = completion('{"a": 1}')
    text = "\n".join(
        [
            openai_line("c1", ok),
            json.dumps({"id": "v", "custom_id": "c2", "response": ok, "error": None}),  # vllm run-batch
            openai_line("c3", {"error": {"message": "bad n", "code": "invalid_value"}}, status=400),
            json.dumps(
                {"id": "e", "custom_id": "c4", "response": None, "error": {"code": "timeout", "message": "late"}}
            ),
            "{not json",
            json.dumps({"response": ok}),
            "",
        ]
    )
    out = parse_output([text, openai_line("c3", ok)])  # c3 retried successfully in a second file
    assert {c for c, r in out.results.items() if r.completion is not None} == {"c1", "c2", "c3"}
    assert out.errors == {"c4": "timeout: late"}
    assert len(out.malformed) == 2 and "not JSON" in out.malformed[0] and "no custom_id" in out.malformed[1]
    first = parse_output([openai_line("c5", {"error": {"message": "boom", "code": "server_error"}}, status=500)])
    assert first.errors["c5"].startswith("HTTP 500: server_error: boom")


def test_chat_result_orders_choices_and_marks_truncation() -> None:
    body = completion("x", "y")
    body["choices"].reverse()
    result = chat_result([body, completion("z", finish="length")], "fallback-model")
    assert result.samples == ["x", "y", "z"] and result.truncated == [False, False, True]
    assert result.prompt_tokens == 14 and result.completion_tokens == 6 and result.calls == 2 and result.model == "m"
    refusal = {"choices": [{"index": 0, "message": {"content": None, "refusal": "no"}, "finish_reason": "stop"}]}
    assert chat_result([refusal], "m").samples == ["no"]
    with pytest.raises(DataError):
        chat_result([{"choices": []}], "m")


def _backend(tmp_path: Path, **options):
    opts = {"api_key": "sk-x", "base_url": "http://127.0.0.1:9/v1", "model": "m", **options}
    return get_backend("openai", opts, cache=AnswerCache(tmp_path / "cache"))


def test_request_lines_follow_the_online_path(tmp_path: Path) -> None:
    request = ChatRequest(messages=({"role": "user", "content": "hi"},), feature_names=("a", "b"), n=3, seed=5)
    (one,) = request_lines(_backend(tmp_path), request, KEY_A)
    body = json.loads(one.text)["body"]
    assert body["n"] == 3 and body["seed"] == 5 and body["response_format"]["json_schema"]["strict"] is True
    split = request_lines(_backend(tmp_path, use_n=False), request, KEY_A)
    bodies = [json.loads(x.text)["body"] for x in split]
    assert [b["seed"] for b in bodies] == [5, 6, 7] and all("n" not in b for b in bodies)
    assert [x.custom_id for x in split] == [custom_id(KEY_A, i, 3) for i in range(3)]


def test_ingest_assembles_split_samples_in_order_and_flags_incomplete_requests(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    lines = [openai_line(custom_id(KEY_A, i, 2), completion(f'{{"s": {i}}}')) for i in (1, 0)]  # shuffled
    lines.append(openai_line(custom_id(KEY_B, 0, 2), completion("{}")))  # its second sample never came
    lines.append(openai_line(custom_id(KEY_C, 0, 1), {"error": {"message": "x"}}, status=500))
    lines.append(openai_line("someone-elses-id", completion("{}")))
    cached, errors, malformed, seen = _ingest(backend, ["\n".join(lines)], None)
    assert cached == 1 and errors == {KEY_B, KEY_C} and malformed == 0 and seen == {KEY_A, KEY_B, KEY_C}
    entry = backend.cache.get(KEY_A)
    assert entry["samples"] == ['{"s": 0}', '{"s": 1}'] and entry["prompt_tokens"] == 14
    assert KEY_B not in backend.cache
    again, *_ = _ingest(backend, ["\n".join(lines)], {KEY_A})
    assert again == 0  # already cached: nothing rewritten
