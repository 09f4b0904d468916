"""Commands along the weights flow: apply, features, train-warm, index, generate, materialize, status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from llmhyper_feast.cli.options import (
    backend_options,
    engine_option,
    impressions_option,
    quiet_option,
    repo_option,
    settings_from_flags,
)
from llmhyper_feast.errors import BackendError


@click.command()
@repo_option
@click.option(
    "--rebuild-registry",
    is_flag=True,
    help="Set a registry copied from another repo aside (data/registry.db.copied-<time>) and apply a fresh one.",
)
def apply(repo: Path, rebuild_registry: bool) -> None:
    """Run `feast apply` on the repo and create the weights views' parquet sources."""
    from llmhyper_feast.store.feast_adapter import apply_repo

    click.echo(apply_repo(repo, rebuild_registry=rebuild_registry).strip())


@click.command()
@repo_option
def features(repo: Path) -> None:
    """Show the user features (registry order), their descriptions and the definitions hash."""
    from llmhyper_feast.store.feast_adapter import open_store, read_feature_schema

    schema = read_feature_schema(open_store(repo))
    for i, f in enumerate(schema.features):
        click.echo(f"{i:3d}  {f.view}:{f.name} ({f.dtype})\n     {f.description}")
    click.echo(f"feature definitions hash: {schema.hash}")


def print_warm(report: Any) -> None:
    """Summary of a warm-training run."""
    click.echo(
        f"trained {report.trained} warm ad models (median training AUC {report.median_train_auc:.3f}); "
        f"skipped {len(report.skipped)}"
    )
    for ad_id, why in list(report.skipped.items())[:10]:
        click.echo(f"  skipped {ad_id}: {why}")
    click.echo(f"LR_cold baseline written to {report.lr_cold_path}")


@click.command("train-warm")
@repo_option
@impressions_option
@click.option("--ads", multiple=True, help="Train only these ad ids (e.g. cold ads that warmed up).")
@click.option(
    "--handoff",
    is_flag=True,
    help="Also train every cold ad with >= warm.min_impressions impressions (it is then served warm).",
)
@engine_option
@quiet_option
def train_warm(
    repo: Path, impressions: Path | None, ads: tuple[str, ...], handoff: bool, engine: str | None, quiet: bool
) -> None:
    """Fit one L2 logistic regression per warm ad and store it in the warm weights view."""
    from llmhyper_feast import jobs

    print_warm(
        jobs.train_warm(
            repo,
            settings_from_flags(repo, engine=engine),
            impressions_path=impressions,
            ad_ids=list(ads) or None,
            handoff=handoff,
            progress=not quiet,
        )
    )


@click.command()
@repo_option
@click.option("--embedder", default=None, help="Embedder: minilm or clip. Setting: embedder.name.")
@quiet_option
def index(repo: Path, embedder: str | None, quiet: bool) -> None:
    """Embed the warm ads and build (or reuse) the Faiss index used for few-shot retrieval."""
    from llmhyper_feast import jobs
    from llmhyper_feast.store.layout import RepoLayout

    _, inputs = jobs.build_index(repo, settings_from_flags(repo, embedder=embedder), progress=not quiet)
    idx = inputs.index
    click.echo(
        f"warm index: {len(idx)} ads, dim {idx.dim}, embedder {idx.embedder_id}, "
        f"{'reused' if getattr(idx, 'from_cache', False) else 'built'} at {RepoLayout.of(repo).warm_index}"
    )


def print_generation(rows: Any, log_dir: Path) -> None:
    """Summary of a generation run."""
    if rows.empty:
        click.echo(f"nothing to generate: every ad's weights are current (log: {log_dir}); use --force to redo")
        return
    counts = rows["origin"].value_counts().to_dict()
    click.echo(
        f"generated {len(rows)} ads ({', '.join(f'{k}={v}' for k, v in counts.items())}); "
        f"LLM calls {int(rows['calls'].sum())}, prompt tokens {int(rows['prompt_tokens'].sum())}, "
        f"completion tokens {int(rows['completion_tokens'].sum())}; log: {log_dir}"
    )
    for r in rows[rows["origin"] == "fallback"].head(5).itertuples():
        click.echo(f"  fallback {r.ad_id}: {r.fallback_reason[:200]}")
    if rows.attrs.get("stopped"):
        raise BackendError(
            f"{rows.attrs['stopped']}. Fix the backend and re-run: ads that hit backend errors are retried."
        )


@click.command()
@repo_option
@backend_options
@click.option("--ads", multiple=True, help="Generate only these ad ids (default: every active ad).")
@click.option("--force", is_flag=True, help="Regenerate even when inputs are unchanged.")
@quiet_option
def generate(repo: Path, ads: tuple[str, ...], force: bool, quiet: bool, **flags: Any) -> None:
    """Write weights for cold ads with the LLM hypernetwork; appends to the generation log."""
    from llmhyper_feast import jobs
    from llmhyper_feast.store.layout import RepoLayout

    rows = jobs.generate(
        repo, settings_from_flags(repo, **flags), ad_ids=list(ads) or None, force=force, progress=not quiet
    )
    print_generation(rows, RepoLayout.of(repo).generation_log)


@click.command()
@repo_option
@backend_options
@click.option("--force", is_flag=True, help="Regenerate and rewrite every cold ad.")
@click.option(
    "--allow-fallback",
    is_flag=True,
    default=None,
    help="When the backend cannot be reached, let the prior replace stored LLM weights (default: keep them).",
)
@quiet_option
def materialize(repo: Path, force: bool, quiet: bool, **flags: Any) -> None:
    """Generate missing/stale cold-ad weights, calibrate them and write them into Feast (offline + online)."""
    from llmhyper_feast import jobs

    report = jobs.materialize(repo, settings_from_flags(repo, **flags), force=force, progress=not quiet)
    click.echo(
        f"generated {report.generated} ads; wrote {report.written} rows to '{report.view}' "
        f"({', '.join(f'{k}={v}' for k, v in report.origins.items()) or 'nothing changed'})"
    )
    if report.stopped:
        raise BackendError(
            f"generation {report.stopped}. Ads without stored weights got the prior; stored LLM weights were kept "
            "(--allow-fallback replaces them). Fix the backend and re-run: ads that hit backend errors are retried."
        )


@click.command()
@repo_option
@backend_options
@click.option("--all", "show_all", is_flag=True, help="List every ad, not only the counts and non-current ones.")
def status(repo: Path, show_all: bool, **flags: Any) -> None:
    """Count warm, cold-current, cold-stale and cold-missing ads (as `materialize` would see them)."""
    from llmhyper_feast import jobs

    table = jobs.status(repo, settings_from_flags(repo, **flags))
    click.echo(" ".join(f"{k}={v}" for k, v in table["state"].value_counts().sort_index().items()))
    shown = table if show_all else table[~table["state"].isin(["warm", "cold-current"])]
    for r in shown.head(200).itertuples():
        click.echo(f"  {r.ad_id} [{r.status}] {r.state}: {r.reason}")
    if table.attrs.get("hint"):
        click.echo(f"hint: {table.attrs['hint']}")


COMMANDS = (apply, features, train_warm, index, generate, materialize, status)
