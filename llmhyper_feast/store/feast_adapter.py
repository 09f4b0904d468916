"""The only module that talks to Feast: repo checks, apply, schema discovery, reads and writes.

``import feast`` costs seconds of CPU, so it happens inside functions, not at import time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmhyper_feast.errors import DataError, FeatureRepoError
from llmhyper_feast.features import Ad, FeatureDefinition, FeatureSchema
from llmhyper_feast.store.layout import check_repo

if TYPE_CHECKING:
    from feast import FeatureStore

ROLE_TAG = "llmhyper.role"
ORDER_TAG = "llmhyper.order"
USER_ROLE, AD_CONTENT_ROLE = "user_features", "ad_content"
WARM_ROLE, GENERATED_ROLE = "warm_weights", "generated_weights"
NUMERIC_DTYPES = {"Float32", "Float64", "Int32", "Int64", "Bool"}


def open_store(repo: str | Path) -> FeatureStore:
    """Open the Feast store of ``repo``."""
    path = check_repo(repo)
    os.environ.setdefault("FEAST_USAGE", "False")
    from feast import FeatureStore

    return FeatureStore(repo_path=str(path))


def apply_repo(repo: str | Path) -> str:
    """Run ``feast apply`` on ``repo`` in a subprocess (fresh imports of the definitions)."""
    path = check_repo(repo)
    env = {**os.environ, "FEAST_USAGE": "False"}
    cmd = [sys.executable, "-c", "from feast.cli.cli import cli; cli()", "apply"]
    proc = subprocess.run(cmd, cwd=path, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise FeatureRepoError(f"`feast apply` failed in {path}:\n{tail}")
    ensure_sources(open_store(path))
    return proc.stdout


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


def ensure_sources(store: FeatureStore) -> None:
    """Create empty parquet sources for the weights views so that appends have a schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for role in (WARM_ROLE, GENERATED_ROLE):
        for fv in _views_with_role(store, role):
            path = _source_path(store, fv)
            if path.exists():
                continue
            fields = [pa.field(k, pa.string()) for k in fv.join_keys]
            fields += [pa.field(f.name, _arrow_type(f.dtype)) for f in fv.features]
            fields.append(pa.field("event_timestamp", pa.timestamp("us", tz="UTC")))
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([], schema=pa.schema(fields)), path)


def read_latest(store: FeatureStore, view_name: str) -> pd.DataFrame:
    """Latest row per entity of a view's offline (parquet) source."""
    fv = store.get_feature_view(view_name)
    path = _source_path(store, fv)
    if not path.exists():
        return pd.DataFrame(columns=[*fv.join_keys, *(f.name for f in fv.features), "event_timestamp"])
    df = pd.read_parquet(path)
    if df.empty:
        return df
    return (
        df.sort_values("event_timestamp", kind="stable")
        .drop_duplicates(fv.join_keys, keep="last")
        .reset_index(drop=True)
    )


def read_ads(store: FeatureStore, status: str | None = None) -> tuple[list[Ad], pd.DataFrame]:
    """Ads from the ad content view (optionally only one status), validated."""
    df = read_latest(store, view_for_role(store, AD_CONTENT_ROLE).name)
    if status is not None:
        df = df[df["status"] == status]
    bad = df[df["title"].fillna("").str.strip() == ""]
    if len(bad):
        raise DataError(
            f"{len(bad)} ad(s) have no title (e.g. {bad['ad_id'].iloc[0]}). Every ad needs a title/message: "
            "fill the 'title' column of the ad content source and re-run."
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
    return ads, df.reset_index(drop=True)


def read_user_matrix(
    store: FeatureStore,
    schema: FeatureSchema,
    *,
    user_ids: Iterable[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """User ids and their features (float64 [users, n], schema order) from the offline store."""
    frames = []
    for view_name in dict.fromkeys(f.view for f in schema.features):
        fv = store.get_feature_view(view_name)
        cols = [f.name for f in schema.features if f.view == view_name]
        df = read_latest(store, view_name)
        frames.append(df.set_index(fv.join_keys[0])[cols])
    joined = pd.concat(frames, axis=1, join="inner")
    if user_ids is not None:
        joined = joined.reindex(list(user_ids))
    elif sample is not None and sample < len(joined):
        joined = joined.sample(n=sample, random_state=seed)
    if joined.empty:
        raise DataError("No users found in the offline store for the user feature views. Load user features first.")
    return joined.index.to_numpy(), joined[schema.names].to_numpy(np.float64)


def write_view(store: FeatureStore, view_name: str, df: pd.DataFrame, *, online: bool = True) -> None:
    """Append rows to a view's offline source, then write them online; columns checked first."""
    fv = store.get_feature_view(view_name)
    expected = [*fv.join_keys, *(f.name for f in fv.features), "event_timestamp"]
    missing, extra = sorted(set(expected) - set(df.columns)), sorted(set(df.columns) - set(expected))
    if missing or extra:
        raise DataError(f"Rows for '{view_name}' do not match its schema: missing {missing}, unexpected {extra}.")
    if df.empty:
        return
    df = df[expected]
    store.write_to_offline_store(view_name, df)
    if online:
        store.write_to_online_store(view_name, df)


def materialize_sources(store: FeatureStore, views: list[str]) -> None:
    """Copy the latest offline rows of ``views`` into the online store."""
    from datetime import datetime, timedelta

    end = datetime.now(UTC) + timedelta(minutes=1)
    store.materialize(start_date=end - timedelta(days=3650), end_date=end, feature_views=views)


def get_online(store: FeatureStore, features: list[str], entity_rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Thin wrapper around ``get_online_features(...).to_dict()``."""
    return store.get_online_features(features=features, entity_rows=entity_rows).to_dict()
