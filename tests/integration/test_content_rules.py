"""Content rules end to end: llmhyper_policy.yaml -> tags stored in Feast -> export -> onnxruntime -> HTTP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmhyper_feast import jobs
from llmhyper_feast.config import load_settings
from llmhyper_feast.errors import ConfigError
from llmhyper_feast.features import Ad
from llmhyper_feast.generation.policy import POLICY_FILE, load_policy, tag_ad
from llmhyper_feast.serving.export import export_repo
from llmhyper_feast.serving.ranker import Ranker
from llmhyper_feast.store import feast_adapter as fa

pytestmark = pytest.mark.integration
THRESHOLD = 0.7


def _policy(repo: Path, keywords: list[str]) -> None:
    rule = {
        "id": "no_meat_to_vegetarians",
        "description": "No meat for likely vegetarians.",
        "user_feature": "vegetarian",
        "above": THRESHOLD,
        "match": {"keywords": keywords},
    }
    (repo / POLICY_FILE).write_text(json.dumps({"rules": [rule]}))  # JSON is YAML


def test_unknown_user_feature_is_named_with_the_registered_ones(tmp_path: Path) -> None:
    (tmp_path / POLICY_FILE).write_text(
        "rules:\n  - {id: r, description: d, user_feature: vegan, above: 0.5, match: {keywords: [ham]}}\n"
    )
    with pytest.raises(ConfigError, match=r"'vegan', which is not registered.*\['vegetarian', 'fitness'\]"):
        load_policy(tmp_path, ["vegetarian", "fitness"])
    (tmp_path / POLICY_FILE).write_text("rules:\n  - {id: r, description: d, user_feature: vegetarian}\n")
    with pytest.raises(ConfigError, match="above"):
        load_policy(tmp_path, ["vegetarian"])


def test_keywords_match_whole_words_in_any_case() -> None:
    policy = load_policy(Path(__file__).resolve().parents[2] / "feature_repo", ["vegetarian"])
    assert tag_ad(Ad("a", "Barbecue MEAT box", ""), policy) == ("no_meat_to_vegetarians",)
    assert tag_ad(Ad("b", "Skillet", "A seared steak sizzling"), policy) == ("no_meat_to_vegetarians",)
    assert tag_ad(Ad("c", "Meatless burger", "Steakhouse-style plant patties"), policy) == ()
    assert tag_ad(Ad("d", "Gift box", ""), policy, category="Butcher") == ("no_meat_to_vegetarians",)


@pytest.mark.slow
def test_rules_are_stored_in_feast_and_enforced_by_onnx_and_http(demo_copy: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from llmhyper_feast.serving.http import create_app

    repo, models = demo_copy, tmp_path / "models"
    store = fa.open_store(repo)
    active, _ = fa.read_ads(store, status="active")
    target = active[0]  # a cold ad: its tags go through the generated view
    word = max(re.findall(r"[A-Za-z]{4,}", target.title), key=len)
    keywords = ["meat", "steak", "trout", word]
    _policy(repo, keywords)
    knn = load_settings(repo).with_overrides(**{"llm.name": "none"})
    jobs.materialize(repo, knn, progress=False)

    # stored with the weights, offline and online
    view = fa.view_for_role(store, fa.GENERATED_ROLE).name
    latest = fa.read_latest(store, view).set_index("ad_id")
    assert json.loads(latest.loc[target.ad_id, "policy_tags"]) == ["no_meat_to_vegetarians"]
    online = fa.get_online(store, [f"{view}:policy_tags"], [{"ad_id": target.ad_id}])
    assert json.loads(online["policy_tags"][0]) == ["no_meat_to_vegetarians"]

    export_repo(repo, models, per_ad=False)
    all_ads, _ = fa.read_ads(store)
    policy = load_policy(repo, fa.read_feature_schema(store).names)
    tagged = {a.ad_id for a in all_ads if tag_ad(a, policy)}
    assert target.ad_id in tagged

    # two users identical but for vegetarian: exactly at the threshold (allowed) and just above it
    behaviour = fa.read_latest(store, "user_behaviour")
    interests = fa.read_latest(store, "user_interests")
    at, above = np.float32(THRESHOLD), np.nextafter(np.float32(THRESHOLD), np.float32(1))
    now = pd.Timestamp.now(tz="UTC")
    for user, value in (("veg_at", at), ("veg_above", above)):
        b, i = behaviour.iloc[[0]].copy(), interests.iloc[[0]].copy()
        b["user_id"], i["user_id"], b["vegetarian"] = user, user, value
        b["event_timestamp"] = i["event_timestamp"] = now
        store.write_to_online_store("user_behaviour", b.reset_index(drop=True))
        store.write_to_online_store("user_interests", i.reset_index(drop=True))

    ranker = Ranker(repo, models, reload_interval=0)
    n_ads = len(ranker.ad_ids)
    allowed = ranker.rank("veg_at", k=n_ads)
    strict = ranker.rank("veg_above", k=n_ads)
    assert {r.ad_id for r in allowed} >= tagged and allowed.excluded == 0
    assert not {r.ad_id for r in strict} & tagged and strict.excluded == len(tagged)
    rest = {r.ad_id: r.ctr for r in allowed if r.ad_id not in tagged}
    assert rest.keys() == {r.ad_id for r in strict}  # the users differ by 1 ulp of vegetarian: same scores
    np.testing.assert_allclose([rest[r.ad_id] for r in strict], [r.ctr for r in strict], rtol=1e-4)

    # the same mask inside the model, for any runtime
    import onnxruntime as ort

    session = ort.InferenceSession(str(models / "all_ads" / "model.onnx"), providers=["CPUExecutionProvider"])
    x, _, _ = ranker.user_vectors(["veg_at", "veg_above"])
    ctr, excluded = session.run(["ctr", "excluded"], {"user_features": x})
    col = {a: j for j, a in enumerate(ranker.ad_ids)}
    assert not excluded[0].any() and {ranker.ad_ids[j] for j in np.flatnonzero(excluded[1])} == tagged
    assert (ctr[1][excluded[1]] == -1.0).all() and ctr[0][col[target.ad_id]] > 0

    # HTTP returns only allowed ads, also among explicit candidates
    client = TestClient(create_app(ranker))
    other = next(a for a in ranker.ad_ids if a not in tagged)
    for user, want in (("veg_at", {target.ad_id, other}), ("veg_above", {other})):
        r = client.post("/rank", json={"user_id": user, "ads": [target.ad_id, other], "k": 5})
        assert r.status_code == 200 and {i["ad_id"] for i in r.json()["items"]} == want, r.text
        assert r.json()["excluded"] == 2 - len(want)

    # a policy change re-tags on the next materialize (no new LLM answer needed) and the next export
    _policy(repo, ["meat", "steak", "trout"])
    state = jobs.status(repo, knn).set_index("ad_id").loc[target.ad_id]
    assert state["state"] == "cold-stale" and "content rules changed" in state["reason"]
    jobs.materialize(repo, knn, progress=False)
    latest = fa.read_latest(fa.open_store(repo), view).set_index("ad_id")
    assert json.loads(latest.loc[target.ad_id, "policy_tags"]) == []
    export_repo(repo, models, per_ad=False)
    ranker.reload()
    assert target.ad_id in {r.ad_id for r in ranker.rank("veg_above", k=n_ads)}
