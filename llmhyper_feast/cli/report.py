"""``llmhyper report``: an HTML page of the last evaluation (and backtest)."""

from __future__ import annotations

from pathlib import Path

import click

from llmhyper_feast.cli.options import repo_option


@click.command("report")
@repo_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the HTML file. Default: <repo>/data/report.html.",
)
def report(repo: Path, out: Path | None) -> None:
    """Write a self-contained HTML report of `llmhyper evaluate` (and `llmhyper backtest`) results."""
    from llmhyper_feast.evaluation.report import write_report

    click.echo(str(write_report(repo, out)))


COMMANDS = (report,)
