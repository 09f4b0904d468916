"""The only module that talks to Feast: repo checks, apply, schema discovery, reads and writes.

``import feast`` costs seconds of CPU, so it happens inside functions, not at import time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmhyper_feast.errors import DataError, FeatureRepoError, StoreUnavailableError
from llmhyper_feast.features import Ad, FeatureDefinition, FeatureSchema, clean_text
from llmhyper_feast.store.layout import check_repo

if TYPE_CHECKING:
    from feast import FeatureStore

    from llmhyper_feast.config import InputsConfig

ROLE_TAG = "llmhyper.role"
ORDER_TAG = "llmhyper.order"
USER_ROLE, AD_CONTENT_ROLE = "user_features", "ad_content"
WARM_ROLE, GENERATED_ROLE = "warm_weights", "generated_weights"
NUMERIC_DTYPES = {"Float32", "Float64", "Int32", "Int64", "Bool"}
_log = logging.getLogger(__name__)


def open_store(repo: str | Path) -> FeatureStore:
    """Open the Feast store of ``repo`` (raises when the repo was never applied)."""
    path = check_repo(repo)
    registry = local_registry_path(path)
    if registry is not None and not registry.exists():
        raise FeatureRepoError(
            f"The repo {path} has not been applied: its registry {registry} does not exist. "
            f"Run `llmhyper apply --repo {repo}` (or `llmhyper demo data --repo {repo}` for the demo world)."
        )
    os.environ.setdefault("FEAST_USAGE", "False")
    from feast import FeatureStore

    return FeatureStore(repo_path=str(path))


def local_registry_path(repo: Path) -> Path | None:
    """The file registry named by ``feature_store.yaml`` (None for SQL, remote or object-store registries)."""
    import yaml

    try:
        config = yaml.safe_load((repo / "feature_store.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FeatureRepoError(f"{repo / 'feature_store.yaml'} cannot be read: {exc}. Fix the file.") from None
    entry = config.get("registry", "data/registry.db") if isinstance(config, dict) else None
    if isinstance(entry, dict):
        if entry.get("registry_type", "file") != "file":
            return None
        entry = entry.get("path")
    if not isinstance(entry, str) or "://" in entry:
        return None
    registry = Path(entry)
    return registry if registry.is_absolute() else repo / registry


def apply_repo(repo: str | Path, *, rebuild_registry: bool = False) -> str:
    """Run ``feast apply`` on ``repo`` in a subprocess (fresh imports of the definitions).

    Refuses a registry copied from another repo (applying it would drop that repo's online
    tables); ``rebuild_registry`` sets the registry aside first and applies a fresh one.
    """
    from llmhyper_feast.store import guard

    path = check_repo(repo)
    note = ""
    if rebuild_registry:
        moved = guard.set_aside_registry(path)
        note = f"registry set aside as {moved}; applying a fresh one\n" if moved else ""
    else:
        guard.check_registry_is_own(path)
    env = {**os.environ, "FEAST_USAGE": "False"}
    cmd = [sys.executable, "-c", "from feast.cli.cli import cli; cli()", "apply"]
    proc = subprocess.run(cmd, cwd=path, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise FeatureRepoError(f"`feast apply` failed in {path}:\n{tail}")
    ensure_sources(open_store(path))
    return note + proc.stdout


def _views_with_role(store: FeatureStore, role: str) -> list[Any]:
    views = [fv for fv in store.list_feature_views(allow_cache=False) if fv.tags.get(ROLE_TAG) == role]
    return sorted(views, key=lambda fv: (int(fv.tags.get(ORDER_TAG, "1000000")), fv.name))


def view_for_role(store: FeatureStore, role: str) -> Any:
    """The one feature view tagged ``llmhyper.role: <role>``."""
    views = _views_with_role(store, role)
    if len(views) != 1:
        raise FeatureRepoError(
            f"Expected exactly one feature view tagged {ROLE_TAG}: {role}, found "
            f"{[v.name for v in views] or 'none'}. Tag one view with it in the feature repo and run `feast apply`."
        )
    return views[0]


def read_feature_schema(store: FeatureStore) -> FeatureSchema:
    """User features from the registry: views tagged user_features, fields in declared order."""
    views = _views_with_role(store, USER_ROLE)
    if not views:
        raise FeatureRepoError(
            f"No feature view is tagged {ROLE_TAG}: {USER_ROLE}. Add tags={{'{ROLE_TAG}': '{USER_ROLE}'}} "
            "to the views whose features the LLM should weigh, then run `feast apply`."
        )
    defs, seen = [], set()
    for fv in views:
        for field in fv.features:  # .features keeps declared order; .schema does not
            dtype = str(field.dtype).split(".")[-1]
            if not (field.description or "").strip():
                raise FeatureRepoError(
                    f"Feature '{fv.name}:{field.name}' has no description. The description is the LLM's "
                    "definition of the feature: add Field(..., description='what it measures') and run `feast apply`."
                )
            if dtype not in NUMERIC_DTYPES:
                raise FeatureRepoError(
                    f"Feature '{fv.name}:{field.name}' has type {dtype}; user features must be numeric "
                    f"({', '.join(sorted(NUMERIC_DTYPES))}). Move it out of the tagged view or change its type."
                )
            if field.name in seen:
                raise FeatureRepoError(
                    f"Feature name '{field.name}' appears in two user feature views; names must be unique."
                )
            seen.add(field.name)
            defs.append(FeatureDefinition(field.name, field.description.strip(), dtype, fv.name))
    return FeatureSchema(tuple(defs))


def _source_path(store: FeatureStore, fv: Any) -> Path:
    path = getattr(fv.batch_source, "path", None)
    if not path:
        raise FeatureRepoError(f"Feature view '{fv.name}' needs a file (parquet) batch source for llmhyper-feast.")
    p = Path(path)
    return p if p.is_absolute() else Path(store.repo_path) / p


def _arrow_type(dtype: Any) -> Any:
    import pyarrow as pa

    name = str(dtype).split(".")[-1]
    simple = {
        "Float32": pa.float32(),
        "Float64": pa.float64(),
        "Int32": pa.int32(),
        "Int64": pa.int64(),
        "String": pa.string(),
        "Bool": pa.bool_(),
        "UnixTimestamp": pa.timestamp("us", tz="UTC"),
    }
    if name in simple:
        return simple[name]
    if name.startswith("Array(Float32") or "Array" in name and "Float32" in name:
        return pa.list_(pa.float32())
    raise FeatureRepoError(f"Unsupported field type {name} in an llmhyper view.")


def _source_schema(fv: Any) -> Any:
    """The arrow schema of a weights view's parquet source: join keys, features, event_timestamp."""
    import pyarrow as pa

    fields = [pa.field(k, pa.string()) for k in fv.join_keys]
    fields += [pa.field(f.name, _arrow_type(f.dtype)) for f in fv.features]
    fields.append(pa.field("event_timestamp", pa.timestamp("us", tz="UTC")))
    return pa.schema(fields)


def _write_parquet(table: Any, path: str) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)


def ensure_sources(store: FeatureStore) -> None:
    """Create empty parquet sources for the weights views so that appends have a schema."""
    import functools

    import pyarrow as pa

    from llmhyper_feast.store.files import atomic_write

    for role in (WARM_ROLE, GENERATED_ROLE):
        for fv in _views_with_role(store, role):
            path = _source_path(store, fv)
            if path.exists():
                continue
            empty = pa.Table.from_pylist([], schema=_source_schema(fv))
            atomic_write(path, functools.partial(_write_parquet, empty))
    ensure_user_priors_sources(store)


def _unreadable_source(store: FeatureStore, fv: Any, path: Path, exc: BaseException) -> DataError:
    """The error for a parquet source that cannot be read, naming the file and how to recover."""
    import pyarrow.parquet as pq

    from llmhyper_feast.store.layout import backup_of

    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    backup = backup_of(path)
    try:
        pq.read_metadata(backup)
        fix = f"restore the version kept by the last write with `cp {backup} {path}`, then re-run"
    except Exception:  # no usable backup: fall back to starting a new history
        root = Path(store.repo_path).resolve()
        rebuild = {WARM_ROLE: "llmhyper train-warm", GENERATED_ROLE: "llmhyper materialize"}.get(
            fv.tags.get(ROLE_TAG, "")
        )
        if rebuild:
            fix = (
                f"move it aside and start a new history with `mv {path} {path}.corrupt && llmhyper apply --repo "
                f"{root} && {rebuild} --repo {root}` (earlier history rows are lost)"
            )
        else:
            fix = "restore it from whatever produced it, then re-run"
    return DataError(f"The offline source of '{fv.name}' at {path} is unreadable ({reason}): {fix}.")


def _local_path(store: FeatureStore, fv: Any) -> Path | None:
    """The parquet file behind ``fv`` when its batch source is a local FileSource, else None."""
    return _source_path(store, fv) if _is_local_file_source(fv) else None


def _read_error(store: FeatureStore, fv: Any, exc: BaseException) -> DataError:
    """The one-line DataError for a view whose offline source Feast could not read (or that lacks columns)."""
    from llmhyper_feast.store import offline

    path = _local_path(store, fv)
    where = (
        str(path)
        if path is not None
        else f"{fv.batch_source.name!r} ({offline.offline_store_name(store)} offline store)"
    )
    if isinstance(exc, offline.MissingColumnsError):
        return DataError(
            f"The offline source of '{fv.name}' at {where} lacks column(s) {exc.missing} (it has {exc.present}). "
            "Add them to the source, or fix the view's fields and run `llmhyper apply`."
        )
    cause = exc.cause if isinstance(exc, offline.SourceReadError) else exc
    if path is not None:
        return _unreadable_source(store, fv, path, cause)
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return DataError(
        f"The offline source of '{fv.name}' at {where} cannot be read ({reason}): check the offline_store "
        f"settings in {Path(store.repo_path).resolve() / 'feature_store.yaml'} and that the source exists."
    )


def _holds_no_rows(store: FeatureStore, fv: Any, path: Path) -> bool:
    """Whether ``fv``'s local parquet holds no rows while a store other than Feast's file store reads it.

    Feast's Ray offline store fails on an empty dataset (it asks an empty dataset for its schema),
    so an empty source is known to be empty from its footer (row count only, no rows are read).
    """
    import pyarrow.parquet as pq

    from llmhyper_feast.store import offline

    if offline.read_by_file_store(store, fv.batch_source):
        return False
    try:
        return pq.read_metadata(path).num_rows == 0
    except Exception:  # an unreadable file: the store's read reports it
        return False


def _read_view(store: FeatureStore, fv: Any, *, latest: bool, features: list[str] | None = None) -> pd.DataFrame | None:
    """Rows of ``fv`` read through Feast's offline store (store/offline.py); None when its local file is absent.

    None too when that file holds no rows and a store other than Feast's file store reads it.
    """
    from llmhyper_feast.store import offline

    path = _local_path(store, fv)
    if path is not None and (not path.exists() or _holds_no_rows(store, fv, path)):
        return None
    keys, declared, _, created = offline.view_columns(fv)
    needed = [
        *keys,
        *(declared if features is None else features),
        fv.batch_source.timestamp_field or "event_timestamp",
    ]
    try:
        offline.check_columns(store, fv, needed + ([created] if created else []))
        if latest:
            return offline.read_latest(store, fv)
        return offline.read_all(store, fv, features=features)
    except (offline.SourceReadError, offline.MissingColumnsError) as exc:
        raise _read_error(store, fv, exc) from exc


def read_latest(store: FeatureStore, view_name: str) -> pd.DataFrame:
    """Latest row per entity of a view, read through Feast's offline store; DataError when the source is unreadable.

    Rows are ordered by event time, ties by entity key (the same order whatever store holds them).
    """
    fv = store.get_feature_view(view_name)
    df = _read_view(store, fv, latest=True)
    if df is None:
        return pd.DataFrame(columns=[*fv.join_keys, *(f.name for f in fv.features), "event_timestamp"])
    return df


def read_ads(
    store: FeatureStore, status: str | None = None, *, inputs: InputsConfig | None = None
) -> tuple[list[Ad], pd.DataFrame]:
    """Ads from the ad content view (optionally only one status), validated and cleaned.

    Titles and captions lose their control characters (newlines and tabs become spaces) and
    are cut to ``inputs.max_title_chars`` / ``max_caption_chars`` (``inputs`` None: the repo's
    settings); the returned frame holds the cleaned texts and ``attrs["text_cleaning"]`` counts.
    """
    limits = inputs if inputs is not None else _repo_inputs(store)
    df = read_latest(store, view_for_role(store, AD_CONTENT_ROLE).name)
    if status is not None:
        df = df[df["status"] == status]
    df = df.reset_index(drop=True)
    titles, cut_titles, dirty_titles = _clean_column(df["title"], limits.max_title_chars)
    captions, cut_captions, dirty_captions = (
        _clean_column(df["caption"], limits.max_caption_chars) if "caption" in df else ([], 0, 0)
    )
    empty = [i for i, t in enumerate(titles) if not t.strip()]
    if empty:
        raise DataError(
            f"{len(empty)} ad(s) have no title (e.g. {df['ad_id'].iloc[empty[0]]}; control characters do not "
            "count). Every ad needs a title/message: fill the 'title' column of the ad content source and re-run."
        )
    df["title"] = titles
    if "caption" in df:
        df["caption"] = captions
    counts = {
        "titles_cut": cut_titles,
        "captions_cut": cut_captions,
        "control_characters_removed": dirty_titles + dirty_captions,
    }
    df.attrs["text_cleaning"] = counts
    if cut_titles or cut_captions or dirty_titles or dirty_captions:
        _log.warning(
            "Ad content: cut %d title(s) to %d characters and %d caption(s) to %d characters (inputs.max_title_chars, "
            "inputs.max_caption_chars); removed control characters from %d text(s).",
            cut_titles,
            limits.max_title_chars,
            cut_captions,
            limits.max_caption_chars,
            dirty_titles + dirty_captions,
        )
    ads = [
        Ad(
            r.ad_id,
            r.title,
            r.caption if isinstance(r.caption, str) else "",
            r.image_uri if isinstance(r.image_uri, str) and r.image_uri else None,
        )
        for r in df.itertuples()
    ]
    return ads, df


def read_user_matrix(
    store: FeatureStore,
    schema: FeatureSchema,
    *,
    user_ids: Iterable[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
    inputs: InputsConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """User ids and their features (float64 [users, n], schema order, always finite) from the offline store.

    Missing and non-finite values (NaN, inf) are replaced by the feature's mean over the
    finite values of every stored user (see :func:`impute_non_finite`); a feature with no
    finite value, or with more than ``inputs.max_missing_share`` of its values missing, raises
    DataError. ``inputs`` None: the repo's settings.
    """
    limits = inputs if inputs is not None else _repo_inputs(store)
    frames = []
    for view_name in dict.fromkeys(f.view for f in schema.features):
        fv = store.get_feature_view(view_name)
        cols = [f.name for f in schema.features if f.view == view_name]
        df = read_latest(store, view_name)
        frames.append(df.set_index(fv.join_keys[0])[cols])
    joined = pd.concat(frames, axis=1, join="inner")
    if joined.empty:
        raise DataError("No users found in the offline store for the user feature views. Load user features first.")
    population = joined[schema.names].to_numpy(np.float64)
    mean = finite_population_mean(population, schema.names)
    check_missing_share(population, schema.names, limits.max_missing_share)
    if user_ids is not None:
        wanted = list(user_ids)
        unknown = [u for u in wanted if u not in joined.index]
        if unknown:
            raise DataError(
                f"{len(unknown)} user id(s) have no rows in the user feature views (e.g. {unknown[:5]}). "
                "Load their features or leave them out."
            )
        joined = joined.loc[wanted]
    elif sample is not None and sample < len(joined):
        joined = joined.sample(n=sample, random_state=seed)
    users, counts = impute_non_finite(joined[schema.names].to_numpy(np.float64), mean)
    if counts.any():
        imputed = {n: int(c) for n, c in zip(schema.names, counts) if c}
        _log.warning(
            "Imputed %d missing or non-finite user feature value(s) with the feature's finite population mean: %s",
            int(counts.sum()),
            dict(list(imputed.items())[:10]),
        )
    return joined.index.to_numpy(), users


IMPRESSIONS_ROLE = "impressions"
IMPRESSION_COLUMNS = ("user_id", "ad_id", "clicked", "event_timestamp")  # plus the optional user_split


def impressions_view(store: FeatureStore) -> Any | None:
    """The feature view tagged ``llmhyper.role: impressions`` (None when the repo registers none)."""
    views = _views_with_role(store, IMPRESSIONS_ROLE)
    return view_for_role(store, IMPRESSIONS_ROLE) if views else None


def read_impressions(store: FeatureStore, *, chunk_rows: int | None = None) -> pd.DataFrame:
    """Every impression of the view tagged ``impressions``, read through Feast's offline store.

    Columns user_id, ad_id, clicked (int8 0/1), event_timestamp and, when the view declares it,
    user_split; ordered by (event_timestamp, ad_id, user_id) so every store gives the same frame.
    """
    from llmhyper_feast.store import offline

    fv = view_for_role(store, IMPRESSIONS_ROLE)
    declared = [*fv.join_keys, *(f.name for f in fv.features), "event_timestamp"]
    missing = [c for c in IMPRESSION_COLUMNS if c not in declared]
    if missing:
        raise FeatureRepoError(
            f"The impressions view '{fv.name}' lacks column(s) {missing}; it needs {list(IMPRESSION_COLUMNS)} "
            "(join keys user_id and ad_id, a 0/1 'clicked' field, optional 'user_split'). Fix it and run `feast apply`."
        )
    features = ["clicked", *(["user_split"] if "user_split" in declared else [])]

    def compact(chunk: pd.DataFrame) -> pd.DataFrame:
        clicked = pd.to_numeric(chunk["clicked"], errors="coerce")
        if not clicked.isin([0, 1]).all():
            raise DataError(f"The impressions column 'clicked' of '{fv.name}' must hold 0/1 values only.")
        return chunk.assign(clicked=clicked.astype(np.int8))

    path = _local_path(store, fv)
    if path is not None and not path.exists():
        raise DataError(
            f"No impressions at {path} (the source of the view '{fv.name}'). Write them there "
            "(user_id, ad_id, clicked, event_timestamp[, user_split]) or pass --impressions PATH."
        )
    keys = fv.join_keys
    try:
        offline.check_columns(store, fv, [*keys, *features, fv.batch_source.timestamp_field or "event_timestamp"])
        df = offline.read_all(store, fv, features=features, chunk_rows=chunk_rows, reduce=compact)
    except (offline.SourceReadError, offline.MissingColumnsError) as exc:
        raise _read_error(store, fv, exc) from exc
    order = ["event_timestamp", "ad_id", "user_id", *[c for c in df.columns if c not in IMPRESSION_COLUMNS]]
    df = df.sort_values(order, kind="stable").reset_index(drop=True)
    return df[["user_id", "ad_id", "clicked", *features[1:], "event_timestamp"]]


def _repo_inputs(store: FeatureStore) -> InputsConfig:
    from llmhyper_feast.config import load_settings

    return load_settings(store.repo_path).inputs


def _clean_column(values: pd.Series, max_chars: int) -> tuple[list[str], int, int]:
    """(cleaned texts, how many were cut, how many held control characters); non-strings become ""."""
    out, cut, dirty = [], 0, 0
    for value in values:
        text = value if isinstance(value, str) else ""
        clean = clean_text(text)
        dirty += clean != text
        if len(clean) > max_chars:
            clean, cut = clean[:max_chars].rstrip(), cut + 1
        out.append(clean)
    return out, cut, dirty


def finite_population_mean(matrix: np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
    """Per-column mean of the finite values of ``matrix`` [users, n]: NaN and inf are ignored, never returned.

    Raises DataError naming the column(s) that have no finite value or whose mean overflows.
    """
    x = np.asarray(matrix, np.float64)
    if x.ndim != 2:
        raise DataError(f"A user feature matrix must be 2-D [users, features]. Got shape {x.shape} instead.")
    finite = np.isfinite(x)
    labels = list(names) if names is not None else [f"column {j}" for j in range(x.shape[1])]
    empty = [labels[j] for j in np.flatnonzero(~finite.any(axis=0))]
    if empty:
        raise DataError(
            f"User feature(s) {empty[:10]} have no finite value (all missing, NaN or inf); no value can be imputed. "
            "Fix those columns in the user feature source, or remove the features from the tagged views and run "
            "`feast apply`."
        )
    count = finite.sum(axis=0)
    with np.errstate(over="ignore", invalid="ignore"):
        # dividing first keeps the sum of huge finite values finite
        mean = np.where(finite, x / np.maximum(count, 1), 0.0).sum(axis=0)
    overflow = [labels[j] for j in np.flatnonzero(~np.isfinite(mean))]
    if overflow:
        raise DataError(
            f"User feature(s) {overflow[:10]} hold values too large to average in float64. Rescale them in the "
            "user feature source."
        )
    return mean


def check_missing_share(matrix: np.ndarray, names: Sequence[str], max_share: float) -> None:
    """Raise DataError when a column of ``matrix`` has more than ``max_share`` missing or non-finite values."""
    x = np.asarray(matrix, np.float64)
    if x.shape[0] == 0:
        return
    share = (~np.isfinite(x)).mean(axis=0)
    bad = {names[int(j)]: round(float(share[j]), 4) for j in np.flatnonzero(share > max_share)}
    if bad:
        raise DataError(
            f"User feature(s) {dict(list(bad.items())[:10])} have more than {max_share:g} of their values missing "
            "or non-finite (NaN, inf). Fix the user feature source, or raise inputs.max_missing_share to impute "
            "them with the feature's mean."
        )


def impute_non_finite(matrix: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``matrix`` with every NaN/inf replaced by ``mean`` of its column, count of replaced values per column).

    The one missing-value rule for user features: training, calibration, ranking and export
    all see what this returns. ``mean`` must be finite (see :func:`finite_population_mean`).
    """
    x = np.asarray(matrix)
    m = np.asarray(mean, x.dtype if x.dtype.kind == "f" else np.float64)
    if not np.isfinite(m).all():
        raise DataError("The imputation mean must be finite; compute it with finite_population_mean.")
    bad = ~np.isfinite(x)
    if not bad.any():
        return x, np.zeros(x.shape[-1], np.int64)
    return np.where(bad, m, x), bad.reshape(-1, x.shape[-1]).sum(axis=0)


TEST_KILL_ENV = "LLMHYPER_TEST_KILL_AT"


def _test_kill_point(point: str, tmp: str | None = None) -> None:
    """Test hook only (tests/reliability): SIGKILL this process at ``point`` when LLMHYPER_TEST_KILL_AT names it.

    ``offline-write:N`` first cuts the temp parquet to N bytes (at most all but one), as if the
    kill hit while byte N was being written; ``between-writes`` and ``after-online`` take no N.
    """
    name, _, arg = os.environ.get(TEST_KILL_ENV, "").partition(":")
    if name != point:
        return
    import signal

    if tmp is not None and arg:
        os.truncate(tmp, min(int(arg), max(os.path.getsize(tmp) - 1, 0)))
    os.kill(os.getpid(), signal.SIGKILL)


def _is_local_file_source(fv: Any) -> bool:
    from feast import FileSource

    source = fv.batch_source
    return isinstance(source, FileSource) and bool(source.path) and "://" not in source.path


def _keep_previous(path: Path) -> None:
    """Hard-link the current ``path`` as its backup before it is replaced (free: no copy)."""
    from llmhyper_feast.store.layout import backup_of

    backup = backup_of(path)
    link = path.parent / f".{backup.name}.tmp"
    try:
        if backup.exists() and os.path.samefile(path, backup):
            return  # a killed write already linked it (and rename() between two links is a no-op)
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, backup)
    except OSError as exc:  # e.g. a filesystem without hard links: the write stays atomic, only unbacked
        _log.debug("No backup of %s kept: %s", path, exc)
    finally:
        link.unlink(missing_ok=True)


def _append_to_file_source(store: FeatureStore, fv: Any, df: pd.DataFrame) -> None:
    """Append ``df`` to ``fv``'s local parquet: the whole history is rewritten to a temp file and renamed over it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmhyper_feast.store.files import atomic_write

    path = _source_path(store, fv)
    previous = None
    if path.exists():
        try:
            previous = pq.read_table(path).replace_schema_metadata(None)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable_source(store, fv, path, exc) from exc
    schema = previous.schema if previous is not None else _source_schema(fv)
    if sorted(schema.names) != sorted(df.columns):
        raise DataError(
            f"The offline source {path} of '{fv.name}' has columns {schema.names}, the view now has "
            f"{list(df.columns)}. Move the file aside (`mv {path} {path}.old`) and run `llmhyper apply` to start "
            "a new one."
        )
    try:
        new = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False).replace_schema_metadata(None)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"Rows for '{fv.name}' do not fit the column types of {path}: {exc}") from exc
    table = new if previous is None else pa.concat_tables([previous, new])
    for orphan in path.parent.glob(f".{path.name}.*.tmp"):  # left by killed writes; the repo lock is ours
        orphan.unlink(missing_ok=True)
    if previous is not None:
        _keep_previous(path)

    def write(tmp: str) -> None:
        pq.write_table(table, tmp)
        _test_kill_point("offline-write", tmp)

    atomic_write(path, write)


def _pending_write(fv: Any, df: pd.DataFrame) -> Any:
    from llmhyper_feast.store.journal import PendingWrite

    keys = tuple(fv.join_keys)
    entities = tuple(tuple(str(v) for v in row) for row in df[list(keys)].itertuples(index=False))
    versions = df["weights_version"] if "weights_version" in df else df["event_timestamp"]
    return PendingWrite(
        view=fv.name,
        join_keys=keys,
        entities=entities,
        event_timestamp=str(df["event_timestamp"].max()),
        versions={"|".join(e): str(v) for e, v in zip(entities, versions, strict=True)},
    )


def write_view(store: FeatureStore, view_name: str, df: pd.DataFrame, *, online: bool = True) -> None:
    """Append rows to a view's offline source, then write them online; columns checked first.

    For a local parquet FileSource the append is whole-file-or-nothing (temp file, fsync, rename;
    the replaced version stays as ``<file>.bak``): Feast's own file ``offline_write_batch``
    rewrites the parquet in place, which a kill can tear. Other sources go through Feast's
    ``write_to_offline_store`` (one call for all rows: its atomicity is the store's), and an
    offline store without offline writes is refused before anything is written (see
    :func:`check_writable`). The write is journaled from before the offline half until the online
    half is done, so a run killed in between is finished by :func:`finish_pending_writes`; an
    offline half that fails leaves nothing to finish and nothing online. Runs under the repo lock.
    """
    from llmhyper_feast.store import journal
    from llmhyper_feast.store.layout import RepoLayout
    from llmhyper_feast.store.lock import repo_lock

    fv = store.get_feature_view(view_name)
    expected = [*fv.join_keys, *(f.name for f in fv.features), "event_timestamp"]
    missing, extra = sorted(set(expected) - set(df.columns)), sorted(set(df.columns) - set(expected))
    if missing or extra:
        raise DataError(f"Rows for '{view_name}' do not match its schema: missing {missing}, unexpected {extra}.")
    if df.empty:
        return
    check_writable(store, fv)
    df = df[expected]
    layout = RepoLayout.of(store.repo_path)
    with repo_lock(layout.root, "a write_view() call"):
        earlier = journal.pending(layout).get(view_name) if online and layout.pending_writes.exists() else None
        if online:
            journal.record(layout, _pending_write(fv, df))
        try:
            if _is_local_file_source(fv):
                _append_to_file_source(store, fv, df)
            else:
                _write_offline_through_feast(store, fv, df)
        except BaseException:
            if online and earlier is None:  # nothing reached the online store: there is nothing to finish
                journal.clear(layout, view_name)
            raise
        if online:
            _test_kill_point("between-writes")
            write_online(store, fv, df)
            _test_kill_point("after-online")
            journal.clear(layout, view_name)


def check_writable(store: FeatureStore, fv: Any) -> None:
    """Raise FeatureRepoError when ``fv`` has a non-file source and the offline store cannot take writes."""
    from llmhyper_feast.store import offline

    if _is_local_file_source(fv) or offline.can_write(store):
        return
    name = offline.offline_store_name(store)
    raise FeatureRepoError(
        f"The '{name}' offline store cannot take writes (Feast offline_write_batch), so the rows of '{fv.name}' "
        f"cannot be stored in its source {fv.batch_source.name!r}. Give '{fv.name}' a parquet FileSource instead "
        f"(e.g. FileSource(path='data/{fv.name}.parquet', timestamp_field='event_timestamp')) and run "
        "`llmhyper apply`: the plugin writes it atomically and reads it through Feast's file offline store."
    )


def _write_offline_through_feast(store: FeatureStore, fv: Any, df: pd.DataFrame) -> None:
    """``store.write_to_offline_store`` for every row at once; a failure names the store and how to recover."""
    from llmhyper_feast.store import offline

    try:
        store.write_to_offline_store(fv.name, df)
    except Exception as exc:  # the store's own error type
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"The '{offline.offline_store_name(store)}' offline store failed writing {len(df)} row(s) of '{fv.name}' "
            f"({reason}); nothing was written online. Fix the store and re-run the command: it writes these rows "
            "again with a newer event_timestamp, which supersedes any the store kept."
        ) from exc


RAY_BATCH_ENGINE = "ray.engine"


def batch_engine_type(store: FeatureStore) -> str:
    """The ``batch_engine`` type ``feature_store.yaml`` names (``local`` when it names none)."""
    raw = store.config.batch_engine_config
    if isinstance(raw, dict):
        return str(raw.get("type") or "local")
    return str(raw or "local")


def write_online(store: FeatureStore, fv: Any, df: pd.DataFrame, *, newest: Any = None) -> None:
    """Put rows already stored offline into the online store.

    Under ``batch_engine: ray.engine`` Feast's engine does it: ``materialize`` over the rows'
    event-time window (oldest row of ``df`` to ``newest``, default the newest row of ``df``),
    reading the view's offline source. Each write carries a timestamp newer than every earlier
    row (``weights.next_timestamp``), so the window holds exactly these rows. Otherwise (and for a
    parquet view the repo's offline store cannot read) ``write_to_online_store`` writes ``df``.
    An engine failure raises UnavailableError; the caller's journal entry stays for the next run.
    """
    import contextlib
    from datetime import timedelta

    from llmhyper_feast.store import offline

    engine = batch_engine_type(store)
    if engine != RAY_BATCH_ENGINE or offline.routed_to_file_store(store, fv.batch_source):
        store.write_to_online_store(fv.name, df)
        return
    stamps = pd.to_datetime(df["event_timestamp"], utc=True)
    start = stamps.min().to_pydatetime()
    last = stamps.max() if newest is None else max(stamps.max(), pd.to_datetime(newest, utc=True))
    end = last.to_pydatetime() + timedelta(microseconds=1)  # one tick past the newest row, in any end convention
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Feast prints a banner per view; stdout is the CLI's JSON
            store.materialize(start_date=start, end_date=end, feature_views=[fv.name])
    except Exception as exc:  # Ray's and the stores' own error types
        from llmhyper_feast.errors import UnavailableError

        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        root = Path(store.repo_path).resolve()
        raise UnavailableError(
            f"Feast's batch engine '{engine}' failed moving {len(df)} row(s) of '{fv.name}' online ({reason}); "
            f"they are stored offline and journaled: fix batch_engine (ray_address, ray_conf) in "
            f"{root / 'feature_store.yaml'} or remove it, then re-run `llmhyper materialize --repo {root}`, which "
            "finishes the write."
        ) from exc


def finish_pending_writes(store: FeatureStore) -> dict[str, int]:
    """Finish writes a killed run left half done: their rows' latest offline values go online.

    Returns rows written online per view (empty when nothing was pending).
    """
    from feast.errors import FeatureViewNotFoundException

    from llmhyper_feast.store import journal
    from llmhyper_feast.store.layout import RepoLayout
    from llmhyper_feast.store.lock import repo_lock

    layout = RepoLayout.of(store.repo_path)
    if not layout.pending_writes.exists():
        return {}
    done: dict[str, int] = {}
    with repo_lock(layout.root, "a finish_pending_writes() call"):
        for view, entry in journal.pending(layout).items():
            try:
                fv = store.get_feature_view(view)
            except FeatureViewNotFoundException:
                _log.warning("Dropping the pending write of '%s': the view no longer exists.", view)
                journal.clear(layout, view)
                continue
            latest = read_latest(store, view)
            wanted = set(entry.entities)
            newest = latest["event_timestamp"].max() if len(latest) else None
            if len(latest):
                keys = list(entry.join_keys)
                mask = [tuple(str(v) for v in row) in wanted for row in latest[keys].itertuples(index=False)]
                latest = latest[mask]
            if len(latest):
                columns = [*fv.join_keys, *(f.name for f in fv.features), "event_timestamp"]
                write_online(store, fv, latest[columns].reset_index(drop=True), newest=newest)
            journal.clear(layout, view)
            done[view] = len(latest)
            _log.warning(
                "Finished an interrupted write: copied %d row(s) of '%s' from the offline store online.",
                len(latest),
                view,
            )
    return done


def materialize_sources(store: FeatureStore, views: list[str]) -> None:
    """Copy the latest offline rows of ``views`` into the online store.

    Feast's ``materialize`` copies the views the repo's offline store reads; a parquet view that
    Feast's file store reads for it (weights under e.g. a PostgreSQL offline store) is copied
    from :func:`read_latest` with ``write_to_online_store``.
    """
    from datetime import datetime, timedelta

    from llmhyper_feast.store import offline

    routed = [v for v in views if offline.routed_to_file_store(store, store.get_feature_view(v).batch_source)]
    native = [v for v in views if v not in routed]
    if native:
        end = datetime.now(UTC) + timedelta(minutes=1)
        store.materialize(start_date=end - timedelta(days=3650), end_date=end, feature_views=native)
    for view in routed:
        latest = read_latest(store, view)
        if len(latest):
            store.write_to_online_store(view, latest.reset_index(drop=True))


def get_online(store: FeatureStore, features: list[str], entity_rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """``get_online_features(...).to_dict()``; a missing or corrupt online store raises StoreUnavailableError."""
    try:
        return store.get_online_features(features=features, entity_rows=entity_rows).to_dict()
    except Exception as exc:
        error = store_unavailable_error(exc, store)
        if error is None:
            raise
        raise error from exc


# --- online store integrity (copied registries, missing or corrupt online stores) -----------


def recorded_online_tables(registry_file: Path) -> list[tuple[str, str]]:
    """(path, table) of every SQLite online table a file registry records in its infra."""
    from feast.protos.feast.core.Registry_pb2 import Registry

    proto = Registry()
    try:
        proto.ParseFromString(registry_file.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError; an unreadable file is the same problem
        raise FeatureRepoError(
            f"The registry {registry_file} is unreadable ({type(exc).__name__}). Move it aside and run "
            "`llmhyper apply` to build a fresh one."
        ) from exc
    return [
        (o.sqlite_table.path, o.sqlite_table.name)
        for o in proto.infra.infra_objects
        if o.WhichOneof("infra_object") == "sqlite_table"
    ]


def online_store_path(store: FeatureStore) -> Path | None:
    """The SQLite file of the repo's online store (None when the online store is not SQLite)."""
    config = store.config.online_store
    if type(config).__name__ != "SqliteOnlineStoreConfig":
        return None
    path = Path(config.path)
    return path if path.is_absolute() else Path(store.repo_path).resolve() / path


def _unusable_reason(exc: BaseException) -> str | None:
    """Why ``exc`` means the online store itself is unusable (None for any other error)."""
    import sqlite3

    if isinstance(exc, sqlite3.DatabaseError):
        name = getattr(exc, "sqlite_errorname", "")
        if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith("no such table"):
            return f"a table is missing: {exc}"
        if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_CANTOPEN"):
            return f"{exc} ({name})"
        return None
    postgres = _postgres_reason(exc)
    if postgres is not None:
        return postgres
    try:
        from redis import exceptions as redis_errors
    except ImportError:
        return None
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
        return f"Redis is unreachable: {exc}"
    return None


def _postgres_reason(exc: BaseException) -> str | None:
    """Why a psycopg error means a PostgreSQL online store is unusable (None for any other error)."""
    try:
        import psycopg
    except ImportError:
        return None
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"a table is missing: {str(exc).strip().splitlines()[0]}"
    if isinstance(exc, psycopg.OperationalError):  # connection refused, lost, timed out, bad credentials
        return f"PostgreSQL is unreachable: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}"
    return None


def store_unavailable_error(exc: BaseException, store: FeatureStore) -> StoreUnavailableError | None:
    """The one-line StoreUnavailableError for an online read that failed on a missing/corrupt store, else None."""
    reason = None
    seen: BaseException | None = exc
    while seen is not None and reason is None:  # Feast sometimes wraps the driver's error
        reason = _unusable_reason(seen)
        seen = seen.__cause__ or seen.__context__
    if reason is None:
        return None
    root = Path(store.repo_path).resolve()
    config = store.config.online_store
    where = online_store_path(store) or (
        f"postgres {config.host}:{config.port}/{config.database}"
        if reason.startswith("PostgreSQL")
        else type(config).__name__
    )
    if reason.startswith("Redis"):
        fix = (
            f"make Redis reachable (online_store.connection_string in {root / 'feature_store.yaml'}), then run "
            f"`llmhyper repair --repo {root}` if its data was lost"
        )
    elif reason.startswith("PostgreSQL"):
        fix = (
            f"make PostgreSQL reachable (online_store host, port, database, user in {root / 'feature_store.yaml'}), "
            f"then run `llmhyper repair --repo {root}` if its data was lost"
        )
    else:
        fix = f"run `llmhyper repair --repo {root}` to recreate its tables and reload them from the offline store"
    return StoreUnavailableError(f"The online store {where} is unusable ({reason}): {fix}.")


def online_views(store: FeatureStore) -> list[Any]:
    """Every feature view served online, by name."""
    return sorted((fv for fv in store.list_feature_views(allow_cache=False) if fv.online), key=lambda fv: fv.name)


def recreate_online_tables(store: FeatureStore) -> list[str]:
    """Create the online tables of every online view that lacks one; nothing is dropped. Returns the views."""
    views = online_views(store)
    # partial=True: Feast only creates (IF NOT EXISTS) the tables of the views passed, deleting nothing
    store.apply([*store.list_entities(allow_cache=False), *views], partial=True)
    return [fv.name for fv in views]


# --- user priors (llmhyper_feast.userpriors): history, advertisers and the user_llm_priors view ----

HISTORY_ROLE, ADVERTISERS_ROLE, USER_PRIORS_ROLE = "user_history", "advertisers", "user_priors"
HISTORY_EVENTS = ("impression", "click", "conversion")


def _user_priors_schema(fv: Any) -> Any:
    """Arrow schema of a user-priors view's parquet source (string arrays allowed)."""
    import pyarrow as pa

    fields = [pa.field(k, pa.string()) for k in fv.join_keys]
    for f in fv.features:
        name = str(f.dtype).split(".")[-1]
        arrow = pa.list_(pa.string()) if "Array" in name and "String" in name else _arrow_type(f.dtype)
        fields.append(pa.field(f.name, arrow))
    fields.append(pa.field("event_timestamp", pa.timestamp("us", tz="UTC")))
    return pa.schema(fields)


def ensure_user_priors_sources(store: FeatureStore) -> None:
    """Create empty parquet sources for the history, advertisers, user priors and derived prior-feature views."""
    import functools

    import pyarrow as pa

    from llmhyper_feast.store.files import atomic_write

    views = [fv for role in (HISTORY_ROLE, ADVERTISERS_ROLE, USER_PRIORS_ROLE) for fv in _views_with_role(store, role)]
    views += [fv for fv in store.list_feature_views() if (fv.tags or {}).get("llmhyper.derived") == "user_priors"]
    for fv in {v.name: v for v in views}.values():
        if not _is_local_file_source(fv):
            continue
        path = _source_path(store, fv)
        if not path.exists():
            empty = pa.Table.from_pylist([], schema=_user_priors_schema(fv))
            atomic_write(path, functools.partial(_write_parquet, empty))


def read_history(store: FeatureStore) -> pd.DataFrame:
    """Every event of the view tagged ``user_history`` (user_id, advertiser_id, ad_id, event, event_timestamp).

    Sorted by user and time; DataError for unknown event names or an unreadable source.
    """
    fv = view_for_role(store, HISTORY_ROLE)
    columns = ["user_id", "advertiser_id", "ad_id", "event", "event_timestamp"]
    declared = [*fv.join_keys, *(f.name for f in fv.features), "event_timestamp"]
    missing = sorted(set(columns) - set(declared))
    if missing:
        raise FeatureRepoError(
            f"The user history view '{fv.name}' lacks fields {missing}; it needs {columns}. "
            "Add them and run `feast apply`."
        )
    df = _read_view(store, fv, latest=False, features=[c for c in columns[1:-1]])
    if df is None:
        return pd.DataFrame(columns=columns)
    path = _local_path(store, fv) or fv.batch_source.name
    bad = sorted(set(df["event"].unique()) - set(HISTORY_EVENTS))
    if bad:
        raise DataError(
            f"The user history source {path} holds unknown events {bad[:5]}; allowed: {list(HISTORY_EVENTS)}. "
            "Fix the 'event' column."
        )
    df = df[columns].copy()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    return df.sort_values(["user_id", "event_timestamp"], kind="stable").reset_index(drop=True)


def read_advertisers(store: FeatureStore) -> pd.DataFrame:
    """Latest row per advertiser of the view tagged ``advertisers`` (advertiser_id, name, category)."""
    return read_latest(store, view_for_role(store, ADVERTISERS_ROLE).name)


def user_priors_view(store: FeatureStore) -> Any:
    """The feature view tagged ``user_priors`` (where user priors are stored)."""
    return view_for_role(store, USER_PRIORS_ROLE)


def write_user_priors(store: FeatureStore, df: pd.DataFrame) -> None:
    """Append user priors rows offline and write them online (see :func:`write_view`)."""
    fv = user_priors_view(store)
    ensure_user_priors_sources(store)
    write_view(store, fv.name, df)


# --- direct reads of a SQLite online store (the ranking service's per-request lookup) -------


def sqlite_online_layout(store: FeatureStore, view_names: Sequence[str]) -> dict[str, Any] | None:
    """What a direct read of the SQLite online store needs, in Feast's own terms; None when not SQLite.

    ``{"path": Path, "tables": {view: table}, "join_key": str, "entity_key": f(str) -> bytes,
    "value": ValueProto class}``: the table names Feast gives the views and Feast's own
    ``serialize_entity_key`` for a single string join key, so the rows read are the rows Feast wrote.
    None too when the views' entity is not one string join key (the SDK path serves those).
    """
    import struct

    from feast.infra.key_encoding_utils import deserialize_entity_key, serialize_entity_key
    from feast.infra.online_stores.helpers import compute_table_id
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    path = online_store_path(store)
    if path is None or getattr(store.config.online_store, "vector_enabled", False):
        return None
    views = [store.get_feature_view(v) for v in view_names]
    columns = {tuple((c.name, str(c.dtype)) for c in fv.entity_columns) for fv in views}
    if len(columns) != 1 or len(next(iter(columns))) != 1 or next(iter(columns))[0][1] != "String":
        return None
    join_key = next(iter(columns))[0][0]
    version = store.config.entity_key_serialization_version
    versioning = store.config.registry.enable_online_feature_view_versioning

    def feast_key(value: str) -> bytes:
        proto = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)])
        return bytes(serialize_entity_key(proto, entity_key_serialization_version=version))

    # Feast's encoding of one string key is <constant prefix><uint32 length><utf-8 bytes>: take the
    # prefix from Feast itself and use it only if it reproduces Feast's bytes (and Feast reads them back)
    prefix = feast_key("")[:-4]

    def entity_key(value: str) -> bytes:
        raw = value.encode("utf-8")
        return prefix + struct.pack("<I", len(raw)) + raw

    probes = ("", "u000001", "é" * 300, "a\x00b")
    if not all(
        entity_key(p) == feast_key(p)
        and list(deserialize_entity_key(entity_key(p), version).entity_values[0].string_val) == list(p)
        for p in probes
    ):
        entity_key = feast_key

    tables = {fv.name: compute_table_id(store.config.project, fv, versioning) for fv in views}
    return {"path": path, "tables": tables, "join_key": join_key, "entity_key": entity_key, "value": Value}
