"""``llmhyper coupon build``: the UCI in-vehicle coupon data as a real-data Feast repo."""

from __future__ import annotations

from pathlib import Path

import click

from llmhyper_feast.cli.options import quiet_option


@click.group()
def coupon() -> None:
    """The UCI in-vehicle coupon data as a real-data Feast repo."""


@coupon.command("build")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(path_type=Path),
    default=Path("../shared/data/in-vehicle-coupon-recommendation.csv"),
    show_default=True,
    help="The UCI in-vehicle coupon CSV.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("coupon_repo"),
    show_default=True,
    help="Folder for the new Feast repo (created).",
)
@click.option("--holdout", type=float, default=0.3, show_default=True, help="Share of offers held out as cold.")
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option
def coupon_build(csv_path: Path, out: Path, holdout: float, seed: int, quiet: bool) -> None:
    """Build a Feast repo (user features with definitions, offers as ads, split) from the coupon CSV."""
    from llmhyper_feast.datasets.coupon import build_coupon_repo

    stats = build_coupon_repo(csv_path, out, holdout_share=holdout, seed=seed, progress=not quiet)
    click.echo(f"coupon repo at {out}: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    click.echo(f"next: llmhyper train-warm --repo {out} && llmhyper evaluate --repo {out}")


COMMANDS = (coupon,)
