"""The judge's answer shape and its strict validation, the consistency rule, and the regeneration prompt."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from llmhyper_feast.backends.llm.base import ChatRequest
from llmhyper_feast.errors import AnswerError
from llmhyper_feast.features import Ad, FeatureDefinition, FeatureSchema
from llmhyper_feast.generation.judge import (
    Flag,
    Verdict,
    consistency,
    judge_format,
    judge_messages,
    parse_verdict,
    regeneration_request,
    weight_sign,
)

NAMES = ("cooking", "vegetarian", "travel")


def flag(feature: str = "vegetarian", problem: str = "sign", why: str = "Steak ads do not suit vegetarians.") -> dict:
    return {"feature": feature, "problem": problem, "why": why}


def answer(flags: list, stated: dict | None = None) -> str:
    obj: dict = {"flags": flags}
    if stated is not None:
        obj["stated"] = stated
    return json.dumps(obj)


STATED = {"cooking": "+", "vegetarian": "-", "travel": "none"}


def test_valid_answers_parse_into_flags_and_stated_directions():
    assert parse_verdict(answer([]), NAMES) == Verdict(())
    verdict = parse_verdict(answer([flag(), flag("travel", "size", "Unrelated.")]), NAMES)
    assert verdict.flags == (
        Flag("vegetarian", "sign", "Steak ads do not suit vegetarians."),
        Flag("travel", "size", "Unrelated."),
    )
    reasoned = parse_verdict(answer([], STATED), NAMES, reasoning=True)
    assert reasoned.flags == () and reasoned.stated == STATED
    fenced = "```json\n" + answer([flag()]) + "\n```"
    assert parse_verdict(fenced, NAMES).flags[0].feature == "vegetarian"


INVALID = {
    "unknown feature": (answer([flag("astrology")]), False, "unknown feature 'astrology'"),
    "bad problem": (answer([flag(problem="tone")]), False, "problem 'tone'"),
    "empty reason": (answer([flag(why="  ")]), False, "no reason"),
    "reason not a string": (answer([flag(why=3)]), False, "no reason"),
    "flag twice": (answer([flag(), flag(problem="size")]), False, "a second time"),
    "flag with extra key": (answer([{**flag(), "weight": 0.4}]), False, "exactly feature, problem, why"),
    "flag not an object": (answer(["vegetarian"]), False, "exactly feature, problem, why"),
    "flags not a list": ('{"flags": {"vegetarian": "sign"}}', False, "'flags' must be a list"),
    "missing flags": ("{}", False, "missing keys ['flags']"),
    "extra top key": ('{"flags": [], "verdict": "ok"}', False, "unexpected keys ['verdict']"),
    "duplicate keys": ('{"flags": [], "flags": []}', False, "duplicate keys ['flags']"),
    "not an object": ("[]", False, "must be a JSON object"),
    "prose": ("Looks fine to me.", False, "not JSON"),
    "empty": ("", False, "empty"),
    "stated missing": (answer([]), True, "missing keys ['stated']"),
    "stated without a feature": (answer([], {"cooking": "+", "vegetarian": "-"}), True, "misses features ['travel']"),
    "stated unknown feature": (answer([], {**STATED, "golf": "+"}), True, "unknown features ['golf']"),
    "stated bad direction": (answer([], {**STATED, "cooking": "positive"}), True, "cooking='positive'"),
    "stated without reasoning": (answer([], STATED), False, "unexpected keys ['stated']"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_answers_are_rejected_with_the_reason(case):
    text, reasoning, reason = INVALID[case]
    with pytest.raises(AnswerError, match=re.escape(reason)):
        parse_verdict(text, NAMES, reasoning=reasoning)


@pytest.mark.parametrize("reasoning", [False, True])
def test_schema_and_regex_accept_the_same_valid_answers_and_refuse_unknown_features(reasoning):
    fmt = judge_format(NAMES, reasoning=reasoning)
    stated = STATED if reasoning else None
    valid = [answer([], stated), answer([flag()], stated), answer([flag(), flag("travel", "size", "No.")], stated)]
    for text in valid:
        jsonschema.validate(json.loads(text), fmt.schema)
        assert re.fullmatch(fmt.pattern, text), text
        parse_verdict(text, NAMES, reasoning=reasoning)
    bad = answer([flag("astrology")], stated)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(bad), fmt.schema)
    assert re.fullmatch(fmt.pattern, bad) is None
    assert fmt.schema["additionalProperties"] is False


def test_weight_sign_and_consistency_leave_out_features_the_text_does_not_address():
    assert [weight_sign(w) for w in (0.3, -0.3, 0.04, -0.05)] == ["+", "-", "0", "0"]
    weights = {"cooking": 0.8, "vegetarian": 0.2, "travel": -0.4}
    # cooking agrees, vegetarian contradicts the text, travel is not addressed
    assert consistency(STATED, weights) == (1, 2)
    assert consistency({"cooking": "0", "vegetarian": "none", "travel": "none"}, {"cooking": 0.01}) == (1, 1)


def test_judge_prompt_shows_ad_definitions_weights_and_reasoning():
    schema = FeatureSchema(tuple(FeatureDefinition(n, f"Interest in {n}") for n in NAMES))
    ad = Ad("a1", "Barbecue meat box", "Marbled steaks on butcher paper")
    messages = judge_messages(ad, schema, {"vegetarian": 0.7}, reasoning_texts={"summary": "Meat lovers click."})
    user = messages[1]["content"]
    assert "Barbecue meat box" in user and "Marbled steaks" in user
    assert "- vegetarian (Interest in vegetarian): 0.700" in user and "summary: Meat lovers click." in user
    assert '"stated"' in messages[0]["content"]
    plain = judge_messages(ad, schema, {"vegetarian": 0.7}, include_caption=False)
    assert "Marbled" not in plain[1]["content"] and '"stated"' not in plain[0]["content"]


def test_regeneration_is_a_fresh_request_quoting_the_objections():
    request = ChatRequest(messages=({"role": "user", "content": "weights please"},), feature_names=NAMES)
    verdict = Verdict((Flag("vegetarian", "sign", "Steak ads do not suit vegetarians."),))
    again = regeneration_request(request, verdict, {"vegetarian": 0.7, "cooking": 1.0, "travel": 0.0})
    assert again.messages[:1] == request.messages and len(again.messages) == 2
    assert "vegetarian = 0.700: wrong sign (Steak ads do not suit vegetarians.)" in again.messages[-1]["content"]
    assert again.feature_names == request.feature_names and again.params() == request.params()


def test_weight_requests_keep_their_cache_parameters_and_judge_requests_add_their_shape():
    plain = ChatRequest(messages=({"role": "user", "content": "x"},), feature_names=NAMES)
    assert "answer_format" not in plain.params()  # cache keys written before the judge stay valid
    judged = ChatRequest(messages=plain.messages, feature_names=NAMES, answer_format=judge_format(NAMES))
    assert judged.params()["answer_format"]["name"] == "weight_review"
