"""From generation-log rows to calibrated rows of the generated weights view.

Each row is normalised and calibrated (intercept so the mean predicted CTR over real users
hits the target alpha); an answer that cannot be calibrated falls back to the prior, then to
LR_cold, and the reason is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmhyper_feast.calibration.solve import Calibrated, calibrate, neighbour_alpha
from llmhyper_feast.config import CalibrationConfig
from llmhyper_feast.errors import CalibrationError, DataError
from llmhyper_feast.features import FeatureSchema
from llmhyper_feast.generation.staleness import weights_version
from llmhyper_feast.store.redact import redact
from llmhyper_feast.training.warm import LRCold

if TYPE_CHECKING:
    from llmhyper_feast.features import Ad
    from llmhyper_feast.generation.policy import Policy


def _learned_alpha(row: Any) -> float | None:
    """The prior's mean-CTR estimate logged with the row, None when absent or unusable."""
    try:
        est = float(row.get("prior_alpha", float("nan")))
    except (TypeError, ValueError):
        return None
    return est if 0.0 < est < 1.0 else None


def _alpha(row: Any, calibration: CalibrationConfig, lr_cold: LRCold) -> tuple[float, str]:
    """Target mean CTR under ``calibration.alpha_source``, and a note when the learned one was unavailable."""
    note = ""
    if calibration.alpha_source == "learned":
        est = _learned_alpha(row)
        if est is not None:
            return est, ""
        note = (
            f"alpha: no learned mean-CTR estimate in the log row (prior '{row.get('prior', '?')}'), used the "
            "neighbours'; regenerate with prior.name learned or blend (llmhyper materialize --force)"
        )
    ctrs, sims = np.asarray(row["neighbour_ctrs"], float), np.asarray(row["similarities"], float)
    if len(ctrs) == 0:
        return lr_cold.mean_ctr, note
    return neighbour_alpha(ctrs, sims, weighting=calibration.alpha_weighting), note


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
        alpha, note = _alpha(row, calibration, lr_cold)
        reasons.append(note)
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


def with_policy_tags(rows: pd.DataFrame, ads: Iterable[Ad], policy: Policy) -> pd.DataFrame:
    """``rows`` with the ``policy_tags`` column: per ad, the JSON list of content rules it triggers."""
    from llmhyper_feast.generation.policy import tag_ad

    by_id = {a.ad_id: a for a in ads}
    missing = sorted(set(rows["ad_id"]) - set(by_id)) if len(rows) else []
    if missing:
        raise DataError(f"Rows for ads {missing[:5]} have no ad content to tag; load their content first.")
    tags = [json.dumps(list(tag_ad(by_id[a], policy))) for a in rows["ad_id"]]
    return rows.assign(policy_tags=tags)
