"""User priors as a candidate filter: Ranker.rank(candidates="priors") and POST /rank on a real export, with
priors written to the Feast view by `priors generate` (baseline lists), and the filter measurement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.repos import clone_repo

from llmhyper_feast.cli import main as cli_main
from llmhyper_feast.config import PriorsFilterConfig, load_settings
from llmhyper_feast.jobs.priors import generate_user_priors, read_user_priors
from llmhyper_feast.serving.export import export_repo
from llmhyper_feast.serving.http import create_app
from llmhyper_feast.serving.ranker import Ranker
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.layout import RepoLayout
from llmhyper_feast.userpriors.filter import PriorsReader

pytestmark = pytest.mark.integration

RESTRICT = PriorsFilterConfig(mode="restrict", quota=1.0, advertisers=3)


@pytest.fixture(scope="module")
def served(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A copy of the demo world with baseline priors for 8 users (through `priors generate`), and an export."""
    tmp = tmp_path_factory.mktemp("priors_filter")
    repo = clone_repo(demo_repo, tmp / "repo")
    users = sorted(pd.read_parquet(RepoLayout(repo).user_history)["user_id"].unique())[:8]
    settings = load_settings(repo).with_overrides(**{"llm.name": "none"})
    generate_user_priors(repo, settings, users=users, progress=False)
    export_repo(repo, tmp / "models", per_ad=False)
    return repo, tmp / "models", users


@pytest.fixture(scope="module")
def ranker(served: tuple[Path, Path, list[str]]) -> Ranker:
    r = Ranker(served[0], served[1], reload_interval=None)
    r.filter_settings = RESTRICT
    return r


def advertiser_of(repo: Path) -> dict[str, str]:
    content = fa.read_latest(fa.open_store(repo), "ad_content")
    return dict(zip(content["ad_id"], content["advertiser_id"]))


def test_restrict_shows_only_the_predicted_advertisers_ads(served, ranker: Ranker) -> None:
    repo, _, users = served
    owner = advertiser_of(repo)
    stored = read_user_priors(repo, users)
    per_advertiser = pd.Series(owner).value_counts()
    for user, predicted in zip(users, stored["advertisers"]):
        top = predicted[:3]
        available = int(per_advertiser.reindex(top).fillna(0).sum())
        plain = ranker.rank(user, k=5)
        res = ranker.rank(user, k=5, candidates="priors")
        assert plain.prior_filter is None and res.prior_filter == "restrict"
        shown = [owner[a] for a, _, _ in res]
        # restrict with quota 1: as many of the 5 as the predicted advertisers have ads, the rest back-filled
        assert len(res) == 5 and sum(a in top for a in shown) == min(5, available)
        # the ads of the predicted advertisers, best ctr first, exactly as the full ranking orders them
        ranked_all = [a for a, _, _ in ranker.rank(user, k=len(ranker.ad_ids))]
        expected = [a for a in ranked_all if owner[a] in top][:5]
        if available >= 5:
            assert [a for a, _, _ in res] == expected
        ctrs = [c for _, c, _ in res]
        assert ctrs == sorted(ctrs, reverse=True)


def test_boost_and_a_user_without_priors(served, ranker: Ranker) -> None:
    repo, _, users = served
    owner = advertiser_of(repo)
    # not in the 8 users with stored priors: plain ranking, and the result says so
    other = next(u for u in fa.read_latest(fa.open_store(repo), "user_interests")["user_id"] if u not in users)
    res = ranker.rank(other, k=6, candidates="priors")
    assert res.prior_filter == "no_prior" and list(res) == list(ranker.rank(other, k=6))

    boost = PriorsFilterConfig(mode="boost", boost=3.0, advertisers=4)
    ranker.filter_settings = boost
    try:
        user = users[0]
        advertisers = read_user_priors(repo, [user])
        score = dict(zip(advertisers["advertisers"][0][:4], advertisers["scores"][0][:4]))
        ctr = ranker.score_users([user])[0]
        weight = np.array([score.get(owner[a], 0.0) for a in ranker.ad_ids], np.float32)
        boosted = ctr * (1 + 3.0 * weight)
        expected = [ranker.ad_ids[i] for i in np.argsort(-boosted, kind="stable")[:10]]
        res = ranker.rank(user, k=10, candidates="priors")
        assert res.prior_filter == "boost" and [a for a, _, _ in res] == expected
        assert [a for a, _, _ in res] != [a for a, _, _ in ranker.rank(user, k=10)]  # the boost moved something
    finally:
        ranker.filter_settings = RESTRICT


def test_direct_priors_read_equals_the_feast_sdk(served) -> None:
    repo, _, users = served
    store = fa.open_store(repo)
    direct, through_sdk = PriorsReader(store, "user_llm_priors"), PriorsReader(store, "user_llm_priors", direct=False)
    assert (direct.lookup, through_sdk.lookup) == ("sqlite", "feast")
    sdk = read_user_priors(repo, [*users, "nobody"])
    for i, user in enumerate([*users, "nobody"]):
        for reader in (direct, through_sdk):
            advertisers, scores = reader.read(user)
            assert advertisers == (sdk["advertisers"][i] or []) and len(advertisers) == (20 if i < len(users) else 0)
            np.testing.assert_allclose(scores, sdk["scores"][i] or [], rtol=1e-7)


def test_http_candidates_field(served, ranker: Ranker) -> None:
    _, _, users = served
    from starlette.testclient import TestClient

    with TestClient(create_app(ranker)) as client:
        r = client.post("/rank", json={"user_id": users[1], "k": 4, "candidates": "priors"})
        assert r.status_code == 200, r.text
        direct = ranker.rank(users[1], k=4, candidates="priors")
        assert [i["ad_id"] for i in r.json()["items"]] == [a for a, _, _ in direct]
        assert r.json()["prior_filter"] == "restrict"
        plain = client.post("/rank", json={"user_id": users[1], "k": 4})
        assert plain.status_code == 200 and "prior_filter" not in plain.json()
        for bad in ("some", 1, None, ["priors"]):
            r = client.post("/rank", json={"user_id": users[1], "candidates": bad})
            assert r.status_code == 422 and "candidates" in r.json()["detail"], (bad, r.text)


def test_filter_measurement_with_baseline_priors(
    served, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    repo, models, _ = served
    monkeypatch.setenv("LLMHYPER_USER_PRIORS__EVAL_USERS", "120")
    monkeypatch.setenv("LLMHYPER_USER_PRIORS__BOOTSTRAP", "50")
    args = ["priors", "evaluate-filter", "--repo", str(repo), "--models", str(models), "--source", "frequent"]
    cli_main([*args, "--format", "json"])
    result = json.loads(capfd.readouterr().out)
    assert result["users"] == result["users_with_prior"] == 120 and result["source"] == "frequent"
    variants = result["variants"]
    assert set(variants) == {"all", "restrict quota=1", "restrict quota=0.5", "boost 1", "boost 4"}
    for v in variants.values():
        for k in (1, 5, 10):
            assert 0 <= v[f"recall@{k}"]["lo"] <= v[f"recall@{k}"]["mean"] <= v[f"recall@{k}"]["hi"] <= 1
            assert 0 < v[f"coverage@{k}"] <= 1
    # the CTR models alone ignore brand loyalty: the user's own advertisers find the next conversion more often
    assert variants["restrict quota=1"]["recall@5"]["mean"] > variants["all"]["recall@5"]["mean"] + 0.1
