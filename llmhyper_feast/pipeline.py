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
               ad_ids: list[str] | None = None, progress: bool = True) -> WarmReport:
    """Train warm models for retired ads (or ``ad_ids``), write them to Feast, refresh LR_cold."""
    store = fa.open_store(repo)
    schema = fa.read_feature_schema(store)
    path = Path(impressions_path) if impressions_path else data_dir(repo) / IMPRESSIONS_FILE
    if not path.exists():
        raise DataError(f"No impressions table at {path}. Pass --impressions PATH (parquet with user_id, ad_id, clicked).")
    impressions = pd.read_parquet(path)
    if ad_ids is None:
        _, ads_df = fa.read_ads(store, status="retired")
        ad_ids = ads_df["ad_id"].tolist()
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
