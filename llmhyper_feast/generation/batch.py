"""Batch files of LLM requests: the OpenAI Batch API's JSONL input and output, and ``vllm run-batch``'s.

One input line asks one chat completion: ``{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body": {...}}``. The ``custom_id`` names the answer-cache key of the
request it belongs to and which of its samples the line asks (:func:`custom_id`), so an output
file maps back to the cache without any other state, whatever order its lines come in.

Output lines come in two shapes, both accepted: OpenAI's ``{"custom_id", "response":
{"status_code", "request_id", "body": <chat.completion>}, "error"}`` and the one some ``vllm
run-batch`` versions write, with the chat completion itself under ``response``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmhyper_feast.backends.llm.base import ChatResult
from llmhyper_feast.errors import DataError, InputError

__all__ = [
    "ENDPOINT",
    "MAX_FILE_BYTES",
    "MAX_REQUESTS",
    "BatchLine",
    "LineResult",
    "OutputFile",
    "chat_result",
    "custom_id",
    "input_line",
    "parse_custom_id",
    "parse_output",
    "split_lines",
]

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000  # per input file (OpenAI's limit)
MAX_FILE_BYTES = 200 * 1024 * 1024  # per input file (OpenAI's limit)
_CUSTOM_ID = re.compile(r"^llmh-(?P<key>[0-9a-f]{64})-(?P<sample>\d+)of(?P<parts>\d+)$")


def custom_id(key: str, sample: int = 0, parts: int = 1) -> str:
    """The custom_id of line ``sample`` (of ``parts``) asking the request cached under ``key``."""
    if not re.fullmatch(r"[0-9a-f]{64}", key) or not 0 <= sample < parts:
        raise InputError(f"custom_id needs a 64-hex cache key and 0 <= sample < parts; got {key!r}, {sample}, {parts}.")
    return f"llmh-{key}-{sample}of{parts}"


def parse_custom_id(value: Any) -> tuple[str, int, int] | None:
    """(cache key, sample, parts) of one of our custom_ids; None for anything else."""
    match = _CUSTOM_ID.match(value) if isinstance(value, str) else None
    if match is None or int(match["sample"]) >= int(match["parts"]):
        return None
    return match["key"], int(match["sample"]), int(match["parts"])


@dataclass(frozen=True)
class BatchLine:
    """One input line and what it stands for."""

    custom_id: str
    key: str
    text: str  # the JSON line, no newline

    @property
    def size(self) -> int:
        return len(self.text.encode("utf-8")) + 1


def input_line(key: str, body: dict[str, Any], sample: int = 0, parts: int = 1) -> BatchLine:
    """The input line asking ``body`` (a chat-completions request body) for the request cached under ``key``."""
    cid = custom_id(key, sample, parts)
    text = json.dumps(
        {"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body},
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
    )
    return BatchLine(cid, key, text)


def split_lines(
    lines: Sequence[BatchLine], *, max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_FILE_BYTES
) -> list[list[BatchLine]]:
    """``lines`` cut, in order, into files within both limits; the lines of one request stay together."""
    if max_requests < 1 or max_bytes < 1:
        raise InputError(f"Batch file limits must be >= 1; got max_requests={max_requests}, max_bytes={max_bytes}.")
    groups: list[list[BatchLine]] = []
    for line in lines:  # lines of one cache key are adjacent
        if groups and groups[-1][0].key == line.key:
            groups[-1].append(line)
        else:
            groups.append([line])
    files: list[list[BatchLine]] = []
    size = 0
    for group in groups:
        gsize = sum(line.size for line in group)
        if len(group) > max_requests or gsize > max_bytes:
            raise InputError(
                f"One request needs {len(group)} lines of {gsize} bytes, more than a batch file may hold "
                f"({max_requests} lines, {max_bytes} bytes); lower generation.samples or generation.batch_size."
            )
        if not files or len(files[-1]) + len(group) > max_requests or size + gsize > max_bytes:
            files.append([])
            size = 0
        files[-1].extend(group)
        size += gsize
    return files


@dataclass
class LineResult:
    """What the output held for one custom_id: a chat.completion body, or why there is none."""

    custom_id: str
    completion: dict[str, Any] | None = None
    error: str = ""


@dataclass
class OutputFile:
    """The parsed lines of one or more output/error files."""

    results: dict[str, LineResult] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)  # lines that could not be read, with why

    @property
    def errors(self) -> dict[str, str]:
        """custom_id -> error, for lines that came back without a usable completion."""
        return {c: r.error for c, r in self.results.items() if r.completion is None}


def _line_error(error: Any) -> str:
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict):
            code = inner.get("code") or inner.get("type") or ""
            return f"{code}: {inner.get('message', '')}".strip(": ") or json.dumps(error)
        return str(inner)
    return str(error)


def _read_line(raw: str) -> LineResult:
    """One output line in either shape; raises DataError when it is not one."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise DataError(f"not JSON ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        raise DataError("no custom_id")
    cid = obj["custom_id"]
    response = obj.get("response")
    if obj.get("error"):
        return LineResult(cid, error=_line_error(obj["error"]))
    if not isinstance(response, dict):
        return LineResult(cid, error="the line holds neither a response nor an error")
    body: Any
    if "choices" in response:  # vllm run-batch: the completion itself
        body, status = response, 200
    else:
        body, status = response.get("body"), response.get("status_code", 200)
    if not isinstance(status, int) or status >= 400:
        return LineResult(cid, error=f"HTTP {status}: {_line_error(body)}")
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return LineResult(cid, error="the response holds no chat completion (no 'choices')")
    return LineResult(cid, completion=body)


def parse_output(texts: Iterable[str]) -> OutputFile:
    """Every line of the given output and error files (OpenAI's or vllm run-batch's shape).

    A line that cannot be read is listed in ``malformed``; a custom_id seen twice keeps its
    completion over an error (OpenAI may list a retried request in both files).
    """
    out = OutputFile()
    for text in texts:
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                result = _read_line(raw)
            except DataError as exc:
                out.malformed.append(f"line {number}: {exc}: {raw[:120]}")
                continue
            old = out.results.get(result.custom_id)
            if old is None or old.completion is None:
                out.results[result.custom_id] = result
    return out


def chat_result(completions: Sequence[dict[str, Any]], model: str) -> ChatResult:
    """The ChatResult the backend would have built from these chat.completion bodies (one per call).

    Raises DataError when a body holds no choice or a choice without a message.
    """
    samples: list[str] = []
    truncated: list[bool] = []
    prompt_tokens = completion_tokens = 0
    for body in completions:
        model = body.get("model") or model
        usage = body.get("usage") or {}
        prompt_tokens += int(usage.get("prompt_tokens") or 0)
        completion_tokens += int(usage.get("completion_tokens") or 0)
        choices = body.get("choices") or []
        if not choices:
            raise DataError("the completion holds no choices")
        for choice in sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0):
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                raise DataError("a choice holds no message")
            content = message.get("content")
            samples.append(str(content if content is not None else (message.get("refusal") or "")))
            truncated.append(choice.get("finish_reason") == "length")
    return ChatResult(
        samples=samples,
        model=str(model),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        calls=len(completions),
        latency_s=0.0,
        cached=False,
        truncated=truncated,
    )
