"""Options shared by the ``llmhyper`` commands, and how flags become Settings.

Every flag that maps to a setting names its dotted key here (``SETTING_FLAGS``); the values
go through :func:`llmhyper_feast.config.resolve_settings` with the file and the environment,
so precedence is the same for every key: flag > env > llmhyper.yaml > default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from llmhyper_feast.config import Settings

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_REPO = "feature_repo"

repo_option = click.option(
    "--repo",
    default=DEFAULT_REPO,
    show_default=True,
    type=click.Path(path_type=Path),
    help="The Feast feature repo (folder holding feature_store.yaml).",
)
quiet_option = click.option("--quiet", is_flag=True, help="Hide progress bars (ours and third-party ones).")
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json prints one JSON document on stdout and nothing else.",
)
impressions_option = click.option(
    "--impressions",
    type=click.Path(path_type=Path),
    default=None,
    help="Impressions parquet (user_id, ad_id, clicked[, user_split]). Default: <repo>/data/impressions.parquet.",
)

# flag name -> dotted settings key
SETTING_FLAGS: dict[str, str] = {
    "llm": "llm.name",
    "model": "llm.options.model",
    "embedder": "embedder.name",
    "prior": "prior.name",
    "shots": "generation.shots",
    "batch_size": "generation.batch_size",
    "samples": "generation.samples",
    "temperature": "generation.temperature",
    "reasoning": "generation.reasoning",
    "caption": "generation.include_caption",
    "send_image": "generation.send_image",
    "concurrency": "generation.concurrency",
    "allow_fallback": "generation.allow_fallback",
    "judge": "generation.judge",
    "engine": "engine",
}

engine_option = click.option(
    "--engine",
    default=None,
    help="Where heavy work runs: local (this process) or ray (Ray tasks; see ray.address). Setting: engine.",
)

_BACKEND_OPTIONS = [
    click.option(
        "--llm",
        default=None,
        help="LLM backend: local, openai, pkg.mod:Class, or none (the prior alone). Setting: llm.name.",
    ),
    click.option(
        "--model",
        default=None,
        help="The backend's model: a name for openai (e.g. gpt-4o-mini), a GGUF path for local. "
        "Setting: llm.options.model.",
    ),
    click.option("--prior", default=None, help="Weight prior for fallbacks and --llm none (knn). Setting: prior.name."),
    click.option("--embedder", default=None, help="Embedder: minilm or clip. Setting: embedder.name."),
    click.option("--shots", type=int, default=None, help="Few-shot examples per prompt (0 = zero-shot)."),
    click.option("--batch-size", type=int, default=None, help="Features per LLM call (0 = all)."),
    click.option("--samples", type=int, default=None, help="Samples averaged per feature."),
    click.option("--temperature", type=float, default=None, help="Sampling temperature."),
    click.option("--reasoning/--no-reasoning", default=None, help="Ask for analysis before the weights."),
    click.option("--caption/--no-caption", default=None, help="Include image captions in prompts."),
    click.option("--send-image/--no-send-image", default=None, help="Attach the ad image (multimodal models)."),
    click.option("--concurrency", type=int, default=None, help="LLM calls in flight."),
    click.option(
        "--judge",
        type=click.Choice(["off", "on"]),
        default=None,
        help="Check each batch of weights with a second LLM call; redo flagged ones once. Setting: generation.judge.",
    ),
    engine_option,
]


def backend_options(f: F) -> F:
    """Add the flags of generation settings (generate, materialize, status, evaluate, backtest)."""
    for opt in reversed(_BACKEND_OPTIONS):
        f = opt(f)
    return f


def settings_from_flags(repo: Path, **flags: Any) -> Settings:
    """Settings of ``repo`` with the given command-line flags (by flag name) on top."""
    from llmhyper_feast.config import resolve_settings
    from llmhyper_feast.store.layout import check_repo

    check_repo(repo)
    unknown = set(flags) - set(SETTING_FLAGS)
    if unknown:  # a programming error: every flag passed here must map to a setting
        raise TypeError(f"flags without a setting: {sorted(unknown)}")
    return resolve_settings(repo, {SETTING_FLAGS[k]: v for k, v in flags.items()})


def quiet_third_party() -> None:
    """Silence third-party progress bars and chatter (tqdm, transformers, sentence-transformers, HF hub)."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("transformers", "sentence_transformers", "huggingface_hub", "feast", "outlines"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["transformers"].utils.logging.disable_progress_bar()


@contextlib.contextmanager
def stdout_reserved_for_json() -> Iterator[TextIO]:
    """Send everything printed to stdout (ours, third-party, C extensions) to stderr while the block runs.

    Yields the real stdout: the caller writes its JSON document there after the block.
    """
    real = sys.stdout
    sys.stdout.flush()
    saved_fd = os.dup(1)
    try:
        os.dup2(2, 1)  # writes to fd 1 by native code land on stderr
        with contextlib.redirect_stdout(sys.stderr):
            yield real
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)


def emit_json(document: Any) -> None:
    """Print ``document`` as the only thing on stdout."""
    import json

    click.echo(json.dumps(document, indent=1, default=float))


def json_stdout(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """:func:`stdout_reserved_for_json` when ``enabled``, else a no-op."""
    return stdout_reserved_for_json() if enabled else contextlib.nullcontext()
