"""User priors without Feast or an LLM: profile text, answer validation and the baselines."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from llmhyper_feast.config import UserPriorsConfig
from llmhyper_feast.errors import AnswerError
from llmhyper_feast.features import FeatureDefinition, FeatureSchema
from llmhyper_feast.userpriors.answers import parse_priors, priors_format
from llmhyper_feast.userpriors.baselines import Baselines
from llmhyper_feast.userpriors.candidates import candidate_pool
from llmhyper_feast.userpriors.history import first_conversions
from llmhyper_feast.userpriors.profile import FeatureStats, compile_profile

T0 = pd.Timestamp("2026-10-01", tz="UTC")
ADVERTISERS = {"a1": ("Alpha", "fitness"), "a2": ("Beta", "travel"), "a3": ("Gamma", "pets"), "a4": ("Delta", "pets")}


def schema() -> FeatureSchema:
    return FeatureSchema(
        (
            FeatureDefinition(
                "fitness", "How strongly the user engaged with gyms over the last 90 days: views.", "Float32", "v"
            ),
            FeatureDefinition("travel", "How strongly the user engaged with flights: clicks.", "Float32", "v"),
            FeatureDefinition("pets", "How strongly the user engaged with pet food.", "Float32", "v"),
        )
    )


def events(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "user_id": u,
                "advertiser_id": a,
                "ad_id": f"ad-{a}",
                "event": e,
                "event_timestamp": T0 + pd.Timedelta(days=d),
            }
            for u, a, e, d in rows
        ]
    )


def stats() -> FeatureStats:
    population = np.array([[0.1, 0.5, 0.2], [0.2, 0.5, 0.3], [0.15, 0.4, 0.25], [0.12, 0.6, 0.2]])
    return FeatureStats.of(schema(), population)


def test_profile_shows_informative_features_and_recent_advertisers() -> None:
    ev = events(
        [("u", "a1", "impression", 1), ("u", "a1", "click", 1), ("u", "a1", "conversion", 2), ("u", "a2", "click", 5)]
    )
    profile = compile_profile("u", np.array([0.9, 0.5, 0.25]), stats(), ev, ADVERTISERS, UserPriorsConfig(min_z=1.0))
    assert "Conversions, newest first: 2026-10-03 Alpha [fitness]" in profile.text
    assert "Clicks without a conversion, newest first: 2026-10-06 Beta [travel]" in profile.text
    # fitness is far above the population; travel sits at its mean and is left out
    assert "fitness = 0.90" in profile.text and "travel =" not in profile.text
    assert "How strongly the user engaged with gyms over the last 90 days" in profile.text
    assert ": views" not in profile.text  # only the description's first clause
    assert profile.features_shown == ("fitness",)
    assert profile.advertisers_seen == ("a1", "a2")  # converted first
    again = compile_profile("u", np.array([0.9, 0.5, 0.25]), stats(), ev.iloc[::-1], ADVERTISERS, UserPriorsConfig())
    assert again.hash == profile.hash  # same inputs, same hash, whatever the row order
    more = pd.concat([ev, events([("u", "a3", "click", 7)])])
    assert (
        compile_profile("u", np.array([0.9, 0.5, 0.25]), stats(), more, ADVERTISERS, UserPriorsConfig()).hash
        != profile.hash
    )


def test_profile_stays_within_the_token_budget() -> None:
    ev = events([("u", f"a{1 + i % 4}", "conversion", i % 170) for i in range(300)])
    for budget in (60, 120, 400):
        profile = compile_profile(
            "u", np.array([0.9, 0.0, 0.9]), stats(), ev, ADVERTISERS, UserPriorsConfig(token_budget=budget)
        )
        assert profile.tokens <= budget, (budget, profile.tokens)
        assert profile.text.startswith("Conversions, newest first:")
        assert "more)" in profile.text  # the cut is said, not silent
    big = compile_profile("u", np.array([0.9, 0.0, 0.9]), stats(), ev, ADVERTISERS, UserPriorsConfig(token_budget=400))
    small = compile_profile("u", np.array([0.9, 0.0, 0.9]), stats(), ev, ADVERTISERS, UserPriorsConfig(token_budget=60))
    assert len(small.text) < len(big.text)


POOL = ["a1", "a2", "a3", "a4"]
INTERESTS = ["fitness", "travel", "pets"]


def test_valid_answer_is_parsed_in_order() -> None:
    answer = parse_priors('{"advertisers": ["a3", "a1", "a2"], "interests": ["pets"]}', POOL, INTERESTS, 3, 5)
    assert answer.advertisers == ("a3", "a1", "a2") and answer.interests == ("pets",)
    fenced = parse_priors('```json\n{"advertisers": ["a3", "a1", "a2"], "interests": []}\n```', POOL, INTERESTS, 3, 5)
    assert fenced.advertisers == ("a3", "a1", "a2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"advertisers": ["a3", "zz", "a2"], "interests": []}', r"unknown advertisers \['zz'\]"),
        (
            '{"advertisers": ["a3", "a3", "a2"], "interests": []}',
            r"repeated advertisers \['a3'\].*too few advertisers: 2",
        ),
        ('{"advertisers": ["a3"], "interests": []}', "too few advertisers: 1 distinct known ids, expected 3"),
        ('{"advertisers": ["a1", "a2", "a3", "a4"], "interests": []}', "too many advertisers: 4"),
        ('{"advertisers": ["a1", "a2", "a3"], "interests": ["cooking"]}', r"unknown interests \['cooking'\]"),
        ('{"advertisers": ["a1", "a2", "a3"]}', r"missing keys \['interests'\]"),
        ('{"advertisers": ["a1", "a2", "a3"], "interests": [], "why": "x"}', r"unexpected keys \['why'\]"),
        ('{"advertisers": "a1, a2", "interests": []}', "'advertisers' must be a list of strings"),
        ("I think a1", "not valid JSON"),
        ("", "empty"),
    ],
)
def test_invalid_answers_are_rejected(text: str, message: str) -> None:
    with pytest.raises(AnswerError, match=message):
        parse_priors(text, POOL, INTERESTS, 3, 5)


def test_answer_format_schema_and_pattern_agree() -> None:
    fmt = priors_format(POOL, INTERESTS, 3, 2)
    props = fmt.schema["properties"]
    assert props["advertisers"]["items"]["enum"] == POOL and props["advertisers"]["minItems"] == 3
    assert props["interests"]["items"]["enum"] == INTERESTS and props["interests"]["maxItems"] == 2
    pattern = re.compile(fmt.pattern)
    assert pattern.fullmatch(json.dumps({"advertisers": ["a2", "a1", "a4"], "interests": ["pets", "travel"]}))
    assert pattern.fullmatch(json.dumps({"advertisers": ["a2", "a1", "a4"], "interests": []}))
    assert not pattern.fullmatch(json.dumps({"advertisers": ["a2", "a1"], "interests": []}))  # too few
    assert not pattern.fullmatch(json.dumps({"advertisers": ["a2", "a1", "zz"], "interests": []}))  # unknown
    assert priors_format(["a1", "a2"], INTERESTS, 20, 5).schema["properties"]["advertisers"]["maxItems"] == 2


def test_candidate_pool_puts_own_advertisers_first_without_repeats() -> None:
    assert candidate_pool(["a3", "a1"], ["a1", "a2", "a4"], set(POOL), 10) == ["a3", "a1", "a2", "a4"]
    assert candidate_pool(["a3", "zz"], ["a1", "a2"], set(POOL), 2) == ["a3", "a1"]


def test_baselines_on_a_toy_history() -> None:
    ev = events(
        [
            # a2 is the most popular; u1 keeps buying from a3; users who buy a1 also buy a4
            *[(f"p{i}", "a2", "conversion", 1) for i in range(5)],
            ("u1", "a3", "conversion", 2),
            ("u1", "a3", "conversion", 3),
            ("u1", "a1", "click", 4),
            ("v1", "a1", "conversion", 2),
            ("v1", "a4", "conversion", 3),
            ("v2", "a1", "conversion", 2),
            ("v2", "a4", "click", 3),
            ("u2", "a1", "conversion", 5),
        ]
    )
    base = Baselines(ev)
    assert base.rank("popularity", "u1", 2) == ["a2", "a1"]
    assert base.rank("frequent", "u1", 3) == ["a3", "a1", "a2"]  # own advertisers, then padded by popularity
    assert base.rank("cooccurrence", "u2", 2) == ["a1", "a4"]  # a4 goes with a1; popular a2 does not
    assert base.rank("frequent", "stranger", 2) == ["a2", "a1"]  # no history: popularity
    with pytest.raises(Exception, match="Unknown baseline"):
        base.rank("magic", "u1", 2)


def test_label_is_the_first_conversion_in_the_window() -> None:
    ev = events(
        [
            ("u", "a1", "conversion", 1),
            ("u", "a2", "conversion", 10),
            ("u", "a3", "conversion", 12),
            ("w", "a1", "click", 11),
        ]
    )
    labels = first_conversions(ev, T0 + pd.Timedelta(days=5), T0 + pd.Timedelta(days=30))
    assert labels.to_dict() == {"u": "a2"}


# --- sft-data: no leakage, no held-out user ------------------------------------------------------


def sft_world() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, list[str]]:
    """40 users with events before day 20 and first conversions in the 30 days after it."""
    rows = []
    for i in range(40):
        u = f"user{i:02d}"
        own, nxt = f"a{1 + i % 4}", f"a{1 + (i + 1) % 4}"
        rows += [(u, own, "click", 2 + i % 5), (u, own, "conversion", 3 + i % 5), (u, nxt, "impression", 10)]
        rows += [(u, nxt, "conversion", 25 + i % 3), (u, own, "conversion", 40)]
    users = [f"user{i:02d}" for i in range(40)]
    matrix = np.random.default_rng(0).random((40, 3))
    adv = pd.DataFrame([{"advertiser_id": a, "name": n, "category": c} for a, (n, c) in ADVERTISERS.items()])
    return events(rows), adv, matrix, users


def sft_run(history: pd.DataFrame, **cfg: object) -> tuple[list, object]:
    from llmhyper_feast.userpriors.generate import build_context
    from llmhyper_feast.userpriors.sft import SftReport, sft_examples

    _, adv, matrix, users = sft_world()
    config = UserPriorsConfig(k=3, eval_share=0.3, **cfg)  # type: ignore[arg-type]
    ctx = build_context(history, adv, schema(), users, matrix, config, None, T0 + pd.Timedelta(days=20))
    report = SftReport()
    return sft_examples(ctx, history, 30, report), report


def test_sft_examples_see_nothing_after_the_snapshot_and_no_held_out_user() -> None:
    from llmhyper_feast.userpriors.history import first_conversions, is_heldout

    history = sft_world()[0]
    examples, report = sft_run(history)
    assert examples and report.heldout_skipped > 0  # type: ignore[attr-defined]
    snapshot = T0 + pd.Timedelta(days=20)
    labels = first_conversions(history, snapshot, snapshot + pd.Timedelta(days=30))
    for example, meta in examples:
        roles = [m["role"] for m in example["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert not is_heldout(meta["user_id"], 0.3, 0)  # evaluation users never appear
        answer = json.loads(example["messages"][2]["content"])
        assert answer["advertisers"][0] == labels[meta["user_id"]] and len(answer["advertisers"]) == 3
    # the future rewritten: only the labels kept, other window events added before them, later ones dropped
    future = history["event_timestamp"] > snapshot
    label_rows = history[
        future & (history["event"] == "conversion") & (history["event_timestamp"] < T0 + pd.Timedelta(days=30))
    ]
    noise = label_rows.assign(event="click", advertiser_id="a4", event_timestamp=snapshot + pd.Timedelta(hours=1))
    changed = pd.concat([history[~future], noise, label_rows], ignore_index=True)
    again, _ = sft_run(changed)
    assert [json.dumps(e, sort_keys=True) for e, _ in again] == [json.dumps(e, sort_keys=True) for e, _ in examples]


def test_sft_prompt_is_the_one_generate_sends() -> None:
    from llmhyper_feast.userpriors.generate import build_context, build_request, profiles_for

    history, adv, matrix, users = sft_world()
    examples, _ = sft_run(history)
    example, meta = examples[0]
    ctx = build_context(
        history, adv, schema(), users, matrix, UserPriorsConfig(k=3), None, pd.Timestamp(meta["snapshot"])
    )
    request, _, _ = build_request(ctx, profiles_for(ctx, [meta["user_id"]])[0])
    assert request is not None and example["messages"][:2] == list(request.messages)


def test_category_shares_sum_the_list_scores_per_category() -> None:
    from llmhyper_feast.userpriors.features import category_shares

    shares = category_shares(["a3", "a1", "a4"], [1.0, 0.5, 0.5], ADVERTISERS, ["pets", "fitness", "travel"])
    assert shares == [0.75, 0.25, 0.0]
    assert category_shares([], [], ADVERTISERS, ["pets"]) == [0.0]


# --- candidates="priors": the selection the ranker and the filter measurement share ------------------


def policy(mode: str, **kw: float):
    from llmhyper_feast.config import PriorsFilterConfig

    return PriorsFilterConfig(mode=mode, **kw)


def test_restrict_reserves_the_quota_for_predicted_advertisers_then_backfills() -> None:
    from llmhyper_feast.userpriors.filter import select_columns

    ctr = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32)
    weight = np.array([0, 0, 0, 1.0, 0, 0.5], np.float32)  # columns 3 and 5 are the predicted advertisers' ads
    # quota 1: both predicted ads, then the best other one; ordered by ctr
    assert select_columns(ctr, None, weight, 3, policy("restrict", quota=1.0)).tolist() == [0, 3, 5]
    # quota 0.5 of k=2: one reserved slot (the better predicted ad), one for the best of the rest
    assert select_columns(ctr, None, weight, 2, policy("restrict", quota=0.5)).tolist() == [0, 3]
    # quota 0 is plain ranking
    assert select_columns(ctr, None, weight, 3, policy("restrict", quota=0.0)).tolist() == [0, 1, 2]
    # k larger than the candidates: every candidate, by ctr
    assert select_columns(ctr, None, weight, 10, policy("restrict")).tolist() == [0, 1, 2, 3, 4, 5]
    # only allowed columns (content rules, an ads list) are chosen
    idx = np.array([1, 2, 5])
    assert select_columns(ctr, idx, weight, 2, policy("restrict")).tolist() == [1, 5]


def test_boost_multiplies_ctr_by_the_advertisers_prior_score() -> None:
    from llmhyper_feast.userpriors.filter import select_columns

    ctr = np.array([0.30, 0.20, 0.12, 0.10], np.float32)
    weight = np.array([0, 1.0, 0, 0.5], np.float32)
    # boosted: 0.30, 0.40, 0.12, 0.15
    assert select_columns(ctr, None, weight, 4, policy("boost", boost=1.0)).tolist() == [1, 0, 3, 2]
    assert select_columns(ctr, None, weight, 4, policy("boost", boost=0.0)).tolist() == [0, 1, 2, 3]
    assert select_columns(ctr, None, weight, 2, policy("boost", boost=5.0)).tolist() == [1, 3]  # 1.2, 0.35 > 0.3


def test_prior_weights_map_the_first_advertisers_to_their_ads_and_coverage_counts_distinct_ads() -> None:
    from llmhyper_feast.userpriors.filter import PriorsIndex, coverage, first_event_ads

    index = PriorsIndex(np.array([0, 1, -1, 0, 2], np.int32), {"a1": 0, "a2": 1, "a3": 2}, None)
    w = index.weights_of(["a2", "zz", "a1", "a3"], [1.0, 0.75, 0.5, 0.25], top=3)
    assert w is not None and w.tolist() == [0.5, 1.0, 0.0, 0.5, 0.0]  # a3 is 4th: not predicted; -1: unknown
    assert index.weights_of([], [], top=3) is None
    assert coverage([[0, 1], [1, 4]], 5) == 0.6
    history = events([("u1", "a1", "conversion", 1), ("u1", "a2", "conversion", 3), ("u2", "a2", "click", 2)])
    history["ad_id"] = history["advertiser_id"] + "_ad"
    assert first_event_ads(history, T0, T0 + pd.Timedelta(days=5)) == {"u1": "a1_ad"}
    assert first_event_ads(history, T0, T0 + pd.Timedelta(days=5), "click") == {"u2": "a2_ad"}
