"""The UCI in-vehicle coupon adapter: user ids, offers, the Feast repo it writes, warm training on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmhyper_feast.datasets.coupon import (
    FEATURES,
    MIN_AD_ROWS,
    build_coupon_repo,
    build_offers,
    derive_user_ids,
    read_coupon_csv,
)
from llmhyper_feast.errors import DataError, FeatureRepoError

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT.parent / "shared" / "data" / "in-vehicle-coupon-recommendation.csv"
needs_csv = pytest.mark.skipif(
    not CSV.is_file(),
    reason=f"UCI coupon CSV not found at {CSV} (it lives outside the project in ../shared/data/ and is not committed)",
)

PROFILE = {
    "gender": "Female",
    "age": "21",
    "maritalStatus": "Single",
    "has_children": 0,
    "education": "Bachelors degree",
    "occupation": "Student",
    "income": "$12500 - $24999",
    "car": np.nan,
    "Bar": "never",
    "CoffeeHouse": "1~3",
    "CarryAway": np.nan,
    "RestaurantLessThan20": "4~8",
    "Restaurant20To50": "less1",
}


def test_user_ids_depend_on_person_columns_only() -> None:
    rows = pd.DataFrame(
        [
            {**PROFILE, "coupon": "Bar", "time": "7AM"},
            {**PROFILE, "coupon": "Coffee House", "time": "6PM"},  # same person, other context
            {**PROFILE, "has_children": 1.0, "coupon": "Bar", "time": "7AM"},
            {**PROFILE, "CarryAway": "gt8", "coupon": "Bar", "time": "7AM"},
        ]
    )
    ids = derive_user_ids(rows)
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3
    assert all(i.startswith("u") and len(i) == 13 for i in ids)
    # row order and column order do not matter; an int 1 and a float 1.0 give the same id
    again = derive_user_ids(rows.iloc[::-1][list(reversed(rows.columns))].assign(has_children=[0, 1, 0, 0]))
    assert list(again[::-1]) == list(ids)
    with pytest.raises(DataError, match="'income'"):
        derive_user_ids(rows.drop(columns="income"))


def test_missing_csv_or_columns_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="No coupon CSV"):
        build_coupon_repo(tmp_path / "nope.csv", tmp_path / "repo", progress=False)
    bad = tmp_path / "bad.csv"
    pd.DataFrame([{**PROFILE, "coupon": "Bar", "expiration": "2h", "destination": "Home"}]).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['time', 'Y'\]"):
        build_coupon_repo(bad, tmp_path / "repo", progress=False)
    assert not (tmp_path / "repo").exists()


@needs_csv
def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FeatureRepoError, match="not empty"):
        build_coupon_repo(CSV, tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "data").exists()


@needs_csv
def test_offers_are_deterministic_and_stratified() -> None:
    rows = read_coupon_csv(CSV)
    a, b = build_offers(rows, 0.3, seed=0), build_offers(rows, 0.3, seed=0)
    other = build_offers(rows, 0.3, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert list(a["ad_id"]) == list(other["ad_id"]) and (a["status"] != other["status"]).any()
    assert 40 <= len(a) <= 120 and a["n"].min() >= MIN_AD_ROWS and a["ad_id"].is_unique
    by_type = a.groupby("coupon")["status"].agg(set)
    assert all(s == {"retired", "active"} for s in by_type), by_type.to_dict()
    assert 0.2 <= (a["status"] == "active").mean() <= 0.4
    shuffled = rows.sample(frac=1.0, random_state=3)
    assert (derive_user_ids(shuffled).sort_index() == derive_user_ids(rows)).all()


@pytest.fixture(scope="module")
def coupon_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    if not CSV.is_file():
        pytest.skip(f"UCI coupon CSV not found at {CSV}")
    repo = tmp_path_factory.mktemp("coupon") / "coupon_repo"
    return repo, build_coupon_repo(CSV, repo, progress=False)


@pytest.mark.integration
def test_repo_layout_and_stats(coupon_repo: tuple[Path, dict[str, int]]) -> None:
    repo, stats = coupon_repo
    for name in (
        "feature_store.yaml",
        "feature_definitions.py",
        "llmhyper.yaml",
        ".feastignore",
        "data/registry.db",
        "data/online_store.db",
        "data/impressions.parquet",
        "data/ad_content.parquet",
    ):
        assert (repo / name).exists(), name
    imps = pd.read_parquet(repo / "data" / "impressions.parquet")
    assert list(imps.columns) == ["user_id", "ad_id", "clicked", "user_split", "event_timestamp"]
    assert set(imps["user_split"]) == {"train", "test"} and set(imps["clicked"]) == {0, 1}
    per_ad = imps.groupby("ad_id").size()
    assert per_ad.min() >= MIN_AD_ROWS and stats["min_impressions_per_ad"] == per_ad.min()
    assert len(imps) == stats["impressions"]
    assert stats["impressions"] + stats["dropped_rows"] == len(read_coupon_csv(CSV))
    assert 0.1 < stats["test_users"] / stats["users"] < 0.3
    # one split per user
    assert (imps.groupby("user_id")["user_split"].nunique() == 1).all()


@pytest.mark.integration
def test_schema_has_described_features_in_unit_range(coupon_repo: tuple[Path, dict[str, int]]) -> None:
    from llmhyper_feast.store import feast_adapter as fa

    repo, stats = coupon_repo
    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    assert schema.names == [f.name for f in FEATURES] and 20 <= len(schema) <= 35
    assert all(len(f.description) >= 25 for f in schema.features)
    assert len({f.description for f in schema.features}) == len(schema)
    ids, x = fa.read_user_matrix(store, schema)
    assert len(ids) == stats["users"] and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    assert (x.std(axis=0) > 0).all(), "a feature is constant over users"
    assert set(ids) == set(derive_user_ids(read_coupon_csv(CSV)))
    online = fa.get_online(store, ["driver_habits:coffee_house_visits"], [{"user_id": ids[0]}])
    assert online["coffee_house_visits"][0] == pytest.approx(x[0, schema.names.index("coffee_house_visits")])


@pytest.mark.integration
def test_ads_have_text_and_both_statuses_per_coupon(coupon_repo: tuple[Path, dict[str, int]]) -> None:
    from llmhyper_feast.store import feast_adapter as fa

    repo, stats = coupon_repo
    ads, df = fa.read_ads(fa.open_store(repo))
    assert len(ads) == stats["ads"] == stats["retired_ads"] + stats["active_ads"]
    assert all(len(a.title) > 30 and "coupon" in a.title.lower() and a.caption for a in ads)
    assert all(a.image_uri and Path(a.image_uri).is_file() for a in ads)
    kinds = df.assign(kind=df["ad_id"].str.split("-").str[0]).groupby("kind")["status"].agg(set)
    assert len(kinds) == 5 and all(s == {"retired", "active"} for s in kinds), kinds.to_dict()
    assert (
        df.loc[df["status"] == "active", "launch_date"].min() > df.loc[df["status"] == "retired", "launch_date"].max()
    )


@pytest.mark.integration
def test_train_warm_runs_unchanged_on_the_coupon_repo(coupon_repo: tuple[Path, dict[str, int]]) -> None:
    from llmhyper_feast import jobs
    from llmhyper_feast.config import load_settings

    repo, stats = coupon_repo
    settings = load_settings(repo)
    assert settings.warm.min_impressions <= MIN_AD_ROWS // 2 and settings.warm.l2_c < 1.0
    report = jobs.train_warm(repo, settings, progress=False)
    assert report.trained >= 0.8 * stats["retired_ads"]
    assert 0.6 < report.median_train_auc < 1.0
    assert jobs.load_lr_cold(repo).n_ads == report.trained
