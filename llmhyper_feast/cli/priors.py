"""``llmhyper priors``: user priors (next advertisers per user): generate, evaluate, sft-data, finetune, features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from llmhyper_feast.cli.options import emit_json, format_option, json_stdout, quiet_option, repo_option

_FLAGS = [
    click.option("--llm", default=None, help="LLM backend: local, openai, pkg.mod:Class, or none (baseline only)."),
    click.option("--model", default=None, help="The backend's model. Setting: llm.options.model."),
    click.option("--k", type=int, default=None, help="Advertisers per list. Setting: user_priors.k."),
    click.option("--concurrency", type=int, default=None, help="LLM calls in flight."),
]


def _priors_flags(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(_FLAGS):
        f = opt(f)
    return f


def _settings(repo: Path, llm: str | None, model: str | None, k: int | None, concurrency: int | None) -> Any:
    from llmhyper_feast.config import resolve_settings
    from llmhyper_feast.store.layout import check_repo

    check_repo(repo)
    return resolve_settings(
        repo,
        {"llm.name": llm, "llm.options.model": model, "user_priors.k": k, "generation.concurrency": concurrency},
    )


@click.group()
def priors() -> None:
    """User priors: the advertisers each user is predicted to convert with next (Feast view user_llm_priors)."""


@priors.command("generate")
@repo_option
@_priors_flags
@click.option("--user", "users", multiple=True, help="Only these user ids (default: users active recently).")
@click.option("--as-of", default=None, help="Run as of this date (default: the newest event in the history).")
@click.option("--force", is_flag=True, help="Re-infer selected users even when their profile did not change.")
@format_option
@quiet_option
def generate(
    repo: Path,
    llm: str | None,
    model: str | None,
    k: int | None,
    concurrency: int | None,
    users: tuple[str, ...],
    as_of: str | None,
    force: bool,
    fmt: str,
    quiet: bool,
) -> None:
    """Infer users active in the last user_priors.active_days whose profile changed; write the view."""
    from llmhyper_feast.jobs.priors import generate_user_priors

    settings = _settings(repo, llm, model, k, concurrency)
    with json_stdout(fmt == "json"):
        report = generate_user_priors(
            repo, settings, users=list(users) or None, as_of=as_of, force=force, progress=not quiet and fmt != "json"
        )
    if fmt == "json":
        emit_json(report.as_dict())
        return
    click.echo(
        f"as of {report.as_of}: {report.selected} users selected, {report.unchanged} unchanged, "
        f"{report.inferred} inferred {report.origins}, {report.calls} LLM calls; wrote {report.written} rows"
    )
    if report.stopped:
        click.echo(f"warning: {report.stopped}", err=True)


@priors.command("evaluate")
@repo_option
@_priors_flags
@click.option("--snapshot", default=None, help="Split date (default: the newest event minus the window).")
@click.option(
    "--compare-model",
    default=None,
    help="A second model of the same backend (e.g. a `priors finetune` checkpoint dir), scored as row llm_compare.",
)
@format_option
@quiet_option
def evaluate(
    repo: Path,
    llm: str | None,
    model: str | None,
    k: int | None,
    concurrency: int | None,
    snapshot: str | None,
    compare_model: str | None,
    fmt: str,
    quiet: bool,
) -> None:
    """recall@1/5/20 of the next converting advertiser: the LLM against popularity, frequent and co-occurrence."""
    from llmhyper_feast.jobs.priors import evaluate_user_priors
    from llmhyper_feast.userpriors.evaluate import format_table

    settings = _settings(repo, llm, model, k, concurrency)
    with json_stdout(fmt == "json"):
        result = evaluate_user_priors(
            repo, settings, snapshot=snapshot, compare_model=compare_model, progress=not quiet and fmt != "json"
        )
    if fmt == "json":
        emit_json(result)
    else:
        click.echo(format_table(result))


@priors.command("sft-data")
@repo_option
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSONL to write.")
@click.option("--snapshots", default=None, help="Comma-separated dates (default: two before the evaluation snapshot).")
@click.option("--window-days", type=int, default=None, help="Label window after each snapshot (default 30).")
@format_option
def sft_data(repo: Path, out: Path, snapshots: str | None, window_days: int | None, fmt: str) -> None:
    """Fine-tuning examples: the prompts `generate` sends, answered with the user's next conversion advertiser."""
    from llmhyper_feast.jobs.priors import write_sft_data

    settings = _settings(repo, None, None, None, None)
    with json_stdout(fmt == "json"):
        dates = [d.strip() for d in snapshots.split(",") if d.strip()] if snapshots else None
        report = write_sft_data(repo, settings, out, snapshots=dates, window_days=window_days)
    if fmt == "json":
        emit_json(report)
        return
    click.echo(
        f"wrote {report['examples']} examples ({report['users']} users, snapshots {report['snapshots']}) to {out}; "
        f"left out {report['heldout_skipped']} held-out users and {report['label_not_in_pool']} labels outside the pool"
    )


@priors.command("finetune")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Checkpoint dir.")
@click.option("--base", default=None, help="Base GGUF model (default: the local backend's SmolLM2-135M).")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--lora/--full", default=True, show_default=True, help="LoRA adapters (merged on save) or all weights.")
@click.option("--max-examples", type=int, default=None, help="Train on at most this many examples (seeded sample).")
@click.option("--max-length", type=int, default=2048, show_default=True, help="Tokens per example (longer: skipped).")
@click.option("--lr", type=float, default=None, help="Learning rate (default 1e-3 LoRA, 5e-5 full).")
@click.option("--seed", type=int, default=0, show_default=True)
@format_option
@quiet_option
def finetune(
    data: Path,
    out: Path,
    base: str | None,
    epochs: int,
    lora: bool,
    max_examples: int | None,
    max_length: int,
    lr: float | None,
    seed: int,
    fmt: str,
    quiet: bool,
) -> None:
    """Supervised fine-tuning on CPU (loss on the answers only); the checkpoint loads with --llm local --model DIR."""
    from llmhyper_feast.userpriors.finetune import FinetuneConfig
    from llmhyper_feast.userpriors.finetune import finetune as run

    config = FinetuneConfig(
        epochs=epochs, lora=lora, max_examples=max_examples, max_length=max_length, lr=lr, seed=seed
    )
    with json_stdout(fmt == "json"):
        report = run(data, out, base=base, config=config, progress=not quiet and fmt != "json")
    if fmt == "json":
        emit_json(report)
        return
    click.echo(
        f"trained on {report['examples']} examples for {report['steps']} steps in {report['seconds']} s "
        f"(loss {report['first_loss']:.3f} -> {report['last_loss']:.3f}); saved {out}"
    )


@priors.command("features")
@repo_option
@format_option
def features(repo: Path, fmt: str) -> None:
    """Write the view user_prior_features: per user and category, the predicted share of next conversions."""
    from llmhyper_feast.jobs.priors import write_prior_features

    settings = _settings(repo, None, None, None, None)
    with json_stdout(fmt == "json"):
        report = write_prior_features(repo, settings)
    if fmt == "json":
        emit_json(report)
    else:
        click.echo(
            f"wrote {report['users']} rows to {report['view']} ({report['from_priors']} from stored priors, "
            f"{report['from_baseline']} from the fallback baseline)"
        )


@priors.command("evaluate-filter")
@repo_option
@click.option(
    "--models",
    "model_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="An all-ads export (`llmhyper export --out DIR`).",
)
@click.option(
    "--source",
    type=click.Choice(["frequent", "popularity", "cooccurrence", "stored"]),
    default="frequent",
    show_default=True,
    help="Priors: a baseline fitted before the snapshot, or the stored user_llm_priors rows.",
)
@click.option("--snapshot", default=None, help="Split date (default: the newest event minus the window).")
@click.option("--event", type=click.Choice(["conversion", "click"]), default="conversion", show_default=True)
@format_option
def evaluate_filter(repo: Path, model_dir: Path, source: str, snapshot: str | None, event: str, fmt: str) -> None:
    """Recall@1/5/10 of the next converted ad and coverage: all ads versus candidates="priors" (restrict, boost)."""
    from llmhyper_feast.jobs.priors import evaluate_priors_filter, format_filter_table

    settings = _settings(repo, None, None, None, None)
    with json_stdout(fmt == "json"):
        result = evaluate_priors_filter(repo, model_dir, settings, source=source, snapshot=snapshot, event=event)
    if fmt == "json":
        emit_json(result)
    else:
        click.echo(format_filter_table(result))


COMMANDS = (priors,)
