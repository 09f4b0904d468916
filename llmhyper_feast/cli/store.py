"""``llmhyper repair``: rebuild the online store from the registry and the offline history."""

from __future__ import annotations

from pathlib import Path

import click

from llmhyper_feast.cli.options import quiet_option, repo_option


@click.command()
@repo_option
@quiet_option
def repair(repo: Path, quiet: bool) -> None:
    """Recreate the online tables of every online view and re-materialize them from the offline store."""
    from llmhyper_feast.jobs.repair import repair as run

    click.echo(run(repo, progress=not quiet).summary())


COMMANDS = (repair,)
