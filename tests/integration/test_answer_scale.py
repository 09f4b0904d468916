"""An LLM that gives the right answer is never rejected for its size (issue: examples out of range).

The demo world knows every ad's true weights. An "informed" fake server answers each cold ad's
true weights plus small noise, so every answer is right; none may fall back to the prior.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.fake_openai import FakeOpenAI
from support.repos import clone_repo

from llmhyper_feast import jobs
from llmhyper_feast.config import load_settings
from llmhyper_feast.generation.answers import answer_limit
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.layout import RepoLayout

pytestmark = pytest.mark.integration

NEW_AD = re.compile(r"New ad to model:\nTitle: (.*)")
STATED = re.compile(r"never beyond \[(-?[0-9.]+), ([0-9.]+)\]")
SHOWN = re.compile(r"Trained weights: (\{.*\})")


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_repo(demo_repo, tmp_path_factory.mktemp("answer_scale") / "repo")


@pytest.fixture(scope="module")
def truth(repo: Path) -> pd.DataFrame:
    return pd.read_parquet(RepoLayout(repo).demo_truth)


def informed(truth: pd.DataFrame, noise: float = 0.05, scale: float = 1.0):
    """A responder answering the true weights (times ``scale``) of the ad in the prompt, plus small noise."""
    by_title = truth.drop_duplicates("title", keep=False).set_index("title")

    def respond(body: dict, keys: list[str], choice: int) -> dict[str, float]:
        text = next(m for m in body["messages"] if m["role"] == "user")["content"]
        row = by_title.loc[NEW_AD.search(text).group(1)]
        jitter = {k: ((zlib.crc32(f"{k}{choice}".encode()) % 201) - 100) / 100 * noise for k in keys}
        return {k: round(float(row[k]) * scale + jitter[k], 3) for k in keys}

    return respond


def settings_for(repo: Path, url: str, model: str, **generation):
    llm = {"name": "openai", "options": {"base_url": url, "api_key": "test", "model": model, "max_retries": 0}}
    return load_settings(repo).with_overrides(llm=llm, **{f"generation.{k}": v for k, v in generation.items()})


def cold_ads(repo: Path, truth: pd.DataFrame) -> list[str]:
    _, df = fa.read_ads(fa.open_store(repo))
    unique = set(truth.drop_duplicates("title", keep=False)["title"])
    return df.loc[(df["status"] == "active") & df["title"].isin(unique), "ad_id"].tolist()


def test_examples_exceed_the_old_fixed_cap(repo: Path) -> None:
    """The premise: trained weights shown as examples go beyond 3, the old fixed cap."""
    warm = fa.read_latest(fa.open_store(repo), fa.view_for_role(fa.open_store(repo), fa.WARM_ROLE).name)
    assert max(float(np.abs(np.asarray(w)).max()) for w in warm["weights"]) > 3.0


def test_an_informed_model_never_falls_back_and_the_stated_range_covers_the_examples(
    repo: Path, truth: pd.DataFrame
) -> None:
    ads = cold_ads(repo, truth)
    assert len(ads) >= 10
    with FakeOpenAI(responder=informed(truth)) as server:
        rows = jobs.generate(
            repo, settings_for(repo, server.base_url, "informed-auto", shots=5), ad_ids=ads, progress=False
        )
        bodies = list(server.requests)
    assert len(rows) == len(ads)
    assert (rows["origin"] == "llm").all(), rows.loc[rows["origin"] != "llm", "fallback_reason"].tolist()
    assert not rows["retried"].any()
    limit = float(rows["answer_limit"].iloc[0])
    for body in bodies:
        system = body["messages"][0]["content"]
        lo, hi = (float(x) for x in STATED.search(system).groups())
        assert (lo, hi) == (-limit, limit)
        user = body["messages"][1]["content"]
        for shown in SHOWN.findall(user):
            assert max(abs(v) for v in json.loads(shown).values()) <= hi
        schema = body["response_format"]["json_schema"]["schema"]["properties"]
        assert all(p["maximum"] == limit for p in schema.values())
    # the answers are the truth (to within the noise): nothing was distorted on the way
    names = fa.read_feature_schema(fa.open_store(repo)).names
    true = truth.set_index("ad_id").loc[rows["ad_id"], names].to_numpy(float)
    got = np.stack(rows["weights"].to_numpy())
    assert np.abs(got - np.clip(true, -limit, limit)).max() <= 0.05 + 1e-9


def test_a_fixed_small_range_puts_examples_on_the_answer_scale_and_maps_answers_back(
    repo: Path, truth: pd.DataFrame
) -> None:
    ads = cold_ads(repo, truth)[:6]
    warm = fa.read_latest(fa.open_store(repo), fa.view_for_role(fa.open_store(repo), fa.WARM_ROLE).name)
    limit, scale = answer_limit(list(warm["weights"]), 1.0)
    assert limit == 1.0 and scale < 0.5
    with FakeOpenAI(responder=informed(truth, noise=0.01, scale=scale)) as server:  # in scale
        rows = jobs.generate(
            repo, settings_for(repo, server.base_url, "informed-fixed", max_abs=1.0), ad_ids=ads, progress=False
        )
        bodies = list(server.requests)
    assert (rows["origin"] == "llm").all(), rows["fallback_reason"].tolist()
    assert (rows["answer_scale"] == scale).all()
    for body in bodies:
        for shown in SHOWN.findall(body["messages"][1]["content"]):
            assert max(abs(v) for v in json.loads(shown).values()) <= 1.0
    names = fa.read_feature_schema(fa.open_store(repo)).names
    true = truth.set_index("ad_id").loc[rows["ad_id"], names].to_numpy(float)
    assert np.abs(np.stack(rows["weights"].to_numpy()) - true).max() <= 0.01 / scale + 0.005 / scale


def test_mild_excess_is_clipped_and_recorded(repo: Path, truth: pd.DataFrame) -> None:
    ads = cold_ads(repo, truth)[:2]
    with FakeOpenAI(
        responder=lambda body, keys, j: {k: (-1.5 if i == 0 else 0.1) * 2 for i, k in enumerate(keys)}
    ) as server:
        rows = jobs.generate(
            repo,
            settings_for(repo, server.base_url, "mild-excess", max_abs=2.0, batch_size=10),
            ad_ids=ads,
            progress=False,
        )
    assert (rows["origin"] == "llm").all()
    clipped = [c for cell in rows["clipped"] for c in json.loads(cell)]
    assert len(clipped) == 2 * 2  # one value per feature batch of each ad
    assert all(c.endswith(": -3 -> -2") for c in clipped), clipped
    scale = float(rows["answer_scale"].iloc[0])
    assert np.isclose(np.stack(rows["weights"].to_numpy())[:, 0], -2.0 / scale).all()


def test_garbage_magnitudes_are_still_rejected(repo: Path, truth: pd.DataFrame) -> None:
    ad = cold_ads(repo, truth)[:1]
    with FakeOpenAI(default="out_of_range") as server:  # answers 42 for one feature, every time
        rows = jobs.generate(repo, settings_for(repo, server.base_url, "garbage"), ad_ids=ad, progress=False)
    row = rows.iloc[0]
    assert row["origin"] == "fallback" and row["retried"]
    # an invalid answer is the model's fault, not an unreachable backend: no exit 5, no retry next run
    assert not row["backend_error"] and rows.attrs["stopped"] == ""
    assert "far beyond the examples' range" in row["fallback_reason"]
