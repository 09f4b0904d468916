"""``llmhyper export``, ``rank`` and ``serve``: ONNX export of the served weights and ranking with it.

Errors of this package are turned into messages and exit codes by ``llmhyper_feast.cli.main``.
"""

from __future__ import annotations

from pathlib import Path

import click

from llmhyper_feast.cli.options import emit_json, format_option, quiet_option, repo_option

_models_help = "Export directory (default: <repo>/data/onnx)."
unknown_user_option = click.option(
    "--unknown-user",
    type=click.Choice(["error", "population_mean"]),
    default="error",
    show_default=True,
    help="Users without online features: fail (HTTP 404) or score them with the population mean.",
)


def _models_dir(repo: Path, models: Path | None) -> Path:
    from llmhyper_feast.store.layout import RepoLayout

    return models if models is not None else RepoLayout.of(repo).onnx


def _split(values: tuple[str, ...]) -> list[str]:
    """``--ads A --ads B,C`` -> [A, B, C]."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@click.command("export")
@repo_option
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help=_models_help)
@click.option(
    "--layout",
    type=click.Choice(["flat", "triton"]),
    default="flat",
    show_default=True,
    help="flat: all_ads/ and ads/<id>/; triton: a Triton model repository (<name>/1/model.onnx).",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=None,
    help="Also rank inside the all-ads model (outputs top_scores, top_indices).",
)
@click.option("--only-changed", is_flag=True, help="Rebuild per-ad models only for ads whose weights changed.")
@click.option("--per-ad/--no-per-ad", default=True, show_default=True, help="Write per-ad models too.")
@quiet_option
def export(
    repo: Path, out: Path | None, layout: str, top_k: int | None, only_changed: bool, per_ad: bool, quiet: bool
) -> None:
    """Export every ad's served model (warm > generated > LR_cold) as ONNX, with a manifest."""
    from collections import Counter

    from llmhyper_feast.serving.export import export_repo

    out = _models_dir(repo, out)
    manifest = export_repo(repo, out, layout=layout, top_k=top_k, only_changed=only_changed, per_ad=per_ad)
    sources = Counter(str(e.meta.get("source")) for e in manifest.ads.values())
    written = set(manifest.written)
    rebuilt = {m.ad_ids[0] for m in manifest.models.values() if m.kind != "all_ads" and m.path in written}
    click.echo(
        f"exported {len(manifest.ad_ids)} ads ({', '.join(f'{k}={v}' for k, v in sorted(sources.items()))}) "
        f"to {out} [{layout}]: all-ads model + {len(manifest.models) - 1} per-ad models "
        f"({len(rebuilt)} ads rebuilt)"
    )
    if not quiet:
        click.echo(
            f"  features: {len(manifest.feature_names)}, hash {manifest.feature_hash}; "
            f"files: {len(manifest.files)}, written now: {len(manifest.written)}"
        )


@click.command("rank")
@repo_option
@click.option("--user", "user_id", required=True, help="The user id (entity key of the user views).")
@click.option("--ads", multiple=True, help="Candidate ad ids (repeat or comma-separate; default: every ad).")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="How many ads to show.")
@click.option("--models", type=click.Path(path_type=Path, file_okay=False), default=None, help=_models_help)
@unknown_user_option
@format_option
def rank(
    repo: Path, user_id: str, ads: tuple[str, ...], k: int, models: Path | None, unknown_user: str, fmt: str
) -> None:
    """Rank ads for one user with the exported all-ads model and the user's Feast online features."""
    from llmhyper_feast.serving.ranker import Ranker
    from llmhyper_feast.store import feast_adapter as fa

    ranker = Ranker(repo, _models_dir(repo, models), unknown_user=unknown_user, reload_interval=None)
    res = ranker.rank(user_id, _split(ads) or None, k)
    if fmt == "json":
        emit_json(
            {
                "user_id": res.user_id,
                "model_version": res.model_version,
                "imputed_features": list(res.imputed),
                "user_fallback": res.user_fallback,
                "items": [r._asdict() for r in res.items],
            }
        )
        return
    _, ads_df = fa.read_ads(ranker.store)
    titles = dict(zip(ads_df["ad_id"], ads_df["title"]))
    click.echo(
        f"user {user_id}: top {len(res)} of {res.candidates} ads (model {res.model_version}, "
        f"features {res.feature_hash})"
    )
    if res.user_fallback:
        click.echo(f"  note: unknown user, scored with the {res.user_fallback.replace('_', ' ')}")
    if res.imputed:
        click.echo(f"  note: missing features replaced by the population mean: {', '.join(res.imputed)}")
    width = max([len("ad"), *(len(r.ad_id) for r in res.items)])
    click.echo(f"{'rank':>4}  {'ad':<{width}}  {'ctr':>8}  {'source':<9}  title")
    for i, r in enumerate(res.items, 1):
        title = str(titles.get(r.ad_id, ""))
        title = title if len(title) <= 70 else title[:67] + "..."
        click.echo(f"{i:>4}  {r.ad_id:<{width}}  {r.ctr:>8.5f}  {r.source:<9}  {title}")


@click.command("serve")
@repo_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--models", type=click.Path(path_type=Path, file_okay=False), default=None, help=_models_help)
@unknown_user_option
@click.option(
    "--reload-interval",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds between checks for a newer export in the models directory.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log one line per request.")
@click.option(
    "--online-lookup",
    type=click.Choice(["auto", "sqlite", "feast"]),
    default="auto",
    show_default=True,
    help="How user features are read: auto (direct reads of a SQLite online store, else the Feast SDK), "
    "sqlite or feast (the SDK's get_online_features).",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1024),
    default=64 * 1024,
    show_default=True,
    help="Larger POST /rank bodies are refused with HTTP 413 before they are parsed.",
)
def serve(
    repo: Path,
    host: str,
    port: int,
    models: Path | None,
    unknown_user: str,
    reload_interval: float,
    log_level: str,
    access_log: bool,
    max_body_bytes: int,
    online_lookup: str,
) -> None:
    """Serve POST /rank and GET /health over HTTP (uvicorn, one process)."""
    from llmhyper_feast.serving.http import serve as run
    from llmhyper_feast.serving.http import without_torch
    from llmhyper_feast.serving.ranker import Ranker

    model_dir = _models_dir(repo, models)
    with without_torch():  # Feast would load torch (~500 MB) for nothing serving uses
        ranker = Ranker(
            repo, model_dir, unknown_user=unknown_user, reload_interval=reload_interval, online_lookup=online_lookup
        )
    info = ranker.health()
    click.echo(
        f"serving {info['n_ads']} ads (model {info['model_version']}, features {info['feature_hash']}) "
        f"from {model_dir} on http://{host}:{port}"
    )
    run(ranker, host, port, log_level=log_level, access_log=access_log, max_body_bytes=max_body_bytes)


COMMANDS = (export, rank, serve)
