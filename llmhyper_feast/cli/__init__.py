"""The ``llmhyper`` command line: one module per command group, errors mapped in :func:`main`.

Exit codes (one per error family, see :mod:`llmhyper_feast.errors`): 0 success, 1 unexpected
error, 2 bad input or configuration, 3 unusable repo definitions or data, 4 a store or the
repo is unavailable (missing online store, lock held), 5 LLM/embedder backend failure,
6 refused by the deployment gate, 130 interrupted.
"""

from __future__ import annotations

import os
import sys

import click

from llmhyper_feast.errors import LLMHyperError, exit_code
from llmhyper_feast.store.redact import redact

__all__ = ["cli", "main"]

_FAMILY = {2: "input", 3: "repo", 4: "unavailable", 5: "backend", 6: "gate"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmhyper-feast")
def cli() -> None:
    """llmhyper: LLM-written CTR models for cold-start ads, stored in Feast and served as ONNX."""
    os.environ.setdefault("FEAST_USAGE", "False")
    if "--quiet" in sys.argv or "--format=json" in sys.argv or _json_requested(sys.argv):
        from llmhyper_feast.cli.options import quiet_third_party

        quiet_third_party()


def _json_requested(argv: list[str]) -> bool:
    return any(a == "--format" and b == "json" for a, b in zip(argv, argv[1:]))


def _register() -> None:
    from llmhyper_feast.cli import coupon, demo, evaluation, report, serving, store, weights

    for module in (demo, weights, store, evaluation, serving, report, coupon):
        for command in module.COMMANDS:
            cli.add_command(command)
    _register_trust()
    from llmhyper_feast.cli import setup as _setup
    from llmhyper_feast.cli.priors import priors  # user priors (issue 13)

    cli.add_command(priors)
    cli.add_command(_setup.init)  # issue 11: scaffold a repo
    cli.add_command(_setup.doctor)  # issue 11: check a repo


def _register_batch() -> None:
    from llmhyper_feast.cli.batch import batch  # issue 12: OpenAI Batch API / vllm run-batch

    cli.add_command(batch)


def _register_trust() -> None:
    from llmhyper_feast.cli import robustness

    for command in robustness.COMMANDS:
        cli.add_command(command)


_register()
_register_batch()


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
    except LLMHyperError as exc:
        code = exit_code(exc)
        family = _FAMILY.get(code)
        click.echo(redact(f"Error ({family}): {exc}" if family else f"Error: {exc}"), err=True)
        sys.exit(code)
