"""Job: generate weights for the cold ads whose inputs changed (LLM, or the prior alone)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmhyper_feast.config import Settings
from llmhyper_feast.errors import ConfigError, DataError
from llmhyper_feast.features import FeatureSchema, WarmAd
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.layout import RepoLayout
from llmhyper_feast.store.lock import locked

if TYPE_CHECKING:
    from feast import FeatureStore

    from llmhyper_feast.backends.llm.base import LLMBackend
    from llmhyper_feast.engine import Engine
    from llmhyper_feast.generation.priors import WeightPrior
    from llmhyper_feast.generation.retrieval import WarmIndex
    from llmhyper_feast.generation.runner import GenerationInputs
    from llmhyper_feast.generation.staleness import AdState


def load_warm_ads(store: FeatureStore, schema: FeatureSchema) -> dict[str, WarmAd]:
    """Warm ads (current feature names) with their content and trained weights, by ad id."""
    warm = fa.read_latest(store, fa.view_for_role(store, fa.WARM_ROLE).name)
    if warm.empty:
        return {}
    warm = warm[warm["feature_hash"] == schema.names_hash]
    ads, _ = fa.read_ads(store)
    by_id = {a.ad_id: a for a in ads}
    return {
        r.ad_id: WarmAd(np.asarray(r.weights, np.float64), float(r.bias), ad=by_id[r.ad_id], mean_ctr=float(r.mean_ctr))
        for r in warm.itertuples()
        if r.ad_id in by_id
    }


def make_backend(repo: str | Path, settings: Settings) -> LLMBackend | None:
    """The configured LLM backend with the repo's answer cache, or None for ``llm.name: none``."""
    from llmhyper_feast.backends.llm import NO_LLM, get_backend
    from llmhyper_feast.generation.cache import AnswerCache

    if settings.llm.name == NO_LLM:
        return None
    return get_backend(settings.llm.name, settings.llm.options, cache=AnswerCache(RepoLayout.of(repo).llm_cache))


def source_id(repo: str | Path, settings: Settings) -> str:
    """What writes the weights under ``settings``: ``<backend>:<model>`` or ``prior:<name>``."""
    from llmhyper_feast.generation.priors import get_prior
    from llmhyper_feast.generation.runner import backend_id

    backend = make_backend(repo, settings)
    return (
        backend_id(backend) if backend is not None else get_prior(settings.prior.name, settings.prior.options).source_id
    )


def prior_source_id(settings: Settings) -> str:
    """The configured prior's source id (``prior:<name>...``): what the deployment gate blends with."""
    from llmhyper_feast.generation.priors import get_prior

    return get_prior(settings.prior.name, settings.prior.options).source_id


def fit_prior(prior: WeightPrior, warm: dict[str, WarmAd], index: WarmIndex, embedder: Any, settings: Settings) -> None:
    """Fit ``prior`` on the warm ads (once per run); refuse a learned alpha the prior cannot give."""
    from llmhyper_feast.generation.priors import WeightPrior

    if settings.calibration.alpha_source == "learned" and type(prior).estimate_alpha is WeightPrior.estimate_alpha:
        raise ConfigError(
            f"calibration.alpha_source: learned needs a prior that estimates the mean CTR, and prior "
            f"'{prior.name}' does not; set prior.name: learned (or blend), or calibration.alpha_source: neighbours."
        )
    prior.fit(warm, index.ids, index.embeddings, embedder)


def build_index(
    repo: str | Path, settings: Settings, *, progress: bool = True, engine: Engine | None = None
) -> tuple[FeatureStore, GenerationInputs]:
    """Embed the warm ads (reusing the saved index when nothing changed) and return generation inputs.

    LLM work runs on ``engine`` (default: the one ``settings.engine`` names, started on first use).
    """
    import functools

    from llmhyper_feast.backends.embedders import get_embedder
    from llmhyper_feast.engine import get_engine
    from llmhyper_feast.generation.priors import get_prior
    from llmhyper_feast.generation.prompts import ImagePolicy
    from llmhyper_feast.generation.retrieval import WarmIndex
    from llmhyper_feast.generation.runner import GenerationInputs

    layout = RepoLayout.of(repo)
    store = fa.open_store(layout.root)
    schema = fa.read_feature_schema(store)
    warm = load_warm_ads(store, schema)
    embedder = get_embedder(settings.embedder.name, settings.embedder.options)
    prior = get_prior(settings.prior.name, settings.prior.options)
    index = WarmIndex.load_or_build(layout.warm_index, [w.ad for w in warm.values()], embedder, progress=progress)
    fit_prior(prior, warm, index, embedder, settings)
    images = ImagePolicy.for_repo(
        layout.root,
        settings.inputs.image_roots,
        max_bytes=settings.inputs.max_image_bytes,
        allow_remote=settings.inputs.allow_remote_images,
    )
    return store, GenerationInputs(
        schema,
        warm,
        index,
        embedder,
        make_backend(layout.root, settings),
        settings.generation,
        prior,
        images,
        engine=engine or get_engine(settings),
        backend_factory=functools.partial(make_backend, layout.root, settings),
    )


def assess_ads(
    repo: str | Path,
    settings: Settings,
    store: FeatureStore,
    inputs: GenerationInputs | None = None,
    schema: FeatureSchema | None = None,
) -> tuple[pd.DataFrame, dict[str, AdState]]:
    """Every ad's state under ``settings`` (see :func:`llmhyper_feast.generation.staleness.assess`)."""
    from llmhyper_feast.generation.policy import load_policy
    from llmhyper_feast.generation.runner import read_log
    from llmhyper_feast.generation.staleness import assess

    schema = schema or fa.read_feature_schema(store)
    ads, ads_df = fa.read_ads(store)
    warm_ids = set(inputs.warm) if inputs is not None else set(load_warm_ads(store, schema))
    sid = inputs.source_id if inputs is not None else source_id(repo, settings)
    states = assess(
        ads,
        warm_ids=warm_ids,
        log=read_log(RepoLayout.of(repo).generation_log, latest=False),
        stored=fa.read_latest(store, fa.view_for_role(store, fa.GENERATED_ROLE).name),
        schema=schema,
        source_id=sid,
        generation=settings.generation,
        calibration=settings.calibration,
        policy=load_policy(repo, schema.names),
    )
    return ads_df, states


@locked("generate")
def generate(
    repo: str | Path, settings: Settings, *, ad_ids: list[str] | None = None, force: bool = False, progress: bool = True
) -> pd.DataFrame:
    """Generate weights for active cold ads that need it (every one of ``ad_ids`` with ``force``)."""
    from llmhyper_feast.engine import get_engine

    with get_engine(settings) as engine:  # connect first: an unreachable cluster fails before any write
        return _generate(repo, settings, engine, ad_ids, force, progress)


def _generate(
    repo: str | Path, settings: Settings, engine: Engine, ad_ids: list[str] | None, force: bool, progress: bool
) -> pd.DataFrame:
    from llmhyper_feast.generation.runner import generate_rows, read_log
    from llmhyper_feast.generation.staleness import needs_generation, usable_generations

    layout = RepoLayout.of(repo)
    store, inputs = build_index(layout.root, settings, progress=progress, engine=engine)
    ads, _ = fa.read_ads(store, status=None if ad_ids else "active")
    if ad_ids:
        known = {a.ad_id for a in ads}
        unknown = [a for a in ad_ids if a not in known]
        if unknown:
            raise DataError(f"Unknown ad id(s) {unknown[:5]}: they are not in the ad content view.")
        ads = [a for a in ads if a.ad_id in set(ad_ids)]
    else:  # ads that warmed up are served by their trained model
        ads = [a for a in ads if a.ad_id not in inputs.warm]
    if not force:
        log = read_log(layout.generation_log, latest=False)
        usable = usable_generations(ads, log, inputs.schema, inputs.source_id, settings.generation)
        ads = [a for a in ads if needs_generation(usable[a.ad_id])]
    if not ads:
        return pd.DataFrame()
    return generate_rows(ads, inputs, log_dir=layout.generation_log, progress=progress)
