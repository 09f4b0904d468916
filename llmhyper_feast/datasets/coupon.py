"""Turn the UCI in-vehicle coupon survey into a complete llmhyper-feast feature repo.

Dataset: "In-Vehicle Coupon Recommendation", UCI ML Repository (Wang et al., 2017, JMLR),
CC BY 4.0. Each row is one answer: a driver in a driving context is offered a coupon and
says whether they would use it (``Y``). How it maps onto the pipeline:

- Users. Rows carry no id, so a user id is derived from the 13 person columns
  (:data:`PERSON_COLUMNS`): each value is written as text (missing -> empty string,
  ``1.0`` -> ``1``), joined in that fixed order and hashed with SHA-256; the id is ``u`` +
  the first 12 hex digits. Respondents who gave identical profile answers become one user
  (the data holds 567 distinct profiles for ~12.7k rows). Users are split train/test
  80/20 by a second hash of the id, so the split is fixed by the data alone.
- User features (:data:`FEATURES`, 27, all in [0, 1]): one-hot groups for gender, age
  band, marital status, children and occupation group; scaled ordinals for education,
  income and the five venue-frequency answers. A missing frequency answer takes the most
  common answer of that column over distinct users; an unknown education or income value
  takes the median level; an unknown category gives all zeros in its one-hot group.
  ``car`` is part of the id but not a feature (99% of its answers are empty).
- Ads. An offer is coupon x expiration x destination x time of day; offers with fewer than
  :data:`MIN_AD_ROWS` answers are dropped. Passenger, weather, temperature, distance and
  direction vary within an offer: they are neither ad nor user features here, so each of
  an offer's answers is one impression (a user may answer one offer more than once).
- Split. ``holdout_share`` of each coupon type's offers (chosen by ``seed``, at least one
  per type when it has two or more) are "active" (cold); the rest are "retired" (warm).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd

from llmhyper_feast.errors import ConfigError, DataError, FeatureRepoError
from llmhyper_feast.store.files import atomic_write_text

PERSON_COLUMNS = (
    "gender",
    "age",
    "maritalStatus",
    "has_children",
    "education",
    "occupation",
    "income",
    "car",
    "Bar",
    "CoffeeHouse",
    "CarryAway",
    "RestaurantLessThan20",
    "Restaurant20To50",
)
AD_COLUMNS = ("coupon", "expiration", "destination", "time")
REQUIRED_COLUMNS = (*PERSON_COLUMNS, *AD_COLUMNS, "Y")
MIN_AD_ROWS = 60
TEST_SHARE = 0.2
PROJECT = "coupon"
REFERENCE_TIME = datetime(2026, 11, 1, tzinfo=UTC)
TEMPLATE_DIR = Path(__file__).resolve().parent / "coupon_repo_template"
USER_VIEWS = ("driver_profile", "driver_habits")

FREQUENCY = {"never": 0.0, "less1": 0.25, "1~3": 0.5, "4~8": 0.75, "gt8": 1.0}
EDUCATION = {
    "Some High School": 0,
    "High School Graduate": 1,
    "Some college - no degree": 2,
    "Associates degree": 3,
    "Bachelors degree": 4,
    "Graduate degree (Masters or Doctorate)": 5,
}
INCOME = {
    "Less than $12500": 0,
    "$12500 - $24999": 1,
    "$25000 - $37499": 2,
    "$37500 - $49999": 3,
    "$50000 - $62499": 4,
    "$62500 - $74999": 5,
    "$75000 - $87499": 6,
    "$87500 - $99999": 7,
    "$100000 or More": 8,
}
OCCUPATION_GROUPS = {
    "occ_professional": (
        "Computer & Mathematical",
        "Management",
        "Business & Financial",
        "Legal",
        "Architecture & Engineering",
        "Life Physical Social Science",
        "Healthcare Practitioners & Technical",
    ),
    "occ_sales_office": ("Sales & Related", "Office & Administrative Support"),
    "occ_education_arts_social": (
        "Education&Training&Library",
        "Arts Design Entertainment Sports & Media",
        "Community & Social Services",
    ),
    "occ_service_manual": (
        "Food Preparation & Serving Related",
        "Healthcare Support",
        "Personal Care & Service",
        "Protective Service",
        "Transportation & Material Moving",
        "Construction & Extraction",
        "Installation Maintenance & Repair",
        "Production Occupations",
        "Building & Grounds Cleaning & Maintenance",
        "Farming Fishing & Forestry",
    ),
}


@dataclass(frozen=True)
class CouponFeature:
    """One encoded user feature: its name, its Feast view, its definition and its encoder."""

    name: str
    view: str
    description: str
    encode: Callable[[pd.DataFrame], np.ndarray]


def _is(col: str, *values: object) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda df: df[col].isin(values).to_numpy(np.float32)


def _scaled(col: str, levels: dict[str, int]) -> Callable[[pd.DataFrame], np.ndarray]:
    top = max(levels.values())

    def encode(df: pd.DataFrame) -> np.ndarray:
        codes = df[col].map(levels)
        return (codes.fillna(codes.median()) / top).to_numpy(np.float32)

    return encode


def _frequency(col: str) -> Callable[[pd.DataFrame], np.ndarray]:
    def encode(df: pd.DataFrame) -> np.ndarray:
        values = df[col].map(FREQUENCY)
        mode = values.mode()
        return values.fillna(mode.iloc[0] if len(mode) else 0.0).to_numpy(np.float32)

    return encode


def _never(col: str) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda df: (_frequency(col)(df) == 0.0).astype(np.float32)


def _freq_text(habit: str) -> str:
    return (
        f"How many times a month the driver {habit}: 0 never, 0.25 less than once, 0.5 one to three "
        "times, 0.75 four to eight times, 1 more than eight times."
    )


_P, _H = USER_VIEWS
FEATURES: tuple[CouponFeature, ...] = (
    CouponFeature("female", _P, "1 if the driver is a woman, 0 if a man.", _is("gender", "Female")),
    CouponFeature("age_under_21", _P, "1 if the driver is younger than 21.", _is("age", "below21")),
    CouponFeature("age_21_30", _P, "1 if the driver is 21 to 30 years old.", _is("age", "21", "26")),
    CouponFeature("age_31_45", _P, "1 if the driver is 31 to 45 years old.", _is("age", "31", "36", "41")),
    CouponFeature("age_46_plus", _P, "1 if the driver is 46 or older.", _is("age", "46", "50plus")),
    CouponFeature("married", _P, "1 if the driver is married.", _is("maritalStatus", "Married partner")),
    CouponFeature(
        "unmarried_partner",
        _P,
        "1 if the driver lives with a partner without being married.",
        _is("maritalStatus", "Unmarried partner"),
    ),
    CouponFeature(
        "single", _P, "1 if the driver is single (never married, no partner).", _is("maritalStatus", "Single")
    ),
    CouponFeature(
        "divorced_or_widowed",
        _P,
        "1 if the driver is divorced or widowed.",
        _is("maritalStatus", "Divorced", "Widowed"),
    ),
    CouponFeature("has_children", _P, "1 if the driver has one or more children.", _is("has_children", 1, "1")),
    CouponFeature(
        "education_level",
        _P,
        (
            "Highest education of the driver: 0 some high school, 0.2 high school diploma, 0.4 some college "
            "without a degree, 0.6 associate degree, 0.8 bachelor's degree, 1 master's or doctorate."
        ),
        _scaled("education", EDUCATION),
    ),
    CouponFeature(
        "bachelor_or_higher",
        _P,
        "1 if the driver holds a bachelor's, master's or doctoral degree.",
        _is("education", "Bachelors degree", "Graduate degree (Masters or Doctorate)"),
    ),
    CouponFeature(
        "income_level",
        _P,
        (
            "Yearly household income of the driver in nine bands of about $12,500, from 0 (under $12,500) "
            "to 1 ($100,000 or more); 0.5 is about $50,000-$62,500."
        ),
        _scaled("income", INCOME),
    ),
    CouponFeature("occ_student", _P, "1 if the driver is a student.", _is("occupation", "Student")),
    CouponFeature("occ_unemployed", _P, "1 if the driver is unemployed.", _is("occupation", "Unemployed")),
    CouponFeature("occ_retired", _P, "1 if the driver is retired.", _is("occupation", "Retired")),
    CouponFeature(
        "occ_professional",
        _P,
        (
            "1 if the driver works in a professional or managerial job: computing, management, business and finance, "
            "law, engineering, science or as a healthcare practitioner."
        ),
        _is("occupation", *OCCUPATION_GROUPS["occ_professional"]),
    ),
    CouponFeature(
        "occ_sales_office",
        _P,
        "1 if the driver works in sales or in office and administrative support.",
        _is("occupation", *OCCUPATION_GROUPS["occ_sales_office"]),
    ),
    CouponFeature(
        "occ_education_arts_social",
        _P,
        (
            "1 if the driver works in education, libraries, arts, design, entertainment, sports, media or "
            "community and social services."
        ),
        _is("occupation", *OCCUPATION_GROUPS["occ_education_arts_social"]),
    ),
    CouponFeature(
        "occ_service_manual",
        _P,
        (
            "1 if the driver works in a service or manual job: food preparation and serving, healthcare support, "
            "personal care, protective services, transport, construction, repair, production, cleaning or farming."
        ),
        _is("occupation", *OCCUPATION_GROUPS["occ_service_manual"]),
    ),
    CouponFeature("bar_visits", _H, _freq_text("goes to a bar"), _frequency("Bar")),
    CouponFeature("coffee_house_visits", _H, _freq_text("goes to a coffee house"), _frequency("CoffeeHouse")),
    CouponFeature("takeaway_orders", _H, _freq_text("gets carry-out or take-away food"), _frequency("CarryAway")),
    CouponFeature(
        "cheap_restaurant_visits",
        _H,
        _freq_text("eats at a restaurant where a meal costs under $20 a person"),
        _frequency("RestaurantLessThan20"),
    ),
    CouponFeature(
        "midrange_restaurant_visits",
        _H,
        _freq_text("eats at a restaurant where a meal costs $20-$50 a person"),
        _frequency("Restaurant20To50"),
    ),
    CouponFeature("never_bar", _H, "1 if the driver says they never go to bars.", _never("Bar")),
    CouponFeature(
        "never_coffee_house", _H, "1 if the driver says they never go to coffee houses.", _never("CoffeeHouse")
    ),
)

COUPONS = {  # CSV value -> (id slug, offer phrase, image scene, image colour)
    "Coffee House": (
        "coffee",
        "Coffee house coupon",
        "a steaming cup of coffee and a pastry on a café counter",
        (120, 80, 50),
    ),
    "Bar": ("bar", "Bar coupon", "a pint of beer and two cocktails on a dimly lit bar counter", (60, 40, 90)),
    "Carry out & Take away": (
        "takeaway",
        "Carry-out and take-away food coupon",
        "a paper take-away bag next to boxes of burgers and fries",
        (200, 120, 30),
    ),
    "Restaurant(<20)": (
        "cheap_restaurant",
        "Coupon for a casual restaurant (under $20 a person)",
        "a diner table with a burger, a sandwich and a soda",
        (200, 60, 50),
    ),
    "Restaurant(20-50)": (
        "midrange_restaurant",
        "Coupon for a sit-down restaurant ($20-$50 a person)",
        "a set restaurant table with a plated dinner and wine glasses",
        (40, 110, 70),
    ),
}
EXPIRATION = {"2h": "valid for 2 hours", "1d": "valid for 1 day"}
DESTINATION = {"No Urgent Place": "with no urgent place to be", "Home": "heading home", "Work": "on the way to work"}
LIGHT = {
    "7AM": "in early morning light",
    "10AM": "in late-morning daylight",
    "2PM": "in bright afternoon light",
    "6PM": "in warm evening light",
    "10PM": "at night under neon signs",
}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def derive_user_ids(frame: pd.DataFrame) -> pd.Series:
    """One user id per row, from the person columns only (same profile -> same id)."""
    missing = [c for c in PERSON_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"Cannot derive user ids: column(s) {missing} are missing; they need all of {list(PERSON_COLUMNS)}."
        )
    keys = frame[list(PERSON_COLUMNS)].astype(object).apply(lambda r: "\x1f".join(_cell(v) for v in r), axis=1)
    ids = {k: "u" + hashlib.sha256(k.encode("utf-8")).hexdigest()[:12] for k in keys.unique()}
    return keys.map(ids).rename("user_id")


def user_split(user_ids: pd.Series) -> pd.Series:
    """'test' for about TEST_SHARE of user ids, 'train' for the rest, fixed by a hash of each id."""

    def bucket(uid: str) -> str:
        h = int(hashlib.sha256(f"split|{uid}".encode()).hexdigest()[:8], 16)
        return "test" if h % 1000 < TEST_SHARE * 1000 else "train"

    return user_ids.map({u: bucket(u) for u in user_ids.unique()})


def encode_users(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct user: user_id and every feature of :data:`FEATURES` (float32 in [0, 1])."""
    people = rows.assign(user_id=derive_user_ids(rows)).drop_duplicates("user_id").reset_index(drop=True)
    out = pd.DataFrame({"user_id": people["user_id"]})
    for feat in FEATURES:
        out[feat.name] = feat.encode(people)
    return out.sort_values("user_id").reset_index(drop=True)


def read_coupon_csv(csv_path: str | Path) -> pd.DataFrame:
    """The survey rows, checked for the columns and labels the adapter needs."""
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(
            f"No coupon CSV at {path}. Pass the path of in-vehicle-coupon-recommendation.csv "
            "(UCI 'In-Vehicle Coupon Recommendation')."
        )
    try:
        df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} could not be read as CSV: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {missing}. Expected the UCI coupon columns, including "
            f"{list(REQUIRED_COLUMNS)}. Got {list(df.columns)[:30]} instead."
        )
    if not df["Y"].isin([0, 1]).all():
        raise DataError(f"Column 'Y' of {path} must hold 0/1 answers only. Got {sorted(df['Y'].unique())[:5]}.")
    if df[list(AD_COLUMNS)].isna().any().any():
        raise DataError(f"Columns {list(AD_COLUMNS)} of {path} must not be empty: they define the offers.")
    return df


def _offer_text(coupon: str, expiration: str, destination: str, time: str) -> tuple[str, str]:
    _, phrase, scene, _ = COUPONS.get(coupon, (None, f"{coupon} coupon", f"a {coupon.lower()} storefront", None))
    valid = EXPIRATION.get(expiration, f"valid for {expiration}")
    title = f"{phrase}, {valid}, shown at {time} to a driver {DESTINATION.get(destination, 'going to ' + destination)}"
    caption = (
        f"A phone notification over a car dashboard showing {scene} {LIGHT.get(time, 'at ' + time)}, "
        f"with a tag that reads '{valid}'."
    )
    return title, caption


def build_offers(rows: pd.DataFrame, holdout_share: float, seed: int) -> pd.DataFrame:
    """One row per offer with >= MIN_AD_ROWS answers: ad_id, text, coupon and retired/active status."""
    sizes = rows.groupby(list(AD_COLUMNS)).size().reset_index(name="n")
    sizes = sizes[sizes["n"] >= MIN_AD_ROWS].sort_values(list(AD_COLUMNS)).reset_index(drop=True)
    if sizes.empty:
        raise DataError(f"No offer (coupon x expiration x destination x time) has >= {MIN_AD_ROWS} answers.")
    sizes["ad_id"] = [
        "-".join([COUPONS.get(c, (_slug(c),))[0], _slug(e), _slug(d), _slug(t)])
        for c, e, d, t in sizes[list(AD_COLUMNS)].itertuples(index=False)
    ]
    texts = [_offer_text(*r) for r in sizes[list(AD_COLUMNS)].itertuples(index=False)]
    sizes["title"], sizes["caption"] = [t for t, _ in texts], [c for _, c in texts]
    rng = np.random.default_rng(seed)
    sizes["status"] = "retired"
    for _, group in sizes.groupby("coupon", sort=True):
        n_active = min(max(int(round(holdout_share * len(group))), 1), len(group) - 1)
        if n_active > 0:
            sizes.loc[rng.permutation(group.index.to_numpy())[:n_active], "status"] = "active"
    age = np.where(sizes["status"] == "retired", rng.integers(60, 300, len(sizes)), rng.integers(1, 20, len(sizes)))
    sizes["launch_date"] = [REFERENCE_TIME - timedelta(days=int(d)) for d in age]
    return sizes


def _draw_image(path: Path, coupon: str) -> None:
    from PIL import Image, ImageDraw

    slug, _, _, colour = COUPONS.get(coupon, (_slug(coupon), "", "", (90, 90, 90)))
    img = Image.new("RGB", (96, 96), colour)
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((18, 14, 78, 66), radius=10, fill=(250, 245, 235))
    draw.ellipse((34, 26, 62, 54), fill=colour)
    draw.text((4, 78), slug[:15], fill=(255, 255, 255))
    img.save(path, format="PNG")


def _write_repo_files(out: Path) -> None:
    fields = {
        view: "\n".join(
            f"        Field(name={f.name!r}, dtype=Float32, description={f.description!r}),"
            for f in FEATURES
            if f.view == view
        )
        for view in USER_VIEWS
    }
    text = Template((TEMPLATE_DIR / "feature_definitions.py.tmpl").read_text())
    atomic_write_text(
        out / "feature_definitions.py", text.substitute(profile_fields=fields[_P], habit_fields=fields[_H])
    )
    for name in ("feature_store.yaml", "llmhyper.yaml", ".feastignore"):
        shutil.copyfile(TEMPLATE_DIR / name, out / name)


def _prepare_out_dir(out: Path) -> None:
    config = out / "feature_store.yaml"
    if config.exists():
        if f"project: {PROJECT}" not in config.read_text():
            raise FeatureRepoError(
                f"{out} already holds a Feast repo of another project (not '{PROJECT}'). "
                "Pass a new or empty folder as out_dir."
            )
    elif out.exists() and any(out.iterdir()):
        raise FeatureRepoError(
            f"{out} is not empty and holds no feature_store.yaml. Pass a new or empty folder "
            "as out_dir, or a coupon repo built before (it is rebuilt)."
        )
    if (out / "data").exists():
        shutil.rmtree(out / "data")
    (out / "data" / "images").mkdir(parents=True)


def build_coupon_repo(
    csv_path: str | Path, out_dir: str | Path, *, holdout_share: float = 0.3, seed: int = 0, progress: bool = True
) -> dict[str, int]:
    """Write a Feast feature repo for the coupon survey under ``out_dir``, apply it and load the online store."""
    from tqdm.auto import tqdm

    from llmhyper_feast.store import feast_adapter as fa

    if not isinstance(holdout_share, (int, float)) or not 0 < holdout_share < 1:
        raise ConfigError(
            f"The 'holdout_share' parameter of build_coupon_repo must be a float in (0, 1). "
            f"Got {holdout_share!r} instead."
        )
    steps = tqdm(total=4, desc="coupon repo", disable=not progress)
    rows = read_coupon_csv(csv_path)
    out = Path(out_dir).resolve()
    _prepare_out_dir(out)
    data = out / "data"
    users = encode_users(rows)
    offers = build_offers(rows, holdout_share, seed)
    steps.update()

    n_rows = len(rows)
    rows = rows.assign(user_id=derive_user_ids(rows)).merge(offers[[*AD_COLUMNS, "ad_id"]], on=list(AD_COLUMNS))
    impressions = pd.DataFrame(
        {
            "user_id": rows["user_id"],
            "ad_id": rows["ad_id"],
            "clicked": rows["Y"].astype(np.int8),
            "user_split": user_split(rows["user_id"]),
        }
    )
    ts = pd.Timestamp(REFERENCE_TIME)
    impressions["event_timestamp"] = ts  # the survey has no times: one instant (the impressions view needs one)
    for view in USER_VIEWS:
        cols = [f.name for f in FEATURES if f.view == view]
        users[["user_id", *cols]].assign(event_timestamp=ts).to_parquet(data / f"{view}.parquet", index=False)
    images = {}
    for coupon in sorted(offers["coupon"].unique()):
        images[coupon] = data / "images" / f"{COUPONS.get(coupon, (_slug(coupon),))[0]}.png"
        _draw_image(images[coupon], coupon)
    content = pd.DataFrame(
        {
            "ad_id": offers["ad_id"],
            "title": offers["title"],
            "caption": offers["caption"],
            "image_uri": [str(images[c]) for c in offers["coupon"]],
            "launch_date": offers["launch_date"],
            "status": offers["status"],
            "event_timestamp": offers["launch_date"],
        }
    )
    content.to_parquet(data / "ad_content.parquet", index=False)
    impressions.sort_values(["ad_id", "user_id"], kind="stable").to_parquet(data / "impressions.parquet", index=False)
    _write_repo_files(out)
    steps.update()

    fa.apply_repo(out)
    steps.update()
    store = fa.open_store(out)
    fa.materialize_sources(store, [*USER_VIEWS, fa.view_for_role(store, fa.AD_CONTENT_ROLE).name])
    steps.update()
    steps.close()
    per_ad = impressions.groupby("ad_id").size()
    split_of_user = user_split(users["user_id"])
    return {
        "users": len(users),
        "train_users": int((split_of_user == "train").sum()),
        "test_users": int((split_of_user == "test").sum()),
        "features": len(FEATURES),
        "ads": len(offers),
        "retired_ads": int((offers["status"] == "retired").sum()),
        "active_ads": int((offers["status"] == "active").sum()),
        "impressions": len(impressions),
        "clicks": int(impressions["clicked"].sum()),
        "dropped_rows": n_rows - len(impressions),
        "min_impressions_per_ad": int(per_ad.min()),
        "median_impressions_per_ad": int(per_ad.median()),
    }
