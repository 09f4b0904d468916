"""The ``llmhyper report`` command: an HTML page of the last evaluation (and backtest)."""

from __future__ import annotations

from pathlib import Path

import click


def register(cli: click.Group) -> None:
    """Add the ``report`` command to ``cli``."""

    @cli.command("report")
    @click.option("--repo", default="feature_repo", show_default=True, type=click.Path(path_type=Path),
                  help="The Feast feature repo (folder holding feature_store.yaml).")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Where to write the HTML file. Default: <repo>/data/report.html.")
    def report(repo: Path, out: Path | None) -> None:
        """Write a self-contained HTML report of `llmhyper evaluate` (and `llmhyper backtest`) results."""
        from .report import write_report

        click.echo(str(write_report(repo, out)))
