"""Feast definitions for the llmhyper-feast demo ad market, written with llmhyper_feast.definitions.

This file names only what is the repo's own (entities, user feature views, ad content, the
user-priors inputs, impressions); ``llmhyper_views`` adds the weight views and the ranking
FeatureService. Every Field of a user feature view is a feature the LLM writes a weight for; its
``description`` is the definition the prompt shows, and views in ``order``, fields in declared
order, index every weight vector.
"""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field
from feast.types import Float32, String
from feast.value_type import ValueType

from llmhyper_feast.definitions import (
    ad_content_view,
    impressions_view,
    llmhyper_views,
    parquet_source,
    user_features_view,
    user_priors_view,
)

DATA = Path(__file__).resolve().parent / "data"

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A person who sees ads.")
ad = Entity(
    name="ad",
    join_keys=["ad_id"],
    value_type=ValueType.STRING,
    description="One ad creative (title, message and image).",
)


def _engagement(topic: str) -> str:
    return (
        f"How strongly the user engaged with {topic} over the last 90 days: views, "
        "clicks, saves and purchases in that category, scaled to a 0-1 score "
        "(0 = never, 1 = among the most engaged users)."
    )


user_interests = user_features_view(
    "user_interests",
    user,
    [
        Field(
            name="toys_games", dtype=Float32, description=_engagement("toys, board games, building sets and puzzles")
        ),
        Field(name="fashion", dtype=Float32, description=_engagement("clothing, shoes and fashion accessories")),
        Field(
            name="beauty",
            dtype=Float32,
            description=_engagement("skincare, make-up, fragrance and personal care products"),
        ),
        Field(
            name="electronics",
            dtype=Float32,
            description=_engagement("phones, laptops, headphones and other consumer electronics"),
        ),
        Field(
            name="home_furniture", dtype=Float32, description=_engagement("furniture, home decor and interior design")
        ),
        Field(name="cooking", dtype=Float32, description=_engagement("cookware, kitchen appliances and recipes")),
        Field(
            name="fitness", dtype=Float32, description=_engagement("gyms, workout gear, running and sports nutrition")
        ),
        Field(name="outdoor", dtype=Float32, description=_engagement("camping, hiking, fishing and outdoor equipment")),
        Field(
            name="travel", dtype=Float32, description=_engagement("flights, hotels, holiday packages and travel guides")
        ),
        Field(name="automotive", dtype=Float32, description=_engagement("cars, car parts, tyres and car care")),
        Field(name="pets", dtype=Float32, description=_engagement("pet food, pet toys and veterinary products")),
        Field(name="books", dtype=Float32, description=_engagement("books, e-books, audiobooks and online courses")),
        Field(
            name="finance",
            dtype=Float32,
            description=_engagement("banking, credit cards, insurance and investing products"),
        ),
        Field(
            name="video_games", dtype=Float32, description=_engagement("video games, consoles and gaming accessories")
        ),
        Field(
            name="baby_kids", dtype=Float32, description=_engagement("baby care, nursery items and children's clothing")
        ),
        Field(name="gardening", dtype=Float32, description=_engagement("plants, seeds, garden tools and lawn care")),
    ],
    data_dir=DATA,
    description="Per-category engagement scores of each user, refreshed daily.",
    owner="data-platform@example.com",
    order=1,
)

user_behaviour = user_features_view(
    "user_behaviour",
    user,
    [
        Field(
            name="deal_seeking",
            dtype=Float32,
            description=(
                "Share of the user's purchases in the last 180 days that used a coupon, a sale "
                "price or a discount code, from 0 to 1."
            ),
        ),
        Field(
            name="premium_affinity",
            dtype=Float32,
            description=(
                "Share of the user's spend in the last 180 days on items priced in the top "
                "quartile of their category, from 0 to 1."
            ),
        ),
        Field(
            name="mobile_share",
            dtype=Float32,
            description=(
                "Share of the user's sessions in the last 30 days that came from a phone "
                "rather than a computer, from 0 to 1."
            ),
        ),
        Field(
            name="vegetarian",
            dtype=Float32,
            description=(
                "Likelihood, from 0 to 1, that the user follows a vegetarian or plant-based "
                "diet, estimated from recipe and grocery behaviour."
            ),
        ),
    ],
    data_dir=DATA,
    description="Shopping behaviour and context signals of each user.",
    owner="data-platform@example.com",
    order=2,
)

ad_content = ad_content_view(
    ad,
    data_dir=DATA,
    extra_fields=[Field(name="advertiser_id", dtype=String, description="The advertiser (brand) that runs the ad.")],
)

warm_ad_weights, generated_ad_weights, ranking = llmhyper_views(
    ad, data_dir=DATA, user_views=[user_interests, user_behaviour]
)

# --- user priors: which advertisers a user converts with next (llmhyper priors) ------------------

advertiser = Entity(
    name="advertiser",
    join_keys=["advertiser_id"],
    value_type=ValueType.STRING,
    description="A brand that runs ads.",
)

advertisers = FeatureView(
    name="advertisers",
    entities=[advertiser],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="name", dtype=String, description="The advertiser's brand name."),
        Field(name="category", dtype=String, description="The user interest feature the advertiser sells in."),
    ],
    source=parquet_source("advertisers", DATA),
    online=True,
    description="Advertisers (brands) of the ads.",
    tags={"llmhyper.role": "advertisers"},
)

user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="advertiser_id", dtype=String, description="The advertiser of the ad the event was about."),
        Field(name="ad_id", dtype=String, description="The ad the user saw, clicked or converted on."),
        Field(name="event", dtype=String, description="impression, click or conversion."),
    ],
    source=parquet_source("user_history", DATA),
    # one row per event offline; online holds each user's latest event
    online=True,
    description="Time-stamped ad events of each user (event_timestamp is when it happened).",
    tags={"llmhyper.role": "user_history"},
)

user_llm_priors = user_priors_view(user, data_dir=DATA)

# --- impressions: what each user was shown and whether they clicked (training and evaluation input) ---

ad_impressions = impressions_view(user, ad, data_dir=DATA)


def _priors_as_features() -> bool:
    """``user_priors.use_as_features`` of this repo (llmhyper.yaml or environment)."""
    from llmhyper_feast.config import load_settings

    return load_settings(Path(__file__).resolve().parent).user_priors.use_as_features


# Opt-in ranking features from the user priors (`llmhyper priors features` fills them): a user
# feature view only while user_priors.use_as_features is on, so the feature schema stays put.
user_prior_features = FeatureView(
    name="user_prior_features",
    entities=[user],
    ttl=timedelta(days=3650),
    schema=[
        Field(
            name=f"prior_{f.name}",
            dtype=Float32,
            description=(
                f"LLM-predicted share of the user's next conversions in the {f.name.replace('_', ' ')} category: "
                "the user-priors list's scores on that category's advertisers over the list's total, from 0 to 1."
            ),
        )
        for f in user_interests.features
    ],
    source=parquet_source("user_prior_features", DATA),
    online=True,
    description="Ranking features derived from the user priors (llmhyper priors features).",
    tags={
        "llmhyper.role": "user_features" if _priors_as_features() else "user_prior_features",
        "llmhyper.order": "3",
        "llmhyper.derived": "user_priors",
    },
)
