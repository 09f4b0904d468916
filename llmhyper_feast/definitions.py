"""Short Feast definitions for a repo that uses llmhyper: the plugin's own views in one call.

Import this in a repo's ``feature_definitions.py``. The repo names what is its own (entities,
user feature views with descriptions, the ad content source) and gets the views the plugin
writes (trained and generated weights, user priors) and the ranking FeatureService from here::

    from llmhyper_feast.definitions import ad_content_view, llmhyper_views, user_features_view

    warm_ad_weights, generated_ad_weights, ranking = llmhyper_views(ad, data_dir=DATA, user_views=[interests])

The field lists below are the one definition of the plugin's views; ``llmhyper doctor`` and
the tests compare registered views with them. The plugin finds views by their
``llmhyper.role`` tag (and orders user feature views by ``llmhyper.order``), never by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "AD_CONTENT_FIELDS",
    "GENERATED_FIELDS",
    "IMPRESSIONS_FIELDS",
    "RANKING_COLUMNS",
    "USER_PRIORS_FIELDS",
    "WARM_FIELDS",
    "FieldSpec",
    "PluginViews",
    "ad_content_view",
    "impressions_view",
    "llmhyper_views",
    "parquet_source",
    "ranking_service",
    "tag_ad_content",
    "tag_user_views",
    "user_features_view",
    "user_priors_view",
    "weight_views",
]

ROLE_TAG, ORDER_TAG = "llmhyper.role", "llmhyper.order"  # same spelling as store/feast_adapter.py
TTL = timedelta(days=3650)


class FieldSpec(NamedTuple):
    """One field of a plugin view: name, Feast type name (``Float32``, ``Array(Float32)``...) and description."""

    name: str
    dtype: str
    description: str


WARM_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("weights", "Array(Float32)", "Trained weights, in user feature order."),
    FieldSpec("bias", "Float32", "Trained intercept."),
    FieldSpec("mean_ctr", "Float32", "Mean predicted CTR over training users."),
    FieldSpec("impressions", "Int64", "Impressions the model was trained on."),
    FieldSpec("clicks", "Int64", "Clicks the model was trained on."),
    FieldSpec("train_auc", "Float32", "AUC on the training impressions."),
    FieldSpec("feature_hash", "String", "Hash of the feature names and order the weights follow."),
    FieldSpec("trained_at", "UnixTimestamp", "When the model was trained."),
)

GENERATED_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("weights", "Array(Float32)", "Calibrated weights, in user feature order."),
    FieldSpec("bias", "Float32", "Calibrated intercept (delta)."),
    FieldSpec("alpha", "Float32", "Target mean CTR from similar warm ads."),
    FieldSpec("delta", "Float32", "Intercept shift found by calibration."),
    FieldSpec("norm", "Float32", "L2 norm of the raw generated weights."),
    FieldSpec("llm_model", "String", "Backend and model that wrote the weights."),
    FieldSpec("prompt_hash", "String", "Hash of the prompts used."),
    FieldSpec("prompt_version", "String", "Prompt template version."),
    FieldSpec("feature_hash", "String", "Hash of the feature definitions used."),
    FieldSpec("weights_version", "String", "Identifies this vector: generation run, inputs and calibration settings."),
    FieldSpec("samples", "Int64", "Valid LLM samples averaged."),
    FieldSpec(
        "origin",
        "String",
        "llm (validated answers), prior (no LLM: the weight prior alone) or fallback (the prior replaced failed "
        "answers).",
    ),
    FieldSpec("reason", "String", "Why a fallback was used (empty for clean LLM answers)."),
    FieldSpec("decision", "String", "Deployment gate decision (e.g. pass, blend:0.6, warn)."),
    FieldSpec(
        "policy_tags",
        "String",
        'JSON list of the content rules (llmhyper_policy.yaml) the ad triggers, e.g. ["no_meat"].',
    ),
    FieldSpec("generated_at", "UnixTimestamp", "When the weights were generated."),
)

AD_CONTENT_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("title", "String", "Headline and message of the ad."),
    FieldSpec("caption", "String", "A one-sentence description of the ad image."),
    FieldSpec("image_uri", "String", "Location of the ad image (file path or URL)."),
    FieldSpec("launch_date", "UnixTimestamp", "When the ad started serving."),
    FieldSpec("status", "String", "retired (has a trained model) or active (new)."),
)

USER_PRIORS_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("advertisers", "Array(String)", "Advertiser ids the user is predicted to convert with next, best first."),
    FieldSpec("scores", "Array(Float32)", "A score per advertiser in (0, 1], higher is likelier."),
    FieldSpec("interests", "Array(String)", "Up to five interest features predicted for the user."),
    FieldSpec("llm_model", "String", "Backend and model that wrote the list (or the baseline)."),
    FieldSpec("origin", "String", "llm (validated answer) or fallback (a non-LLM baseline)."),
    FieldSpec("reason", "String", "Why a fallback was used (empty for LLM answers)."),
    FieldSpec("prompt_hash", "String", "Hash of the prompt sent."),
    FieldSpec("profile_hash", "String", "Hash of the user profile text; a new one triggers re-inference."),
    FieldSpec("generated_at", "UnixTimestamp", "When the list was written."),
)

IMPRESSIONS_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("clicked", "Int64", "1 when the user clicked the ad, else 0."),
    FieldSpec("user_split", "String", "train or test: which side of the evaluation the user is on."),
)

# the generated-weights columns the ranking service hands out (free-text reasons stay out)
RANKING_COLUMNS: tuple[str, ...] = (
    "weights",
    "bias",
    "alpha",
    "weights_version",
    "origin",
    "llm_model",
    "policy_tags",
)

WARM_DESCRIPTION = "Per-ad logistic regressions trained on clicks (warm ads)."
GENERATED_DESCRIPTION = "Per-ad weights written by the LLM hypernetwork and calibrated."
USER_PRIORS_DESCRIPTION = "LLM-predicted next advertisers and interests per user (user priors)."


def feast_dtype(name: str) -> Any:
    """The Feast type named ``name`` (``Float32``, ``Array(Float32)``, ...)."""
    from feast import types

    if name.startswith("Array(") and name.endswith(")"):
        return types.Array(feast_dtype(name[len("Array(") : -1]))
    return getattr(types, name)


def fields(specs: Sequence[FieldSpec]) -> list[Any]:
    """Feast Fields for ``specs``, in order."""
    from feast import Field

    return [Field(name=s.name, dtype=feast_dtype(s.dtype), description=s.description) for s in specs]


def parquet_source(name: str, data_dir: str | Path) -> Any:
    """A parquet FileSource ``<name>_source`` at ``<data_dir>/<name>.parquet`` keyed by ``event_timestamp``."""
    from feast import FileSource

    return FileSource(
        name=f"{name}_source", path=str(Path(data_dir) / f"{name}.parquet"), timestamp_field="event_timestamp"
    )


def _view(
    name: str,
    entity: Any,
    schema: list[Any],
    data_dir: str | Path,
    description: str,
    tags: dict[str, str],
    source: Any = None,
    **extra: Any,
) -> Any:
    from feast import FeatureView

    return FeatureView(
        name=name,
        entities=[entity],
        ttl=TTL,
        schema=schema,
        source=source if source is not None else parquet_source(name, data_dir),
        online=True,
        description=description,
        tags=tags,
        **extra,
    )


def user_features_view(
    name: str,
    user: Any,
    schema: Sequence[Any],
    *,
    data_dir: str | Path,
    order: int,
    description: str = "",
    source: Any = None,
    owner: str = "",
) -> Any:
    """A view of user features the LLM weighs (role ``user_features``, ``llmhyper.order`` = ``order``).

    Every Field needs a numeric dtype and a description: the description is the feature's
    definition in the prompt. ``source`` defaults to ``<data_dir>/<name>.parquet``.
    """
    tags = {ROLE_TAG: "user_features", ORDER_TAG: str(order)}
    return _view(name, user, list(schema), data_dir, description, tags, source, owner=owner)


def tag_user_views(*views: Any) -> None:
    """Give existing FeatureViews the ``user_features`` role, ordered as passed (for repos defined elsewhere)."""
    for order, view in enumerate(views, start=1):
        view.tags.update({ROLE_TAG: "user_features", ORDER_TAG: str(order)})


def tag_ad_content(view: Any) -> None:
    """Give an existing FeatureView the ``ad_content`` role (it needs the fields of AD_CONTENT_FIELDS)."""
    view.tags[ROLE_TAG] = "ad_content"


def ad_content_view(
    ad: Any,
    *,
    data_dir: str | Path,
    name: str = "ad_content",
    extra_fields: Sequence[Any] = (),
    description: str = "Creative content of each ad.",
    source: Any = None,
) -> Any:
    """The ad content view (role ``ad_content``): title, caption, image URI, launch date, status, ``extra_fields``."""
    return _view(
        name, ad, [*fields(AD_CONTENT_FIELDS), *extra_fields], data_dir, description, {ROLE_TAG: "ad_content"}, source
    )


def weight_views(
    ad: Any,
    *,
    data_dir: str | Path,
    warm_name: str = "warm_ad_weights",
    generated_name: str = "generated_ad_weights",
    warm_description: str = WARM_DESCRIPTION,
    generated_description: str = GENERATED_DESCRIPTION,
) -> tuple[Any, Any]:
    """The (warm, generated) per-ad weight views the plugin writes, sources under ``data_dir``."""
    warm = _view(warm_name, ad, fields(WARM_FIELDS), data_dir, warm_description, {ROLE_TAG: "warm_weights"})
    generated = _view(
        generated_name, ad, fields(GENERATED_FIELDS), data_dir, generated_description, {ROLE_TAG: "generated_weights"}
    )
    return warm, generated


def user_priors_view(
    user: Any, *, data_dir: str | Path, name: str = "user_llm_priors", description: str = USER_PRIORS_DESCRIPTION
) -> Any:
    """The view ``llmhyper priors`` writes (role ``user_priors``): predicted next advertisers per user."""
    return _view(name, user, fields(USER_PRIORS_FIELDS), data_dir, description, {ROLE_TAG: "user_priors"})


def impressions_view(
    user: Any,
    ad: Any,
    *,
    data_dir: str | Path,
    name: str = "ad_impressions",
    user_split: bool = True,
    description: str = "One row per ad shown to a user (event_timestamp is when it was shown).",
    source: Any = None,
) -> Any:
    """The impressions train-warm and evaluation read (role ``impressions``; offline only).

    Rows: user_id, ad_id, clicked (0/1), event_timestamp and, with ``user_split``, the user's
    train/test side. ``source`` defaults to ``<data_dir>/impressions.parquet``.
    """
    from feast import FeatureView

    specs = IMPRESSIONS_FIELDS if user_split else IMPRESSIONS_FIELDS[:1]
    return FeatureView(
        name=name,
        entities=[user, ad],
        ttl=TTL,
        schema=fields(specs),
        source=source if source is not None else parquet_source("impressions", data_dir),
        online=False,  # read offline only (training, evaluation); nothing serves it
        description=description,
        tags={ROLE_TAG: "impressions"},
    )


def ranking_service(
    user_views: Sequence[Any],
    generated: Any,
    *,
    name: str = "ranking",
    description: str = "User features and generated ad weights for ranking cold ads.",
) -> Any:
    """The FeatureService ranking reads: every user feature view plus the generated weights' serving columns."""
    from feast import FeatureService

    return FeatureService(name=name, features=[*user_views, generated[list(RANKING_COLUMNS)]], description=description)


class PluginViews(NamedTuple):
    """The plugin's views of a repo; unpack it into module-level names so that ``feast apply`` sees them."""

    warm: Any
    generated: Any
    ranking: Any


def llmhyper_views(
    ad: Any,
    *,
    data_dir: str | Path,
    user_views: Sequence[Any],
    warm_description: str = WARM_DESCRIPTION,
    generated_description: str = GENERATED_DESCRIPTION,
    ranking_description: str = "User features and generated ad weights for ranking cold ads.",
) -> PluginViews:
    """The warm and generated weight views and the ranking FeatureService over ``user_views``.

    ``feast apply`` only registers module-level names, so unpack the result::

        warm_ad_weights, generated_ad_weights, ranking = llmhyper_views(ad, data_dir=DATA, user_views=[...])
    """
    warm, generated = weight_views(
        ad, data_dir=data_dir, warm_description=warm_description, generated_description=generated_description
    )
    return PluginViews(warm, generated, ranking_service(user_views, generated, description=ranking_description))
