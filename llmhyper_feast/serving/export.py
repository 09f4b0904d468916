"""Export the weights every ad is served with (warm > generated > LR_cold) as ONNX models.

Glue between :func:`llmhyper_feast.store.weights.resolve_weights` and the ``exporters`` package: one
all-ads model plus, optionally, per-ad models, with a ``manifest.json`` recording the
feature names, the feature definitions hash and each ad's provenance.

Content rules (``llmhyper_policy.yaml``, see :mod:`llmhyper_feast.generation.policy`) become
per-ad exclusions inside the all-ads model: a generated ad uses the ``policy_tags`` stored
with its weights in Feast; warm and LR_cold ads are tagged from their content at export.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from exporters import AdModelSet, ExporterError, Manifest, export_models, read_manifest
from exporters.errors import ManifestError
from exporters.model_set import ad_digest
from llmhyper_feast import __version__
from llmhyper_feast.errors import DataError, ExportError
from llmhyper_feast.features import AdModels
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.lock import locked
from llmhyper_feast.store.weights import resolve_weights

__all__ = ["PRODUCER_NAME", "build_model_set", "export_repo"]

PRODUCER_NAME = "llmhyper-feast"
# Keys copied from resolve_weights' per-ad meta into the manifest (when present).
META_KEYS = ("alpha", "delta", "model", "prompt_hash", "weights_version", "origin", "trained_at")
logger = logging.getLogger(__name__)


def _ad_meta(source: str, meta: dict[str, Any]) -> dict[str, str | float]:
    out: dict[str, str | float] = {"source": source}
    for key in META_KEYS:
        value = meta.get(key)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue  # JSON has no NaN, and an absent value says more than a placeholder
        out[key] = value if isinstance(value, (str, int, float)) else str(value)
    return out


def _policy_tags(store: Any, repo: str | Path, schema: Any, ads: list[Any], resolved: AdModels) -> Any:
    """(policy, per-ad tags): stored tags for generated ads, :func:`tag_ad` on the content for the others."""
    import json

    from llmhyper_feast.generation.policy import load_policy, tag_ad

    policy = load_policy(repo, schema.names)
    gen = fa.read_latest(store, fa.view_for_role(store, fa.GENERATED_ROLE).name)
    stored = {}
    if len(gen) and "policy_tags" in gen:
        for ad_id, version, tags in zip(gen["ad_id"], gen["weights_version"], gen["policy_tags"], strict=True):
            if isinstance(tags, str) and tags:
                stored[ad_id] = (version, tuple(json.loads(tags)))
    by_id = {a.ad_id: a for a in ads}
    out = []
    for ad_id, source, meta in zip(resolved.ad_ids, resolved.source, resolved.meta, strict=True):
        version, tags = stored.get(ad_id, (None, None))
        if source == "generated" and tags is not None and version == meta.get("weights_version"):
            out.append(tags)
        else:
            out.append(tag_ad(by_id[ad_id], policy))
    return policy, out


def build_model_set(repo: str | Path) -> tuple[AdModelSet, AdModels]:
    """Resolve the served weights of every ad in the ad content view into an AdModelSet."""
    from llmhyper_feast.generation.policy import exclusions
    from llmhyper_feast.jobs.train import load_lr_cold

    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    lr_cold = load_lr_cold(repo)
    if lr_cold.feature_hash != schema.names_hash:
        raise DataError(
            f"The LR_cold baseline was fitted for feature names hash {lr_cold.feature_hash}, but the "
            f"registry's user features now hash to {schema.names_hash}. Run `llmhyper train-warm` "
            "to refit it, then export again."
        )
    ad_list, ads = fa.read_ads(store)
    if ads.empty:
        raise DataError(
            "The ad content view holds no ads, so there is nothing to export. Load ads into its "
            "source (and run `feast materialize`) first."
        )
    resolved = resolve_weights(store, schema, lr_cold, ads["ad_id"].astype(str).tolist())
    policy, tags = _policy_tags(store, repo, schema, ad_list, resolved)
    ad_meta = [_ad_meta(s, m) for s, m in zip(resolved.source, resolved.meta, strict=True)]
    for meta, ad_tags in zip(ad_meta, tags, strict=True):
        if ad_tags:
            meta["policy_tags"] = ",".join(ad_tags)
    models = AdModelSet(
        feature_names=schema.names,
        feature_hash=schema.hash,
        ad_ids=resolved.ad_ids,
        weights=resolved.weights,
        bias=resolved.bias,
        ad_meta=ad_meta,
        producer_name=PRODUCER_NAME,
        producer_version=__version__,
        exclusions=exclusions(policy, tags, schema.names) if policy.rules else None,
    )
    return models, resolved


def _changed_ads(models: AdModelSet, previous: Manifest, layout: str, per_ad: bool) -> list[str] | None:
    """Ads whose weights, bias or meta (hence weights_version) differ from ``previous``.

    None when the previous export cannot be reused (different layout, variants or features).
    """
    same = (
        previous.layout == layout
        and dict(previous.variants) == {"all_ads": True, "per_ad": per_ad, "core_ops": per_ad}
        and list(previous.feature_names) == list(models.feature_names)
        and previous.feature_hash == models.feature_hash
    )
    if not same:
        return None
    return [
        a
        for i, a in enumerate(models.ad_ids)
        if a not in previous.ads or previous.ads[a].digest != ad_digest(models, i)
    ]


@locked("export")
def export_repo(
    repo: str | Path,
    out_dir: str | Path,
    *,
    layout: str = "flat",
    top_k: int | None = None,
    only_changed: bool = False,
    per_ad: bool = True,
) -> Manifest:
    """Export every ad's served model under ``out_dir`` and return the manifest written there.

    Always writes the all-ads model (``user_features`` [batch, n] -> ``ctr`` [batch, M],
    ranked in-graph when ``top_k`` is set); ``per_ad`` adds two per-ad models per ad
    (skl2onnx LinearClassifier and core ops). ``only_changed`` rebuilds only the per-ad
    models of ads that are new or whose weights/metadata changed since the export already
    in ``out_dir``; without a compatible previous export it does a full export. Same inputs
    give byte-identical files. ``manifest.written`` lists the files this call wrote.
    Holds the repo lock; first finishes any Feast write a killed run left half done.
    """
    fa.finish_pending_writes(fa.open_store(repo))
    models, _ = build_model_set(repo)
    out = Path(out_dir)
    only_ads: list[str] | None = None
    if only_changed:
        try:
            previous: Manifest | None = read_manifest(out)
        except ManifestError as exc:
            logger.info("No reusable export in %s (%s); exporting everything.", out, exc)
            previous = None
        if previous is not None:
            only_ads = _changed_ads(models, previous, layout, per_ad)
            if only_ads is None:
                logger.info("The export in %s has another layout, variants or features; exporting everything.", out)
    kwargs: dict[str, Any] = {"per_ad": per_ad, "core_ops": per_ad, "all_ads": True, "top_k": top_k, "layout": layout}
    try:
        try:
            return export_models(models, out, only_ads=only_ads, **kwargs)
        except ManifestError as exc:
            if only_ads is None:
                raise
            # a kept per-ad file was edited or deleted since the last export: rebuild them all
            logger.warning("Cannot reuse the export in %s (%s); exporting everything.", out, exc)
            return export_models(models, out, **kwargs)
    except ExporterError as exc:
        raise ExportError(f"Exporting {models.n_ads} ads to {out} failed: {exc}") from exc
