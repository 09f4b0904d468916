"""Cosine nearest-neighbour search over warm ads (Faiss inner product on unit vectors).

An index directory holds::

    index.faiss      the Faiss IndexFlatIP (absent when the index is empty)
    embeddings.npy   the unit-norm float32 vectors, row i = ids[i]
    meta.json        ids, embedder id, content hash, dim, size, build time (written last)

Every file is written to a temporary name and renamed, so a crash never leaves a half-written
file; ``meta.json`` is renamed last and ``load`` checks that the three files agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from llmhyper_feast.errors import ConfigError, DataError
from llmhyper_feast.features import Ad
from llmhyper_feast.store.files import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
EMBEDDINGS_FILE = "embeddings.npy"
META_FILE = "meta.json"
FORMAT_VERSION = 1


def content_hash(ads: Sequence[Ad]) -> str:
    """Hash of the warm ads' ids, titles, captions and image URIs, in order (16 hex chars)."""
    payload = json.dumps(
        [[a.ad_id, a.title, a.caption, a.image_uri] for a in ads], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _normalised(vectors: Any, what: str) -> np.ndarray:
    arr = np.array(vectors, dtype=np.float32, copy=True)
    if arr.ndim != 2:
        raise DataError(f"{what} must be a 2-D array [N, d]. Got an array of shape {arr.shape} instead.")
    if not np.isfinite(arr).all():
        raise DataError(f"{what} contains NaN or infinite values; re-embed these ads.")
    if arr.shape[0]:
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if (norms == 0).any():
            raise DataError(
                f"{what} has all-zero rows {np.where(norms[:, 0] == 0)[0][:5].tolist()}; "
                "cosine similarity needs non-zero vectors."
            )
        arr /= norms
    return np.ascontiguousarray(arr)


class WarmIndex:
    """Faiss index over the warm ads' embeddings, with the metadata that tells when it is stale."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.embeddings: np.ndarray = np.zeros((0, 0), dtype=np.float32)
        self.embedder_id: str = ""
        self.content_hash: str = ""
        self.built_at: str = ""
        #: True when ``load_or_build`` reused a saved index instead of embedding.
        self.from_cache: bool = False
        self._index: Any = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        """Vector size (0 for an index built from no vectors of unknown size)."""
        return int(self.embeddings.shape[1])

    @classmethod
    def build(cls, ad_ids: Sequence[str], vectors: Any, embedder_id: str, content_hash: str) -> WarmIndex:
        """Index ``vectors`` (row i belongs to ``ad_ids[i]``); rows are L2-normalised here."""
        ids = list(ad_ids)
        bad = [i for i in ids if not isinstance(i, str) or not i]
        if bad:
            raise DataError(f"Ad ids must be non-empty strings. Got {bad[:5]}.")
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise DataError(f"Ad ids must be unique in a WarmIndex. Duplicated: {dupes[:5]}.")
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.size == 0 and arr.ndim != 2:  # e.g. [] for no warm ads
            arr = np.zeros((0, 0), dtype=np.float32)
        arr = _normalised(arr, "The vectors passed to WarmIndex.build")
        if arr.shape[0] != len(ids):
            raise DataError(
                f"WarmIndex.build got {len(ids)} ad ids but {arr.shape[0]} vectors; they must match one to one."
            )
        self = cls()
        self.ids, self.embeddings = ids, arr
        self.embedder_id, self.content_hash = embedder_id, content_hash
        self.built_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._make_index()
        return self

    def _make_index(self) -> None:
        self._index = None
        if len(self.ids):
            import faiss

            self._index = faiss.IndexFlatIP(self.dim)
            self._index.add(self.embeddings)

    def save(self, directory: str | Path) -> Path:
        """Write the index, embeddings and metadata to ``directory`` (created if needed)."""
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._index is not None:
            atomic_write(directory / INDEX_FILE, lambda p: faiss.write_index(self._index, p))
        else:
            (directory / INDEX_FILE).unlink(missing_ok=True)

        def _save_npy(p: str) -> None:
            with open(p, "wb") as fh:
                np.save(fh, self.embeddings)

        atomic_write(directory / EMBEDDINGS_FILE, _save_npy)
        meta = {
            "format_version": FORMAT_VERSION,
            "ids": self.ids,
            "embedder_id": self.embedder_id,
            "content_hash": self.content_hash,
            "built_at": self.built_at,
            "dim": self.dim,
            "size": len(self.ids),
        }
        atomic_write_text(directory / META_FILE, json.dumps(meta, indent=1))
        return directory

    @classmethod
    def read_meta(cls, directory: str | Path) -> dict[str, Any]:
        """The metadata of a saved index, without loading vectors."""
        path = Path(directory) / META_FILE
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DataError(f"No saved WarmIndex in {directory}: {META_FILE} is missing. Build it first.") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(
                f"The index metadata {path} is unreadable ({exc}); delete the directory to rebuild."
            ) from exc
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{path} is not a WarmIndex format {FORMAT_VERSION} file; delete the directory to rebuild.")
        return meta

    @classmethod
    def load(cls, directory: str | Path) -> WarmIndex:
        """Load an index written by ``save``; raises DataError when files are missing or disagree."""
        import faiss

        directory = Path(directory)
        meta = cls.read_meta(directory)
        try:
            embeddings = np.load(directory / EMBEDDINGS_FILE, allow_pickle=False)
            index = faiss.read_index(str(directory / INDEX_FILE)) if meta["size"] else None
        except (OSError, ValueError, RuntimeError) as exc:
            raise DataError(f"The saved WarmIndex in {directory} is incomplete ({exc}); delete it to rebuild.") from exc
        sizes = {len(meta["ids"]), int(meta["size"]), embeddings.shape[0], index.ntotal if index else 0}
        if len(sizes) != 1 or (index is not None and index.d != embeddings.shape[1]):
            raise DataError(
                f"The files of the WarmIndex in {directory} disagree on size or dimension "
                "(a write was interrupted?); delete the directory to rebuild."
            )
        self = cls()
        self.ids, self.embeddings, self._index = list(meta["ids"]), embeddings.astype(np.float32), index
        self.embedder_id, self.content_hash, self.built_at = meta["embedder_id"], meta["content_hash"], meta["built_at"]
        return self

    @classmethod
    def load_or_build(
        cls,
        directory: str | Path,
        ads: Sequence[Ad],
        embedder: Any,
        *,
        batch_size: int = 32,
        progress: bool = True,
    ) -> WarmIndex:
        """Reuse the index saved in ``directory`` if it was built by the same embedder from the
        same ads; otherwise embed ``ads`` and save a fresh index there."""
        ads = list(ads)
        wanted_hash = content_hash(ads)
        directory = Path(directory)
        if (directory / META_FILE).exists():
            try:
                meta = cls.read_meta(directory)
                if meta["embedder_id"] == embedder.embedder_id and meta["content_hash"] == wanted_hash:
                    index = cls.load(directory)
                    index.from_cache = True
                    return index
                log.info("Rebuilding the warm index in %s: embedder or warm ads changed.", directory)
            except DataError as exc:
                log.warning("Rebuilding the warm index in %s: %s", directory, exc)
        vectors = embedder.embed(ads, batch_size=batch_size, progress=progress)
        index = cls.build([a.ad_id for a in ads], vectors, embedder.embedder_id, wanted_hash)
        index.save(directory)
        return index

    def search(
        self,
        vectors: Any,
        k: int,
        exclude_ids: Sequence[str | None] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` warm ads per query row as ``(ad_id, cosine)``, best first.

        ``exclude_ids[i]`` (typically query i's own ad id) is never returned for query i. Fewer
        than ``k`` results come back when the index holds fewer ads; an empty index gives empty
        lists.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"The 'k' parameter of WarmIndex.search must be an int >= 1. Got {k!r} instead.")
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        n = queries.shape[0] if queries.ndim == 2 else 0
        if exclude_ids is not None and len(exclude_ids) != n:
            raise DataError(
                f"WarmIndex.search got {n} query vectors but {len(exclude_ids)} exclude_ids; "
                "give one id (or None) per query."
            )
        if self._index is None or n == 0:
            if queries.ndim != 2:
                raise DataError(f"Query vectors must be a 2-D array [N, d]. Got shape {queries.shape} instead.")
            return [[] for _ in range(n)]
        if queries.shape[1] != self.dim:
            raise DataError(
                f"Query vectors have {queries.shape[1]} dimensions but the index has {self.dim} "
                f"(built by '{self.embedder_id}'); embed queries with the same embedder."
            )
        queries = _normalised(queries, "The query vectors passed to WarmIndex.search")
        extra = 1 if exclude_ids is not None and any(e is not None for e in exclude_ids) else 0
        scores, rows = self._index.search(queries, min(int(k) + extra, len(self.ids)))
        results: list[list[tuple[str, float]]] = []
        for q in range(n):
            skip = exclude_ids[q] if exclude_ids is not None else None
            hits = [(self.ids[r], float(s)) for r, s in zip(rows[q], scores[q]) if r >= 0 and self.ids[r] != skip]
            results.append(hits[: int(k)])
        return results
