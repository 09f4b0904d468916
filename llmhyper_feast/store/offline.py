"""Reads and writes of feature views through the repo's Feast offline store (any store type).

Reads use the offline store interface ``feast materialize`` uses: ``pull_latest_from_table_or_query``
(latest row per entity) and ``pull_all_from_table_or_query`` (every row). What is bounded: the
result of one query is turned into pandas and reduced ``chunk_rows`` rows at a time, so pandas
memory stays at one chunk plus the reduced result (the latest rows, or the compact output of a
full read). A store whose retrieval job streams (``to_arrow_batches``, e.g. Snowflake) is also
never held whole as arrow; the file (dask) store materialises its query result as one arrow table.

Writes: a local parquet ``FileSource`` is written by ``feast_adapter`` itself (whole-file atomic
rename; Feast's file ``offline_write_batch`` rewrites the parquet in place, which a kill can tear).
Other sources go through ``FeatureStore.write_to_offline_store`` when the offline store implements
``offline_write_batch``; see :func:`check_writable`.

Only ``store/feast_adapter.py`` and this module talk to Feast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore

CHUNK_ROWS = 200_000
TIMESTAMP = "event_timestamp"  # what every reader calls the view's event timestamp column
# the widest window every offline store accepts (pandas timestamps end in 2262)
_START, _END = datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)


class SourceReadError(Exception):
    """Feast could not read a view's source; ``cause`` is the store's own error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class MissingColumnsError(Exception):
    """The view's source lacks columns the view declares; ``missing`` names them."""

    def __init__(self, missing: list[str], present: list[str]) -> None:
        super().__init__(f"missing {missing}")
        self.missing, self.present = missing, present


def offline_store(store: FeatureStore) -> Any:
    """The provider's offline store object (the one ``feast materialize`` reads with)."""
    return store._get_provider().offline_store


# offline stores that read a FileSource (parquet) themselves; under any other store a FileSource view
# (the documented home of weights when that store cannot take writes) is read by Feast's file store
_READS_FILES = ("file", "dask", "duckdb", "ray")


def _reader(store: FeatureStore, source: Any) -> tuple[Any, Any]:
    """(offline store, repo config) that reads ``source``: the repo's own, or Feast's file store for parquet."""
    from feast import FileSource
    from feast.infra.offline_stores.dask import DaskOfflineStore, DaskOfflineStoreConfig

    native = offline_store(store)
    config = store.config
    if not isinstance(source, FileSource) or isinstance(config.offline_store, DaskOfflineStoreConfig):
        return native, config
    if offline_store_name(store).split(".")[-1].lower() in _READS_FILES:
        return native, config
    routed = config.model_copy()
    routed._offline_store = DaskOfflineStoreConfig(type="file")  # type: ignore[assignment]
    return DaskOfflineStore(), routed


def read_by_file_store(store: FeatureStore, source: Any) -> bool:
    """Whether Feast's file (dask) offline store reads ``source`` (the repo's store, or routed to it)."""
    from feast.infra.offline_stores.dask import DaskOfflineStore

    return isinstance(_reader(store, source)[0], DaskOfflineStore)


def routed_to_file_store(store: FeatureStore, source: Any) -> bool:
    """Whether ``source`` is a parquet FileSource that Feast's file store reads for a repo with another store.

    Feast's own ``materialize`` would hand it to the repo's offline store, which cannot read it.
    """
    return _reader(store, source)[0] is not offline_store(store)


def offline_store_name(store: FeatureStore) -> str:
    """The offline store type as ``feature_store.yaml`` would name it (e.g. ``file``, ``postgres``)."""
    config = store.config.offline_store
    return str(getattr(config, "type", type(config).__name__))


def view_columns(fv: Any) -> tuple[list[str], list[str], str, str | None]:
    """(join keys, feature names, timestamp field, created timestamp column) of a view's batch source."""
    source = fv.batch_source
    return (
        list(fv.join_keys),
        [f.name for f in fv.features],
        source.timestamp_field or TIMESTAMP,
        source.created_timestamp_column or None,
    )


def source_column_names(store: FeatureStore, fv: Any) -> list[str]:
    """Column names of ``fv``'s batch source as the offline store reports them (schema only, no rows)."""
    try:
        _, config = _reader(store, fv.batch_source)
        return [name for name, _ in fv.batch_source.get_table_column_names_and_types(config)]
    except Exception as exc:  # the store's own error type: file, SQL driver, cloud client
        raise SourceReadError(exc) from exc


def check_columns(store: FeatureStore, fv: Any, required: list[str]) -> None:
    """Raise MissingColumnsError when the source lacks any of ``required`` (after the source's field mapping)."""
    present = source_column_names(store, fv)
    mapping = fv.batch_source.field_mapping or {}
    named = {mapping.get(c, c) for c in present} | set(present)
    missing = [c for c in required if c not in named]
    if missing:
        raise MissingColumnsError(missing, present)


def _job(store: FeatureStore, fv: Any, features: list[str], *, latest: bool) -> Any:
    keys, _, timestamp, created = view_columns(fv)
    reader, config = _reader(store, fv.batch_source)
    pull = reader.pull_latest_from_table_or_query if latest else reader.pull_all_from_table_or_query
    return pull(
        config=config,
        data_source=fv.batch_source,
        join_key_columns=keys,
        feature_name_columns=features,
        timestamp_field=timestamp,
        created_timestamp_column=created,
        start_date=_START,
        end_date=_END,
    )


def iter_batches(job: Any, chunk_rows: int) -> Iterator[pa.Table]:
    """The job's rows as arrow tables of at most ``chunk_rows`` rows (streamed when the job can)."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1. Got {chunk_rows} instead.")
    native = getattr(job, "to_arrow_batches", None)
    tables = native() if callable(native) else iter([job.to_arrow()])
    for table in tables:
        for offset in range(0, table.num_rows, chunk_rows):
            yield table.slice(offset, chunk_rows)


def iter_frames(
    store: FeatureStore,
    fv: Any,
    *,
    latest: bool,
    features: list[str] | None = None,
    chunk_rows: int | None = None,
) -> Iterator[pd.DataFrame]:
    """Chunks of ``fv``'s offline rows (join keys, ``features``, event_timestamp) through Feast.

    ``latest`` asks the store for the latest row per entity; otherwise every row. Column order:
    join keys, features, ``event_timestamp`` (the source's timestamp field, renamed). Errors of the
    store are raised as SourceReadError.
    """
    keys, declared, timestamp, created = view_columns(fv)
    wanted = declared if features is None else features
    extra = [created] if created else []
    columns = [*keys, *wanted, timestamp, *extra]
    try:
        job = _job(store, fv, wanted, latest=latest)
        for batch in iter_batches(job, chunk_rows or CHUNK_ROWS):
            df = batch.to_pandas()
            yield df[columns].rename(columns={timestamp: TIMESTAMP})
    except (MissingColumnsError, SourceReadError):
        raise
    except Exception as exc:  # the store's own error type: file, SQL driver, cloud client
        raise SourceReadError(exc) from exc


def _latest_per_key(df: pd.DataFrame, keys: list[str], created: str | None) -> pd.DataFrame:
    # ties on time fall back to the entity key, so the order is the same whatever order the store returns
    order = [TIMESTAMP, *([created] if created else []), *keys]
    return df.sort_values(order, kind="stable").drop_duplicates(keys, keep="last")


def read_latest(store: FeatureStore, fv: Any, *, chunk_rows: int | None = None) -> pd.DataFrame:
    """Latest row per entity of ``fv`` through the offline store, ordered by (event time, entity key)."""
    keys, features, _, created = view_columns(fv)
    parts: list[pd.DataFrame] = []
    for chunk in iter_frames(store, fv, latest=True, chunk_rows=chunk_rows):
        parts.append(_latest_per_key(chunk, keys, created))
    columns = [*keys, *features, TIMESTAMP]
    if not parts:
        return pd.DataFrame(columns=columns)
    df = _latest_per_key(pd.concat(parts, ignore_index=True), keys, created)
    return df[columns].reset_index(drop=True)


def read_all(
    store: FeatureStore,
    fv: Any,
    *,
    features: list[str] | None = None,
    chunk_rows: int | None = None,
    reduce: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Every row of ``fv`` through the offline store; ``reduce`` shrinks each chunk as it arrives."""
    keys, declared, _, _ = view_columns(fv)
    columns = [*keys, *(declared if features is None else features), TIMESTAMP]
    parts = [
        (reduce(chunk) if reduce else chunk)[columns]
        for chunk in iter_frames(store, fv, latest=False, features=features, chunk_rows=chunk_rows)
    ]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)


def can_write(store: FeatureStore) -> bool:
    """Whether the repo's offline store implements ``offline_write_batch`` (Feast's offline write)."""
    from feast.infra.offline_stores.offline_store import OfflineStore

    method = getattr(type(offline_store(store)), "offline_write_batch", None)
    return method is not None and method is not OfflineStore.offline_write_batch
