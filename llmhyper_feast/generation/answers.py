"""JSON answer schemas, strict validation of LLM answers, and the ask/validate/re-ask loop.

An answer holds one number per requested user feature, either at the top level
(``{"age": 0.2, ...}``) or, in the reasoning variant, under ``"weights"`` after four text
fields. Validation is strict on form, because a server that claims to enforce the schema may
still not do it: numbers written as strings, NaN/Infinity, duplicate keys, missing or extra keys
and truncated output are rejected. It is lenient on size, because the examples in the prompt
define the scale: a value up to ``GARBAGE_FACTOR`` times ``max_abs`` is clipped to ``max_abs``
and recorded; only values beyond that are garbage and rejected. ``answer_limit`` derives
``max_abs`` from the trained weights the examples show, so a model that copies its closest
example is never rejected.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llmhyper_feast.errors import AnswerError, BackendError, InputError
from llmhyper_feast.store.redact import redact

if TYPE_CHECKING:
    from llmhyper_feast.backends.llm.base import ChatRequest, LLMBackend

__all__ = [
    "GARBAGE_FACTOR",
    "REASONING_FIELDS",
    "WeightOutcome",
    "answer_limit",
    "answer_schema",
    "parse_answer",
    "parse_reasoning",
    "request_weights",
]

#: Text fields the reasoning variant asks for, in order, before ``"weights"``.
REASONING_FIELDS: tuple[str, ...] = ("analysis", "alignment", "key_factors", "summary")

# The only tolerated wrapping: one Markdown code fence around the whole answer.
_FENCE = re.compile(r"\A```(?:json|JSON)?\s*(?P<body>.*?)\s*```\Z", re.DOTALL)
_SNIPPET = 80

#: Answers up to this multiple of ``max_abs`` are clipped to ``max_abs``; beyond it they are garbage.
GARBAGE_FACTOR = 3.0
#: Headroom of the derived range over the largest trained weight shown to the model.
_MARGIN = 1.2
_DEFAULT_LIMIT = 3.0


def answer_limit(warm_weights: Iterable[Iterable[float]], configured: float | str = "auto") -> tuple[float, float]:
    """(limit, scale): the answer scale shared by the examples, the prompt and validation.

    Every example the prompt can show is a warm ad, so the scale comes from the warm ads'
    trained weights. ``configured="auto"``: limit = 1.2 times the largest |weight|, rounded up
    to a multiple of 0.5, at least 1 (3 without warm ads), and scale 1. A number is the limit;
    when the warm weights (with the same 1.2 headroom) exceed it, scale < 1 shrinks the examples
    onto it, and answers are divided by the scale to map them back.
    """
    largest = 0.0
    for weights in warm_weights:
        finite = [abs(float(w)) for w in weights if math.isfinite(float(w))]
        largest = max([largest, *finite])
    if configured == "auto":
        if largest == 0.0:
            return _DEFAULT_LIMIT, 1.0
        return max(1.0, math.ceil(largest * _MARGIN * 2) / 2), 1.0
    if isinstance(configured, bool) or not isinstance(configured, (int, float)) or not 0 < configured < math.inf:
        raise InputError(f"generation.max_abs must be 'auto' or a finite number > 0. Got {configured!r} instead.")
    limit = float(configured)
    return limit, min(1.0, limit / (largest * _MARGIN)) if largest > 0 else 1.0


def answer_schema(feature_names: Sequence[str], *, reasoning: bool = False, max_abs: float = 3.0) -> dict[str, Any]:
    """The strict JSON schema of an answer for ``feature_names`` (OpenAI strict-mode compatible)."""
    names = _check_names(feature_names)
    if not (isinstance(max_abs, (int, float)) and math.isfinite(max_abs) and max_abs > 0):
        raise InputError(
            f"The 'max_abs' parameter of answer_schema must be a finite number > 0. Got {max_abs!r} instead."
        )
    weights = {
        "type": "object",
        "properties": {
            name: {"type": "number", "minimum": -float(max_abs), "maximum": float(max_abs)} for name in names
        },
        "required": list(names),
        "additionalProperties": False,
    }
    if not reasoning:
        return weights
    properties: dict[str, Any] = {name: {"type": "string"} for name in REASONING_FIELDS}
    properties["weights"] = weights
    return {
        "type": "object",
        "properties": properties,
        "required": [*REASONING_FIELDS, "weights"],
        "additionalProperties": False,
    }


def parse_answer(
    text: str, feature_names: Sequence[str], *, reasoning: bool = False, max_abs: float = 3.0
) -> dict[str, float]:
    """Validate one answer and return its weights as ``{feature: float}`` in ``feature_names`` order.

    Values beyond ``max_abs`` (up to ``GARBAGE_FACTOR`` times it) come back clipped to
    ``max_abs``. Raises AnswerError listing every problem found (missing/extra/duplicate keys,
    values that are not JSON numbers, NaN/Infinity, garbage magnitudes, empty, refused or
    truncated text).
    """
    weights, _, _ = _parse(text, _check_names(feature_names), reasoning=reasoning, max_abs=max_abs)
    return weights


def parse_reasoning(text: str, feature_names: Sequence[str], *, max_abs: float = 3.0) -> dict[str, str]:
    """Validate a reasoning-variant answer and return its text fields (analysis, alignment, ...)."""
    _, texts, _ = _parse(text, _check_names(feature_names), reasoning=True, max_abs=max_abs)
    return texts


def _check_names(feature_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(feature_names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise InputError(f"feature_names must be a non-empty sequence of non-empty strings. Got {names!r} instead.")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"feature_names must be unique. Got duplicates {dupes}.")
    return names


class _NonFinite:
    """Marker for NaN/Infinity literals, so they are reported instead of parsed."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _snippet(text: str) -> str:
    flat = " ".join(redact(text).split())
    return repr(flat if len(flat) <= _SNIPPET else flat[:_SNIPPET] + "...")


_WEIGHTS_SHAPE = "a JSON object with one number per feature"


def decode_json(text: str | None, *, who: str = "The answer", shape: str = _WEIGHTS_SHAPE) -> tuple[Any, list[str]]:
    """json.loads of an LLM answer (one code fence stripped) with duplicate-key and NaN detection.

    Returns (value, duplicated keys); raises AnswerError naming ``who`` and the expected ``shape``
    when the text is empty, prose, truncated or malformed JSON.
    """
    if text is None or not str(text).strip():
        raise AnswerError(f"{who} is empty; expected {shape}.")
    body = str(text).strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group("body").strip()
    duplicates: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    try:
        value = json.loads(body, object_pairs_hook=pairs_hook, parse_constant=_NonFinite)
    except json.JSONDecodeError as exc:
        if not body.startswith(("{", "[")):
            raise AnswerError(
                f"{who} is not JSON (it looks like a refusal or prose): {_snippet(body)}; expected only {shape}."
            ) from None
        if exc.pos >= len(body.rstrip()) or exc.msg.startswith("Unterminated"):
            raise AnswerError(
                f"{who}'s JSON is truncated (it stops at character {exc.pos}): {_snippet(body[-_SNIPPET:])}; "
                "expected a complete JSON object (raise max_tokens if the model ran out of tokens)."
            ) from None
        raise AnswerError(f"{who} is malformed JSON ({exc.msg} at character {exc.pos}): {_snippet(body)}.") from None
    return value, duplicates


def _check_weights(
    obj: Any, names: tuple[str, ...], max_abs: float, where: str
) -> tuple[dict[str, float], list[str], list[str]]:
    """(weights with mild excess clipped, problems, clip records like ``"age: 3.4 -> 3"``)."""
    problems: list[str] = []
    clipped: list[str] = []
    if not isinstance(obj, dict):
        kind = type(obj).__name__
        return {}, [f"{where} must be a JSON object; got {kind} {_snippet(json.dumps(obj, default=str))}"], clipped
    missing = [n for n in names if n not in obj]
    extra = [k for k in obj if k not in names]
    if missing:
        problems.append(f"missing keys {missing}")
    if extra:
        problems.append(f"unexpected keys {extra}")
    weights: dict[str, float] = {}
    not_numbers, non_finite, too_large = [], [], []
    for name in names:
        if name not in obj:
            continue
        value = obj[name]
        if isinstance(value, _NonFinite):
            non_finite.append(f"{name}={value.literal}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            not_numbers.append(f"{name}={json.dumps(value, default=str)}")
        elif not math.isfinite(value):
            non_finite.append(f"{name}={value}")
        elif abs(value) > max_abs * GARBAGE_FACTOR:
            too_large.append(f"{name}={value}")
        elif abs(value) > max_abs:
            weights[name] = math.copysign(float(max_abs), value)
            clipped.append(f"{name}: {value:g} -> {weights[name]:g}")
        else:
            weights[name] = float(value)
    if not_numbers:
        problems.append(f'values that are not JSON numbers (write 0.1, not "0.1") {not_numbers}')
    if non_finite:
        problems.append(f"non-finite values {non_finite}")
    if too_large:
        problems.append(
            f"values far beyond the examples' range +/-{max_abs:g} (more than {GARBAGE_FACTOR:g}x) {too_large}"
        )
    return weights, problems, clipped


def _parse(
    text: str, names: tuple[str, ...], *, reasoning: bool, max_abs: float
) -> tuple[dict[str, float], dict[str, str], list[str]]:
    value, duplicates = decode_json(text)
    problems: list[str] = []
    clipped: list[str] = []
    if duplicates:
        problems.append(f"duplicate keys {sorted(set(duplicates))}")
    texts: dict[str, str] = {}
    if reasoning:
        if not isinstance(value, dict):
            raise AnswerError(
                f"The answer must be a JSON object with keys {[*REASONING_FIELDS, 'weights']}; "
                f"got {type(value).__name__}."
            )
        top = [*REASONING_FIELDS, "weights"]
        missing = [k for k in top if k not in value]
        extra = [k for k in value if k not in top]
        if missing:
            problems.append(f"missing top-level keys {missing}")
        if extra:
            problems.append(f"unexpected top-level keys {extra}")
        for key in REASONING_FIELDS:
            if key in value and not isinstance(value[key], str):
                problems.append(f"'{key}' must be a string; got {type(value[key]).__name__}")
            elif key in value:
                texts[key] = value[key]
        if "weights" in value:
            weights, more, clipped = _check_weights(value["weights"], names, max_abs, "'weights'")
            problems.extend(f"in 'weights': {p}" for p in more)
        else:
            weights = {}
    else:
        weights, more, clipped = _check_weights(value, names, max_abs, "The answer")
        problems.extend(more)
    if problems:
        raise AnswerError("The answer failed validation: " + "; ".join(problems) + ".")
    return weights, texts, clipped


@dataclass
class WeightOutcome:
    """What one ChatRequest produced after validation (and at most one re-ask).

    ``samples`` holds the valid answers only; ``failed`` is set when none was valid, and the
    caller then falls back to its prior. ``reasoning`` holds the text fields of each valid
    sample in the reasoning variant (empty dicts otherwise); ``clipped`` records every value
    of a valid sample that was clipped to ``max_abs``.
    """

    samples: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    retried: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    latency_s: float = 0.0
    cached: bool = False
    failed: BackendError | AnswerError | None = None
    reasoning: list[dict[str, str]] = field(default_factory=list)
    clipped: list[str] = field(default_factory=list)


def _validate_result(request: ChatRequest, result: Any, prefix: str, outcome: WeightOutcome) -> list[tuple[str, str]]:
    """Parse every sample of ``result`` into ``outcome``; return (text, error) of the rejected ones."""
    rejected: list[tuple[str, str]] = []
    truncated = list(getattr(result, "truncated", []) or [])
    for i, text in enumerate(result.samples):
        try:
            weights, texts, clipped = _parse(
                text, tuple(request.feature_names), reasoning=request.reasoning, max_abs=request.max_abs
            )
        except AnswerError as exc:
            msg = str(exc)
            if i < len(truncated) and truncated[i]:
                msg = f"The answer was cut off at max_tokens={request.max_tokens} (finish_reason 'length'). {msg}"
            rejected.append((text, msg))
            outcome.errors.append(f"{prefix}sample {i + 1}: {msg}")
            continue
        if i < len(truncated) and truncated[i]:
            # Valid JSON but the model was still writing: do not trust it.
            msg = f"The answer was cut off at max_tokens={request.max_tokens} (finish_reason 'length')."
            rejected.append((text, msg))
            outcome.errors.append(f"{prefix}sample {i + 1}: {msg}")
            continue
        outcome.samples.append(weights)
        outcome.reasoning.append(texts)
        outcome.clipped.extend(f"{prefix}sample {i + 1}: {c}" for c in clipped)
    return rejected


def _add_usage(outcome: WeightOutcome, result: Any, first: bool) -> None:
    outcome.prompt_tokens += result.prompt_tokens
    outcome.completion_tokens += result.completion_tokens
    outcome.calls += result.calls
    outcome.latency_s += result.latency_s
    outcome.cached = result.cached if first else (outcome.cached and result.cached)


def _reask_request(request: ChatRequest, rejected: list[tuple[str, str]]) -> ChatRequest:
    text, error = rejected[0]
    keys = ", ".join(f'"{n}"' for n in request.feature_names)
    if request.reasoning:
        shape = (
            'a JSON object with the string fields "analysis", "alignment", "key_factors", "summary" '
            f'and a "weights" object holding exactly these keys: {keys}'
        )
    else:
        shape = f"a JSON object holding exactly these keys: {keys}"
    instruction = (
        f"Your previous answer was rejected because: {error} Answer again with only {shape}; "
        f"each value a plain JSON number between {-request.max_abs:g} and {request.max_abs:g} "
        "(no quotes, no NaN), and nothing else."
    )
    extra: list[dict[str, Any]] = []
    if text and text.strip():
        extra.append({"role": "assistant", "content": text[:4000]})
    extra.append({"role": "user", "content": instruction})
    truncated = any("finish_reason 'length'" in err or "truncated" in err for _, err in rejected)
    max_tokens = request.max_tokens * 2 if truncated else request.max_tokens
    return replace(request, messages=(*request.messages, *extra), max_tokens=max_tokens)


def request_weights(
    backend: LLMBackend, requests: Sequence[ChatRequest], *, concurrency: int = 4, progress: bool = True
) -> list[WeightOutcome]:
    """Ask ``backend`` for every request, validate each sample, and re-ask once when none is valid.

    Returns one WeightOutcome per request, in order. A request whose samples all fail
    validation twice gets ``failed=AnswerError``; a backend failure is recorded as
    ``failed=BackendError`` without a re-ask (the backend has already retried transient
    errors). One failed request never affects the others.
    """
    requests = list(requests)
    results = backend.complete_many(requests, concurrency=concurrency, progress=progress)
    outcomes = [WeightOutcome() for _ in requests]
    to_reask: list[int] = []
    reasks: list[ChatRequest] = []
    for i, (request, result) in enumerate(zip(requests, results)):
        outcome = outcomes[i]
        if isinstance(result, BaseException):
            outcome.failed = result
            outcome.errors.append(f"backend error: {redact(result)}")
            continue
        _add_usage(outcome, result, first=True)
        rejected = _validate_result(request, result, "", outcome)
        if outcome.samples:
            continue
        if not rejected:
            rejected = [("", "The backend returned no samples.")]
            outcome.errors.append("The backend returned no samples.")
        to_reask.append(i)
        reasks.append(_reask_request(request, rejected))
    if reasks:
        retry_results = backend.complete_many(reasks, concurrency=concurrency, progress=progress)
        for i, request, result in zip(to_reask, reasks, retry_results):
            outcome = outcomes[i]
            outcome.retried = True
            if isinstance(result, BaseException):
                outcome.failed = result
                outcome.errors.append(f"re-ask: backend error: {redact(result)}")
                continue
            _add_usage(outcome, result, first=False)
            _validate_result(request, result, "re-ask ", outcome)
            if not outcome.samples:
                outcome.failed = AnswerError(
                    f"No valid answer after one re-ask ({len(outcome.errors)} rejected samples). Last error: "
                    f"{outcome.errors[-1]}"
                )
    return outcomes
