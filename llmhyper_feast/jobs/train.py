"""Job: train the warm ads' models from their clicks, store them in Feast, refit LR_cold."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from llmhyper_feast.config import Settings
from llmhyper_feast.errors import DataError
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.layout import RepoLayout
from llmhyper_feast.store.lock import locked
from llmhyper_feast.training.warm import LRCold, lr_cold, train_warm_models

if TYPE_CHECKING:
    from llmhyper_feast.engine import Engine

_log = logging.getLogger(__name__)


@dataclass
class WarmReport:
    trained: int
    skipped: dict[str, str]
    median_train_auc: float
    lr_cold_path: Path


def read_impressions(repo: str | Path, override: str | Path | None = None) -> pd.DataFrame:
    """The impressions: ``override`` (a parquet file) when given, else the view tagged ``impressions`` via Feast.

    A repo without such a view falls back to ``data/impressions.parquet`` with a warning.
    """
    layout = RepoLayout.of(repo)
    if override:
        return _read_impressions_file(Path(override))
    store = fa.open_store(layout.root)
    if fa.impressions_view(store) is not None:
        return fa.read_impressions(store)
    if layout.impressions.exists():
        _log.warning(
            "No feature view is tagged %s: %s; reading %s directly. Register it as a view (see README, "
            "'Impressions') so it is read through Feast.",
            fa.ROLE_TAG,
            fa.IMPRESSIONS_ROLE,
            layout.impressions,
        )
        return _read_impressions_file(layout.impressions)
    raise DataError(
        f"No impressions: no feature view is tagged {fa.ROLE_TAG}: {fa.IMPRESSIONS_ROLE} in {layout.root}. "
        "Register one (user_id, ad_id, clicked, event_timestamp[, user_split]) and run `llmhyper apply`, "
        "or pass --impressions PATH."
    )


def _read_impressions_file(path: Path) -> pd.DataFrame:
    """An impressions parquet named by the caller (not a view's source)."""
    import pyarrow as pa

    if not path.exists():
        raise DataError(
            f"No impressions table at {path}. Pass --impressions PATH (parquet with user_id, ad_id, clicked)."
        )
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"The impressions file {path} is unreadable ({reason}): write it again or pass another."
        ) from exc


@locked("train-warm")
def train_warm(
    repo: str | Path,
    settings: Settings,
    *,
    impressions_path: str | Path | None = None,
    ad_ids: list[str] | None = None,
    handoff: bool = False,
    progress: bool = True,
) -> WarmReport:
    """Train warm models for retired ads (or ``ad_ids``), write them to Feast, refresh LR_cold.

    ``handoff`` also trains every cold ad with at least ``warm.min_impressions`` impressions.
    Holds the repo lock; first finishes any write a killed run left half done. The fits run on
    ``settings.engine``; impressions and users are read through Feast here, on the driver.
    """
    from llmhyper_feast.engine import get_engine

    with get_engine(settings) as engine:  # connect first: an unreachable cluster fails before any write
        return _train_warm(repo, settings, engine, impressions_path, ad_ids, handoff, progress)


def _train_warm(
    repo: str | Path,
    settings: Settings,
    engine: Engine,
    impressions_path: str | Path | None,
    ad_ids: list[str] | None,
    handoff: bool,
    progress: bool,
) -> WarmReport:
    layout = RepoLayout.of(repo)
    store = fa.open_store(layout.root)
    fa.finish_pending_writes(store)
    schema = fa.read_feature_schema(store)
    impressions = read_impressions(layout.root, impressions_path)
    if ad_ids is None:
        _, ads_df = fa.read_ads(store, status="retired")
        ad_ids = ads_df["ad_id"].tolist()
    if handoff:  # cold ads that gathered enough impressions are trained and served warm from now on
        _, all_ads = fa.read_ads(store)
        cold_ids = set(all_ads.loc[all_ads["status"] != "retired", "ad_id"])
        counts = impressions[impressions["ad_id"].isin(cold_ids)].groupby("ad_id").size()
        ad_ids = list(dict.fromkeys([*ad_ids, *counts[counts >= settings.warm.min_impressions].index]))
    user_ids, users = fa.read_user_matrix(store, schema)
    result = train_warm_models(
        impressions, user_ids, users, schema, ad_ids, settings.warm, progress=progress, engine=engine
    )
    warm_view = fa.view_for_role(store, fa.WARM_ROLE).name
    fa.write_view(store, warm_view, result.rows)
    cold = lr_cold(fa.read_latest(store, warm_view), schema)
    cold.save(layout.lr_cold)
    auc = float(np.median(result.rows["train_auc"])) if len(result.rows) else float("nan")
    return WarmReport(len(result.rows), result.skipped, auc, layout.lr_cold)


def load_lr_cold(repo: str | Path) -> LRCold:
    """The repo's LR_cold baseline (written by ``train-warm``)."""
    path = RepoLayout.of(repo).lr_cold
    if not path.exists():
        raise DataError(f"No LR_cold baseline at {path}; run `llmhyper train-warm` first.")
    return LRCold.load(path)
