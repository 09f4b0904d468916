"""Answer schemas, strict parsing of LLM answers, and the validate/re-ask loop (with a scripted backend)."""

from __future__ import annotations

import json
import math
from typing import ClassVar

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmhyper_feast.backends.llm.base import ChatRequest, ChatResult, LLMBackend, mark_fatal
from llmhyper_feast.errors import AnswerError, BackendError, InputError
from llmhyper_feast.generation.answers import (
    REASONING_FIELDS,
    answer_limit,
    answer_schema,
    parse_answer,
    parse_reasoning,
    request_weights,
)

NAMES = ("age", "sports", "gaming")


def good(**overrides: object) -> str:
    values = {"age": 0.1, "sports": -0.5, "gaming": 1}
    values.update(overrides)
    return json.dumps(values)


# --- answer_schema -------------------------------------------------------------------------


def test_plain_schema_is_strict_with_one_bounded_number_per_feature():
    schema = answer_schema(NAMES, max_abs=2.0)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == list(NAMES)
    assert list(schema["properties"]) == list(NAMES)
    for prop in schema["properties"].values():
        assert prop == {"type": "number", "minimum": -2.0, "maximum": 2.0}


def test_reasoning_schema_puts_text_fields_before_weights():
    schema = answer_schema(NAMES, reasoning=True)
    assert schema["required"] == [*REASONING_FIELDS, "weights"]
    assert list(schema["properties"]) == [*REASONING_FIELDS, "weights"]
    assert all(schema["properties"][k] == {"type": "string"} for k in REASONING_FIELDS)
    assert schema["properties"]["weights"]["required"] == list(NAMES)
    assert schema["additionalProperties"] is False and schema["properties"]["weights"]["additionalProperties"] is False


@pytest.mark.parametrize("names", [(), ("a", "a"), ("a", "")])
def test_schema_rejects_bad_feature_names(names):
    with pytest.raises(ValueError, match="feature_names"):
        answer_schema(names)


# --- parse_answer: accepted ------------------------------------------------------------------


def test_parse_returns_floats_in_feature_order():
    text = json.dumps({"gaming": 1, "age": 0.1, "sports": -0.5})
    parsed = parse_answer(text, NAMES)
    assert list(parsed) == list(NAMES)
    assert parsed == {"age": 0.1, "sports": -0.5, "gaming": 1.0}
    assert all(type(v) is float for v in parsed.values())


@pytest.mark.parametrize("wrap", ["```json\n{}\n```", "```\n{}\n```", "  ```json\n{}```  ", "```json {} ```", "\n{}\n"])
def test_parse_strips_one_code_fence(wrap):
    assert parse_answer(wrap.replace("{}", good()), NAMES)["sports"] == -0.5


def test_parse_reasoning_variant():
    text = json.dumps({**{k: f"{k} text" for k in REASONING_FIELDS}, "weights": json.loads(good())})
    assert parse_answer(text, NAMES, reasoning=True) == {"age": 0.1, "sports": -0.5, "gaming": 1.0}
    assert parse_reasoning(text, NAMES) == {k: f"{k} text" for k in REASONING_FIELDS}


@given(st.lists(st.floats(min_value=-3, max_value=3, allow_nan=False), min_size=3, max_size=3))
def test_parse_round_trips_any_in_range_values(values):
    parsed = parse_answer(json.dumps(dict(zip(NAMES, values))), NAMES)
    assert list(parsed.values()) == values


# --- parse_answer: rejected ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fragments",
    [
        (json.dumps({"age": 0.1, "sports": 0.2}), ["missing keys", "gaming"]),
        (good(colour=0.3), ["unexpected keys", "colour"]),
        (good(sports="0.1"), ["not JSON numbers", 'sports="0.1"']),
        (good(sports=True), ["not JSON numbers", "sports=true"]),
        (good(sports=None), ["not JSON numbers", "sports=null"]),
        (good().replace("-0.5", "NaN"), ["non-finite", "sports=NaN"]),
        (good().replace("-0.5", "-Infinity"), ["non-finite", "sports=-Infinity"]),
        (good().replace("-0.5", "1e999"), ["non-finite", "sports=inf"]),
        (good(age=9.5), ["far beyond the examples' range +/-3", "age=9.5"]),
        (good()[:-1] + ', "age": 0.9}', ["duplicate keys", "age"]),
        ("", ["empty"]),
        ("   \n", ["empty"]),
        ("I'm sorry, I cannot help with that request.", ["refusal", "sorry"]),
        (good()[:20], ["truncated"]),
        ('{"age": 0.1; "sports": 0.2, "gaming": 0.3}', ["malformed"]),
        ("[0.1, 0.2, 0.3]", ["must be a JSON object"]),
        ("```python\n" + good() + "\n```", ["not JSON"]),
        ("Here you go: " + good(), ["not JSON"]),
    ],
)
def test_parse_rejections_say_what_was_wrong(text, fragments):
    with pytest.raises(AnswerError) as info:
        parse_answer(text, NAMES)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_parse_lists_every_problem_at_once():
    text = json.dumps({"age": "0.1", "sports": 9.5, "extra": 1})
    message = str(pytest.raises(AnswerError, parse_answer, text, NAMES).value)
    for fragment in ("missing keys ['gaming']", "unexpected keys ['extra']", 'age="0.1"', "sports=9.5"):
        assert fragment in message


def test_parse_clips_mild_excess_and_rejects_garbage():
    assert parse_answer(good(age=1.5), NAMES, max_abs=2)["age"] == 1.5
    assert parse_answer(good(age=-2.9), NAMES, max_abs=1)["age"] == -1.0  # up to 3x: clipped
    with pytest.raises(AnswerError, match="far beyond"):
        parse_answer(good(age=3.01), NAMES, max_abs=1)


def test_answer_limit_covers_every_warm_weight_or_scales_examples_onto_a_fixed_one():
    warm = [[0.5, -3.8], [1.0, 2.0]]
    limit, scale = answer_limit(warm, "auto")
    assert (limit, scale) == (5.0, 1.0)  # 1.2 * 3.8 = 4.56, rounded up to 5.0
    assert answer_limit([], "auto") == (3.0, 1.0)
    assert answer_limit([[0.1, -0.2]], "auto") == (1.0, 1.0)
    limit, scale = answer_limit(warm, 2.0)
    assert limit == 2.0 and scale == pytest.approx(2.0 / (1.2 * 3.8))
    assert answer_limit([[0.1]], 2.0) == (2.0, 1.0)  # examples already inside: no rescaling
    with pytest.raises(InputError, match="max_abs"):
        answer_limit(warm, 0)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda o: o.pop("summary"), "missing top-level keys ['summary']"),
        (lambda o: o.update(verdict="ok"), "unexpected top-level keys ['verdict']"),
        (lambda o: o.update(analysis=3), "'analysis' must be a string"),
        (lambda o: o["weights"].pop("age"), "in 'weights': missing keys ['age']"),
        (lambda o: o.update(weights=[1, 2]), "'weights' must be a JSON object"),
    ],
)
def test_reasoning_rejections(change, fragment):
    obj = {**{k: "x" for k in REASONING_FIELDS}, "weights": json.loads(good())}
    change(obj)
    with pytest.raises(AnswerError) as info:
        parse_answer(json.dumps(obj), NAMES, reasoning=True)
    assert fragment in str(info.value)


def test_plain_answer_is_not_a_reasoning_answer():
    with pytest.raises(AnswerError, match="missing top-level keys"):
        parse_answer(good(), NAMES, reasoning=True)


# --- request_weights with a scripted in-memory backend -------------------------------------------


class ScriptedBackend(LLMBackend):
    """Answers each call with the next scripted item: a list of sample texts or an exception."""

    name: ClassVar[str] = "scripted"

    class Options(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    def __init__(self, script: dict[str, list], **kwargs):
        super().__init__(**kwargs)
        self.script = {k: list(v) for k, v in script.items()}
        self.seen: list[ChatRequest] = []

    @property
    def model_id(self) -> str:
        return "scripted-1"

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        self.seen.append(request)
        tag = request.messages[0]["content"]
        item = self.script[tag].pop(0)
        if isinstance(item, BaseException):
            raise item
        samples, truncated = item if isinstance(item, tuple) else (item, [False] * len(item))
        return ChatResult(
            samples=samples,
            model="scripted-1",
            prompt_tokens=10,
            completion_tokens=5 * len(samples),
            calls=1,
            latency_s=0.01,
            truncated=truncated,
        )


def req(tag: str, **kw) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": tag},), feature_names=NAMES, **kw)


def test_valid_answers_need_no_reask():
    backend = ScriptedBackend({"a": [[good(), good(age=0.3)]]})
    (outcome,) = request_weights(backend, [req("a", n=2)], progress=False)
    assert outcome.failed is None and not outcome.retried
    assert [s["age"] for s in outcome.samples] == [0.1, 0.3]
    assert outcome.calls == 1 and outcome.prompt_tokens == 10 and outcome.completion_tokens == 10
    assert len(backend.seen) == 1


def test_partially_valid_samples_keep_the_valid_ones_without_reask():
    backend = ScriptedBackend({"a": [[good(age="x"), good()]]})
    (outcome,) = request_weights(backend, [req("a", n=2)], progress=False)
    assert len(outcome.samples) == 1 and not outcome.retried
    assert len(outcome.errors) == 1 and outcome.errors[0].startswith("sample 1:")


def test_invalid_answer_is_reasked_once_with_the_error():
    backend = ScriptedBackend({"a": [[good(sports="0.5")], [good()]]})
    (outcome,) = request_weights(backend, [req("a")], progress=False)
    assert outcome.retried and outcome.failed is None
    assert outcome.samples == [{"age": 0.1, "sports": -0.5, "gaming": 1.0}]
    assert outcome.calls == 2
    second = backend.seen[1]
    assert second.messages[:1] == backend.seen[0].messages
    assert second.messages[1] == {"role": "assistant", "content": good(sports="0.5")}
    assert second.messages[-1]["role"] == "user"
    reask = second.messages[-1]["content"]
    assert "Your previous answer was rejected because" in reask and 'sports="0.5"' in reask
    assert all(f'"{n}"' in reask for n in NAMES)


def test_still_invalid_after_reask_fails_with_answer_error():
    backend = ScriptedBackend({"a": [["nope"], ["still nope"]]})
    (outcome,) = request_weights(backend, [req("a")], progress=False)
    assert outcome.retried and outcome.samples == []
    assert isinstance(outcome.failed, AnswerError)
    assert "re-ask" in str(outcome.failed)
    assert len(outcome.errors) == 2


def test_truncated_sample_is_rejected_even_when_it_parses_and_reask_doubles_tokens():
    backend = ScriptedBackend({"a": [([good()], [True]), [good()]]})
    (outcome,) = request_weights(backend, [req("a", max_tokens=50)], progress=False)
    assert outcome.retried and len(outcome.samples) == 1
    assert "finish_reason 'length'" in outcome.errors[0]
    assert backend.seen[1].max_tokens == 100


def test_backend_error_is_recorded_without_reask_and_others_survive():
    err = mark_fatal(BackendError("bad key"))
    backend = ScriptedBackend({"a": [err], "b": [[good()]]})
    outcomes = request_weights(backend, [req("a"), req("b")], concurrency=1, progress=False)
    assert outcomes[0].failed is err and not outcomes[0].retried
    assert outcomes[1].failed is None and len(outcomes[1].samples) == 1


def test_reasoning_texts_are_kept_per_valid_sample():
    text = json.dumps({**{k: k.upper() for k in REASONING_FIELDS}, "weights": json.loads(good())})
    backend = ScriptedBackend({"a": [[text]]})
    (outcome,) = request_weights(backend, [req("a", reasoning=True)], progress=False)
    assert outcome.reasoning == [{k: k.upper() for k in REASONING_FIELDS}]
    assert math.isclose(outcome.samples[0]["gaming"], 1.0)
