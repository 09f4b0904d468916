"""``llmhyper batch``: generate through the OpenAI Batch API, or from a ``vllm run-batch`` results file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from llmhyper_feast.cli.options import (
    backend_options,
    emit_json,
    format_option,
    json_stdout,
    quiet_option,
    repo_option,
    settings_from_flags,
)
from llmhyper_feast.errors import BackendError

ads_option = click.option("--ads", multiple=True, help="Only these ad ids (default: every active cold ad).")
force_option = click.option("--force", is_flag=True, help="Ask for every ad, even those whose weights are current.")
wait_option = click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait for open batches (progress bar); --no-wait polls once and ingests only finished ones.",
)
poll_option = click.option(
    "--poll-s", type=float, default=10.0, show_default=True, help="Seconds between polls of an open batch."
)


@click.group()
def batch() -> None:
    """Generate at batch prices: OpenAI Batch API jobs (resumable) or `vllm run-batch` result files.

    `batch run` submits, waits and generates in one go; a killed run resumes the same batch.
    Then `llmhyper materialize` writes the weights into Feast without new LLM calls.
    """


def _echo_report(report: Any, fmt: str) -> None:
    doc = report.to_dict()
    if fmt == "json":
        emit_json(doc)
    else:
        for b in doc["batches"]:
            counts = b.get("counts") or {}
            done = f" {counts.get('completed', 0)}/{counts.get('total', b.get('requests', 0))} done" if counts else ""
            where = b.get("batch_id") or b.get("source") or b["id"]
            error = f" ({b['error']})" if b.get("error") else ""
            size = f"{b.get('requests', 0)} requests, {b['ads']} ads"
            click.echo(f"batch {where}: {b.get('status')}, {size}{done}{error}")
        for path in doc["written"]:
            click.echo(f"wrote {path} (run it with: vllm run-batch -i {path} -o <results> --model <model>)")
        if doc["submitted"] or doc["resumed"]:
            click.echo(f"submitted {doc['submitted']} requests; resumed {len(doc['resumed'])} open batch(es)")
        if doc["ingested"] or doc["line_errors"] or doc["malformed"]:
            click.echo(
                f"cached {doc['ingested']} batch answers; {doc['line_errors']} requests came back with an error "
                f"(asked online); {doc['malformed']} unreadable lines"
            )
        if doc["generated"]:
            origins = ", ".join(f"{k}={v}" for k, v in doc["origins"].items())
            click.echo(f"generated {doc['generated']} ads ({origins}); online calls {doc['online_calls']}")
        if doc["pending_ads"]:
            state = "still open" if doc["waiting"] else "failed, expired or not answered"
            click.echo(
                f"{len(doc['pending_ads'])} ads pending (their batch is {state}), e.g. {doc['pending_ads'][:5]}; "
                "`llmhyper status` lists them"
            )
    if doc["stopped"]:
        raise BackendError(f"{doc['stopped']}. Fix the backend and re-run `llmhyper batch collect`.")


def _run_job(name: str, repo: Path, ads: tuple[str, ...], fmt: str, flags: dict[str, Any], **kwargs: Any) -> None:
    """Run ``jobs.batch.<name>`` with the flags' settings and print its report (JSON-only stdout with --format json)."""
    from llmhyper_feast.jobs import batch as job

    with json_stdout(fmt == "json"):
        report = getattr(job, name)(repo, settings_from_flags(repo, **flags), ad_ids=list(ads) or None, **kwargs)
    _echo_report(report, fmt)


@batch.command("run")
@repo_option
@backend_options
@ads_option
@force_option
@wait_option
@poll_option
@quiet_option
@format_option
def run_cmd(
    repo: Path, ads: tuple[str, ...], force: bool, wait: bool, poll_s: float, quiet: bool, fmt: str, **flags: Any
) -> None:
    """Submit (or resume) the batches, wait, cache the answers and generate the ads."""
    _run_job("run", repo, ads, fmt, flags, force=force, progress=not quiet, wait=wait, poll_s=poll_s)


@batch.command("submit")
@repo_option
@backend_options
@ads_option
@force_option
@click.option(
    "--write-only",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the JSONL input here (for `vllm run-batch -i`) instead of uploading it.",
)
@quiet_option
@format_option
def submit_cmd(
    repo: Path, ads: tuple[str, ...], force: bool, write_only: Path | None, quiet: bool, fmt: str, **flags: Any
) -> None:
    """Upload the requests not yet answered as Batch API jobs (open batches are kept, not resubmitted)."""
    _run_job("submit", repo, ads, fmt, flags, force=force, progress=not quiet, write_only=write_only)


@batch.command("collect")
@repo_option
@backend_options
@ads_option
@force_option
@wait_option
@poll_option
@click.option(
    "--batch-results",
    "results",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A results file of `vllm run-batch` (or a downloaded Batch API output file) to ingest; repeatable.",
)
@quiet_option
@format_option
def collect_cmd(
    repo: Path,
    ads: tuple[str, ...],
    force: bool,
    wait: bool,
    poll_s: float,
    results: tuple[Path, ...],
    quiet: bool,
    fmt: str,
    **flags: Any,
) -> None:
    """Ingest finished batches (and --batch-results files) into the answer cache, then generate."""
    _run_job(
        "collect",
        repo,
        ads,
        fmt,
        flags,
        force=force,
        progress=not quiet,
        wait=wait,
        poll_s=poll_s,
        results_files=list(results),
    )


@batch.command("status")
@repo_option
@backend_options
@format_option
def status_cmd(repo: Path, fmt: str, **flags: Any) -> None:
    """Poll the open batches once and list every batch record of the repo."""
    from llmhyper_feast.jobs import batch as job

    with json_stdout(fmt == "json"):
        summaries = job.refresh(repo, settings_from_flags(repo, **flags))
    if fmt == "json":
        emit_json(summaries)
        return
    if not summaries:
        click.echo("no batch jobs recorded; `llmhyper batch run` starts one")
    for b in summaries:
        counts = b.get("counts") or {}
        done = f" {counts.get('completed', 0)}/{counts.get('total', 0)} done" if counts else ""
        error = f" ({b['error']})" if b.get("error") else ""
        where = b.get("batch_id") or b.get("source") or b["id"]
        click.echo(f"{where}: {b.get('status')}, {b.get('requests', 0)} requests, {b['ads']} ads{done}{error}")


COMMANDS = (batch,)
