"""The trust layer's commands: robustness (counterfactual rewrites) and judge-report (the judge's log)."""

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


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


@click.command()
@repo_option
@backend_options
@click.option(
    "--variants",
    "variants_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Hand-written variants, CSV or JSONL: ad_id, target_feature, variant (enhanced/diminished/neutralized), "
    "title, caption.",
)
@click.option("--rewrite", is_flag=True, help="Let the configured LLM write the variants.")
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Target feature per ad for --rewrite, CSV or JSONL: ad_id, target_feature. Default: the demo world's labels.",
)
@click.option("--ads", multiple=True, help="Test only these ad ids.")
@click.option("--limit", type=int, default=None, help="Test at most this many ads.")
@format_option
@quiet_option
def robustness(
    repo: Path,
    variants_path: Path | None,
    rewrite: bool,
    labels_path: Path | None,
    ads: tuple[str, ...],
    limit: int | None,
    fmt: str,
    quiet: bool,
    **flags: Any,
) -> None:
    """Rewrite labelled ads (enhanced / diminished / neutralized) and check the target weight moves accordingly.

    Without --variants or --rewrite the demo world's hand-written variants are used.
    """
    from llmhyper_feast.jobs.robustness import VARIANTS
    from llmhyper_feast.jobs.robustness import robustness as run
    from llmhyper_feast.store.layout import RepoLayout

    with json_stdout(fmt == "json"):
        result = run(
            repo,
            settings_from_flags(repo, **flags),
            variants_path=variants_path,
            rewrite=rewrite,
            labels_path=labels_path,
            ad_ids=list(ads) or None,
            limit=limit,
            progress=not quiet and fmt == "table",
        )
    if fmt == "json":
        emit_json(result)
        return
    click.echo(
        f"robustness of {result['source']} on {result['ads']} ads (variants: {result['variants_from']}; "
        f"judge {result['judge']})"
    )
    click.echo(f"  {'variant':<12} {'n':>4} {'correct':>7} {'accuracy':>8} {'mean change':>11}")
    for v in (*VARIANTS, "overall"):
        s = result["overall"] if v == "overall" else result["by_variant"][v]
        change = s.get("mean_change")
        click.echo(
            f"  {v:<12} {s['n']:>4} {s['correct']:>7} {_pct(s['accuracy']):>8} "
            f"{'' if change is None else f'{change:+.3f}':>11}"
        )
    click.echo(f"  note: {result['note']}")
    for s in result["skipped"][:5]:
        click.echo(f"  skipped {s['ad_id']} {s['variant']}: {s['reason'][:200]}")
    click.echo(f"saved: {RepoLayout.of(repo).robustness}")


@click.command("judge-report")
@repo_option
@format_option
def judge_report(repo: Path, fmt: str) -> None:
    """What the LLM judge did in the generation log (each ad's newest row) and the consistency rate."""
    from llmhyper_feast.generation.judge import judge_summary
    from llmhyper_feast.generation.runner import read_log
    from llmhyper_feast.store.layout import RepoLayout

    summary = judge_summary(read_log(RepoLayout.of(repo).generation_log, latest=True))
    if fmt == "json":
        emit_json(summary)
        return
    if not summary["ads_judged"]:
        click.echo("no judged ads in the generation log: generate with --judge on (setting generation.judge)")
        return
    click.echo(
        f"judged {summary['ads_judged']} ads: {summary['ads_flagged']} flagged "
        f"(sign {summary['flags']['sign']}, size {summary['flags']['size']}); "
        f"{summary['batches_regenerated']} batches regenerated, {summary['batches_rejected']} rejected "
        f"(prior used for {summary['ads_fallback_by_judge']} ads); judge calls {summary['judge_calls']}, "
        f"judge answers unusable for {summary['judge_notes']} ads"
    )
    rate = summary["consistency_rate"]
    click.echo(
        "consistency rate: "
        + (
            f"{rate:.3f} ({summary['consistency_agree']} of {summary['consistency_total']} stated signs agree)"
            if rate is not None
            else "n/a (needs generation.reasoning: on)"
        )
    )


COMMANDS = (robustness, judge_report)
