"""Tests of llmhyper_feast.generation.retrieval.WarmIndex with plain vectors and a counting fake embedder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmhyper_feast.backends.embedders import Embedder
from llmhyper_feast.errors import ConfigError, DataError
from llmhyper_feast.features import Ad
from llmhyper_feast.generation.retrieval import EMBEDDINGS_FILE, INDEX_FILE, META_FILE, WarmIndex, content_hash


class CountingEmbedder(Embedder):
    """Deterministic pseudo-random vectors per ad text; counts how many ads it embedded."""

    name = "counting"

    class Options(Embedder.Options):
        dim: int = 8
        salt: str = ""

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.embedded = 0

    def _embed_batch(self, ads: list[Ad]) -> np.ndarray:
        self.embedded += len(ads)
        rows = []
        for ad in ads:
            seed = int.from_bytes((self.options.salt + ad.text).encode()[:8].ljust(8, b"\0"), "little") + len(ad.text)
            rows.append(np.random.default_rng(seed).normal(size=self.options.dim))
        return np.array(rows)


def _ads(n: int) -> list[Ad]:
    return [Ad(f"ad-{i}", f"title number {i}", f"caption {i}") for i in range(n)]


BASIS_IDS = ["a1", "a2", "b1", "b2", "c1"]
# Three clusters along the axes, with known cosine values.
BASIS = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.8, 0.2], [0, 0, 1]], dtype=np.float32)


def _basis_index() -> WarmIndex:
    return WarmIndex.build(BASIS_IDS, BASIS, "test:basis", "h0")


def test_search_returns_cosine_top_k_best_first() -> None:
    index = _basis_index()
    res = index.search(np.array([[2.0, 0.0, 0.0], [0, 0, 3.0]]), k=2)
    assert [i for i, _ in res[0]] == ["a1", "a2"]
    assert res[0][0][1] == pytest.approx(1.0, abs=1e-6)
    assert res[0][1][1] == pytest.approx(0.9 / np.hypot(0.9, 0.1), abs=1e-6)
    assert res[1][0] == ("c1", pytest.approx(1.0, abs=1e-6))


def test_an_ad_never_retrieves_itself() -> None:
    index = _basis_index()
    res = index.search(index.embeddings[[0, 2]], k=2, exclude_ids=["a1", None])
    assert res[0][0][0] == "a2"
    assert "a1" not in [i for i, _ in res[0]] and len(res[0]) == 2
    assert res[1][0][0] == "b1"  # None excludes nothing
    everything = index.search(index.embeddings, k=10, exclude_ids=index.ids)
    for own, hits in zip(index.ids, everything):
        assert own not in [i for i, _ in hits]
        assert len(hits) == len(index) - 1


def test_k_larger_than_index_returns_what_exists() -> None:
    index = _basis_index()
    query = np.array([0.6, 0.3, 0.1])
    hits = index.search(query, k=50)[0]
    assert len(hits) == 5 and sorted(i for i, _ in hits) == sorted(index.ids)
    # every score is the cosine of the query with that id's raw vector, best first
    raw = dict(zip(BASIS_IDS, BASIS.astype(np.float64)))
    for ad_id, sim in hits:
        expected = raw[ad_id] @ query / (np.linalg.norm(raw[ad_id]) * np.linalg.norm(query))
        assert sim == pytest.approx(expected, abs=1e-6), ad_id
    sims = [s for _, s in hits]
    assert sims == sorted(sims, reverse=True)


def test_empty_index_gives_empty_lists(tmp_path: Path) -> None:
    empty = WarmIndex.build([], [], "test:none", content_hash([]))
    assert len(empty) == 0
    assert empty.search(np.ones((2, 4)), k=3) == [[], []]
    empty.save(tmp_path)
    again = WarmIndex.load(tmp_path)
    assert len(again) == 0 and again.search(np.ones((1, 4)), k=1) == [[]]
    assert not (tmp_path / INDEX_FILE).exists()


def test_search_argument_checks() -> None:
    index = _basis_index()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="'k' parameter"):
            index.search(np.ones((1, 3)), k=bad)
    with pytest.raises(DataError, match="4 dimensions but the index has 3"):
        index.search(np.ones((1, 4)), k=1)
    with pytest.raises(DataError, match="exclude_ids"):
        index.search(np.ones((2, 3)), k=1, exclude_ids=["a1"])


def test_build_checks() -> None:
    with pytest.raises(DataError, match="unique"):
        WarmIndex.build(["x", "x"], np.eye(2), "e", "h")
    with pytest.raises(DataError, match="match one to one"):
        WarmIndex.build(["x"], np.eye(2), "e", "h")
    with pytest.raises(DataError, match="all-zero"):
        WarmIndex.build(["x", "y"], np.array([[1.0, 0], [0, 0]]), "e", "h")
    with pytest.raises(DataError, match="NaN"):
        WarmIndex.build(["x"], np.array([[np.nan, 1.0]]), "e", "h")


def test_save_load_round_trip(tmp_path: Path) -> None:
    index = _basis_index()
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / META_FILE).read_text())
    assert meta["ids"] == index.ids and meta["embedder_id"] == "test:basis" and meta["dim"] == 3
    assert meta["content_hash"] == "h0" and meta["built_at"] == index.built_at
    stored = np.load(tmp_path / "idx" / EMBEDDINGS_FILE)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-6)
    loaded = WarmIndex.load(tmp_path / "idx")
    q = np.array([[0.1, 1.0, 0.3]])
    assert loaded.search(q, k=3) == index.search(q, k=3)
    assert not list((tmp_path / "idx").glob("*.tmp"))


def test_load_detects_inconsistent_files(tmp_path: Path) -> None:
    _basis_index().save(tmp_path)
    WarmIndex.build(["z"], np.ones((1, 3)), "test:basis", "h0").save(tmp_path / "other")
    (tmp_path / "other" / INDEX_FILE).replace(tmp_path / INDEX_FILE)
    with pytest.raises(DataError, match="disagree"):
        WarmIndex.load(tmp_path)
    with pytest.raises(DataError, match="missing"):
        WarmIndex.load(tmp_path / "nowhere")


def test_load_or_build_reuses_then_rebuilds_on_change(tmp_path: Path) -> None:
    ads = _ads(12)
    emb = CountingEmbedder()
    first = WarmIndex.load_or_build(tmp_path, ads, emb, batch_size=5, progress=False)
    assert emb.embedded == 12 and not first.from_cache

    second = WarmIndex.load_or_build(tmp_path, ads, emb, progress=False)
    assert emb.embedded == 12 and second.from_cache
    np.testing.assert_array_equal(second.embeddings, first.embeddings)

    changed = ads[:-1] + [Ad("ad-11", "a new title", "caption 11")]
    third = WarmIndex.load_or_build(tmp_path, changed, emb, progress=False)
    assert emb.embedded == 24 and not third.from_cache

    other = CountingEmbedder({"salt": "v2"})
    fourth = WarmIndex.load_or_build(tmp_path, changed, other, progress=False)
    assert other.embedded == 12 and fourth.embedder_id == other.embedder_id != emb.embedder_id


def test_load_or_build_recovers_from_a_broken_directory(tmp_path: Path) -> None:
    ads = _ads(4)
    emb = CountingEmbedder()
    WarmIndex.load_or_build(tmp_path, ads, emb, progress=False)
    (tmp_path / EMBEDDINGS_FILE).unlink()
    index = WarmIndex.load_or_build(tmp_path, ads, emb, progress=False)
    assert emb.embedded == 8 and len(index) == 4 and (tmp_path / EMBEDDINGS_FILE).exists()


def test_content_hash_covers_text_and_image() -> None:
    ads = _ads(3)
    h = content_hash(ads)
    assert h == content_hash(_ads(3))  # equal content built afresh: the hash reads content, not identity
    assert h != content_hash([Ad("ad-0", "title number 0", "caption 0", "file:///x.png"), *ads[1:]])
    assert h != content_hash([Ad("ad-0", "title number 0", "other"), *ads[1:]])
    assert h != content_hash(ads[::-1])
