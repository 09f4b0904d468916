"""A seeded synthetic ad market whose clicks depend on ad content.

Users get sparse category interests and a few behavioural traits; each ad gets a hidden
true weight vector tied to its content (strong on its own category, smaller on related
ones, negative where it conflicts), and impressions/clicks are sampled from it. Older
"retired" ads train warm models; recent "active" ads are the cold test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from llmhyper_feast.datasets.demo_catalog import (
    ADVERTISERS,
    BEHAVIOUR_FEATURES,
    CATEGORIES,
    HOOKS,
    Category,
    Product,
    advertisers_of,
)
from llmhyper_feast.errors import ConfigError
from llmhyper_feast.store.layout import RepoLayout

INTEREST_FEATURES = tuple(c.feature for c in CATEGORIES)
FEATURES = INTEREST_FEATURES + BEHAVIOUR_FEATURES  # registry order: user_interests, then user_behaviour
REFERENCE_TIME = datetime(2026, 11, 1, tzinfo=UTC)
# file names come from the repo layout: build_world writes into <repo>/data
TRUTH_FILE = RepoLayout(Path(".")).demo_truth.name
IMPRESSIONS_FILE = RepoLayout(Path(".")).impressions.name
HISTORY_FILE = RepoLayout(Path(".")).user_history.name
ADVERTISERS_FILE = RepoLayout(Path(".")).advertisers.name
HISTORY_DAYS = 180  # user histories cover this many days before REFERENCE_TIME
HISTORY_STREAM = 13  # histories draw from default_rng([seed, 13]): the ad world keeps its draws


@dataclass(frozen=True)
class WorldSize:
    """How big a demo world to build; every field is a CLI flag of ``llmhyper demo data``."""

    users: int = 20000
    retired: int = 300
    active: int = 60
    impressions_per_ad: int = 4000
    test_share: float = 0.2
    seed: int = 7

    def check(self) -> None:
        for name in ("users", "retired", "active", "impressions_per_ad"):
            if getattr(self, name) < 1:
                raise ConfigError(f"The '{name}' demo size must be an int >= 1. Got {getattr(self, name)} instead.")
        if not 0 < self.test_share < 1:
            raise ConfigError(f"The 'test_share' demo size must be in (0, 1). Got {self.test_share} instead.")
        if self.impressions_per_ad > self.users:
            raise ConfigError(
                f"impressions_per_ad ({self.impressions_per_ad}) cannot exceed users ({self.users}): "
                "each user sees an ad at most once. Lower --impressions or raise --users."
            )


def _users(size: WorldSize, rng: np.random.Generator) -> pd.DataFrame:
    n, k = size.users, len(INTEREST_FEATURES)
    activity = rng.lognormal(mean=0.0, sigma=0.6, size=(n, 1))
    prefs = rng.dirichlet(np.full(k, 0.25), size=n)
    raw = activity * prefs * k * 0.6
    interests = 1.0 - np.exp(-raw) + rng.normal(0, 0.02, size=(n, k))
    frame = pd.DataFrame(np.clip(interests, 0, 1).astype(np.float32), columns=list(INTEREST_FEATURES))
    frame["deal_seeking"] = rng.beta(2, 5, n).astype(np.float32)
    frame["premium_affinity"] = np.clip(rng.beta(2, 6, n) + 0.1 * activity[:, 0] - 0.1, 0, 1).astype(np.float32)
    frame["mobile_share"] = rng.beta(4, 2, n).astype(np.float32)
    frame["vegetarian"] = np.where(rng.random(n) < 0.15, rng.beta(8, 2, n), rng.beta(1, 12, n)).astype(np.float32)
    frame.insert(0, "user_id", [f"u{i:06d}" for i in range(n)])
    return frame


def _ad_text(product: Product, rng: np.random.Generator) -> str:
    styles = [f for f in ("deal", "premium", "app") if f in product.flags]
    style = styles[0] if styles and rng.random() < 0.7 else "plain"
    hooks = HOOKS[style]
    title = hooks[rng.integers(len(hooks))].format(name=product.name)
    return title[0].upper() + title[1:]


def _true_weights(cat: Category, product: Product, rng: np.random.Generator) -> np.ndarray:
    idx = {f: i for i, f in enumerate(FEATURES)}
    theta = rng.normal(0.0, 0.25, len(FEATURES))
    theta[idx[cat.feature]] += rng.uniform(2.5, 4.0)
    for rel in cat.related:
        theta[idx[rel]] += rng.uniform(0.5, 1.5)
    if "deal" in product.flags:
        theta[idx["deal_seeking"]] += rng.uniform(1.0, 2.0)
        theta[idx["premium_affinity"]] -= rng.uniform(0.3, 0.8)
    if "premium" in product.flags:
        theta[idx["premium_affinity"]] += rng.uniform(1.0, 2.0)
        theta[idx["deal_seeking"]] -= rng.uniform(0.5, 1.2)
    if "meat" in product.flags:
        theta[idx["vegetarian"]] -= rng.uniform(1.5, 3.0)
    if "app" in product.flags:
        theta[idx["mobile_share"]] += rng.uniform(0.8, 1.5)
    return theta


def _draw_image(path: Path, cat: Category, text: str, rng: np.random.Generator) -> None:
    from PIL import Image, ImageDraw

    jitter = rng.integers(-25, 26, 3)
    colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(cat.colour, jitter))
    img = Image.new("RGB", (96, 96), colour)
    draw = ImageDraw.Draw(img)
    x, y = rng.integers(10, 40, 2)
    shape = (int(x), int(y), int(x) + 40, int(y) + 40)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(shape, fill=(255, 255, 255))
    draw.text((4, 80), text[:14], fill=(0, 0, 0))
    img.save(path, format="PNG")


def build_world(data_dir: str | Path, size: WorldSize = WorldSize(), *, progress: bool = True) -> dict[str, int]:
    """Write the demo world's parquet sources, images and hidden truth under ``data_dir``."""
    from tqdm.auto import tqdm

    size.check()
    data = Path(data_dir)
    (data / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size.seed)
    users = _users(size, rng)
    x = users[list(FEATURES)].to_numpy(np.float64)
    n_ads = size.retired + size.active
    ad_rows, truth_rows, imp_parts = [], [], []
    for a in tqdm(range(n_ads), desc="demo ads", disable=not progress):
        cat = CATEGORIES[a % len(CATEGORIES)] if a < len(CATEGORIES) else CATEGORIES[rng.integers(len(CATEGORIES))]
        product = cat.products[rng.integers(len(cat.products))]
        ad_id, status = f"ad{a:05d}", ("retired" if a < size.retired else "active")
        title = _ad_text(product, rng)
        theta = _true_weights(cat, product, rng)
        base_ctr = rng.uniform(0.01, 0.04)
        logits = x @ theta
        # shift so the population mean CTR is base_ctr (a few Newton steps suffice here)
        bias = np.log(base_ctr / (1 - base_ctr)) - logits.mean()
        for _ in range(20):
            p = 1 / (1 + np.exp(-(logits + bias)))
            bias -= (p.mean() - base_ctr) / max((p * (1 - p)).mean(), 1e-9)
        image = data / "images" / f"{ad_id}.png"
        _draw_image(image, cat, product.name, rng)
        launch = REFERENCE_TIME - timedelta(
            days=int(rng.integers(60, 300)) if status == "retired" else int(rng.integers(1, 20))
        )
        ad_rows.append(
            {
                "ad_id": ad_id,
                "title": title,
                "caption": product.caption,
                "image_uri": str(image),
                "launch_date": launch,
                "status": status,
                "event_timestamp": launch,
            }
        )
        truth_rows.append(
            {
                "ad_id": ad_id,
                "title": title,
                "status": status,
                "category": cat.feature,
                "bias": float(bias),
                **{f: float(t) for f, t in zip(FEATURES, theta)},
            }
        )
        shown = rng.choice(size.users, size=size.impressions_per_ad, replace=False)
        clicked = rng.random(len(shown)) < 1 / (1 + np.exp(-(logits[shown] + bias)))
        imp_parts.append(pd.DataFrame({"user_idx": shown, "ad_id": ad_id, "clicked": clicked.astype(np.int8)}))

    test_users = rng.random(size.users) < size.test_share
    imps = pd.concat(imp_parts, ignore_index=True)
    imps.insert(0, "user_id", users["user_id"].to_numpy()[imps["user_idx"]])
    imps["user_split"] = np.where(test_users[imps["user_idx"]], "test", "train")
    imps = imps.drop(columns="user_idx")
    # the impressions view's event time: logged in file order, a microsecond apart (no random draw)
    imps["event_timestamp"] = pd.Timestamp(REFERENCE_TIME) + pd.to_timedelta(np.arange(len(imps)), unit="us")

    ts = pd.Timestamp(REFERENCE_TIME)
    interests = users[["user_id", *INTEREST_FEATURES]].assign(event_timestamp=ts)
    behaviour = users[["user_id", *BEHAVIOUR_FEATURES]].assign(event_timestamp=ts)
    interests.to_parquet(data / "user_interests.parquet", index=False)
    behaviour.to_parquet(data / "user_behaviour.parquet", index=False)
    content = pd.DataFrame(ad_rows)
    content.insert(content.columns.get_loc("event_timestamp"), "advertiser_id", _ad_advertisers(truth_rows))
    content.to_parquet(data / "ad_content.parquet", index=False)
    pd.DataFrame(truth_rows).to_parquet(data / TRUTH_FILE, index=False)
    imps.to_parquet(data / IMPRESSIONS_FILE, index=False)
    history = _user_history(size, users, content)
    history.to_parquet(data / HISTORY_FILE, index=False)
    _advertiser_table(content).to_parquet(data / ADVERTISERS_FILE, index=False)
    return {
        "users": size.users,
        "retired_ads": size.retired,
        "active_ads": size.active,
        "impressions": len(imps),
        "clicks": int(imps["clicked"].sum()),
        "test_users": int(test_users.sum()),
        "history_events": len(history),
        "conversions": int((history["event"] == "conversion").sum()),
    }


# --- advertisers and user histories (user priors); drawn after, and apart from, the ad world ---


def _ad_advertisers(truth_rows: list[dict]) -> list[str]:
    """Each ad's advertiser: its category's brands in turn (no random draw, so nothing above moves)."""
    seen: dict[str, int] = {}
    out = []
    for row in truth_rows:
        brands = advertisers_of(row["category"])
        i = seen.get(row["category"], 0)
        seen[row["category"]] = i + 1
        out.append(brands[i % len(brands)].advertiser_id)
    return out


def _advertiser_table(content: pd.DataFrame) -> pd.DataFrame:
    """Advertisers that have at least one ad: id, name, category."""
    used = set(content["advertiser_id"])
    rows = [
        {"advertiser_id": a.advertiser_id, "name": a.name, "category": a.category}
        for a in ADVERTISERS
        if a.advertiser_id in used
    ]
    return pd.DataFrame(rows).assign(event_timestamp=pd.Timestamp(REFERENCE_TIME))


def _user_history(size: WorldSize, users: pd.DataFrame, content: pd.DataFrame) -> pd.DataFrame:
    """Impressions, clicks and conversions of every user over HISTORY_DAYS, driven by their interests.

    Each user has a fixed taste over advertisers: the interest in the advertiser's category, the
    advertiser's popularity, and a personal brand affinity. Visits sample that taste; a visit may
    lead to a click, and a click to a conversion more often in categories the user cares about.
    So the next converting advertiser follows the user's past advertisers, the popular ones and
    the user's interests, none of them alone.
    """
    rng = np.random.default_rng([size.seed, HISTORY_STREAM])
    adv_ids = sorted(set(content["advertiser_id"]))
    category = {a.advertiser_id: a.category for a in ADVERTISERS}
    cat_col = np.array([INTEREST_FEATURES.index(category[a]) for a in adv_ids])
    n, m = len(users), len(adv_ids)
    interest = users[list(INTEREST_FEATURES)].to_numpy(np.float64)[:, cat_col]  # [users, advertisers]
    popularity = rng.lognormal(0.0, 0.8, m)
    taste = 3.0 * interest + np.log(popularity) + 1.2 * rng.gumbel(size=(n, m))
    taste = np.exp(taste - taste.max(axis=1, keepdims=True))
    cum = np.cumsum(taste / taste.sum(axis=1, keepdims=True), axis=1)
    activity = interest.sum(axis=1) / max(interest.sum(axis=1).mean(), 1e-9)
    visits = rng.poisson(np.clip(6 + 20 * activity, 1, 120))
    who = np.repeat(np.arange(n), visits)
    draws = rng.random(len(who))
    adv = np.minimum((cum[who] < draws[:, None]).sum(axis=1), m - 1)
    start = pd.Timestamp(REFERENCE_TIME) - pd.Timedelta(days=HISTORY_DAYS)
    seconds = rng.uniform(0, HISTORY_DAYS * 86400 - 7200, len(who))
    by_adv = content.sort_values(["advertiser_id", "ad_id"])
    counts = by_adv.groupby("advertiser_id").size().reindex(adv_ids).to_numpy()
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pick = starts[adv] + (rng.random(len(who)) * counts[adv]).astype(np.int64)
    ad = by_adv["ad_id"].to_numpy()[pick]
    clicked = rng.random(len(who)) < 0.3
    converted = clicked & (rng.random(len(who)) < 0.15 + 0.6 * interest[who, adv])
    delay = rng.uniform(60, 3600, len(who))
    frames = [
        pd.DataFrame({"i": who[mask], "a": adv[mask], "ad": ad[mask], "event": name, "s": seconds[mask] + offset})
        for name, mask, offset in (
            ("impression", np.ones(len(who), bool), 0.0),
            ("click", clicked, 5.0),
            ("conversion", converted, 5.0 + delay[converted]),
        )
    ]
    events = pd.concat(frames, ignore_index=True).sort_values(["i", "s"], kind="stable")
    return pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy()[events["i"].to_numpy()],
            "advertiser_id": np.asarray(adv_ids, dtype=object)[events["a"].to_numpy()],
            "ad_id": events["ad"].to_numpy(),
            "event": events["event"].to_numpy(),
            "event_timestamp": start + pd.to_timedelta(events["s"].to_numpy(), unit="s"),
        }
    ).reset_index(drop=True)
