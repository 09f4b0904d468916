"""Commands that measure: evaluate (baselines, ablations) and backtest (the gate's evidence)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from llmhyper_feast.cli.options import (
    backend_options,
    emit_json,
    format_option,
    impressions_option,
    json_stdout,
    quiet_option,
    repo_option,
    settings_from_flags,
)
from llmhyper_feast.evaluation.backtest import SUMMARY_KEYS
from llmhyper_feast.jobs.evaluate import ABLATIONS


@click.command()
@repo_option
@backend_options
@click.option(
    "--ablate",
    "ablations",
    multiple=True,
    type=click.Choice(list(ABLATIONS)),
    help="Add one row per value of this option (repeatable).",
)
@impressions_option
@format_option
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples for CIs.")
@quiet_option
def evaluate(
    repo: Path,
    ablations: tuple[str, ...],
    impressions: Path | None,
    fmt: str,
    bootstrap: int,
    quiet: bool,
    **flags: Any,
) -> None:
    """Compare LLM-HYPER with LR_cold, LR_warm, the prior, text-embedding cosine (and the demo oracle)."""
    from llmhyper_feast import jobs
    from llmhyper_feast.evaluation.evaluate import format_table

    with json_stdout(fmt == "json"):
        rows = jobs.evaluate(
            repo,
            settings_from_flags(repo, **flags),
            ablations=list(ablations),
            impressions_path=impressions,
            n_boot=bootstrap,
            progress=not quiet and fmt == "table",
        )
    if fmt == "json":
        emit_json(rows)
    else:
        click.echo(format_table(rows))


@click.command()
@repo_option
@backend_options
@click.option("--sample", type=int, default=30, show_default=True, help="Warm ads to treat as cold.")
@impressions_option
@format_option
@quiet_option
def backtest(repo: Path, sample: int, impressions: Path | None, fmt: str, quiet: bool, **flags: Any) -> None:
    """Treat warm ads as cold (never retrieving themselves) and compare generated with trained weights."""
    from llmhyper_feast import jobs

    with json_stdout(fmt == "json"):
        r = jobs.run_backtest(
            repo,
            settings_from_flags(repo, **flags),
            sample=sample,
            impressions_path=impressions,
            progress=not quiet and fmt == "table",
        )
    summary = {k: r[k] for k in SUMMARY_KEYS}
    if fmt == "json":
        emit_json(summary)
        return
    click.echo(f"backtest of {summary['backend']} on {len(r['ads'])} warm ads (saved for the deployment gate)")
    click.echo(f"  cosine with trained weights   {r['cosine']:.3f}   (prior {r['knn_cosine']:.3f}, {r['prior']})")
    click.echo(f"  Spearman with trained weights {r['spearman']:.3f}   (prior {r['knn_spearman']:.3f})")
    click.echo(
        f"  within-ad click GAUC          {r['click_gauc']:.3f}   (prior {r['knn_click_gauc']:.3f}, "
        f"trained {r['trained_click_gauc']:.3f})"
    )
    click.echo(
        f"  learned prior                 cosine {r['learned_cosine']:.3f}, Spearman {r['learned_spearman']:.3f}, "
        f"click GAUC {r['learned_click_gauc']:.3f}"
    )
    click.echo(f"  best blend lambda (llm share) {r['best_lambda']:.2f}; fallbacks {r['fallbacks']}")


COMMANDS = (evaluate, backtest)
