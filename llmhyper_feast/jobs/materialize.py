"""Jobs: materialize (generate what is missing or stale, calibrate, write to Feast) and status."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from llmhyper_feast.config import Settings
from llmhyper_feast.jobs.generate import assess_ads, generate, prior_source_id, source_id
from llmhyper_feast.jobs.train import load_lr_cold
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.layout import RepoLayout
from llmhyper_feast.store.lock import locked


@dataclass
class MaterializeReport:
    generated: int
    written: int
    origins: dict[str, int]
    view: str
    stopped: str = ""


@locked("materialize")
def materialize(
    repo: str | Path, settings: Settings, *, force: bool = False, progress: bool = True
) -> MaterializeReport:
    """Generate what is missing or stale, calibrate it and write it to the generated weights view.

    Holds the repo lock; first finishes any write a killed run left half done. Generation runs
    on ``settings.engine``, connected before anything is written.
    """
    from llmhyper_feast.engine import get_engine

    with get_engine(settings):  # generate() joins this session instead of opening its own
        return _materialize(repo, settings, force, progress)


def _materialize(repo: str | Path, settings: Settings, force: bool, progress: bool) -> MaterializeReport:
    from llmhyper_feast.calibration.rows import generated_rows, with_policy_tags
    from llmhyper_feast.evaluation import backtest
    from llmhyper_feast.generation.policy import load_policy
    from llmhyper_feast.store.weights import next_timestamp

    layout = RepoLayout.of(repo)
    fa.finish_pending_writes(fa.open_store(layout.root))
    decision, blend = backtest.gate_decision(
        settings.gate, backtest.load(layout.backtest), source_id(layout.root, settings), prior=prior_source_id(settings)
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
    rows = with_policy_tags(rows, fa.read_ads(store)[0], load_policy(layout.root, schema.names))
    fa.write_view(store, view, rows)
    return MaterializeReport(
        len(new), len(rows), rows["origin"].value_counts().to_dict(), view, new.attrs.get("stopped", "")
    )


def status(repo: str | Path, settings: Settings) -> pd.DataFrame:
    """One row per ad: warm, cold-current, cold-stale or cold-missing, with the reason.

    A cold ad current offline whose online row is absent is ``online-missing``; one whose online
    row holds another weights version is ``online-stale``. ``attrs["hint"]`` says which command
    fixes the states found (empty when every ad is served as stored).
    """
    from llmhyper_feast.errors import StoreUnavailableError
    from llmhyper_feast.store.online import get_ad_weights

    root = RepoLayout.of(repo).root
    store = fa.open_store(root)
    schema = fa.read_feature_schema(store)
    ads_df, states = assess_ads(root, settings, store, schema=schema)
    rows = {
        a: {"ad_id": a, "status": st, "state": states[a].state, "reason": states[a].reason}
        for a, st in zip(ads_df["ad_id"], ads_df["status"])
    }
    unusable = ""
    current = [a for a, r in rows.items() if r["state"] == "cold-current"]
    if current:
        try:
            online = get_ad_weights(store, current, schema)  # one batched lookup
        except StoreUnavailableError as exc:
            unusable = str(exc)
            for a in current:
                rows[a].update(state="online-missing", reason="the online store is unusable")
        else:
            for a, meta in zip(current, online.meta):
                got, want = meta.get("weights_version"), states[a].version
                if got is None:
                    rows[a].update(state="online-missing", reason=f"weights {want} are stored offline but not online")
                elif got != want:
                    rows[a].update(state="online-stale", reason=f"online serves weights {got}, offline holds {want}")
    _add_batch_notes(root, rows)
    table = pd.DataFrame(list(rows.values()), columns=["ad_id", "status", "state", "reason"])
    found = set(table["state"])
    hints = []
    if found & {"cold-missing", "cold-stale"}:
        hints.append(f"`llmhyper materialize --repo {root}` writes the cold-missing/cold-stale ads")
    if unusable:
        hints.append(unusable)
    elif found & {"online-missing", "online-stale"}:
        hints.append(f"`llmhyper repair --repo {root}` reloads the online store from the offline history")
    table.attrs["hint"] = "; ".join(hints)
    return table


def _add_batch_notes(root: Path, rows: dict[str, dict]) -> None:
    """Name the LLM batch a cold ad without current weights waits for, or was lost in (jobs/batch.py)."""
    from llmhyper_feast.jobs.batch import batch_notes

    for ad_id, note in batch_notes(root).items():
        row = rows.get(ad_id)
        if row is not None and row["state"] in ("cold-missing", "cold-stale"):
            row["reason"] += f"; {note}"
