"""Feature repo reading, the demo world, warm training and Feast round trips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmhyper_feast import jobs
from llmhyper_feast.config import load_settings
from llmhyper_feast.datasets.demo_world import FEATURES, TRUTH_FILE, WorldSize, build_world
from llmhyper_feast.errors import DataError, FeatureRepoError
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.training.warm import fit_ad

pytestmark = pytest.mark.integration


def test_schema_comes_from_registry_in_declared_order(demo_repo: Path) -> None:
    schema = fa.read_feature_schema(fa.open_store(demo_repo))
    assert schema.names == list(FEATURES)
    assert len(schema) >= 16
    toys = schema.features[schema.names.index("toys_games")]
    assert "toys, board games" in toys.description and toys.view == "user_interests"
    assert all(f.description for f in schema.features)
    assert len(schema.hash) == 16 and schema.hash == fa.read_feature_schema(fa.open_store(demo_repo)).hash


def _edit_definitions(repo: Path, old: str, new: str) -> None:
    path = repo / "feature_definitions.py"
    text = path.read_text()
    assert old in text, f"{old!r} not in the definitions"
    path.write_text(text.replace(old, new, 1))


def test_description_edit_changes_hash_and_prompt(demo_copy: Path) -> None:
    from llmhyper_feast.features import Ad
    from llmhyper_feast.generation.prompts import build_messages

    repo = demo_copy
    before = fa.read_feature_schema(fa.open_store(repo))
    _edit_definitions(repo, '"plants, seeds, garden tools and lawn care"', '"houseplants and balcony gardens"')
    fa.apply_repo(repo)
    after = fa.read_feature_schema(fa.open_store(repo))
    assert after.names == before.names
    assert after.hash != before.hash
    ad = Ad("x", "Cordless lawn mower", "A mower on a lawn")
    batch = list(after.features[-6:])
    text_before = str(build_messages(ad, list(before.features[-6:]), before, []))
    text_after = str(build_messages(ad, batch, after, []))
    assert "houseplants and balcony gardens" in text_after and "houseplants" not in text_before


def test_missing_repo_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FeatureRepoError, match="feature_store.yaml is missing"):
        fa.check_repo(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '"Likelihood, from 0 to 1, that the user follows a vegetarian or plant-based "\n'
            '                "diet, estimated from recipe and grocery behaviour."',
            '""',
            "has no description",
        ),
        (
            'name="vegetarian",\n            dtype=Float32',
            'name="vegetarian",\n            dtype=String',
            "must be numeric",
        ),
    ],
)
def test_bad_feature_definitions_are_rejected(empty_repo: Path, old: str, new: str, message: str) -> None:
    _edit_definitions(empty_repo, old, new)
    fa.apply_repo(empty_repo)
    with pytest.raises(FeatureRepoError, match=message) as err:
        fa.read_feature_schema(fa.open_store(empty_repo))
    assert "vegetarian" in str(err.value)


def test_world_is_seeded(tmp_path: Path) -> None:
    size = WorldSize(users=400, retired=6, active=2, impressions_per_ad=200, seed=3)
    build_world(tmp_path / "a", size, progress=False)
    build_world(tmp_path / "b", size, progress=False)
    for name in ("impressions.parquet", TRUTH_FILE, "user_interests.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / name), pd.read_parquet(tmp_path / "b" / name))
    other = WorldSize(users=400, retired=6, active=2, impressions_per_ad=200, seed=4)
    build_world(tmp_path / "c", other, progress=False)
    assert not pd.read_parquet(tmp_path / "a" / TRUTH_FILE).equals(pd.read_parquet(tmp_path / "c" / TRUTH_FILE))


def test_clicks_depend_on_content(demo_repo: Path) -> None:
    """A model trained on an ad's clicks recovers the sign of its own-category true weight."""
    data = demo_repo / "data"
    truth = pd.read_parquet(data / TRUTH_FILE).set_index("ad_id")
    imps = pd.read_parquet(data / "impressions.parquet")
    store = fa.open_store(demo_repo)
    schema = fa.read_feature_schema(store)
    ids, users = fa.read_user_matrix(store, schema)
    row = pd.Series(np.arange(len(ids)), index=ids)
    ctr = imps["clicked"].mean()
    assert 0.01 <= ctr <= 0.05, ctr
    agree = []
    for ad_id in truth.index[:24]:
        g = imps[imps["ad_id"] == ad_id]
        w, _, _, _ = fit_ad(users[row[g["user_id"]].to_numpy()], g["clicked"].to_numpy(), 1.0)
        cat = truth.loc[ad_id, "category"]
        agree.append(np.sign(w[schema.names.index(cat)]) == np.sign(truth.loc[ad_id, cat]))
    assert np.mean(agree) >= 0.9


def test_warm_models_round_trip_through_feast(demo_repo: Path) -> None:
    store = fa.open_store(demo_repo)
    schema = fa.read_feature_schema(store)
    offline = fa.read_latest(store, "warm_ad_weights")
    _, retired = fa.read_ads(store, status="retired")
    assert set(offline["ad_id"]) <= set(retired["ad_id"]) and len(offline) >= 0.9 * len(retired)
    assert (offline["feature_hash"] == schema.names_hash).all()
    ad_id = offline["ad_id"].iloc[0]
    online = fa.get_online(store, ["warm_ad_weights:weights", "warm_ad_weights:bias"], [{"ad_id": ad_id}])
    np.testing.assert_allclose(online["weights"][0], offline["weights"].iloc[0], rtol=0, atol=1e-7)
    assert len(online["weights"][0]) == len(schema)
    cold = jobs.load_lr_cold(demo_repo)
    np.testing.assert_allclose(cold.weights, np.median(np.stack(offline["weights"]), axis=0), atol=1e-6)


def test_too_few_impressions_is_a_per_ad_skip(demo_repo: Path, tmp_path: Path) -> None:
    imps = pd.read_parquet(demo_repo / "data" / "impressions.parquet")
    first = imps["ad_id"].iloc[0]
    small = pd.concat([imps[imps["ad_id"] != first], imps[imps["ad_id"] == first].head(20)])
    from llmhyper_feast.training.warm import train_warm_models

    store = fa.open_store(demo_repo)
    schema = fa.read_feature_schema(store)
    ids, users = fa.read_user_matrix(store, schema)
    settings = load_settings(demo_repo)
    result = train_warm_models(
        small, ids, users, schema, [first, imps["ad_id"].iloc[-1]], settings.warm, progress=False
    )
    assert first in result.skipped and "impressions" in result.skipped[first]
    assert list(result.rows["ad_id"]) == [imps["ad_id"].iloc[-1]]


def test_ad_without_title_is_rejected(empty_repo: Path) -> None:
    jobs.make_demo_data(empty_repo, WorldSize(users=300, retired=4, active=2, impressions_per_ad=100), progress=False)
    path = empty_repo / "data" / "ad_content.parquet"
    df = pd.read_parquet(path)
    df.loc[1, "title"] = "  "
    df.to_parquet(path, index=False)
    with pytest.raises(DataError, match="no title"):
        fa.read_ads(fa.open_store(empty_repo))


def test_cli_help_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "llmhyper_feast", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "train-warm", "features", "apply"):
        assert command in out.stdout
    sub = subprocess.run(
        [sys.executable, "-m", "llmhyper_feast", "train-warm", "--help"], capture_output=True, text=True, check=True
    )
    assert "--repo" in sub.stdout


def test_cli_reports_missing_repo(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmhyper_feast", "features", "--repo", str(tmp_path)], capture_output=True, text=True
    )
    assert (
        proc.returncode == 3
        and proc.stderr.startswith("Error (repo):")
        and "feature_store.yaml is missing" in proc.stderr
    )
