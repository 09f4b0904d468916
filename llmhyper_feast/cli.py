"""The ``llmhyper`` command line. Errors map to messages and exit codes in one place (``main``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .errors import ConfigError, LLMHyperError

DEFAULT_REPO = "feature_repo"
repo_option = click.option("--repo", default=DEFAULT_REPO, show_default=True, type=click.Path(path_type=Path),
                           help="The Feast feature repo (folder holding feature_store.yaml).")
quiet_option = click.option("--quiet", is_flag=True, help="Hide progress bars.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmhyper-feast")
def cli() -> None:
    """llmhyper: LLM-written CTR models for cold-start ads, stored in Feast and served as ONNX."""
    os.environ.setdefault("FEAST_USAGE", "False")


def _size_options(f):
    for name, default, text in reversed([
        ("users", 20000, "Users in the demo world."), ("retired", 300, "Retired (warm) ads."),
        ("active", 60, "Active (cold) ads."), ("impressions", 4000, "Impressions per ad."),
        ("seed", 7, "Random seed of the world."),
    ]):
        f = click.option(f"--{name}", default=default, show_default=True, type=int, help=text)(f)
    return f


def _world_size(users: int, retired: int, active: int, impressions: int, seed: int):
    from .demo_world import WorldSize

    return WorldSize(users=users, retired=retired, active=active, impressions_per_ad=impressions, seed=seed)


@cli.group(invoke_without_command=True)
@repo_option
@_size_options
@quiet_option
@click.pass_context
def demo(ctx: click.Context, repo: Path, users: int, retired: int, active: int, impressions: int, seed: int,
         quiet: bool) -> None:
    """Run the end-to-end demo: build the world, apply, train warm models (subcommands run single steps)."""
    if ctx.invoked_subcommand is not None:
        return
    from . import pipeline

    size = _world_size(users, retired, active, impressions, seed)
    click.echo(f"[1/2] building the demo world in {repo}/data ...")
    stats = pipeline.make_demo_data(repo, size, progress=not quiet)
    click.echo("      " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    click.echo("[2/2] training warm-ad models ...")
    _print_warm(pipeline.train_warm(repo, _settings(repo), progress=not quiet))


@demo.command("data")
@repo_option
@_size_options
@quiet_option
def demo_data(repo: Path, users: int, retired: int, active: int, impressions: int, seed: int, quiet: bool) -> None:
    """Build the seeded demo world, run `feast apply` and load the online store."""
    from . import pipeline

    stats = pipeline.make_demo_data(repo, _world_size(users, retired, active, impressions, seed), progress=not quiet)
    click.echo("demo world: " + ", ".join(f"{k}={v}" for k, v in stats.items()))


def _settings(repo: Path, **overrides):
    from .config import load_settings
    from .feast_adapter import check_repo

    check_repo(repo)
    return load_settings(repo).with_overrides(**overrides)


@cli.command()
@repo_option
def apply(repo: Path) -> None:
    """Run `feast apply` on the repo and create the weights views' parquet sources."""
    from .feast_adapter import apply_repo

    click.echo(apply_repo(repo).strip())


@cli.command()
@repo_option
def features(repo: Path) -> None:
    """Show the user features (registry order), their descriptions and the definitions hash."""
    from .feast_adapter import open_store, read_feature_schema

    schema = read_feature_schema(open_store(repo))
    for i, f in enumerate(schema.features):
        click.echo(f"{i:3d}  {f.view}:{f.name} ({f.dtype})\n     {f.description}")
    click.echo(f"feature definitions hash: {schema.hash}")


def _print_warm(report) -> None:
    click.echo(f"trained {report.trained} warm ad models (median training AUC {report.median_train_auc:.3f}); "
               f"skipped {len(report.skipped)}")
    for ad_id, why in list(report.skipped.items())[:10]:
        click.echo(f"  skipped {ad_id}: {why}")
    click.echo(f"LR_cold baseline written to {report.lr_cold_path}")


@cli.command("train-warm")
@repo_option
@click.option("--impressions", type=click.Path(path_type=Path), default=None,
              help="Impressions parquet (user_id, ad_id, clicked). Default: <repo>/data/impressions.parquet.")
@click.option("--ads", multiple=True, help="Train only these ad ids (e.g. cold ads that warmed up).")
@quiet_option
def train_warm(repo: Path, impressions: Path | None, ads: tuple[str, ...], quiet: bool) -> None:
    """Fit one L2 logistic regression per warm ad and store it in the warm weights view."""
    from . import pipeline

    _print_warm(pipeline.train_warm(repo, _settings(repo), impressions_path=impressions,
                                    ad_ids=list(ads) or None, progress=not quiet))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning our errors into one-line messages and exit codes."""
    try:
        cli.main(args=argv, prog_name="llmhyper", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"Error (config): {exc}", err=True)
        sys.exit(2)
    except LLMHyperError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
