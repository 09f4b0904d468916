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
        ("active", 20, "Active (cold) ads."), ("impressions", 5000, "Impressions per ad."),
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
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where the demo exports the ONNX models (default: <repo>/data/onnx).")
@click.option("--llm", default=None, help="Backend for the demo's generation (default: llmhyper.yaml, i.e. local).")
@quiet_option
@click.pass_context
def demo(ctx: click.Context, repo: Path, users: int, retired: int, active: int, impressions: int, seed: int,
         out: Path | None, llm: str | None, quiet: bool) -> None:
    """Run the end-to-end demo (subcommands run single steps).

    Steps: build the world, feast apply, train warm models, generate + materialize cold-ad
    weights, export ONNX, rank for one test user, evaluate, write the HTML report.
    """
    if ctx.invoked_subcommand is not None:
        return
    import time

    from . import pipeline

    t0 = time.perf_counter()
    progress = not quiet
    settings = _settings(repo)
    if llm:
        settings = settings.with_overrides(llm={"name": llm, "options": {}})
    size = _world_size(users, retired, active, impressions, seed)
    out = out or repo / "data" / "onnx"

    def step(i: int, text: str) -> None:
        click.echo(f"[{i}/7 {time.perf_counter() - t0:6.0f}s] {text}")

    step(1, f"building the demo world in {repo}/data, feast apply, loading the online store ...")
    stats = pipeline.make_demo_data(repo, size, progress=progress)
    click.echo("      " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    step(2, "training warm-ad models ...")
    _print_warm(pipeline.train_warm(repo, settings, progress=progress))
    step(3, f"generating + materializing cold-ad weights with the '{settings.llm.name}' backend ...")
    report = pipeline.materialize(repo, settings, progress=progress)
    click.echo(f"      wrote {report.written} rows to '{report.view}' ({report.sources})")
    step(4, f"exporting ONNX models to {out} ...")
    from .export import export_repo

    manifest = export_repo(repo, out)
    click.echo(f"      {len(manifest.ad_ids)} ads in the all-ads model; manifest {out / 'manifest.json'}")
    step(5, "ranking for one test user (Feast online lookup + ONNX) ...")
    _demo_ranking(repo, out)
    step(6, "evaluating on the cold ads and held-out users ...")
    from .evaluation import format_table

    click.echo(format_table(pipeline.evaluate(repo, settings, progress=progress)))
    step(7, "writing the report ...")
    from .report import write_report

    click.echo(f"report: {write_report(repo)}")
    click.echo(f"demo finished in {time.perf_counter() - t0:.0f} s")


def _demo_ranking(repo: Path, models: Path) -> None:
    import pandas as pd

    from .demo_world import IMPRESSIONS_FILE
    from .feast_adapter import open_store, read_ads
    from .ranking import Ranker

    imps = pd.read_parquet(repo / "data" / IMPRESSIONS_FILE, columns=["user_id", "user_split"])
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
@click.option("--handoff", is_flag=True,
              help="Also train every cold ad with >= warm.min_impressions impressions (it is then served warm).")
@quiet_option
def train_warm(repo: Path, impressions: Path | None, ads: tuple[str, ...], handoff: bool, quiet: bool) -> None:
    """Fit one L2 logistic regression per warm ad and store it in the warm weights view."""
    from . import pipeline

    _print_warm(pipeline.train_warm(repo, _settings(repo), impressions_path=impressions,
                                    ad_ids=list(ads) or None, handoff=handoff, progress=not quiet))


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


def backend_options(f):
    """Flags shared by generate, materialize, evaluate and backtest."""
    opts = [
        click.option("--llm", default=None, help="LLM backend: local, openai, knn or pkg.mod:Class (config: llm.name)."),
        click.option("--model", default=None, help="Model for the backend: a name for openai (e.g. gpt-4o-mini), "
                     "a GGUF file path for local."),
        click.option("--embedder", default=None, help="Embedder: minilm or clip (config: embedder.name)."),
        click.option("--shots", type=int, default=None, help="Few-shot examples per prompt (0 = zero-shot)."),
        click.option("--batch-size", type=int, default=None, help="Features per LLM call (0 = all)."),
        click.option("--samples", type=int, default=None, help="Samples averaged per feature."),
        click.option("--temperature", type=float, default=None, help="Sampling temperature."),
        click.option("--reasoning/--no-reasoning", default=None, help="Ask for analysis before the weights."),
        click.option("--caption/--no-caption", default=None, help="Include image captions in prompts."),
        click.option("--send-image/--no-send-image", default=None, help="Attach the ad image (multimodal models)."),
        click.option("--concurrency", type=int, default=None, help="LLM calls in flight."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _backend_settings(repo: Path, llm, model, embedder, shots, batch_size, samples, temperature, reasoning, caption,
                      send_image, concurrency):
    from .config import load_settings

    base = load_settings(repo)
    flags = {"generation.shots": shots, "generation.batch_size": batch_size, "generation.samples": samples,
             "generation.temperature": temperature, "generation.reasoning": reasoning,
             "generation.include_caption": caption, "generation.send_image": send_image,
             "generation.concurrency": concurrency}
    if llm is not None and llm != base.llm.name:
        flags["llm"] = {"name": llm, "options": {}}
    settings = base.with_overrides(**flags)
    if model is not None:
        key = "gguf_path" if settings.llm.name == "local" else "model"  # the local backend's model is a file
        settings = settings.with_overrides(**{"llm.options": {**settings.llm.options, key: model}})
    if embedder is not None:
        settings = settings.with_overrides(embedder={"name": embedder, "options": {}})
    return settings


@cli.command()
@repo_option
@click.option("--embedder", default=None, help="Embedder: minilm or clip (config: embedder.name).")
@quiet_option
def index(repo: Path, embedder: str | None, quiet: bool) -> None:
    """Embed the warm ads and build (or reuse) the Faiss index used for few-shot retrieval."""
    from . import pipeline

    settings = _settings(repo)
    if embedder:
        settings = settings.with_overrides(embedder={"name": embedder, "options": {}})
    _, inputs = pipeline.build_index(repo, settings, progress=not quiet)
    idx = inputs.index
    click.echo(f"warm index: {len(idx)} ads, dim {idx.dim}, embedder {idx.embedder_id}, "
               f"{'reused' if getattr(idx, 'from_cache', False) else 'built'} at {pipeline.data_dir(repo) / pipeline.INDEX_DIR}")


@cli.command()
@repo_option
@backend_options
@click.option("--ads", multiple=True, help="Generate only these ad ids (default: every active ad).")
@click.option("--force", is_flag=True, help="Regenerate even when inputs are unchanged.")
@quiet_option
def generate(repo: Path, ads: tuple[str, ...], force: bool, quiet: bool, **backend) -> None:
    """Write weights for cold ads with the LLM hypernetwork; appends to the generation log."""
    from . import pipeline

    rows = pipeline.generate(repo, _backend_settings(repo, **backend), ad_ids=list(ads) or None, force=force,
                             progress=not quiet)
    _print_generation(rows, pipeline.data_dir(repo) / pipeline.LOG_DIR)


def _print_generation(rows, log_dir: Path) -> None:
    if rows.empty:
        click.echo(f"nothing to generate: every ad's weights are current (log: {log_dir}); use --force to redo")
        return
    counts = rows["source"].value_counts().to_dict()
    click.echo(f"generated {len(rows)} ads ({', '.join(f'{k}={v}' for k, v in counts.items())}); "
               f"LLM calls {int(rows['calls'].sum())}, prompt tokens {int(rows['prompt_tokens'].sum())}, "
               f"completion tokens {int(rows['completion_tokens'].sum())}; log: {log_dir}")
    for r in rows[rows["source"] == "fallback"].head(5).itertuples():
        click.echo(f"  fallback {r.ad_id}: {r.fallback_reason[:200]}")
    if rows.attrs.get("stopped"):
        click.echo(f"warning: {rows.attrs['stopped']}\n  fix the backend and re-run: ads that hit backend errors are retried",
                   err=True)


@cli.command()
@repo_option
@backend_options
@click.option("--force", is_flag=True, help="Regenerate and rewrite every cold ad.")
@quiet_option
def materialize(repo: Path, force: bool, quiet: bool, **backend) -> None:
    """Generate missing/stale cold-ad weights, calibrate them and write them into Feast (offline + online)."""
    from . import pipeline

    report = pipeline.materialize(repo, _backend_settings(repo, **backend), force=force, progress=not quiet)
    click.echo(f"generated {report.generated} ads; wrote {report.written} rows to '{report.view}' "
               f"({', '.join(f'{k}={v}' for k, v in report.sources.items()) or 'nothing changed'})")
    if report.stopped:
        click.echo(f"warning: generation {report.stopped}; ads that hit backend errors were written with the prior "
                   "and are retried by the next run", err=True)


@cli.command()
@repo_option
@backend_options
@click.option("--all", "show_all", is_flag=True, help="List every ad, not only the counts and non-current ones.")
def status(repo: Path, show_all: bool, **backend) -> None:
    """Count warm, cold-current, cold-stale and cold-missing ads (as `materialize` would see them)."""
    from . import pipeline

    table = pipeline.status(repo, _backend_settings(repo, **backend))
    click.echo(" ".join(f"{k}={v}" for k, v in table["state"].value_counts().sort_index().items()))
    shown = table if show_all else table[~table["state"].isin(["warm", "cold-current"])]
    for r in shown.head(200).itertuples():
        click.echo(f"  {r.ad_id} [{r.status}] {r.state}: {r.reason}")


@cli.command()
@repo_option
@backend_options
@click.option("--ablate", "ablations", multiple=True,
              type=click.Choice(["shots", "caption", "batch_size", "samples", "scale", "reasoning"]),
              help="Add one row per value of this option (repeatable).")
@click.option("--impressions", type=click.Path(path_type=Path), default=None,
              help="Impressions parquet with user_split (default: <repo>/data/impressions.parquet).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples for CIs.")
@quiet_option
def evaluate(repo: Path, ablations: tuple[str, ...], impressions: Path | None, fmt: str, bootstrap: int, quiet: bool,
             **backend) -> None:
    """Compare LLM-HYPER with LR_cold, LR_warm, kNN prior, text-embedding cosine (and the demo oracle)."""
    import json

    from . import pipeline
    from .evaluation import format_table

    rows = pipeline.evaluate(repo, _backend_settings(repo, **backend), ablations=list(ablations),
                             impressions_path=impressions, n_boot=bootstrap, progress=not quiet and fmt == "table")
    click.echo(json.dumps(rows, indent=1, default=float) if fmt == "json" else format_table(rows))


@cli.command()
@repo_option
@backend_options
@click.option("--sample", type=int, default=30, show_default=True, help="Warm ads to treat as cold.")
@click.option("--impressions", type=click.Path(path_type=Path), default=None, help="Impressions parquet.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@quiet_option
def backtest(repo: Path, sample: int, impressions: Path | None, fmt: str, quiet: bool, **backend) -> None:
    """Treat warm ads as cold (never retrieving themselves) and compare generated with trained weights."""
    import json

    from . import pipeline

    r = pipeline.run_backtest(repo, _backend_settings(repo, **backend), sample=sample, impressions_path=impressions,
                              progress=not quiet and fmt == "table")
    summary = {k: r[k] for k in ("backend", "cosine", "spearman", "knn_cosine", "knn_spearman", "click_gauc",
                                 "knn_click_gauc", "trained_click_gauc", "best_lambda", "fallbacks")}
    if fmt == "json":
        click.echo(json.dumps(summary, indent=1, default=float))
        return
    click.echo(f"backtest of {summary['backend']} on {len(r['ads'])} warm ads (saved for the deployment gate)")
    click.echo(f"  cosine with trained weights   {r['cosine']:.3f}   (kNN prior {r['knn_cosine']:.3f})")
    click.echo(f"  Spearman with trained weights {r['spearman']:.3f}   (kNN prior {r['knn_spearman']:.3f})")
    click.echo(f"  within-ad click GAUC          {r['click_gauc']:.3f}   (kNN prior {r['knn_click_gauc']:.3f}, "
               f"trained {r['trained_click_gauc']:.3f})")
    click.echo(f"  best blend lambda (llm share) {r['best_lambda']:.2f}; fallbacks {r['fallbacks']}")


@cli.group()
def coupon() -> None:
    """The UCI in-vehicle coupon data as a real-data Feast repo."""


@coupon.command("build")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path),
              default=Path("../shared/data/in-vehicle-coupon-recommendation.csv"), show_default=True,
              help="The UCI in-vehicle coupon CSV.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("coupon_repo"), show_default=True,
              help="Folder for the new Feast repo (created).")
@click.option("--holdout", type=float, default=0.3, show_default=True, help="Share of offers held out as cold.")
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option
def coupon_build(csv_path: Path, out: Path, holdout: float, seed: int, quiet: bool) -> None:
    """Build a Feast repo (user features with definitions, offers as ads, split) from the coupon CSV."""
    from .coupon_data import build_coupon_repo

    stats = build_coupon_repo(csv_path, out, holdout_share=holdout, seed=seed, progress=not quiet)
    click.echo(f"coupon repo at {out}: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    click.echo(f"next: llmhyper train-warm --repo {out} && llmhyper evaluate --repo {out}")


def _register_command_modules() -> None:
    from . import cli_report, cli_serving

    cli_serving.register(cli)
    cli_report.register(cli)


_register_command_modules()
