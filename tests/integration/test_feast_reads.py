"""Every read goes through Feast's offline store, in chunks; writes are whole or nothing.

* No plugin module opens a view's source file: a source scan allows only named non-source files,
  and a full read flow with pandas/pyarrow readers patched records no call from the plugin.
* Chunked reads (a chunk smaller than the data) give the same frames as one chunk.
* Impressions are a registered view (role tag ``impressions``); missing columns are named.
* A write that fails mid-way leaves the offline file, the online store and the journal as they
  were; an offline store without writes is refused before anything is written.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from llmhyper_feast import jobs
from llmhyper_feast.errors import DataError, FeatureRepoError
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store import offline
from llmhyper_feast.store.layout import RepoLayout

pytestmark = pytest.mark.integration

PACKAGE = Path(__file__).resolve().parents[2] / "llmhyper_feast"
READERS = re.compile(r"read_parquet|read_table|ParquetFile|read_pandas|read_metadata|read_schema|dataset\(")
# files the plugin may open itself, none of them a feature view's source
ALLOWED = {
    "store/feast_adapter.py": "the atomic file-store write reads the previous history it rewrites; backup check",
    "jobs/train.py": "an --impressions PATH override (or the legacy unregistered data/impressions.parquet)",
    "generation/runner.py": "the generation log's own parts",
    "userpriors/generate.py": "the user priors log's own parts",
    "jobs/robustness.py": "the demo world's hidden truth",
    "evaluation/evaluate.py": "the demo world's hidden truth",
    "evaluation/report.py": "the demo world's hidden truth",
}
GENERATED, WARM = "generated_ad_weights", "warm_ad_weights"


def test_no_module_outside_the_allowed_places_reads_parquet_itself() -> None:
    found = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if any(READERS.search(line) and not line.lstrip().startswith("#") for line in p.read_text().splitlines())
    }
    assert found - set(ALLOWED) == set(), f"modules reading files directly: {sorted(found - set(ALLOWED))}"


def test_a_full_read_flow_reads_every_view_through_the_offline_store(
    demo_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast.infra.offline_stores.dask import DaskOfflineStore

    direct: list[str] = []

    def spy(name: str, real):  # records calls made from plugin code only (Feast's store reads its files itself)
        def wrapper(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("llmhyper_feast"):
                direct.append(f"{caller}: {name}({args[0] if args else ''})")
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(pd, "read_parquet", spy("pd.read_parquet", pd.read_parquet))
    for name in ("read_table", "read_pandas", "ParquetFile", "read_metadata"):
        monkeypatch.setattr(pq, name, spy(f"pq.{name}", getattr(pq, name)))
    pulls: list[str] = []
    for method in ("pull_latest_from_table_or_query", "pull_all_from_table_or_query"):
        real = getattr(DaskOfflineStore, method)

        def pull(*args, _real=real, _method=method, **kwargs):
            pulls.append(f"{_method}:{kwargs['data_source'].name}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(DaskOfflineStore, method, staticmethod(pull))

    store = fa.open_store(demo_repo)
    schema = fa.read_feature_schema(store)
    ads, _ = fa.read_ads(store)
    ids, users = fa.read_user_matrix(store, schema, sample=100, seed=3)
    warm = fa.read_latest(store, fa.view_for_role(store, fa.WARM_ROLE).name)
    history = fa.read_history(store)
    impressions = jobs.read_impressions(demo_repo)
    assert direct == []
    assert len(ads) == 80 and users.shape == (100, len(schema)) and len(warm) == 64 and len(history) > 0
    assert {"user_id", "ad_id", "clicked", "user_split", "event_timestamp"} <= set(impressions.columns)
    sources = {p.split(":")[1] for p in pulls}
    assert {"ad_content_source", "user_interests_source", "user_behaviour_source", "warm_ad_weights_source"} <= sources
    assert "pull_all_from_table_or_query:impressions_source" in pulls
    assert "pull_all_from_table_or_query:user_history_source" in pulls


def test_chunked_reads_give_the_same_frames(demo_repo: Path) -> None:
    store = fa.open_store(demo_repo)
    content = store.get_feature_view("ad_content")
    whole = offline.read_latest(store, content)
    assert len(whole) == 80
    pd.testing.assert_frame_equal(offline.read_latest(store, content, chunk_rows=7), whole)
    imps = fa.read_impressions(store)
    assert len(imps) == 80 * 1500
    pd.testing.assert_frame_equal(fa.read_impressions(store, chunk_rows=9_999), imps)
    history = store.get_feature_view("user_history")
    pd.testing.assert_frame_equal(
        offline.read_all(store, history, chunk_rows=1_000), offline.read_all(store, history, chunk_rows=10**9)
    )
    # the chunks really are that small
    sizes = [len(c) for c in offline.iter_frames(store, content, latest=True, chunk_rows=7)]
    assert max(sizes) == 7 and sum(sizes) == 80


def test_impressions_are_the_registered_view_and_the_override_still_wins(demo_copy: Path, tmp_path: Path) -> None:
    store = fa.open_store(demo_copy)
    assert fa.impressions_view(store).name == "ad_impressions"
    from_feast = jobs.read_impressions(demo_copy)
    on_disk = pd.read_parquet(RepoLayout.of(demo_copy).impressions)
    cols = ["user_id", "ad_id", "clicked", "user_split"]
    pd.testing.assert_frame_equal(from_feast[cols], on_disk[cols], check_dtype=False)

    override = tmp_path / "few.parquet"
    on_disk.head(10).to_parquet(override, index=False)
    assert len(jobs.read_impressions(demo_copy, override)) == 10

    on_disk.drop(columns=["clicked"]).to_parquet(RepoLayout.of(demo_copy).impressions, index=False)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['clicked'\]") as err:
        jobs.read_impressions(demo_copy)
    assert len(str(err.value).splitlines()) == 1 and "impressions.parquet" in str(err.value)


def _online_bias(store, ad_ids: list[str]) -> list:
    return fa.get_online(store, [f"{WARM}:bias"], [{"ad_id": a} for a in ad_ids])["bias"]


def _newer_rows(store) -> pd.DataFrame:
    """Every warm ad again, with a changed bias and a newer event time."""
    rows = fa.read_latest(store, WARM)
    return rows.assign(bias=rows["bias"] + 1.0, event_timestamp=pd.Timestamp.now(tz="UTC"))


def _pending(repo: Path) -> dict:
    from llmhyper_feast.store import journal

    return journal.pending(RepoLayout.of(repo))


def test_a_write_failing_mid_file_leaves_nothing_half_written(demo_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = fa.open_store(demo_copy)
    path = demo_copy / "data" / f"{WARM}.parquet"
    before, latest = path.read_bytes(), fa.read_latest(store, WARM)
    rows = _newer_rows(store)
    ids = rows["ad_id"].tolist()
    online_before = _online_bias(store, ids)
    real = pq.write_table

    def write_half_then_fail(table, where, *args, **kwargs):
        real(table.slice(0, table.num_rows // 2), where, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        fa.write_view(store, WARM, rows)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))
    assert _online_bias(store, ids) == online_before
    assert WARM not in _pending(demo_copy)
    pd.testing.assert_frame_equal(fa.read_latest(store, WARM), latest)


def test_a_failing_store_write_reaches_nothing_online(demo_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Feast write path (non-file stores): the store's offline_write_batch raises."""
    store = fa.open_store(demo_copy)
    rows = _newer_rows(store)
    ids = rows["ad_id"].tolist()
    online_before = _online_bias(store, ids)
    calls: list[int] = []

    def fail(config, feature_view, table, progress):
        calls.append(table.num_rows)
        raise RuntimeError("connection reset")

    monkeypatch.setattr(type(offline.offline_store(store)), "offline_write_batch", staticmethod(fail))
    monkeypatch.setattr(fa, "_is_local_file_source", lambda fv: False)  # take the non-file (Feast) write path
    with pytest.raises(DataError, match=r"offline store failed writing 64 row\(s\) of 'warm_ad_weights'") as err:
        fa.write_view(store, WARM, rows)
    monkeypatch.undo()
    assert calls == [64]  # one call for the whole batch
    assert "nothing was written online" in str(err.value) and len(str(err.value).splitlines()) == 1
    assert _online_bias(store, ids) == online_before
    assert WARM not in _pending(demo_copy)


def test_an_offline_store_without_writes_is_refused_before_anything_is_written(
    demo_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast import BigQuerySource
    from feast.infra.offline_stores.offline_store import OfflineStore

    store = fa.open_store(demo_repo)
    fv = store.get_feature_view(GENERATED)
    fa.check_writable(store, fv)  # a local parquet source: always writable (atomic file write)
    fv.batch_source = BigQuerySource(name="gen_bq", table="proj.ds.generated", timestamp_field="event_timestamp")
    fa.check_writable(store, fv)  # the file store implements offline_write_batch
    provider = type(offline.offline_store(store))
    monkeypatch.setattr(provider, "offline_write_batch", OfflineStore.offline_write_batch)
    assert not offline.can_write(store)
    with pytest.raises(FeatureRepoError) as err:
        fa.check_writable(store, fv)
    message = str(err.value)
    assert "'file' offline store cannot take writes" in message and "offline_write_batch" in message
    assert "FileSource(path='data/generated_ad_weights.parquet'" in message and len(message.splitlines()) == 1
