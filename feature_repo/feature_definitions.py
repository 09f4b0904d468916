"""Feast definitions for the llmhyper-feast demo ad market.

Every Field of a view tagged ``llmhyper.role: user_features`` is a user feature the LLM
writes a weight for; its ``description`` is the definition the prompt shows. Views are
read by their ``llmhyper.order`` tag (then name) and fields in declared order; that order
indexes every weight vector.
"""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Float32, Int64, String, UnixTimestamp
from feast.value_type import ValueType

DATA = Path(__file__).resolve().parent / "data"

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A person who sees ads.")
ad = Entity(
    name="ad",
    join_keys=["ad_id"],
    value_type=ValueType.STRING,
    description="One ad creative (title, message and image).",
)


def _source(name: str) -> FileSource:
    return FileSource(name=f"{name}_source", path=str(DATA / f"{name}.parquet"), timestamp_field="event_timestamp")


def _engagement(topic: str) -> str:
    return (
        f"How strongly the user engaged with {topic} over the last 90 days: views, "
        "clicks, saves and purchases in that category, scaled to a 0-1 score "
        "(0 = never, 1 = among the most engaged users)."
    )


user_interests = FeatureView(
    name="user_interests",
    entities=[user],
    ttl=timedelta(days=3650),
    schema=[
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
    source=_source("user_interests"),
    online=True,
    description="Per-category engagement scores of each user, refreshed daily.",
    owner="data-platform@example.com",
    tags={"llmhyper.role": "user_features", "llmhyper.order": "1"},
)

user_behaviour = FeatureView(
    name="user_behaviour",
    entities=[user],
    ttl=timedelta(days=3650),
    schema=[
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
    source=_source("user_behaviour"),
    online=True,
    description="Shopping behaviour and context signals of each user.",
    owner="data-platform@example.com",
    tags={"llmhyper.role": "user_features", "llmhyper.order": "2"},
)

ad_content = FeatureView(
    name="ad_content",
    entities=[ad],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="title", dtype=String, description="Headline and message of the ad."),
        Field(name="caption", dtype=String, description="A one-sentence description of the ad image."),
        Field(name="image_uri", dtype=String, description="Location of the ad image (file path or URL)."),
        Field(name="launch_date", dtype=UnixTimestamp, description="When the ad started serving."),
        Field(name="status", dtype=String, description="retired (has a trained model) or active (new)."),
        Field(name="advertiser_id", dtype=String, description="The advertiser (brand) that runs the ad."),
    ],
    source=_source("ad_content"),
    online=True,
    description="Creative content of each ad.",
    tags={"llmhyper.role": "ad_content"},
)

warm_ad_weights = FeatureView(
    name="warm_ad_weights",
    entities=[ad],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="weights", dtype=Array(Float32), description="Trained weights, in user feature order."),
        Field(name="bias", dtype=Float32, description="Trained intercept."),
        Field(name="mean_ctr", dtype=Float32, description="Mean predicted CTR over training users."),
        Field(name="impressions", dtype=Int64, description="Impressions the model was trained on."),
        Field(name="clicks", dtype=Int64, description="Clicks the model was trained on."),
        Field(name="train_auc", dtype=Float32, description="AUC on the training impressions."),
        Field(name="feature_hash", dtype=String, description="Hash of the feature names and order the weights follow."),
        Field(name="trained_at", dtype=UnixTimestamp, description="When the model was trained."),
    ],
    source=_source("warm_ad_weights"),
    online=True,
    description="Per-ad logistic regressions trained on clicks (warm ads).",
    tags={"llmhyper.role": "warm_weights"},
)

generated_ad_weights = FeatureView(
    name="generated_ad_weights",
    entities=[ad],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="weights", dtype=Array(Float32), description="Calibrated weights, in user feature order."),
        Field(name="bias", dtype=Float32, description="Calibrated intercept (delta)."),
        Field(name="alpha", dtype=Float32, description="Target mean CTR from similar warm ads."),
        Field(name="delta", dtype=Float32, description="Intercept shift found by calibration."),
        Field(name="norm", dtype=Float32, description="L2 norm of the raw generated weights."),
        Field(name="llm_model", dtype=String, description="Backend and model that wrote the weights."),
        Field(name="prompt_hash", dtype=String, description="Hash of the prompts used."),
        Field(name="prompt_version", dtype=String, description="Prompt template version."),
        Field(name="feature_hash", dtype=String, description="Hash of the feature definitions used."),
        Field(
            name="weights_version",
            dtype=String,
            description="Identifies this vector: generation run, inputs and calibration settings.",
        ),
        Field(name="samples", dtype=Int64, description="Valid LLM samples averaged."),
        Field(
            name="origin",
            dtype=String,
            description=(
                "llm (validated answers), prior (no LLM: the weight prior alone) "
                "or fallback (the prior replaced failed answers)."
            ),
        ),
        Field(name="reason", dtype=String, description="Why a fallback was used (empty for clean LLM answers)."),
        Field(name="decision", dtype=String, description="Deployment gate decision (e.g. pass, blend:0.6, warn)."),
        Field(
            name="policy_tags",
            dtype=String,
            description='JSON list of the content rules (llmhyper_policy.yaml) the ad triggers, e.g. ["no_meat"].',
        ),
        Field(name="generated_at", dtype=UnixTimestamp, description="When the weights were generated."),
    ],
    source=_source("generated_ad_weights"),
    online=True,
    description="Per-ad weights written by the LLM hypernetwork and calibrated.",
    tags={"llmhyper.role": "generated_weights"},
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
    source=_source("advertisers"),
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
    source=_source("user_history"),
    # one row per event offline; online holds each user's latest event
    online=True,
    description="Time-stamped ad events of each user (event_timestamp is when it happened).",
    tags={"llmhyper.role": "user_history"},
)

user_llm_priors = FeatureView(
    name="user_llm_priors",
    entities=[user],
    ttl=timedelta(days=3650),
    schema=[
        Field(
            name="advertisers",
            dtype=Array(String),
            description="Advertiser ids the user is predicted to convert with next, best first.",
        ),
        Field(name="scores", dtype=Array(Float32), description="A score per advertiser in (0, 1], higher is likelier."),
        Field(
            name="interests", dtype=Array(String), description="Up to five interest features predicted for the user."
        ),
        Field(name="llm_model", dtype=String, description="Backend and model that wrote the list (or the baseline)."),
        Field(name="origin", dtype=String, description="llm (validated answer) or fallback (a non-LLM baseline)."),
        Field(name="reason", dtype=String, description="Why a fallback was used (empty for LLM answers)."),
        Field(name="prompt_hash", dtype=String, description="Hash of the prompt sent."),
        Field(
            name="profile_hash",
            dtype=String,
            description="Hash of the user profile text; a new one triggers re-inference.",
        ),
        Field(name="generated_at", dtype=UnixTimestamp, description="When the list was written."),
    ],
    source=_source("user_llm_priors"),
    online=True,
    description="LLM-predicted next advertisers and interests per user (user priors).",
    tags={"llmhyper.role": "user_priors"},
)


def _priors_as_features() -> bool:
    """``user_priors.use_as_features`` of this repo (llmhyper.yaml or environment); off without llmhyper_feast."""
    try:
        from llmhyper_feast.config import load_settings
    except ImportError:
        return False
    return load_settings(Path(__file__).resolve().parent).user_priors.use_as_features


# Opt-in: while use_as_features is off this view is registered but is not a user feature view, so the
# feature schema (and every LLM-HYPER number) stays as it was. `llmhyper priors features` fills it.
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
    source=_source("user_prior_features"),
    online=True,
    description="Ranking features derived from the user priors (llmhyper priors features).",
    tags={
        "llmhyper.role": "user_features" if _priors_as_features() else "user_prior_features",
        "llmhyper.order": "3",
        "llmhyper.derived": "user_priors",
    },
)


ranking = FeatureService(
    name="ranking",
    features=[
        user_interests,
        user_behaviour,
        # serving columns only: free-text reasons stay out of what the service hands out
        generated_ad_weights[["weights", "bias", "alpha", "weights_version", "origin", "llm_model", "policy_tags"]],
    ],
    description="User features and generated ad weights for ranking cold ads.",
)

# --- impressions: what each user was shown and whether they clicked (training and evaluation input) ---

ad_impressions = FeatureView(
    name="ad_impressions",
    entities=[user, ad],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="clicked", dtype=Int64, description="1 when the user clicked the ad, else 0."),
        Field(
            name="user_split", dtype=String, description="train or test: which side of the evaluation the user is on."
        ),
    ],
    source=_source("impressions"),
    # read offline only (training, evaluation); nothing serves it online
    online=False,
    description="One row per ad shown to a user (event_timestamp is when it was shown).",
    tags={"llmhyper.role": "impressions"},
)
