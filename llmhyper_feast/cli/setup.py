"""``llmhyper init`` (scaffold a repo, or add llmhyper's views to an existing one) and ``llmhyper doctor``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from llmhyper_feast.cli.options import SETTING_FLAGS, backend_options, emit_json, format_option, json_stdout
from llmhyper_feast.errors import InputError, RepoError


@click.command()
@click.option("--repo", required=True, type=click.Path(path_type=Path), help="Folder of the new (or existing) repo.")
@click.option(
    "--existing", is_flag=True, help="Add llmhyper_views.py to an existing Feast repo (its files stay as they are)."
)
@click.option("--ad-entity", default=None, help="With --existing: the Feast name of the repo's ad Entity.")
@click.option(
    "--user-view",
    "user_views",
    multiple=True,
    help="With --existing: a user feature view to tag (repeat, in weight order); also builds the ranking service.",
)
@click.option("--ad-content-view", default=None, help="With --existing: the view holding ad titles/status to tag.")
@click.option("--force", is_flag=True, help="Overwrite files init would write.")
def init(
    repo: Path,
    existing: bool,
    ad_entity: str | None,
    user_views: tuple[str, ...],
    ad_content_view: str | None,
    force: bool,
) -> None:
    """Scaffold a Feast repo for llmhyper (feature_store.yaml, definitions, llmhyper.yaml, data/)."""
    from llmhyper_feast.jobs import init as job

    if existing:
        if not ad_entity:
            raise InputError("--existing needs --ad-entity NAME: the Feast name of the Entity your ads are keyed by.")
        report = job.init_existing(
            repo, ad_entity=ad_entity, user_views=list(user_views), ad_content_view=ad_content_view, force=force
        )
    else:
        if ad_entity or user_views or ad_content_view:
            raise InputError("--ad-entity, --user-view and --ad-content-view only apply with --existing; add it.")
        report = job.init_repo(repo, force=force)
    click.echo(report.summary())


@click.command()
@click.option(
    "--repo",
    default="feature_repo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The Feast feature repo (folder holding feature_store.yaml).",
)
@click.option(
    "--impressions",
    type=click.Path(path_type=Path),
    default=None,
    help="Impressions parquet to check (default: <repo>/data/impressions.parquet).",
)
@backend_options
@format_option
def doctor(repo: Path, impressions: Path | None, fmt: str, **flags: Any) -> None:
    """Check a repo for llmhyper: config, registry, roles, descriptions, sources, online rows. Exit 3 on a FAIL."""
    from llmhyper_feast.jobs.doctor import doctor as run

    with json_stdout(fmt == "json"):
        report = run(repo, impressions=impressions, flags={SETTING_FLAGS[k]: v for k, v in flags.items()})
    if fmt == "json":
        emit_json(report.to_json())
    else:
        for check in report.checks:
            click.echo(check.line())
    if report.failed:
        raise RepoError(
            f"{len(report.failed)} check(s) failed ({', '.join(c.name for c in report.failed)}); apply the fixes named "
            "above and re-run `llmhyper doctor`."
        )


COMMANDS = (init, doctor)
