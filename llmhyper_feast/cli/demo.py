"""``llmhyper demo``: the end-to-end demo, and ``demo data`` to build only the seeded world."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from llmhyper_feast.cli.options import engine_option, quiet_option, repo_option, settings_from_flags

_SIZES = [
    ("users", 20000, "Users in the demo world."),
    ("retired", 300, "Retired (warm) ads."),
    ("active", 6, "Active (cold) ads (6: the bundled local LLM takes ~40 s per ad on 2 cores)."),
    ("impressions", 5000, "Impressions per ad."),
    ("seed", 7, "Random seed of the world."),
]


def _size_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for name, default, text in reversed(_SIZES):
        f = click.option(f"--{name}", default=default, show_default=True, type=int, help=text)(f)
    return f


def _world_size(users: int, retired: int, active: int, impressions: int, seed: int) -> Any:
    from llmhyper_feast.datasets.demo_world import WorldSize

    return WorldSize(users=users, retired=retired, active=active, impressions_per_ad=impressions, seed=seed)


@click.group(invoke_without_command=True)
@repo_option
@_size_options
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the demo exports the ONNX models (default: <repo>/data/onnx).",
)
@click.option("--llm", default=None, help="Backend for the demo's generation (default: llmhyper.yaml, i.e. local).")
@engine_option
@quiet_option
@click.pass_context
def demo(
    ctx: click.Context,
    repo: Path,
    users: int,
    retired: int,
    active: int,
    impressions: int,
    seed: int,
    out: Path | None,
    llm: str | None,
    engine: str | None,
    quiet: bool,
) -> None:
    """Run the end-to-end demo (subcommands run single steps).

    Steps: build the world, feast apply, train warm models, generate + materialize cold-ad
    weights, export ONNX, rank for one test user, evaluate, write the HTML report.
    """
    if ctx.invoked_subcommand is not None:
        return
    from llmhyper_feast import jobs
    from llmhyper_feast.cli.weights import print_warm
    from llmhyper_feast.evaluation.evaluate import format_table
    from llmhyper_feast.evaluation.report import write_report
    from llmhyper_feast.serving.export import export_repo
    from llmhyper_feast.store.layout import RepoLayout

    t0 = time.perf_counter()
    progress = not quiet
    settings = settings_from_flags(repo, llm=llm, engine=engine)
    size = _world_size(users, retired, active, impressions, seed)

    def step(i: int, text: str) -> None:
        click.echo(f"[{i}/7 {time.perf_counter() - t0:6.0f}s] {text}")

    step(1, f"building the demo world in {repo}/data, feast apply, loading the online store ...")
    stats = jobs.make_demo_data(repo, size, progress=progress)
    click.echo("      " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    out = out or RepoLayout.of(repo).onnx
    step(2, "training warm-ad models ...")
    print_warm(jobs.train_warm(repo, settings, progress=progress))
    step(3, f"generating + materializing cold-ad weights with the '{settings.llm.name}' backend ...")
    report = jobs.materialize(repo, settings, progress=progress)
    click.echo(f"      wrote {report.written} rows to '{report.view}' ({report.origins})")
    step(4, f"exporting ONNX models to {out} ...")
    manifest = export_repo(repo, out)
    click.echo(f"      {len(manifest.ad_ids)} ads in the all-ads model; manifest {out / 'manifest.json'}")
    step(5, "ranking for one test user (Feast online lookup + ONNX) ...")
    _demo_ranking(repo, out)
    step(6, "evaluating on the cold ads and held-out users ...")
    click.echo(format_table(jobs.evaluate(repo, settings, progress=progress)))
    step(7, "writing the report ...")
    click.echo(f"report: {write_report(repo)}")
    click.echo(f"demo finished in {time.perf_counter() - t0:.0f} s")


def _demo_ranking(repo: Path, models: Path) -> None:
    from llmhyper_feast import jobs
    from llmhyper_feast.serving.ranker import Ranker
    from llmhyper_feast.store.feast_adapter import open_store, read_ads

    imps = jobs.read_impressions(repo)
    user = sorted(imps.loc[imps["user_split"] == "test", "user_id"].unique())[0]
    _, active = read_ads(open_store(repo), status="active")
    ranker = Ranker(repo, models)
    click.echo(f"      top 5 of the {len(active)} cold ads for test user {user}:")
    titles = dict(zip(active["ad_id"], active["title"]))
    for i, r in enumerate(ranker.rank(user, ads=list(titles), k=5), 1):
        click.echo(f"      {i}. {r.ad_id} ctr={r.ctr:.4f} ({r.source}) {titles[r.ad_id]}")


@demo.command("data")
@repo_option
@_size_options
@quiet_option
def demo_data(repo: Path, users: int, retired: int, active: int, impressions: int, seed: int, quiet: bool) -> None:
    """Build the seeded demo world, run `feast apply` and load the online store."""
    from llmhyper_feast import jobs

    stats = jobs.make_demo_data(repo, _world_size(users, retired, active, impressions, seed), progress=not quiet)
    click.echo("demo world: " + ", ".join(f"{k}={v}" for k, v in stats.items()))


COMMANDS = (demo,)
