"""From the generation log to serving-ready weights in Feast, plus status and weight resolution.

One function, ``resolve_weights``, decides which model an ad is served with:
warm (trained on its clicks) > generated (LLM, calibrated) > LR_cold (median baseline).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import feast_adapter as fa
from .calibration import calibrate, neighbour_alpha
from .config import CalibrationConfig
from .errors import CalibrationError, DataError
from .features import FeatureSchema
from .warm_training import LRCold

if TYPE_CHECKING:
    from feast import FeatureStore


def weights_version(log_row: Any, calibration: CalibrationConfig) -> str:
    """Identifies one stored weight vector: the generation run and inputs plus calibration settings."""
    payload = json.dumps([log_row["input_hash"], log_row["run_id"], calibration.model_dump()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _alpha(row: Any, calibration: CalibrationConfig, lr_cold: LRCold) -> float:
    ctrs, sims = np.asarray(row["neighbour_ctrs"], float), np.asarray(row["similarities"], float)
    if len(ctrs) == 0:
        return lr_cold.mean_ctr
    return neighbour_alpha(ctrs, sims, weighting=calibration.alpha_weighting)


def calibrate_row(row: Any, users: np.ndarray, calibration: CalibrationConfig, lr_cold: LRCold) -> dict[str, Any]:
    """Normalise and calibrate one log row; falls back to the prior, then LR_cold, recording why."""
    kwargs: dict[str, Any] = {"scale": calibration.scale}
    if calibration.scale == "neighbours":
        norms = np.asarray(row["neighbour_norms"], float)
        if len(norms) == 0:
            kwargs["scale"] = "unit"
        else:
            # normalise() wants neighbour weight vectors [k, n]; only their norms matter
            vectors = np.zeros((len(norms), len(row["weights"])))
            vectors[:, 0] = norms
            kwargs["neighbour_weights"] = vectors
            kwargs["similarities"] = np.asarray(row["similarities"], float)
    source, reasons = row["source"], [row["fallback_reason"]] if row["fallback_reason"] else []
    try:
        alpha = _alpha(row, calibration, lr_cold)
    except CalibrationError as exc:
        alpha, source = lr_cold.mean_ctr, "fallback"
        reasons.append(f"alpha: {exc}")
    candidates = [(np.asarray(row["weights"], float), source), (np.asarray(row["prior_weights"], float), "fallback")]
    for theta, src in candidates:
        try:
            cal = calibrate(theta, users, alpha, **kwargs)
            return {"weights": cal.weights, "bias": cal.delta, "alpha": alpha, "delta": cal.delta, "norm": cal.norm,
                    "source": src, "reason": "; ".join(r for r in reasons if r)}
        except CalibrationError as exc:
            reasons.append(f"{src} weights: {exc}")
    # both the answer and the prior were unusable (e.g. zero vectors): serve LR_cold, calibrated to alpha
    cal = calibrate(lr_cold.weights, users, alpha, scale="unit")
    return {"weights": cal.weights, "bias": cal.delta, "alpha": alpha, "delta": cal.delta, "norm": cal.norm,
            "source": "fallback", "reason": "; ".join(reasons + ["served LR_cold"])}


def next_timestamp(store: "FeatureStore", view: str) -> datetime:
    """A timestamp strictly newer than every row of ``view`` (Redis ignores writes that are not)."""
    now = datetime.now(timezone.utc)
    latest = fa.read_latest(store, view)
    if len(latest):
        newest = pd.Timestamp(latest["event_timestamp"].max()).to_pydatetime()
        if newest.tzinfo is None:
            newest = newest.replace(tzinfo=timezone.utc)
        now = max(now, newest + timedelta(milliseconds=1))
    return now


def generated_rows(log: pd.DataFrame, users: np.ndarray, schema: FeatureSchema, calibration: CalibrationConfig,
                   lr_cold: LRCold, timestamp: datetime, decision: str = "no gate", blend: float = 1.0) -> pd.DataFrame:
    """Rows for the generated weights view, one per log row (all calibrated in memory first).

    ``blend`` < 1 mixes LLM weights with the kNN prior: ``blend * llm + (1 - blend) * prior``.
    """
    rows = []
    for _, r in log.iterrows():
        if blend != 1.0 and r["source"] == "llm":
            r = r.copy()
            r["weights"] = blend * np.asarray(r["weights"], float) + (1 - blend) * np.asarray(r["prior_weights"], float)
        if r["feature_hash"] != schema.hash:
            raise DataError(f"Log row for {r['ad_id']} was generated for feature hash {r['feature_hash']}, "
                            f"but the registry now has {schema.hash}; regenerate it (llmhyper materialize).")
        cal = calibrate_row(r, users, calibration, lr_cold)
        rows.append({
            "ad_id": r["ad_id"], "weights": np.asarray(cal["weights"], np.float32), "bias": np.float32(cal["bias"]),
            "alpha": np.float32(cal["alpha"]), "delta": np.float32(cal["delta"]), "norm": np.float32(cal["norm"]),
            "llm_model": r["llm_model"], "prompt_hash": r["prompt_hash"], "prompt_version": r["prompt_version"],
            "feature_hash": r["feature_hash"], "input_hash": weights_version(r, calibration),
            "samples": int(r["samples"]), "source": cal["source"], "reason": cal["reason"][:1000], "decision": decision,
            "generated_at": r["generated_at"],
            "event_timestamp": timestamp,
        })
    return pd.DataFrame(rows)


@dataclass
class ResolvedWeights:
    """The model each ad is served with, rows in ``ad_ids`` order, weights in schema order."""

    ad_ids: list[str]
    weights: np.ndarray
    bias: np.ndarray
    source: list[str]
    meta: list[dict[str, Any]] = field(default_factory=list)


def resolve_weights(store: "FeatureStore", schema: FeatureSchema, lr_cold: LRCold,
                    ad_ids: list[str] | None = None) -> ResolvedWeights:
    """Warm > generated > LR_cold, using only rows made for the current features.

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
    sources, meta = [], []
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
            meta.append({"alpha": float(r["alpha"]), "delta": float(r["delta"]), "model": r["llm_model"],
                         "prompt_hash": r["prompt_hash"], "weights_version": r["input_hash"], "origin": r["source"]})
        else:
            w[i], b[i] = lr_cold.weights, lr_cold.bias
            sources.append("lr_cold")
            digest = hashlib.sha256(np.asarray(lr_cold.weights, np.float64).tobytes()
                                    + np.float64(lr_cold.bias).tobytes()).hexdigest()[:12]
            meta.append({"weights_version": f"lr_cold:{digest}"})
    return ResolvedWeights(list(ad_ids), w, b, sources, meta)
