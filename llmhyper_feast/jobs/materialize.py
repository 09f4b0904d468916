"""Jobs: materialize (generate what is missing or stale, calibrate, write to Feast) and status."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from llmhyper_feast.config import Settings
from llmhyper_feast.jobs.generate import assess_ads, generate, source_id
from llmhyper_feast.jobs.train import load_lr_cold
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.layout import RepoLayout


@dataclass
class MaterializeReport:
    generated: int
    written: int
    origins: dict[str, int]
    view: str
    stopped: str = ""


def materialize(
    repo: str | Path, settings: Settings, *, force: bool = False, progress: bool = True
) -> MaterializeReport:
    """Generate what is missing or stale, calibrate it and write it to the generated weights view."""
    from llmhyper_feast.calibration.rows import generated_rows
    from llmhyper_feast.evaluation import backtest
    from llmhyper_feast.store.weights import next_timestamp

    layout = RepoLayout.of(repo)
    decision, blend = backtest.gate_decision(
        settings.gate, backtest.load(layout.backtest), source_id(layout.root, settings)
    )
    new = generate(layout.root, settings, force=force, progress=progress)
    store = fa.open_store(layout.root)
    schema = fa.read_feature_schema(store)
    view = fa.view_for_role(store, fa.GENERATED_ROLE).name
    _, states = assess_ads(layout.root, settings, store, schema=schema)
    regenerated = set(new["ad_id"]) if force and len(new) else set()
    todo = [
        s.log_row
        for s in states.values()
        if s.log_row is not None and (s.needs_write or (s.ad_id in regenerated and s.state != "warm"))
    ]
    if not todo:
        return MaterializeReport(len(new), 0, {}, view, new.attrs.get("stopped", ""))
    _, users = fa.read_user_matrix(
        store, schema, sample=settings.calibration.user_sample, seed=settings.generation.seed
    )
    rows = generated_rows(
        pd.DataFrame(todo),
        users,
        schema,
        settings.calibration,
        load_lr_cold(layout.root),
        next_timestamp(store, view),
        decision=decision,
        blend=blend,
    )
    fa.write_view(store, view, rows)
    return MaterializeReport(
        len(new), len(rows), rows["origin"].value_counts().to_dict(), view, new.attrs.get("stopped", "")
    )


def status(repo: str | Path, settings: Settings) -> pd.DataFrame:
    """One row per ad: warm, cold-current, cold-stale or cold-missing, with the reason."""
    store = fa.open_store(repo)
    ads_df, states = assess_ads(repo, settings, store)
    return pd.DataFrame(
        [
            {"ad_id": a, "status": st, "state": states[a].state, "reason": states[a].reason}
            for a, st in zip(ads_df["ad_id"], ads_df["status"])
        ]
    )
