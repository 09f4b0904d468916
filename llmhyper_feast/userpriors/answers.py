"""The answer shape of a user-priors request, its strict validation and the ask/validate/re-ask loop.

An answer is ``{"advertisers": [ids], "interests": [names]}``: exactly ``k`` distinct advertiser
ids from the user's candidate pool, and at most ``max_interests`` distinct interest names. The
schema's enums already forbid other ids, but a server that claims to enforce a schema may not, so
validation checks everything again: unknown ids, duplicates, too few or too many entries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llmhyper_feast.backends.llm.base import AnswerFormat
from llmhyper_feast.errors import AnswerError, BackendError
from llmhyper_feast.store.redact import redact

if TYPE_CHECKING:
    from llmhyper_feast.backends.llm.base import ChatRequest, LLMBackend

__all__ = ["PriorsAnswer", "PriorsOutcome", "parse_priors", "priors_format", "request_priors"]

_FENCE = re.compile(r"\A```(?:json|JSON)?\s*(?P<body>.*?)\s*```\Z", re.DOTALL)


@dataclass(frozen=True)
class PriorsAnswer:
    """A validated answer: advertiser ids best first, and interests."""

    advertisers: tuple[str, ...]
    interests: tuple[str, ...]


def _alternatives(values: Sequence[str]) -> str:
    return "(?:" + "|".join(re.escape(json.dumps(v)) for v in values) + ")"


def priors_format(pool: Sequence[str], interests: Sequence[str], k: int, max_interests: int) -> AnswerFormat:
    """The strict JSON schema (enums from ``pool`` and ``interests``) and an equivalent regular expression."""
    k = min(k, len(pool))
    schema = {
        "type": "object",
        "properties": {
            "advertisers": {
                "type": "array",
                "items": {"type": "string", "enum": list(pool)},
                "minItems": k,
                "maxItems": k,
            },
            "interests": {
                "type": "array",
                "items": {"type": "string", "enum": list(interests)},
                "maxItems": max_interests,
            },
        },
        "required": ["advertisers", "interests"],
        "additionalProperties": False,
    }
    adv, sep = _alternatives(pool), r",[ ]?"
    advertisers = r"\[" + adv + (f"(?:{sep}{adv}){{{k - 1}}}" if k > 1 else "") + r"\]"
    if max_interests > 0 and interests:
        item = _alternatives(interests)
        tail = f"(?:{sep}{item}){{0,{max_interests - 1}}}" if max_interests > 1 else ""
        interest_list = r"\[(?:" + item + tail + r")?\]"
    else:
        interest_list = r"\[\]"
    pattern = r'\{[ ]?"advertisers":[ ]?' + advertisers + sep + r'"interests":[ ]?' + interest_list + r"[ ]?\}"
    return AnswerFormat(name="user_next_advertisers", schema=schema, pattern=pattern)


def _snippet(text: str, limit: int = 80) -> str:
    flat = " ".join(redact(text).split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def parse_priors(text: str, pool: Sequence[str], interests: Sequence[str], k: int, max_interests: int) -> PriorsAnswer:
    """Validate one answer; AnswerError lists every problem (unknown or repeated ids, too few, bad JSON)."""
    if text is None or not str(text).strip():
        raise AnswerError("The answer is empty; expected a JSON object with 'advertisers' and 'interests'.")
    body = str(text).strip()
    fenced = _FENCE.match(body)
    body = fenced.group("body").strip() if fenced else body
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise AnswerError(f"The answer is not valid JSON ({exc.msg}): {_snippet(body)}.") from None
    if not isinstance(value, dict):
        raise AnswerError(f"The answer must be a JSON object; got {type(value).__name__}.")
    k = min(k, len(pool))
    problems: list[str] = []
    missing = [key for key in ("advertisers", "interests") if key not in value]
    extra = [key for key in value if key not in ("advertisers", "interests")]
    if missing:
        problems.append(f"missing keys {missing}")
    if extra:
        problems.append(f"unexpected keys {extra}")
    chosen = _check_list(value.get("advertisers", []), set(pool), "advertisers", problems)
    if len(chosen) < k and "advertisers" in value:
        problems.append(f"too few advertisers: {len(chosen)} distinct known ids, expected {k}")
    if len(chosen) > k:
        problems.append(f"too many advertisers: {len(chosen)}, expected {k}")
    named = _check_list(value.get("interests", []), set(interests), "interests", problems)
    if len(named) > max_interests:
        problems.append(f"too many interests: {len(named)}, at most {max_interests}")
    if problems:
        raise AnswerError("The answer failed validation: " + "; ".join(problems) + ".")
    return PriorsAnswer(tuple(chosen), tuple(named))


def _check_list(items: Any, allowed: set[str], key: str, problems: list[str]) -> list[str]:
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        problems.append(f"'{key}' must be a list of strings")
        return []
    unknown = sorted({i for i in items if i not in allowed})
    dupes = sorted({i for i in items if items.count(i) > 1})
    if unknown:
        problems.append(f"unknown {key} {unknown[:10]} (use only the listed ids)")
    if dupes:
        problems.append(f"repeated {key} {dupes[:10]} (each at most once)")
    return [i for i in dict.fromkeys(items) if i in allowed]


@dataclass
class PriorsOutcome:
    """What one request produced: a validated answer, or ``failed`` after at most one re-ask."""

    answer: PriorsAnswer | None = None
    errors: list[str] = field(default_factory=list)
    retried: bool = False
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: BackendError | AnswerError | None = None


def _first_valid(request: ChatRequest, result: Any, spec: tuple, outcome: PriorsOutcome, prefix: str) -> str:
    """Set ``outcome.answer`` from the first valid sample; return the last rejection message."""
    outcome.calls += result.calls
    outcome.prompt_tokens += result.prompt_tokens
    outcome.completion_tokens += result.completion_tokens
    error = "The backend returned no samples."
    truncated = list(result.truncated or [])
    for i, text in enumerate(result.samples):
        try:
            if i < len(truncated) and truncated[i]:
                raise AnswerError(f"The answer was cut off at max_tokens={request.max_tokens}.")
            outcome.answer = parse_priors(text, *spec)
            return ""
        except AnswerError as exc:
            error = str(exc)
            outcome.errors.append(f"{prefix}sample {i + 1}: {error}")
    return error


def request_priors(
    backend: LLMBackend,
    requests: Sequence[ChatRequest],
    specs: Sequence[tuple[Sequence[str], Sequence[str], int, int]],
    *,
    concurrency: int = 4,
    progress: bool = False,
) -> list[PriorsOutcome]:
    """Ask ``backend`` every request, validate, re-ask once the ones without a valid sample.

    ``specs[i]`` is (pool, interests, k, max_interests) of request ``i``. Backend failures are not
    re-asked (the backend already retried transient errors).
    """
    results = backend.complete_many(list(requests), concurrency=concurrency, progress=progress)
    outcomes = [PriorsOutcome() for _ in requests]
    again: list[int] = []
    reasks: list[ChatRequest] = []
    for i, (request, result) in enumerate(zip(requests, results)):
        if isinstance(result, BaseException):
            outcomes[i].failed = result
            outcomes[i].errors.append(f"backend error: {redact(result)}")
            continue
        error = _first_valid(request, result, specs[i], outcomes[i], "")
        if outcomes[i].answer is None:
            last = result.samples[-1] if result.samples else ""
            note = (
                f"Your previous answer was rejected: {error} Answer again with only the JSON object, using "
                f"exactly {min(specs[i][2], len(specs[i][0]))} distinct ids from the candidate list."
            )
            extra = ([{"role": "assistant", "content": last[:4000]}] if last.strip() else []) + [
                {"role": "user", "content": note}
            ]
            again.append(i)
            reasks.append(replace(request, messages=(*request.messages, *extra)))
    if reasks:
        for i, request, result in zip(
            again, reasks, backend.complete_many(reasks, concurrency=concurrency, progress=progress)
        ):
            outcomes[i].retried = True
            if isinstance(result, BaseException):
                outcomes[i].failed = result
                outcomes[i].errors.append(f"re-ask: backend error: {redact(result)}")
                continue
            error = _first_valid(request, result, specs[i], outcomes[i], "re-ask ")
            if outcomes[i].answer is None:
                outcomes[i].failed = AnswerError(f"No valid answer after one re-ask. Last error: {error}")
    return outcomes
