"""Repo-level jobs that the CLI runs: demo data, warm training (later: generate, materialize...)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import feast_adapter as fa
from .config import Settings
from .demo_world import IMPRESSIONS_FILE, WorldSize, build_world
from .errors import DataError
from .warm_training import LRCold, lr_cold, train_warm_models

LR_COLD_FILE = "lr_cold.json"


def data_dir(repo: str | Path) -> Path:
    return fa.check_repo(repo) / "data"


def make_demo_data(repo: str | Path, size: WorldSize, *, fresh: bool = True, progress: bool = True) -> dict[str, int]:
    """Build the demo world under ``<repo>/data``, apply the repo and load the online store."""
    size.check()
    data = data_dir(repo)
    if fresh and data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    stats = build_world(data, size, progress=progress)
    fa.apply_repo(repo)
    store = fa.open_store(repo)
    user_views = sorted({f.view for f in fa.read_feature_schema(store).features})
    fa.materialize_sources(store, [*user_views, fa.view_for_role(store, fa.AD_CONTENT_ROLE).name])
    return stats


@dataclass
class WarmReport:
    trained: int
    skipped: dict[str, str]
    median_train_auc: float
    lr_cold_path: Path


def train_warm(repo: str | Path, settings: Settings, *, impressions_path: str | Path | None = None,
               ad_ids: list[str] | None = None, handoff: bool = False, progress: bool = True) -> WarmReport:
    """Train warm models for retired ads (or ``ad_ids``), write them to Feast, refresh LR_cold.

    ``handoff`` also trains every cold ad with at least ``warm.min_impressions`` impressions.
    """
    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    path = Path(impressions_path) if impressions_path else data_dir(repo) / IMPRESSIONS_FILE
    if not path.exists():
        raise DataError(f"No impressions table at {path}. Pass --impressions PATH (parquet with user_id, ad_id, clicked).")
    impressions = pd.read_parquet(path)
    if ad_ids is None:
        _, ads_df = fa.read_ads(store, status="retired")
        ad_ids = ads_df["ad_id"].tolist()
    if handoff:  # cold ads that gathered enough impressions are trained and served warm from now on
        _, all_ads = fa.read_ads(store)
        cold_ids = set(all_ads.loc[all_ads["status"] != "retired", "ad_id"])
        counts = impressions[impressions["ad_id"].isin(cold_ids)].groupby("ad_id").size()
        ad_ids = list(dict.fromkeys([*ad_ids, *counts[counts >= settings.warm.min_impressions].index]))
    user_ids, users = fa.read_user_matrix(store, schema)
    result = train_warm_models(impressions, user_ids, users, schema, ad_ids, settings.warm, progress=progress)
    warm_view = fa.view_for_role(store, fa.WARM_ROLE).name
    fa.write_view(store, warm_view, result.rows)
    cold = lr_cold(fa.read_latest(store, warm_view), schema)
    cold.save(data_dir(repo) / LR_COLD_FILE)
    auc = float(np.median(result.rows["train_auc"])) if len(result.rows) else float("nan")
    return WarmReport(len(result.rows), result.skipped, auc, data_dir(repo) / LR_COLD_FILE)


def load_lr_cold(repo: str | Path) -> LRCold:
    path = data_dir(repo) / LR_COLD_FILE
    if not path.exists():
        raise DataError(f"No LR_cold baseline at {path}; run `llmhyper train-warm` first.")
    return LRCold.load(path)


# --- generation ---------------------------------------------------------------------------

INDEX_DIR, LOG_DIR, CACHE_DIR = "warm_index", "generation_log", "llm_cache"
BACKTEST_FILE = "backtest.json"


def load_warm_ads(store, schema) -> dict:
    """Warm ads (current feature hash) with their content and trained weights, by ad id."""
    from .features import WarmAd

    warm = fa.read_latest(store, fa.view_for_role(store, fa.WARM_ROLE).name)
    if warm.empty:
        return {}
    warm = warm[warm["feature_hash"] == schema.names_hash]
    ads, _ = fa.read_ads(store)
    by_id = {a.ad_id: a for a in ads}
    return {r.ad_id: WarmAd(by_id[r.ad_id], np.asarray(r.weights, np.float64), float(r.bias), float(r.mean_ctr))
            for r in warm.itertuples() if r.ad_id in by_id}


def make_backend(repo: str | Path, settings: Settings):
    from .cache import AnswerCache
    from .llm import get_backend

    return get_backend(settings.llm.name, settings.llm.options, cache=AnswerCache(data_dir(repo) / CACHE_DIR))


def build_index(repo: str | Path, settings: Settings, *, progress: bool = True):
    """Embed the warm ads (reusing the saved index when nothing changed) and return generation inputs."""
    from .embedders import get_embedder
    from .generation import GenerationInputs
    from .retrieval import WarmIndex

    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    warm = load_warm_ads(store, schema)
    embedder = get_embedder(settings.embedder.name, settings.embedder.options)
    index = WarmIndex.load_or_build(data_dir(repo) / INDEX_DIR, [w.ad for w in warm.values()], embedder,
                                    progress=progress)
    return store, GenerationInputs(schema, warm, index, embedder, make_backend(repo, settings), settings.generation)


def generate(repo: str | Path, settings: Settings, *, ad_ids: list[str] | None = None, force: bool = False,
             progress: bool = True) -> "pd.DataFrame":
    """Generate weights for cold ads whose inputs changed (all of ``ad_ids`` with ``force``)."""
    from .generation import backend_id, generate_rows, input_hash, read_log

    store, inputs = build_index(repo, settings, progress=progress)
    ads, _ = fa.read_ads(store, status=None if ad_ids else "active")
    if ad_ids:
        known = {a.ad_id for a in ads}
        unknown = [a for a in ad_ids if a not in known]
        if unknown:
            raise DataError(f"Unknown ad id(s) {unknown[:5]}: they are not in the ad content view.")
        ads = [a for a in ads if a.ad_id in set(ad_ids)]
    if not ad_ids:  # ads that warmed up are served by their trained model
        ads = [a for a in ads if a.ad_id not in inputs.warm]
    log = read_log(data_dir(repo) / LOG_DIR)
    if len(log) and "backend_error" in log.columns:
        log = log[~log["backend_error"].fillna(False).astype(bool)]
    done = set(zip(log["ad_id"], log["input_hash"])) if len(log) else set()
    bid = backend_id(inputs.backend)
    todo = [a for a in ads if force or (a.ad_id, input_hash(a, inputs.schema, bid, inputs.config)) not in done]
    if not todo:
        return pd.DataFrame()
    return generate_rows(todo, inputs, log_dir=data_dir(repo) / LOG_DIR, progress=progress)


# --- materialization and status --------------------------------------------------------------


@dataclass
class MaterializeReport:
    generated: int
    written: int
    sources: dict[str, int]
    view: str
    stopped: str = ""


def materialize(repo: str | Path, settings: Settings, *, force: bool = False, progress: bool = True) -> MaterializeReport:
    """Generate what is missing or stale, calibrate it and write it to the generated weights view."""
    from . import backtest
    from .generation import read_log
    from .materialization import generated_rows, next_timestamp, weights_version

    decision, blend = backtest.gate_decision(settings.gate, backtest.load(data_dir(repo) / BACKTEST_FILE),
                                             _backend_id(repo, settings))
    new = generate(repo, settings, force=force, progress=progress)
    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    view = fa.view_for_role(store, fa.GENERATED_ROLE).name
    log = read_log(data_dir(repo) / LOG_DIR)
    if log.empty:
        return MaterializeReport(len(new), 0, {}, view)
    log = log[log["feature_hash"] == schema.hash]
    warm_ids = set(load_warm_ads(store, schema))
    log = log[~log["ad_id"].isin(warm_ids)]
    stored = fa.read_latest(store, view)
    stored_version = dict(zip(stored["ad_id"], stored["input_hash"])) if len(stored) else {}
    regenerated = set(new["ad_id"]) if force and len(new) else set()
    todo = log[[r.ad_id in regenerated or
                stored_version.get(r.ad_id) != weights_version(r._asdict(), settings.calibration)
                for r in log.itertuples(index=False)]]
    if todo.empty:
        return MaterializeReport(len(new), 0, {}, view)
    _, users = fa.read_user_matrix(store, schema, sample=settings.calibration.user_sample, seed=settings.generation.seed)
    rows = generated_rows(todo, users, schema, settings.calibration, load_lr_cold(repo), next_timestamp(store, view),
                          decision=decision, blend=blend)
    fa.write_view(store, view, rows)
    return MaterializeReport(len(new), len(rows), rows["source"].value_counts().to_dict(), view,
                             new.attrs.get("stopped", ""))


def _backend_id(repo: str | Path, settings: Settings) -> str:
    from .generation import backend_id

    return backend_id(make_backend(repo, settings))


def status(repo: str | Path, settings: Settings) -> pd.DataFrame:
    """One row per ad: warm, cold-current, cold-stale or cold-missing, with the reason."""
    from .generation import backend_id, input_hash, read_log
    from .materialization import weights_version

    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    ads, ads_df = fa.read_ads(store)
    warm = load_warm_ads(store, schema)
    backend = make_backend(repo, settings)
    bid = backend_id(backend)
    log = read_log(data_dir(repo) / LOG_DIR)
    log_by_ad = {r["ad_id"]: r for r in log.to_dict("records")} if len(log) else {}
    stored = fa.read_latest(store, fa.view_for_role(store, fa.GENERATED_ROLE).name)
    stored_by_ad = {r["ad_id"]: r for r in stored.to_dict("records")} if len(stored) else {}
    out = []
    for ad, ad_status in zip(ads, ads_df["status"]):
        if ad.ad_id in warm:
            state, why = "warm", "trained on clicks"
        elif ad.ad_id not in stored_by_ad:
            state, why = "cold-missing", "no generated weights stored"
        else:
            row, log_row = stored_by_ad[ad.ad_id], log_by_ad.get(ad.ad_id)
            if row["feature_hash"] != schema.hash:
                state, why = "cold-stale", f"feature definitions changed ({row['feature_hash']} -> {schema.hash})"
            elif log_row is None or log_row["input_hash"] != input_hash(ad, schema, bid, settings.generation):
                state, why = "cold-stale", "ad content, prompt, model or generation options changed"
            elif row["input_hash"] != weights_version(log_row, settings.calibration):
                state, why = "cold-stale", "calibration settings or a newer generation not yet written"
            else:
                state, why = "cold-current", f"{row['source']} weights from {row['llm_model']}"
        out.append({"ad_id": ad.ad_id, "status": ad_status, "state": state, "reason": why})
    return pd.DataFrame(out)


# --- evaluation ------------------------------------------------------------------------------

ABLATIONS = {
    "shots": ("generation.shots", [0, 3, 5]),
    "caption": ("generation.include_caption", [True, False]),
    "batch_size": ("generation.batch_size", [1, 5, 10, 0]),
    "samples": ("generation.samples", [1, 3, 5]),
    "scale": ("calibration.scale", ["unit", "neighbours"]),
    "reasoning": ("generation.reasoning", [False, True]),
}
EVAL_FILE = "evaluation.json"


def evaluate(repo: str | Path, settings: Settings, *, ablations: list[str] = (), impressions_path: str | Path | None = None,
             n_boot: int = 1000, progress: bool = True) -> list[dict]:
    """Every baseline, the configured backend and the requested ablations on the cold ads; saved as JSON."""
    import json
    from dataclasses import replace

    from . import evaluation as ev
    from .generation import generate_rows
    from .llm import get_backend

    store, inputs = build_index(repo, settings, progress=progress)
    schema = inputs.schema
    path = Path(impressions_path) if impressions_path else data_dir(repo) / IMPRESSIONS_FILE
    data = ev.load_eval_data(repo, store, schema, pd.read_parquet(path))
    _, users = fa.read_user_matrix(store, schema, sample=settings.calibration.user_sample, seed=settings.generation.seed)
    cold = load_lr_cold(repo)
    knn_rows = generate_rows(data.ads, replace(inputs, backend=get_backend("knn")), progress=False)
    results = [ev.calibrated_result("lr_cold", data, knn_rows, settings, cold, users, override=cold.weights),
               ev.lr_warm_result(data, settings), ev.calibrated_result("knn_prior", data, knn_rows, settings, cold, users),
               ev.embedding_result(data, inputs.embedder)]

    def llm_row(label: str, s: Settings) -> None:
        rows = generate_rows(data.ads, replace(inputs, config=s.generation), progress=progress)
        res = ev.calibrated_result(label, data, rows, s, cold, users)
        res.extra.update(llm_calls=int(rows["calls"].sum()), prompt_tokens=int(rows["prompt_tokens"].sum()))
        results.append(res)

    for name in ablations:
        if name not in ABLATIONS:
            raise DataError(f"Unknown ablation '{name}'. Choose from: {', '.join(ABLATIONS)}.")
        if not inputs.backend.uses_prompts and name != "scale":
            raise DataError(f"The '{name}' ablation needs an LLM backend (--llm local/openai); "
                            f"the '{inputs.backend.name}' backend writes no prompts. Only 'scale' applies to it.")
    if inputs.backend.uses_prompts:
        llm_row(f"llm_hyper[{inputs.backend.name}]", settings)
    for name in ablations:
        key, values = ABLATIONS[name]
        for value in values:
            varied = settings.with_overrides(**{key: value})
            if inputs.backend.uses_prompts:
                llm_row(f"llm[{name}={value}]", varied)
            else:
                results.append(ev.calibrated_result(f"knn_prior[{name}={value}]", data, knn_rows, varied, cold, users))
    oracle = ev.oracle_result(data)
    if oracle is not None:
        results.append(oracle)
    warm = next(r for r in results if r.name == "lr_warm")
    table = ev.score_table(data, results, n_boot=n_boot, seed=settings.generation.seed,
                           true_top=ev.true_top_features(data, warm))
    out = {"rows": table, "n_test_impressions": int(len(data.test_clicked)), "n_active_ads": len(data.ads),
           "feature_hash": schema.hash, "llm_model": f"{inputs.backend.name}:{inputs.backend.model_id}",
           "weights": {r.name: r.weights.tolist() for r in results if r.weights is not None},
           "ad_ids": [a.ad_id for a in data.ads], "feature_names": schema.names,
           "calibration": _calibration_curves(data, results)}
    (data_dir(repo) / EVAL_FILE).write_text(json.dumps(out, default=float))
    return table


def _calibration_curves(data, results) -> dict:
    from .metrics import calibration_table

    return {r.name: {k: v.tolist() for k, v in calibration_table(data.test_clicked, r.scores, 20).items()}
            for r in results if r.weights is not None}


def run_backtest(repo: str | Path, settings: Settings, *, sample: int = 30, impressions_path: str | Path | None = None,
                 progress: bool = True) -> dict:
    """Backtest the configured backend on ``sample`` warm ads and save the result for the gate."""
    from . import backtest

    store, inputs = build_index(repo, settings, progress=progress)
    path = Path(impressions_path) if impressions_path else data_dir(repo) / IMPRESSIONS_FILE
    user_ids, users = fa.read_user_matrix(store, inputs.schema)
    result = backtest.run_backtest(inputs, pd.read_parquet(path), user_ids, users, sample=sample,
                                   seed=settings.generation.seed, progress=progress)
    backtest.save(data_dir(repo) / BACKTEST_FILE, result)
    return result
