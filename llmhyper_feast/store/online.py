"""Online lookups through the Feast SDK: user feature vectors and stored ad weights.

Every lookup raises :class:`~llmhyper_feast.errors.StoreUnavailableError` (one line naming
``llmhyper repair``) when the online store is missing, corrupt or unreachable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from llmhyper_feast.features import AdModels, FeatureSchema
from llmhyper_feast.store import feast_adapter as fa

if TYPE_CHECKING:
    from feast import FeatureStore

AD_META_FIELDS = (
    "bias",
    "alpha",
    "delta",
    "norm",
    "llm_model",
    "prompt_hash",
    "prompt_version",
    "feature_hash",
    "weights_version",
    "samples",
    "origin",
    "reason",
    "decision",
    "generated_at",
)


@dataclass
class UserFeatures:
    """Feature rows in schema order; ``found[i]`` is False when user i has no online row (row is NaN)."""

    user_ids: list[str]
    values: np.ndarray
    found: np.ndarray
    feature_names: list[str]


def get_user_features(
    store: FeatureStore, user_ids: Sequence[str], schema: FeatureSchema | None = None
) -> UserFeatures:
    """The users' feature vectors (float32, registry order) from the online store."""
    schema = schema or fa.read_feature_schema(store)
    refs = [f"{f.view}:{f.name}" for f in schema.features]
    data = fa.get_online(store, refs, [{"user_id": u} for u in user_ids])
    cols = [np.asarray([np.nan if v is None else v for v in data[name]], np.float32) for name in schema.names]
    values = np.stack(cols, axis=1) if cols else np.zeros((len(user_ids), 0), np.float32)
    found = ~np.all(np.isnan(values), axis=1)
    return UserFeatures(list(user_ids), values, found, schema.names)


def get_ad_weights(store: FeatureStore, ad_ids: Sequence[str], schema: FeatureSchema | None = None) -> AdModels:
    """Generated weights (float32, registry order), bias and metadata of ``ad_ids`` from the online store."""
    schema = schema or fa.read_feature_schema(store)
    view = fa.view_for_role(store, fa.GENERATED_ROLE).name
    data = fa.get_online(
        store, [f"{view}:weights", *(f"{view}:{m}" for m in AD_META_FIELDS)], [{"ad_id": a} for a in ad_ids]
    )
    n = len(schema)
    weights = np.full((len(ad_ids), n), np.nan, np.float32)
    found = np.zeros(len(ad_ids), bool)
    for i, w in enumerate(data["weights"]):
        if w is not None and len(w) == n:
            weights[i], found[i] = w, True
    bias = np.asarray([np.nan if v is None else v for v in data["bias"]], np.float32)
    meta = [{m: data[m][i] for m in AD_META_FIELDS} for i in range(len(ad_ids))]
    return AdModels(list(ad_ids), weights, bias, meta, ["generated" if f else "" for f in found], found)


PROBE_ENTITY = "__llmhyper_probe__"  # a key no real entity has: the lookup reads the tables, finds nothing


def check_online(store: FeatureStore, refs: Sequence[str], join_key: str) -> None:
    """Raise StoreUnavailableError unless the online tables behind ``refs`` can be read."""
    fa.get_online(store, list(refs), [{join_key: PROBE_ENTITY}])
