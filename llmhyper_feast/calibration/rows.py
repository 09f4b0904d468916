"""From generation-log rows to calibrated rows of the generated weights view.

Each row is normalised and calibrated (intercept so the mean predicted CTR over real users
hits the target alpha); an answer that cannot be calibrated falls back to the prior, then to
LR_cold, and the reason is recorded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from llmhyper_feast.calibration.solve import Calibrated, calibrate, neighbour_alpha
from llmhyper_feast.config import CalibrationConfig
from llmhyper_feast.errors import CalibrationError, DataError
from llmhyper_feast.features import FeatureSchema
from llmhyper_feast.generation.staleness import weights_version
from llmhyper_feast.store.redact import redact
from llmhyper_feast.training.warm import LRCold


def _alpha(row: Any, calibration: CalibrationConfig, lr_cold: LRCold) -> float:
    ctrs, sims = np.asarray(row["neighbour_ctrs"], float), np.asarray(row["similarities"], float)
    if len(ctrs) == 0:
        return lr_cold.mean_ctr
    return neighbour_alpha(ctrs, sims, weighting=calibration.alpha_weighting)


def _result(cal: Calibrated, alpha: float, origin: str, reasons: list[str]) -> dict[str, Any]:
    return {
        "weights": cal.weights,
        "bias": cal.delta,
        "alpha": alpha,
        "delta": cal.delta,
        "norm": cal.norm,
        "origin": origin,
        "reason": "; ".join(r for r in reasons if r),
    }


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
    origin, reasons = row["origin"], [row["fallback_reason"]] if row["fallback_reason"] else []
    try:
        alpha = _alpha(row, calibration, lr_cold)
    except CalibrationError as exc:
        alpha, origin = lr_cold.mean_ctr, "fallback"
        reasons.append(f"alpha: {exc}")
    candidates = [(np.asarray(row["weights"], float), origin), (np.asarray(row["prior_weights"], float), "fallback")]
    for theta, src in candidates:
        try:
            return _result(calibrate(theta, users, alpha, **kwargs), alpha, src, reasons)
        except CalibrationError as exc:
            reasons.append(f"{src} weights: {exc}")
    # both the answer and the prior were unusable (e.g. zero vectors): serve LR_cold, calibrated to alpha
    cal = calibrate(lr_cold.weights, users, alpha, scale="unit")
    return _result(cal, alpha, "fallback", [*reasons, "served LR_cold"])


def generated_rows(
    log: pd.DataFrame,
    users: np.ndarray,
    schema: FeatureSchema,
    calibration: CalibrationConfig,
    lr_cold: LRCold,
    timestamp: datetime,
    decision: str = "no gate",
    blend: float = 1.0,
) -> pd.DataFrame:
    """Rows for the generated weights view, one per log row (all calibrated in memory first).

    ``blend`` < 1 mixes LLM weights with the kNN prior: ``blend * llm + (1 - blend) * prior``.
    """
    users = np.asarray(users, np.float64)
    if not np.isfinite(users).all():
        raise CalibrationError(
            "The calibration users hold NaN or inf feature values. Read them with "
            "store.feast_adapter.read_user_matrix, which imputes them with the feature's finite mean."
        )
    rows = []
    for _, r in log.iterrows():
        if blend != 1.0 and r["origin"] == "llm":
            r = r.copy()
            r["weights"] = blend * np.asarray(r["weights"], float) + (1 - blend) * np.asarray(r["prior_weights"], float)
        if r["feature_hash"] != schema.hash:
            raise DataError(
                f"Log row for {r['ad_id']} was generated for feature hash {r['feature_hash']}, "
                f"but the registry now has {schema.hash}; regenerate it (llmhyper materialize)."
            )
        cal = calibrate_row(r, users, calibration, lr_cold)
        rows.append(
            {
                "ad_id": r["ad_id"],
                "weights": np.asarray(cal["weights"], np.float32),
                "bias": np.float32(cal["bias"]),
                "alpha": np.float32(cal["alpha"]),
                "delta": np.float32(cal["delta"]),
                "norm": np.float32(cal["norm"]),
                "llm_model": r["llm_model"],
                "prompt_hash": r["prompt_hash"],
                "prompt_version": r["prompt_version"],
                "feature_hash": r["feature_hash"],
                "weights_version": weights_version(r, calibration),
                "samples": int(r["samples"]),
                "origin": cal["origin"],
                "reason": redact(cal["reason"])[:1000],
                "decision": decision,
                "generated_at": r["generated_at"],
                "event_timestamp": timestamp,
            }
        )
    return pd.DataFrame(rows)
