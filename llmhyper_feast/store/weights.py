"""Which model serves each ad: warm (trained on clicks) > generated (calibrated) > LR_cold.

:func:`resolve_weights` is the one place that decides it; export, ranking and evaluation
all read through it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmhyper_feast.features import AdModels, FeatureSchema
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.training.warm import LRCold

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["next_timestamp", "resolve_weights"]


def next_timestamp(store: FeatureStore, view: str) -> datetime:
    """A timestamp strictly newer than every row of ``view`` (Redis ignores writes that are not)."""
    now = datetime.now(UTC)
    latest = fa.read_latest(store, view)
    if len(latest):
        newest = pd.Timestamp(latest["event_timestamp"].max()).to_pydatetime()
        if newest.tzinfo is None:
            newest = newest.replace(tzinfo=UTC)
        now = max(now, newest + timedelta(milliseconds=1))
    return now


def resolve_weights(
    store: FeatureStore, schema: FeatureSchema, lr_cold: LRCold, ad_ids: list[str] | None = None
) -> AdModels:
    """Warm > generated > LR_cold for ``ad_ids`` (default: every ad), using only rows made for the current features.

    Warm rows must match the feature names and order; generated rows the full definitions
    (a changed description changes the prompt, so those weights are stale).
    """
    warm = fa.read_latest(store, fa.view_for_role(store, fa.WARM_ROLE).name)
    gen = fa.read_latest(store, fa.view_for_role(store, fa.GENERATED_ROLE).name)
    warm = warm[warm["feature_hash"] == schema.names_hash].set_index("ad_id") if len(warm) else warm
    gen = gen[gen["feature_hash"] == schema.hash].set_index("ad_id") if len(gen) else gen
    if ad_ids is None:
        _, ads = fa.read_ads(store)
        ad_ids = ads["ad_id"].tolist()
    w = np.zeros((len(ad_ids), len(schema)), np.float32)
    b = np.zeros(len(ad_ids), np.float32)
    sources: list[str] = []
    meta: list[dict[str, Any]] = []
    cold_version = (
        "lr_cold:"
        + hashlib.sha256(
            np.asarray(lr_cold.weights, np.float64).tobytes() + np.float64(lr_cold.bias).tobytes()
        ).hexdigest()[:12]
    )
    for i, ad_id in enumerate(ad_ids):
        if len(warm) and ad_id in warm.index:
            r = warm.loc[ad_id]
            w[i], b[i] = r["weights"], r["bias"]
            sources.append("warm")
            meta.append({"trained_at": str(r["trained_at"]), "weights_version": f"warm:{r['trained_at']}"})
        elif len(gen) and ad_id in gen.index:
            r = gen.loc[ad_id]
            w[i], b[i] = r["weights"], r["bias"]
            sources.append("generated")
            meta.append(
                {
                    "alpha": float(r["alpha"]),
                    "delta": float(r["delta"]),
                    "model": r["llm_model"],
                    "prompt_hash": r["prompt_hash"],
                    "weights_version": r["weights_version"],
                    "origin": r["origin"],
                }
            )
        else:
            w[i], b[i] = lr_cold.weights, lr_cold.bias
            sources.append("lr_cold")
            meta.append({"weights_version": cold_version})
    return AdModels(list(ad_ids), w, b, meta, sources, np.ones(len(ad_ids), bool))
