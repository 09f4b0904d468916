"""A small real HTTP server on 127.0.0.1 that speaks OpenAI's chat-completions wire format.

Tests drive it through the real ``openai`` SDK. Each call follows a behaviour: the next
one queued with :meth:`FakeOpenAI.script`, else :attr:`FakeOpenAI.default`. Good answers
hold one deterministic number per key of the requested JSON schema (``response_format``),
or per ``keys`` when no schema is sent, and honour ``n``.

Behaviours: good, auth (401), auth_echo (401 whose message echoes the API key sent, as
some servers do), rate_limit (429), server_error (500), hang, truncated,
malformed, fenced, string_numbers, nan, extra_key, missing_key, duplicate_key,
out_of_range, refusal, empty, reject_n (400 when n > 1, else good), reject_schema (400 while
``response_format`` is sent, else good), reject_max_tokens (400 while ``max_tokens`` is sent,
as newer OpenAI models do, else good).

The Batch API is served too (``/v1/files`` upload and content, ``/v1/batches`` create, retrieve,
list, cancel): a batch advances one state per poll (validating, in_progress, ... completed after
:attr:`FakeOpenAI.batch_polls` polls) and its output file holds each input line answered by the
same completion logic (behaviours from :meth:`FakeOpenAI.script_batch_lines`, else good), in
shuffled order. :meth:`FakeOpenAI.script_batches` makes the next batches ``failed`` or ``expired``
(the first half of the lines answered). :meth:`FakeOpenAI.run_batch_file` answers an input file
as ``vllm run-batch`` would.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BEHAVIOURS = frozenset(
    {
        "good",
        "auth",
        "auth_echo",
        "rate_limit",
        "server_error",
        "hang",
        "truncated",
        "malformed",
        "fenced",
        "string_numbers",
        "nan",
        "extra_key",
        "missing_key",
        "duplicate_key",
        "out_of_range",
        "refusal",
        "empty",
        "reject_n",
        "reject_schema",
        "reject_max_tokens",
    }
)
# Answers built from the request schema's enums (user priors): "enum" picks the first allowed ids,
# "enum_unknown" replaces the first id with one outside the enum. See _enum_content.
ENUM_BEHAVIOURS = frozenset({"enum", "enum_unknown"})
BEHAVIOURS = BEHAVIOURS | ENUM_BEHAVIOURS


def fake_weight(key: str, choice: int = 0) -> float:
    """The deterministic number a good answer gives ``key`` in choice ``choice`` (in [-1, 1])."""
    return round(((zlib.crc32(key.encode()) + 37 * choice) % 201 - 100) / 100, 2)


class FakeOpenAI:
    """Context manager running the fake server in a background thread; ``base_url`` ends in /v1."""

    def __init__(
        self,
        *,
        default: str = "good",
        delay_ms: float = 0.0,
        retry_after_ms: float = 1.0,
        hang_s: float = 10.0,
        keys: list[str] | None = None,
        responder: Callable[[dict[str, Any], list[str], int], dict[str, float]] | None = None,
    ) -> None:
        # retry-after-ms must be > 0: the SDK ignores 0 and falls back to its 0.5 s+ backoff.
        self.default = default
        self.delay_ms = delay_ms
        self.retry_after_ms = retry_after_ms
        self.hang_s = hang_s
        self.keys = keys
        # Good answers take their weights from responder(body, keys, choice) when given: an
        # "informed" model that knows the right answer.
        self.responder = responder
        # writer(body, choice) -> the whole content of a good answer, or None to answer as usual
        # (trust-layer tests: judge verdicts, ad rewrites); see _respond_written
        self.writer: Callable[[dict[str, Any], int], str | None] | None = None
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.behaviours_used: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._queue: deque[str] = deque()
        # Batch API state (see the module docstring)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batches_created = 0
        self.batch_lines_run = 0
        self.batch_polls = 2  # polls until a batch completes
        self.batch_shuffle = True
        self.batch_garbage_lines = 0  # unreadable lines appended to each output file
        self._batch_outcomes: deque[str] = deque()
        self._line_queue: deque[str] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- control -------------------------------------------------------------------------
    def script(self, *behaviours: str) -> None:
        """Queue behaviours for the next calls, in order; afterwards ``default`` applies."""
        for b in behaviours:
            _check(b)
        with self._lock:
            self._queue.extend(behaviours)

    def script_batches(self, *outcomes: str) -> None:
        """Queue how the next created batches end: completed, failed or expired."""
        for o in outcomes:
            if o not in BATCH_OUTCOMES:
                raise ValueError(f"Unknown batch outcome {o!r}; expected one of {sorted(BATCH_OUTCOMES)}")
        with self._lock:
            self._batch_outcomes.extend(outcomes)

    def script_batch_lines(self, *behaviours: str) -> None:
        """Queue behaviours for the next batch lines answered (input order); afterwards good."""
        for b in behaviours:
            _check(b)
        with self._lock:
            self._line_queue.extend(behaviours)

    def run_batch_file(self, text: str, *, style: str = "vllm") -> str:
        """The output file ``vllm run-batch`` (style vllm: completion under ``response``) or the
        Batch API (style openai) would write for the input JSONL ``text``, in input order."""
        out, errors = self._answer_lines(text, style)
        return "".join(json.dumps(line) + "\n" for line in out + errors)

    @property
    def calls(self) -> int:
        return len(self.requests)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the server first (use it as a context manager)"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.headers.clear()
            self.behaviours_used.clear()
            self._queue.clear()
            self.max_in_flight = 0

    def __enter__(self) -> FakeOpenAI:
        _check(self.default)
        fake = self

        class Handler(_Handler):
            server_state = fake

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- called by the handler -----------------------------------------------------------
    def _next(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            behaviour = self._queue.popleft() if self._queue else self.default
            self.behaviours_used.append(behaviour)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return behaviour

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    # --- Batch API ---------------------------------------------------------------------------
    def _answer_lines(self, text: str, style: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(output lines, error lines) for the input JSONL ``text``, in input order."""
        out: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for i, raw in enumerate(line for line in text.splitlines() if line.strip()):
            item = json.loads(raw)
            with self._lock:
                behaviour = self._line_queue.popleft() if self._line_queue else "good"
                self.batch_lines_run += 1
            status, payload = _Capture.answer(self, behaviour, item["body"])
            rid = f"batch_req_{zlib.crc32(raw.encode()):08x}_{i}"
            if style == "vllm":
                line = {"id": rid, "custom_id": item["custom_id"], "response": payload if status == 200 else None}
                line["error"] = None if status == 200 else payload.get("error")
                (out if status == 200 else errors).append(line)
                continue
            response = {"status_code": status, "request_id": f"req_{i}", "body": payload}
            (out if status == 200 else errors).append(
                {"id": rid, "custom_id": item["custom_id"], "response": response, "error": None}
            )
        return out, errors

    def _new_file(self, data: bytes, purpose: str, filename: str) -> dict[str, Any]:
        with self._lock:
            fid = f"file-fake{len(self.files) + 1}"
            self.files[fid] = data
        return {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }

    def _create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.batches_created += 1
            bid = f"batch_fake{self.batches_created}"
            outcome = self._batch_outcomes.popleft() if self._batch_outcomes else "completed"
        text = self.files[body["input_file_id"]].decode()
        total = sum(1 for line in text.splitlines() if line.strip())
        batch = {
            "id": bid,
            "object": "batch",
            "endpoint": body.get("endpoint", "/v1/chat/completions"),
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "request_counts": {"total": total, "completed": 0, "failed": 0},
            "metadata": body.get("metadata") or {},
        }
        with self._lock:
            self.batches[bid] = {"batch": batch, "polls": 0, "outcome": outcome}
        return batch

    def _poll_batch(self, bid: str) -> dict[str, Any] | None:
        entry = self.batches.get(bid)
        if entry is None:
            return None
        batch = entry["batch"]
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        entry["polls"] += 1
        if batch["status"] == "cancelling":
            batch["status"] = "cancelled"
            return batch
        if entry["outcome"] == "failed":
            batch["status"] = "failed"
            batch["errors"] = {
                "object": "list",
                "data": [{"code": "invalid_request", "message": "fake: the batch failed", "param": None, "line": None}],
            }
            return batch
        if entry["polls"] < self.batch_polls:
            batch["status"] = "in_progress"
            return batch
        text = self.files[batch["input_file_id"]].decode()
        lines = [line for line in text.splitlines() if line.strip()]
        if entry["outcome"] == "expired":
            lines = lines[: len(lines) // 2]
        out, errors = self._answer_lines("\n".join(lines), "openai")
        if self.batch_shuffle:
            random.Random(bid).shuffle(out)
        encoded = [json.dumps(line) for line in out] + ["{not json"] * self.batch_garbage_lines
        if out or self.batch_garbage_lines:
            batch["output_file_id"] = self._new_file(("\n".join(encoded) + "\n").encode(), "batch_output", "out")["id"]
        if errors:
            data = "".join(json.dumps(line) + "\n" for line in errors).encode()
            batch["error_file_id"] = self._new_file(data, "batch_output", "errors")["id"]
        batch["request_counts"] = {
            "total": batch["request_counts"]["total"],
            "completed": len(out),
            "failed": len(errors),
        }
        batch["status"] = "expired" if entry["outcome"] == "expired" else "completed"
        return batch


BATCH_OUTCOMES = frozenset({"completed", "failed", "expired"})


class _Capture:
    """Runs the chat-completions logic for one batch line without a socket."""

    @staticmethod
    def answer(fake: FakeOpenAI, behaviour: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        handler = object.__new__(_CaptureHandler)
        handler.headers = {}  # type: ignore[assignment]
        handler.captured = (500, {"error": {"message": "no answer", "type": "server_error"}})
        handler._respond(fake, behaviour if behaviour != "hang" else "good", body, delay=False)
        return handler.captured


def _check(behaviour: str) -> None:
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"Unknown fake behaviour {behaviour!r}; expected one of {sorted(BEHAVIOURS)}")


def _schema_keys(body: dict[str, Any], fallback: list[str] | None) -> tuple[list[str] | None, bool]:
    """(feature keys, reasoning?) from the request's response_format, else ``fallback``."""
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt, dict) else None
    if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        props = schema["properties"]
        if "weights" in props and isinstance(props["weights"], dict):
            return list(props["weights"].get("properties", {})), True
        return list(props), False
    return fallback, False


def _answer(behaviour: str, keys: list[str], reasoning: bool, choice: int) -> tuple[str, str]:
    """(content, finish_reason) of one choice."""
    weights: dict[str, Any] = {k: fake_weight(k, choice) for k in keys}
    if behaviour == "refusal":
        return "I'm sorry, but I can't help with assigning these weights.", "stop"
    if behaviour == "empty":
        return "", "stop"
    if behaviour == "string_numbers":
        weights = {k: str(v) for k, v in weights.items()}
    elif behaviour == "extra_key":
        weights["bonus_feature"] = 0.5
    elif behaviour == "missing_key":
        weights.pop(keys[-1])
    elif behaviour == "out_of_range":
        weights[keys[0]] = 42.0
    obj: dict[str, Any] = weights
    if reasoning:
        obj = {
            "analysis": "The ad sells outdoor gear.",
            "alignment": "Outdoor interests align.",
            "key_factors": ", ".join(keys[:2]),
            "summary": "Positive on outdoor features.",
            "weights": weights,
        }
    text = json.dumps(obj)
    if behaviour == "nan":
        text = text.replace(json.dumps(weights[keys[0]]), "NaN", 1)
    elif behaviour == "duplicate_key":
        text = text[:-1] + f', "{keys[0]}": 0.9}}' if not reasoning else text
    elif behaviour == "malformed":
        text = text.replace(",", ";", 1)
    elif behaviour == "fenced":
        text = f"```json\n{text}\n```"
    elif behaviour == "truncated":
        return text[: max(1, len(text) // 2)], "length"
    return text, "stop"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops SYNs when many clients connect at once, and
    # each dropped SYN costs the client a 1 s retransmit.
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK add ~40 ms to every response.
    disable_nagle_algorithm = True
    server_state: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(
        self, status: int, message: str, type_: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, {"error": {"message": message, "type": type_, "param": param, "code": None}}, headers)

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        fake = self.server_state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.startswith(("/v1/files", "/v1/batches")):
            self._batch_post(fake, raw)
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"Unknown path {self.path}", "invalid_request_error")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._error(400, "Body is not JSON", "invalid_request_error")
            return
        behaviour = fake._next(body, {k.lower(): v for k, v in self.headers.items()})
        try:
            self._respond(fake, behaviour, body)
        finally:
            fake._done()

    def _respond(self, fake: FakeOpenAI, behaviour: str, body: dict[str, Any], delay: bool = True) -> None:
        if fake.delay_ms and delay:
            time.sleep(fake.delay_ms / 1000)
        retry = {"retry-after-ms": f"{fake.retry_after_ms:g}"}
        n = int(body.get("n") or 1)
        if behaviour in ENUM_BEHAVIOURS:
            self._send(200, _enum_completion(body, behaviour, n, fake.calls))
            return
        if behaviour == "auth":
            self._error(
                401,
                "Incorrect API key provided: sk-fake.",
                "invalid_request_error",
                headers={"x-should-retry": "false"},
            )
            return
        if behaviour == "auth_echo":
            sent = self.headers.get("Authorization", "").removeprefix("Bearer ")
            self._error(
                401,
                f"Incorrect API key provided: {sent}. You can find your API key in your account settings.",
                "invalid_request_error",
                headers={"x-should-retry": "false"},
            )
            return
        if behaviour == "rate_limit":
            self._error(429, "Rate limit reached for requests per min.", "requests", headers=retry)
            return
        if behaviour == "server_error":
            self._error(500, "The server had an error while processing your request.", "server_error", headers=retry)
            return
        if behaviour == "hang":
            fake._stop.wait(fake.hang_s)
            behaviour = "good"
        if behaviour == "reject_n":
            if n > 1:
                self._error(400, "Unsupported value: 'n' must be 1 for this model.", "invalid_request_error", param="n")
                return
            behaviour = "good"
        if behaviour == "reject_schema":
            if "response_format" in body:
                self._error(
                    400,
                    "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
                    "invalid_request_error",
                    param="response_format",
                )
                return
            behaviour = "good"
        if behaviour == "reject_max_tokens":
            if "max_tokens" in body:
                self._error(
                    400,
                    "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                    "'max_completion_tokens' instead.",
                    "invalid_request_error",
                    param="max_tokens",
                )
                return
            behaviour = "good"
        if behaviour == "good" and self._respond_written(fake, body, n):
            return
        keys, reasoning = _schema_keys(body, fake.keys)
        if not keys:
            self._error(
                400,
                "fake server: send response_format json_schema or set FakeOpenAI(keys=[...])",
                "invalid_request_error",
            )
            return
        choices, completion_tokens = [], 0
        for j in range(n):
            if behaviour == "good" and fake.responder is not None and not reasoning:
                content, finish = json.dumps(fake.responder(body, keys, j)), "stop"
            else:
                content, finish = _answer(behaviour, keys, reasoning, j)
            completion_tokens += len(content) // 4 + 1
            choices.append(
                {
                    "index": j,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            )
        self._send(200, _completion(body, choices, completion_tokens, fake.calls))

    # --- Batch API routes ------------------------------------------------------------------------
    def _batch_post(self, fake: FakeOpenAI, raw: bytes) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/files":
            parser = email.parser.BytesParser(policy=email.policy.HTTP)
            ctype = self.headers.get("Content-Type", "")
            message = parser.parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
            fields: dict[str, tuple[bytes, str]] = {}
            for part in message.iter_parts():  # type: ignore[attr-defined]
                name = part.get_param("name", header="content-disposition")
                fields[name] = (part.get_payload(decode=True) or b"", part.get_filename() or "")
            if "file" not in fields or fields.get("purpose", (b"",))[0].decode() != "batch":
                self._error(400, "fake server: upload a 'file' with purpose 'batch'", "invalid_request_error")
                return
            self._send(200, fake._new_file(fields["file"][0], "batch", fields["file"][1] or "input.jsonl"))
            return
        if path == "/v1/batches":
            body = json.loads(raw or b"{}")
            if body.get("input_file_id") not in fake.files:
                self._error(404, f"No such file: {body.get('input_file_id')}", "invalid_request_error")
                return
            self._send(200, fake._create_batch(body))
            return
        if path.startswith("/v1/batches/") and path.endswith("/cancel"):
            entry = fake.batches.get(path.split("/")[3])
            if entry is None:
                self._error(404, "No such batch", "invalid_request_error")
                return
            if entry["batch"]["status"] in ("validating", "in_progress", "finalizing"):
                entry["batch"]["status"] = "cancelling"
            self._send(200, entry["batch"])
            return
        self._error(404, f"Unknown path {self.path}", "invalid_request_error")

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        fake = self.server_state
        path = self.path.split("?")[0].rstrip("/")
        parts = path.split("/")
        if path == "/v1/batches":
            data = [e["batch"] for e in reversed(list(fake.batches.values()))]
            self._send(200, {"object": "list", "data": data, "has_more": False})
        elif len(parts) == 4 and parts[2] == "batches":
            batch = fake._poll_batch(parts[3])
            if batch is None:
                self._error(404, f"No such batch: {parts[3]}", "invalid_request_error")
            else:
                self._send(200, batch)
        elif len(parts) == 5 and parts[2] == "files" and parts[4] == "content" and parts[3] in fake.files:
            data = fake.files[parts[3]]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._error(404, f"Unknown path {self.path}", "invalid_request_error")

    # --- written content (trust-layer tests: judge verdicts, ad rewrites) ----------------------
    def _respond_written(self, fake: FakeOpenAI, body: dict[str, Any], n: int) -> bool:
        """Answer with ``fake.writer``'s contents when it writes every choice; False to answer as usual."""
        if fake.writer is None:
            return False
        contents = [fake.writer(body, j) for j in range(n)]
        if any(c is None for c in contents):
            return False
        completion_tokens = sum(len(c or "") // 4 + 1 for c in contents)
        choices = [
            {"index": j, "message": {"role": "assistant", "content": c, "refusal": None}, "finish_reason": "stop"}
            for j, c in enumerate(contents)
        ]
        self._send(200, _completion(body, choices, completion_tokens, fake.calls))
        return True


def _completion(body: dict[str, Any], choices: list[dict[str, Any]], completion_tokens: int, calls: int) -> dict:
    """A chat.completion body holding ``choices``; usage counted roughly (4 characters a token)."""
    prompt_tokens = len(json.dumps(body.get("messages", []))) // 4 + 1
    return {
        "id": f"chatcmpl-fake-{calls}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake-model"),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


# --- answers from the schema's enums (user priors) ------------------------------------------------


def _enum_content(body: dict[str, Any], behaviour: str) -> str:
    """Each array property of the schema filled with its first allowed values (minItems of them, else 2)."""
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema") or {}
    answer: dict[str, Any] = {}
    for key, prop in (schema.get("properties") or {}).items():
        allowed = list((prop.get("items") or {}).get("enum") or [])
        count = prop.get("minItems") or min(2, prop.get("maxItems", 2))
        answer[key] = allowed[:count]
    if behaviour == "enum_unknown":
        first = next((k for k, v in answer.items() if v), None)
        if first is not None:
            answer[first][0] = "not-a-listed-id"
    return json.dumps(answer)


def _enum_completion(body: dict[str, Any], behaviour: str, n: int, calls: int) -> dict[str, Any]:
    content = _enum_content(body, behaviour)
    choices = [
        {"index": j, "message": {"role": "assistant", "content": content, "refusal": None}, "finish_reason": "stop"}
        for j in range(n)
    ]
    return _completion(body, choices, n * (len(content) // 4 + 1), calls)


class _CaptureHandler(_Handler):
    """A handler whose replies are kept in ``captured`` instead of written to a socket."""

    captured: tuple[int, dict[str, Any]]

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.captured = (status, payload)
