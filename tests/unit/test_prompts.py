"""Tests of llmhyper_feast.generation.prompts.

Golden files: ``tests/golden/*.txt`` hold rendered prompts (``render_messages``) and their
``prompt_hash``; the tests compare them exactly. After an intended wording change, bump
``PROMPT_VERSION`` and regenerate them with::

    LLMHYPER_REGEN_GOLDEN=1 pytest tests/unit/test_prompts.py

then review the diff of tests/golden/ before committing. Without that variable the files are
never written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from llmhyper_feast.errors import ConfigError, DataError
from llmhyper_feast.features import Ad, FeatureDefinition, FeatureSchema, Neighbour, WarmAd
from llmhyper_feast.generation.prompts import (
    PROMPT_VERSION,
    REASONING_FIELDS,
    answer_template,
    build_messages,
    feature_batches,
    image_to_data_url,
    prompt_hash,
    render_messages,
    shared_prefix_chars,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REGEN = os.environ.get("LLMHYPER_REGEN_GOLDEN") == "1"

# 1x1 PNG, fixed bytes.
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2b2b7f40000000049454e44ae426082"
)

SCHEMA = FeatureSchema(
    (
        FeatureDefinition(
            "toy_affinity",
            "How often the user browsed or bought toys and games in the last 90 days, scaled to 0-1.",
            "Float32",
            "user_interests",
        ),
        FeatureDefinition(
            "parent_signal",
            "1 if the account shows signs of having children under 12 (kids' profiles, school supplies), else 0.",
            "Int64",
            "user_profile",
        ),
        FeatureDefinition(
            "garden_affinity",
            "Share of the user's recent sessions spent on garden, patio and outdoor furniture pages.",
            "Float32",
            "user_interests",
        ),
        FeatureDefinition(
            "price_sensitivity",
            "Fraction of the user's purchases made with a discount code or during a sale.",
            "Float32",
            "user_behaviour",
        ),
        FeatureDefinition(
            "vegan_preference",
            "Strength of the user's stated preference for plant-based food, 0 (none) to 1 (strict).",
            "Float32",
            "user_profile",
        ),
        FeatureDefinition(
            "age_18_24", "1 if the user's declared age is between 18 and 24, else 0.", "Int64", "user_profile"
        ),
    )
)

COLD = Ad(
    "cold-1", "Build a pirate ship with 1,200 bricks", "A boy and his father assembling a colourful toy ship on a table"
)
COLD_2 = Ad("cold-2", "Teak garden bench, 30% off this week", "A wooden bench on a sunny patio next to potted plants")


def _warm(ad_id: str, title: str, caption: str, seed: int) -> WarmAd:
    weights = np.round(np.random.default_rng(seed).normal(0, 0.6, len(SCHEMA)), 4)
    return WarmAd(weights, -3.0, ad=Ad(ad_id, title, caption), mean_ctr=0.02)


NEIGHBOURS = [
    Neighbour(_warm("w-7", "Castle building kit for ages 8+", "Children stacking grey bricks into towers", 7), 0.71349),
    Neighbour(_warm("w-2", "Toy construction bricks, 500 pieces", "A pile of bricks in bright colours", 2), 0.90116),
    Neighbour(_warm("w-5", "Board games for family nights", "A family laughing around a board game", 5), 0.55501),
]


def _golden(name: str, messages: list[dict]) -> None:
    text = f"prompt_version: {PROMPT_VERSION}\nprompt_hash: {prompt_hash(messages)}\n" + render_messages(messages)
    path = GOLDEN / name
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        pytest.skip(f"regenerated {path}")
    assert path.exists(), f"missing golden file {path}; run with LLMHYPER_REGEN_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8")


def test_golden_plain_three_shot() -> None:
    batch = list(SCHEMA.features[:4])
    _golden("plain_3shot.txt", build_messages(COLD, batch, SCHEMA, NEIGHBOURS))


def test_golden_reasoning_zero_shot_with_image() -> None:
    url = "data:image/png;base64,iVBORw0KGgo="
    batch = list(SCHEMA.features[4:])
    _golden("reasoning_0shot_image.txt", build_messages(COLD, batch, SCHEMA, [], reasoning=True, image_data_url=url))


def test_golden_no_caption() -> None:
    msgs = build_messages(COLD_2, list(SCHEMA.features), SCHEMA, NEIGHBOURS[:1], include_caption=False, max_abs=2.0)
    _golden("plain_1shot_nocaption.txt", msgs)


def _text(messages: list[dict]) -> str:
    return render_messages(messages)


def test_every_feature_description_appears_whatever_the_batch() -> None:
    batch = [SCHEMA.features[2]]
    text = _text(build_messages(COLD, batch, SCHEMA, NEIGHBOURS))
    for f in SCHEMA.features:
        assert f.description in text
    user = build_messages(COLD, batch, SCHEMA, NEIGHBOURS)[1]["content"]
    assert "garden_affinity" in user.split("Request:")[1]
    assert "toy_affinity" not in user.split("Request:")[1]


def test_definitions_follow_schema_order() -> None:
    system = build_messages(COLD, [SCHEMA.features[0]], SCHEMA, [])[0]["content"]
    positions = [system.index(f"- {name} [") for name in SCHEMA.names]
    assert positions == sorted(positions)


def test_examples_sorted_by_similarity_with_all_weights() -> None:
    user = build_messages(COLD, list(SCHEMA.features[:2]), SCHEMA, NEIGHBOURS)[1]["content"]
    sims = [user.index("similarity 0.901"), user.index("similarity 0.713"), user.index("similarity 0.555")]
    assert sims == sorted(sims)
    best = NEIGHBOURS[1].warm
    for name, w in zip(SCHEMA.names, best.weights):
        assert f'"{name}": {round(float(w), 3) + 0.0:.3f}' in user


def test_zero_shot_says_there_are_no_examples() -> None:
    user = build_messages(COLD, list(SCHEMA.features), SCHEMA, [])[1]["content"]
    assert "Examples: none" in user
    assert "Example 1" not in user
    assert "Trained weights" not in user


def test_include_caption_false_removes_captions() -> None:
    with_caption = _text(build_messages(COLD, list(SCHEMA.features), SCHEMA, NEIGHBOURS))
    without = _text(build_messages(COLD, list(SCHEMA.features), SCHEMA, NEIGHBOURS, include_caption=False))
    assert COLD.caption in with_caption
    assert COLD.caption not in without
    assert NEIGHBOURS[0].warm.ad.caption not in without
    assert COLD.title in without


def test_image_part_is_well_formed(tmp_path: Path) -> None:
    png = tmp_path / "ad.png"
    png.write_bytes(PNG_1PX)
    url = image_to_data_url(png)
    assert url.startswith("data:image/png;base64,")
    assert image_to_data_url(png.as_uri()) == url
    user = build_messages(COLD, list(SCHEMA.features), SCHEMA, NEIGHBOURS, image_data_url=url)[1]
    parts = user["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": url}}
    assert "Request:" in parts[2]["text"] and COLD.title in parts[0]["text"]
    json.dumps(user)  # serialisable as sent


def test_image_to_data_url_detects_jpeg_and_rejects_others(tmp_path: Path) -> None:
    jpg = tmp_path / "a.jpg"
    jpg.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 16)
    assert image_to_data_url(jpg).startswith("data:image/jpeg;base64,")
    gif = tmp_path / "a.gif"
    gif.write_bytes(b"GIF89a" + b"\x00" * 10)
    with pytest.raises(DataError, match="not a PNG or JPEG"):
        image_to_data_url(gif)
    with pytest.raises(DataError, match="Could not read"):
        image_to_data_url(tmp_path / "missing.png")


def test_bad_image_url_rejected() -> None:
    with pytest.raises(DataError, match="image_data_url"):
        build_messages(COLD, list(SCHEMA.features), SCHEMA, [], image_data_url="/tmp/x.png")


def test_hash_changes_when_a_description_changes() -> None:
    base = prompt_hash(build_messages(COLD, list(SCHEMA.features[:2]), SCHEMA, NEIGHBOURS))
    changed = list(SCHEMA.features)
    changed[5] = FeatureDefinition("age_18_24", "1 if the user is 18 to 24 years old.", "Int64", "user_profile")
    schema2 = FeatureSchema(tuple(changed))
    assert prompt_hash(build_messages(COLD, list(schema2.features[:2]), schema2, NEIGHBOURS)) != base
    assert prompt_hash(build_messages(COLD, list(SCHEMA.features[:2]), SCHEMA, NEIGHBOURS)) == base
    assert re.fullmatch(r"[0-9a-f]{16}", base)


def test_two_ads_in_a_run_share_system_and_definitions_prefix() -> None:
    batches = feature_batches(SCHEMA, 4)
    calls = [build_messages(ad, b, SCHEMA, NEIGHBOURS[: i + 1]) for i, ad in enumerate([COLD, COLD_2]) for b in batches]
    system = calls[0][0]
    assert all(c[0] == system for c in calls)
    assert system["content"].rstrip().endswith(SCHEMA.features[-1].description)
    prefix = shared_prefix_chars(calls)
    assert prefix > len(json.dumps(system, ensure_ascii=False))
    # Nothing ad-specific in the shared part.
    shared = json.dumps(calls[0], ensure_ascii=False, separators=(",", ":"))[:prefix]
    assert COLD.title not in shared and "Request" not in shared
    assert shared_prefix_chars(calls[:1]) == len(json.dumps(calls[0], ensure_ascii=False, separators=(",", ":")))
    assert shared_prefix_chars([]) == 0


def test_reasoning_variant_asks_for_text_fields_then_weights() -> None:
    msgs = build_messages(COLD, list(SCHEMA.features[:2]), SCHEMA, [], reasoning=True)
    template = answer_template(SCHEMA.features[:2], reasoning=True)
    filled = json.loads(template.replace("<number>", "0.1"))
    assert list(filled) == [*REASONING_FIELDS, "weights"]
    assert list(filled["weights"]) == SCHEMA.names[:2]
    assert template in msgs[1]["content"]
    plain = build_messages(COLD, list(SCHEMA.features[:2]), SCHEMA, [])
    assert plain[0]["content"] != msgs[0]["content"]
    assert "analysis" not in plain[0]["content"]


def test_max_abs_appears_and_is_validated() -> None:
    assert "[-2.5, 2.5]" in build_messages(COLD, [SCHEMA.features[0]], SCHEMA, [], max_abs=2.5)[0]["content"]
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="max_abs"):
            build_messages(COLD, [SCHEMA.features[0]], SCHEMA, [], max_abs=bad)


def test_invalid_batches_and_weights_rejected() -> None:
    with pytest.raises(DataError, match="empty"):
        build_messages(COLD, [], SCHEMA, [])
    with pytest.raises(DataError, match="not in the schema"):
        build_messages(COLD, [FeatureDefinition("nope", "x")], SCHEMA, [])
    with pytest.raises(DataError, match="twice"):
        build_messages(COLD, [SCHEMA.features[0]] * 2, SCHEMA, [])
    short = Neighbour(WarmAd(np.zeros(3), ad=Ad("w-x", "t")), 0.5)
    with pytest.raises(DataError, match="expected 6 finite weights"):
        build_messages(COLD, [SCHEMA.features[0]], SCHEMA, [short])
    nan = Neighbour(WarmAd(np.full(6, np.nan), ad=Ad("w-y", "t")), 0.5)
    with pytest.raises(DataError, match="w-y"):
        build_messages(COLD, [SCHEMA.features[0]], SCHEMA, [nan])
    with pytest.raises(DataError, match="empty title"):
        build_messages(Ad("c", "  "), [SCHEMA.features[0]], SCHEMA, [])


def test_feature_batches() -> None:
    assert [len(b) for b in feature_batches(SCHEMA, 4)] == [4, 2]
    assert [f.name for b in feature_batches(SCHEMA, 4) for f in b] == SCHEMA.names
    for all_at_once in (None, 0, -3):
        assert feature_batches(SCHEMA, all_at_once) == [list(SCHEMA.features)]
    assert [len(b) for b in feature_batches(SCHEMA, 1)] == [1] * 6
    assert feature_batches(FeatureSchema(()), 3) == []


def test_negative_zero_weights_render_as_zero() -> None:
    warm = WarmAd(np.array([-0.0001, 0.0004, 1.23456, -2.0, 0, 0]), ad=Ad("w-z", "t", "c"))
    user = build_messages(COLD, [SCHEMA.features[0]], SCHEMA, [Neighbour(warm, 0.5)])[1]["content"]
    assert (
        '"toy_affinity": 0.000, "parent_signal": 0.000, "garden_affinity": 1.235, "price_sensitivity": -2.000' in user
    )
    assert "-0.000" not in user
