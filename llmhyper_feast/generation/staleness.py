"""Whether an ad's generated weights are current: the one rule generate, materialize and status share.

Two hashes identify work. The *input hash* covers everything that decides an ad's generated
weights (content, feature definitions, prompt version, model, generation options); the
*weights version* identifies one calibrated vector in the generated view (the log row it
came from plus the calibration settings).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from llmhyper_feast.config import CalibrationConfig, GenerationConfig
from llmhyper_feast.features import Ad, FeatureSchema
from llmhyper_feast.generation.policy import Policy, tag_ad
from llmhyper_feast.generation.prompts import PROMPT_VERSION

__all__ = [
    "AdState",
    "assess",
    "input_hash",
    "needs_generation",
    "usable_generations",
    "usable_log_rows",
    "weights_version",
]

State = Literal["warm", "cold-current", "cold-stale", "cold-missing"]


def input_hash(ad: Ad, schema: FeatureSchema, source_id: str, config: GenerationConfig) -> str:
    """Hash of what decides an ad's generated weights: content, features, prompt, model, options."""
    opts = config.model_dump(exclude={"concurrency", "allow_fallback"})
    if opts.get("judge") == "off":  # so logs written before the judge existed stay current
        opts.pop("judge")
    payload = json.dumps(
        [ad.ad_id, ad.title, ad.caption, ad.image_uri, schema.hash, PROMPT_VERSION, source_id, opts], sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def weights_version(log_row: Mapping[str, Any], calibration: CalibrationConfig) -> str:
    """Identifies one stored weight vector: the generation run and inputs plus calibration settings."""
    payload = json.dumps([log_row["input_hash"], log_row["run_id"], calibration.model_dump()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AdState:
    """An ad's state and what the next run must do for it."""

    ad_id: str
    state: State
    reason: str
    needs_generation: bool  # no usable generation for the current inputs
    log_row: dict[str, Any] | None  # the generation to serve, when one exists
    version: str = ""  # weights version of ``log_row`` under the current calibration
    held: bool = False  # stored LLM weights kept although the current generation only holds the prior

    @property
    def needs_write(self) -> bool:
        return self.state in ("cold-missing", "cold-stale") and self.log_row is not None and not self.held


def _stored_tags(row: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The policy tags a stored row holds (None: a row written before tags existed)."""
    value = row.get("policy_tags")
    return tuple(json.loads(value)) if isinstance(value, str) and value else None


def usable_log_rows(log: pd.DataFrame, current: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Per ad, the newest log row made for its current input hash.

    A row that hit a backend error (it holds the prior) is used only when no clean row exists
    for the same inputs, so an outage never replaces good LLM weights.
    """
    if log.empty:
        return {}
    rows = log[log["input_hash"].to_numpy() == log["ad_id"].map(current).to_numpy()]
    errors = rows["backend_error"].fillna(False).astype(bool) if "backend_error" in rows else False
    rows = rows.assign(_clean=~errors).sort_values(["_clean", "generated_at"], kind="stable")
    latest = rows.drop_duplicates("ad_id", keep="last").drop(columns="_clean")
    return {r["ad_id"]: r for r in latest.to_dict("records")}


def usable_generations(
    ads: Iterable[Ad], log: pd.DataFrame, schema: FeatureSchema, source_id: str, generation: GenerationConfig
) -> dict[str, dict[str, Any] | None]:
    """Per ad, the newest log row made for its current inputs (None when there is none)."""
    ads = list(ads)
    current = {a.ad_id: input_hash(a, schema, source_id, generation) for a in ads}
    usable = usable_log_rows(log, current)
    return {a.ad_id: usable.get(a.ad_id) for a in ads}


def needs_generation(row: Mapping[str, Any] | None) -> bool:
    """True when ``row`` (from :func:`usable_generations`) is missing or only holds a backend error."""
    return row is None or bool(row.get("backend_error", False))


def assess(
    ads: Iterable[Ad],
    *,
    warm_ids: set[str],
    log: pd.DataFrame,
    stored: pd.DataFrame,
    schema: FeatureSchema,
    source_id: str,
    generation: GenerationConfig,
    calibration: CalibrationConfig,
    policy: Policy | None = None,
) -> dict[str, AdState]:
    """The state of every ad, from the warm set, the generation log and the generated view's latest rows.

    With ``policy``, a stored row whose ``policy_tags`` differ from the ad's tags under it is stale
    (the content rules changed: the next materialize rewrites the row, the LLM is not asked again).
    """
    ads = list(ads)
    usable = usable_generations(ads, log, schema, source_id, generation)
    stored_by_ad = {r["ad_id"]: r for r in stored.to_dict("records")} if len(stored) else {}
    out: dict[str, AdState] = {}
    for ad in ads:
        if ad.ad_id in warm_ids:
            out[ad.ad_id] = AdState(ad.ad_id, "warm", "trained on clicks", False, None)
            continue
        row = usable[ad.ad_id]
        state: State
        errored = row is not None and bool(row.get("backend_error", False))
        version = weights_version(row, calibration) if row is not None else ""
        stored_row = stored_by_ad.get(ad.ad_id)
        if stored_row is None:
            state, why = "cold-missing", "no generated weights stored"
        elif stored_row["feature_hash"] != schema.hash:
            state, why = "cold-stale", f"feature definitions changed ({stored_row['feature_hash']} -> {schema.hash})"
        elif row is None:
            state, why = "cold-stale", "ad content, prompt, model or generation options changed"
        elif stored_row["weights_version"] != version:
            state, why = "cold-stale", "calibration settings or a newer generation not yet written"
        elif policy is not None and _stored_tags(stored_row) != tag_ad(ad, policy):
            state, why = "cold-stale", f"content rules changed (policy {policy.hash or 'none'})"
        else:
            state, why = "cold-current", f"{stored_row['origin']} weights from {stored_row['llm_model']}"
            if errored:
                why += " (backend error: the prior is served until a run reaches the backend)"
        held = (
            errored
            and state == "cold-stale"
            and stored_row is not None
            and stored_row.get("origin") == "llm"
            and not generation.allow_fallback
        )
        if held:
            why += (
                "; the backend failed, so the stored LLM weights stay until a run reaches it "
                "(--allow-fallback serves the prior instead)"
            )
        out[ad.ad_id] = AdState(ad.ad_id, state, why, needs_generation(row), row, version, held)
    return out
