"""The trust layer end to end: the LLM judge in generation, and counterfactual robustness.

Everything runs the real pipeline on a private copy of the demo repo, with the openai backend
talking HTTP to tests/support/fake_openai.FakeOpenAI through the real SDK. The fake's
``writer`` plays the judge, the rewriter, and a model whose weights depend on the ad's title.
Each test uses its own model name, so cached answers never cross tests.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support.fake_openai import FakeOpenAI, fake_weight
from support.repos import clone_repo

from llmhyper_feast import jobs
from llmhyper_feast.cli import cli
from llmhyper_feast.config import load_settings
from llmhyper_feast.datasets.demo_catalog import counterfactual_variants
from llmhyper_feast.errors import ConfigError
from llmhyper_feast.generation.judge import weight_sign
from llmhyper_feast.generation.runner import read_log
from llmhyper_feast.jobs.robustness import robustness
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.layout import RepoLayout

pytestmark = pytest.mark.integration

TITLE = re.compile(r"^Title: (.*)$", re.MULTILINE)
NEW_AD = re.compile(r"New ad to model:\nTitle: (.*)")


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private writable copy of the demo repo (like demo_copy, shared by this module's tests)."""
    return clone_repo(demo_repo, tmp_path_factory.mktemp("trust") / "repo")


@pytest.fixture(scope="module")
def world(repo: Path) -> dict:
    store = fa.open_store(repo)
    ads, df = fa.read_ads(store)
    active = [a for a in ads if a.ad_id in set(df.loc[df["status"] == "active", "ad_id"])]
    titles = [a.title for a in active]
    active = [a for a in active if titles.count(a.title) == 1]  # answers are matched to ads by title
    return {"names": fa.read_feature_schema(store).names, "active": active}


def settings_for(repo: Path, url: str, model: str, **generation):
    llm = {"name": "openai", "options": {"base_url": url, "api_key": "test", "model": model, "max_retries": 0}}
    return load_settings(repo).with_overrides(llm=llm, **{f"generation.{k}": v for k, v in generation.items()})


def schema_name(body: dict) -> str:
    return ((body.get("response_format") or {}).get("json_schema") or {}).get("name", "")


def user_text(body: dict) -> str:
    return next(m for m in body["messages"] if m["role"] == "user")["content"]


# --- the judge -------------------------------------------------------------------------------------


def test_judge_flags_regenerates_once_then_falls_back_and_logs_it(repo: Path, world: dict) -> None:
    names = world["names"]
    stubborn, convinced, garbled = world["active"][:3]
    judge_calls: Counter[str] = Counter()

    def judge(body: dict, choice: int) -> str | None:
        if schema_name(body) != "weight_review":
            if len(body["messages"]) < 3:
                return None  # first weight requests: the fake's usual good answers
            # a regeneration (the objection appended): the model halves its weights
            keys = body["response_format"]["json_schema"]["schema"]["properties"]["weights"]["required"]
            texts = {k: f"Revised {k}." for k in ("analysis", "alignment", "key_factors", "summary")}
            return json.dumps({**texts, "weights": {k: fake_weight(k) / 2 for k in keys}})
        title = TITLE.search(user_text(body)).group(1)
        judge_calls[title] += 1
        stated = {n: "+" for n in body["response_format"]["json_schema"]["schema"]["properties"]["stated"]["required"]}
        if title == stubborn.title:
            flags = [{"feature": "vegetarian", "problem": "sign", "why": "Wrong direction for this ad."}]
        elif title == convinced.title and judge_calls[title] == 1:
            flags = [{"feature": names[0], "problem": "size", "why": "Too small for the ad's main interest."}]
        elif title == garbled.title:
            flags = [{"feature": "astrology", "problem": "sign", "why": "Not a feature at all."}]
        else:
            flags = []
        return json.dumps({"flags": flags, "stated": stated})

    with FakeOpenAI() as server:
        server.writer = judge
        settings = settings_for(repo, server.base_url, "fake-judge", judge="on", reasoning=True, batch_size=0, shots=3)
        rows = jobs.generate(repo, settings, ad_ids=[stubborn.ad_id, convinced.ad_id, garbled.ad_id], progress=False)
        bodies = list(server.requests)
    rows = rows.set_index("ad_id")

    weight_requests = Counter(NEW_AD.search(user_text(b)).group(1) for b in bodies if schema_name(b) != "weight_review")
    assert weight_requests == {stubborn.title: 2, convinced.title: 2, garbled.title: 1}
    assert judge_calls == {stubborn.title: 2, convinced.title: 2, garbled.title: 1}
    redo = [b for b in bodies if schema_name(b) != "weight_review" and len(b["messages"]) == 3]
    assert len(redo) == 2 and all("A reviewer checked" in b["messages"][-1]["content"] for b in redo)
    assert any(
        "vegetarian = " in b["messages"][-1]["content"] and "wrong sign" in b["messages"][-1]["content"] for b in redo
    )

    bad = rows.loc[stubborn.ad_id]
    assert bad["origin"] == "fallback" and "judge still objected" in bad["fallback_reason"]
    np.testing.assert_allclose(bad["weights"], bad["prior_weights"])
    assert bad["regenerated"] == 1 and bad["judge_rejected"] == 1 and bad["judge_calls"] == 2
    assert [f["round"] for f in json.loads(bad["judge_flags"])] == [1, 2]
    assert not bad["backend_error"]  # a judged fallback is final, not an outage to retry
    assert rows.attrs["stopped"] == ""

    good = rows.loc[convinced.ad_id]
    assert good["origin"] == "llm" and good["regenerated"] == 1 and good["judge_rejected"] == 0
    assert [f["feature"] for f in json.loads(good["judge_flags"])] == [names[0]]
    np.testing.assert_allclose(good["weights"], [fake_weight(n) / 2 for n in names])

    kept = rows.loc[garbled.ad_id]
    assert kept["origin"] == "llm" and kept["regenerated"] == 0 and "unknown feature 'astrology'" in kept["judge_note"]

    # consistency: the judge said "+" for every feature; the first answer's sign decides agreement
    agree = sum(weight_sign(fake_weight(n)) == "+" for n in names)
    assert 0 < agree < len(names)
    for ad in (stubborn, convinced):
        assert (rows.loc[ad.ad_id, "consistency_agree"], rows.loc[ad.ad_id, "consistency_total"]) == (agree, len(names))
    assert rows.loc[garbled.ad_id, "consistency_total"] == 0

    result = CliRunner().invoke(cli, ["judge-report", "--repo", str(repo), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ads_judged"] == 3 and report["batches_regenerated"] == 2 and report["batches_rejected"] == 1
    assert report["consistency_rate"] == pytest.approx(agree / len(names))
    assert read_log(RepoLayout.of(repo).generation_log)["judge_calls"].notna().sum() == 3


def test_judge_off_sends_no_review_and_adds_no_columns(repo: Path, world: dict) -> None:
    with FakeOpenAI() as server:
        settings = settings_for(repo, server.base_url, "fake-nojudge", batch_size=0, shots=3)
        rows = jobs.generate(repo, settings, ad_ids=[world["active"][3].ad_id], progress=False)
        assert server.calls == 1 and "weight_review" not in {schema_name(b) for b in server.requests}
    assert "judge_flags" not in rows and rows["origin"].tolist() == ["llm"]


# --- robustness ------------------------------------------------------------------------------------


def title_weight(title: str) -> float:
    """The fake model's weight for every feature: a function of the ad's title only."""
    return round((len(title) % 37) / 37 - 0.5, 2)


def title_dependent(body: dict, choice: int) -> str | None:
    fmt = (body.get("response_format") or {}).get("json_schema") or {}
    if fmt.get("name") != "ad_feature_weights":
        return None
    title = NEW_AD.search(user_text(body)).group(1)
    return json.dumps({k: title_weight(title) for k in fmt["schema"]["properties"]})


def expected_correct(variant: str, original_title: str, new_title: str) -> bool:
    before, after = title_weight(original_title), title_weight(new_title)
    return {"enhanced": after > before, "diminished": after < before, "neutralized": abs(after) < abs(before)}[variant]


def test_robustness_with_hand_written_variants_through_the_cli(repo: Path, world: dict) -> None:
    ads = world["active"][:4]
    with FakeOpenAI() as server:
        server.writer = title_dependent
        env = {
            "LLMHYPER_LLM": "openai",
            "LLMHYPER_MODEL": "fake-robust",
            "LLMHYPER_LLM__OPTIONS__BASE_URL": server.base_url,
            "OPENAI_API_KEY": "test",
        }
        args = ["robustness", "--repo", str(repo), "--batch-size", "0", "--shots", "3", "--format", "json"]
        for ad in ads:
            args += ["--ads", ad.ad_id]
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
        assert server.calls == 4 * len(ads)  # each original and its three variants, one batch each
    report = json.loads(result.stdout)
    assert report["source"] == "openai:fake-robust" and report["variants_from"] == "demo catalog"
    expected: dict[str, list[bool]] = {"enhanced": [], "diminished": [], "neutralized": []}
    for ad in ads:
        target, variants = counterfactual_variants(ad.title, ad.caption)
        for variant, (title, _) in variants.items():
            expected[variant].append(expected_correct(variant, ad.title, title))
        assert {p["target_feature"] for p in report["pairs"] if p["ad_id"] == ad.ad_id} == {target}
    for variant, marks in expected.items():
        got = report["by_variant"][variant]
        assert (got["n"], got["correct"]) == (len(marks), sum(marks))
    assert report["overall"]["n"] == 3 * len(ads)
    assert json.loads(RepoLayout.of(repo).robustness.read_text()) == report


def test_robustness_with_llm_rewrites_from_the_demo_labels(repo: Path, world: dict) -> None:
    ads = world["active"][:2]

    def rewrite_or_weights(body: dict, choice: int) -> str | None:
        if schema_name(body) == "ad_rewrite":
            text = user_text(body)
            change = re.search(r"^Change: (\w+)$", text, re.MULTILINE).group(1)
            title = TITLE.search(text).group(1)
            new = {"enhanced": f"{title} for true fans", "diminished": "x", "neutralized": "A thing"}[change]
            return json.dumps({"title": new, "caption": "A photo", "explanation": f"{change} rewrite"})
        return title_dependent(body, choice)

    with FakeOpenAI() as server:
        server.writer = rewrite_or_weights
        settings = settings_for(repo, server.base_url, "fake-rewrite", batch_size=0, shots=3)
        report = robustness(repo, settings, rewrite=True, ad_ids=[a.ad_id for a in ads], progress=False)
        rewrites = [b for b in server.requests if schema_name(b) == "ad_rewrite"]
    assert len(rewrites) == 3 * len(ads) and report["variants_from"] == "llm rewrite"
    truth = __import__("pandas").read_parquet(RepoLayout.of(repo).demo_truth).set_index("ad_id")["category"]
    for ad in ads:
        assert f"Feature: {truth[ad.ad_id]}:" in "".join(user_text(b) for b in rewrites if ad.title in user_text(b))
    titles = {(p["ad_id"], p["variant"]): p["title"] for p in report["pairs"]}
    assert titles[(ads[0].ad_id, "enhanced")] == f"{ads[0].title} for true fans"
    for p in report["pairs"]:
        original = next(a.title for a in ads if a.ad_id == p["ad_id"])
        assert p["correct"] == expected_correct(p["variant"], original, p["title"])
        assert p["original"] == title_weight(original) and p["counterfactual"] == title_weight(p["title"])


def test_robustness_of_the_prior_is_a_baseline_and_rewrites_need_an_llm(repo: Path, world: dict) -> None:
    settings = load_settings(repo).with_overrides(**{"llm.name": "none"})
    ids = [a.ad_id for a in world["active"][:2]]
    report = robustness(repo, settings, ad_ids=ids, progress=False)
    assert report["source"].startswith("prior:") and "baseline" in report["note"]
    assert report["overall"]["n"] == 6
    with pytest.raises(ConfigError, match="--rewrite needs an LLM"):
        robustness(repo, settings, rewrite=True, ad_ids=ids, progress=False)
