"""Rank ads for one user: Feast online user features -> the exported all-ads ONNX model -> top K.

Missing-value policy: a feature the online store returns as null or NaN is replaced by
that feature's population mean (mean over the users of the offline store, computed when
the export is loaded) and listed in ``RankResult.imputed``. A user with *no* feature value
is unknown: :class:`UnknownUserError` by default, or, with
``unknown_user="population_mean"``, scored with the mean feature vector
(``RankResult.user_fallback == "population_mean"``).

A newer export in ``model_dir`` (its ``manifest.json`` changed) is loaded in a background
thread and swapped in atomically, so requests never wait for or fail during a reload.

A missing, corrupt or unreachable online store makes every lookup raise
:class:`~llmhyper_feast.errors.StoreUnavailableError` (HTTP 503, naming ``llmhyper repair``);
:meth:`Ranker.health` probes the store. When the SQLite online file is replaced (``llmhyper
repair`` recreated it), the ranker reopens the store instead of reading the old file.

Lookup (``online_lookup``): with a SQLite online store the user's row is read straight from
Feast's tables (:class:`~llmhyper_feast.store.online.SqliteUserReader`: Feast's key
serialization and value format, one prepared query per request, nothing cached), which
returns the same values as the Feast SDK at a fraction of its cost; other online stores, or
``online_lookup="feast"``, go through ``FeatureStore.get_online_features``.

Hot path: :meth:`Ranker.rank` reads the user's features into a per-thread preallocated input row
and runs the all-ads model through an ``IOBinding`` bound to that row and to preallocated outputs
(``ctr`` and, with content rules, ``excluded``), then takes the top K with a partial sort. The
buffers belong to one thread and one loaded model (a reload makes new ones on the next request).
The results equal the plain route's (``session.run`` + stable argsort) bit for bit; a binding that
does not write into its buffers (checked once per thread and model) falls back to the plain route.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from exporters import INPUT_NAME, Manifest
from exporters.errors import ManifestError
from exporters.manifest import MANIFEST_NAME, sha256_bytes
from llmhyper_feast.errors import (
    ConfigError,
    ExportError,
    FeatureRepoError,
    InputError,
    StaleExportError,
    StoreUnavailableError,
    UnknownAdError,
    UnknownUserError,
)
from llmhyper_feast.features import FeatureSchema
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.online import SqliteUserReader

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = [
    "UNKNOWN_USER_POLICIES",
    "RankResult",
    "RankedAd",
    "Ranker",
    "StaleExportError",
    "UnknownAdError",
    "UnknownUserError",
]

UNKNOWN_USER_POLICIES = ("error", "population_mean")
ONLINE_LOOKUPS = ("auto", "sqlite", "feast")
POPULATION_SAMPLE = 200_000  # users read to compute the population mean
FULL_SORT_UP_TO = 1024  # top-k by one stable argsort up to here: measured no slower than a partial sort below ~1k
logger = logging.getLogger(__name__)


class RankedAd(NamedTuple):
    ad_id: str
    ctr: float
    source: str


@dataclass(frozen=True)
class RankResult(Sequence[RankedAd]):
    """Top-K ads, best first, as (ad_id, ctr, source) tuples, with how the user was scored."""

    user_id: str
    items: tuple[RankedAd, ...]
    model_version: str
    feature_hash: str
    imputed: tuple[str, ...] = ()  # features replaced by their population mean
    user_fallback: str | None = None  # "population_mean" when the user was unknown
    candidates: int = 0  # ads that were scored (allowed by the content rules)
    excluded: int = 0  # candidate ads the content rules dropped for this user
    prior_filter: str | None = None  # candidates="priors": "restrict"/"boost" applied, or "no_prior" (plain ranking)

    def __getitem__(self, i):
        return self.items[i]

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class _Model:
    """Everything one export implies; replaced as a whole on reload."""

    manifest: Manifest
    version: str
    stamp: tuple[int, int, int]
    session: Any
    ids: tuple[str, ...]
    column: dict[str, int]
    sources: tuple[str, ...]
    refs: tuple[str, ...]
    names: tuple[str, ...]
    join_key: str
    population_mean: np.ndarray
    loaded_at: float
    reader: SqliteUserReader | None = None  # None: the Feast SDK reads the user's features
    masked: bool = False  # the all-ads model outputs ``excluded`` (content rules)
    priors: Any = None  # userpriors.filter.PriorsIndex: each ad's advertiser, for candidates="priors"


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


class _Hot:
    """One thread's buffers for one loaded model: input row, outputs, and an IOBinding bound to them."""

    __slots__ = ("binding", "ctr", "excluded", "model", "run", "x")

    def __init__(self, m: _Model) -> None:
        n, ads = len(m.names), len(m.ids)
        self.model = m
        self.x = np.zeros((1, n), np.float32)
        self.ctr = np.empty((1, ads), np.float32)
        self.excluded = np.empty((1, ads), np.bool_) if m.masked else None
        binding = m.session.io_binding()
        binding.bind_input(INPUT_NAME, "cpu", 0, np.float32, [1, n], self.x.ctypes.data)
        binding.bind_output("ctr", "cpu", 0, np.float32, [1, ads], self.ctr.ctypes.data)
        if self.excluded is not None:
            binding.bind_output("excluded", "cpu", 0, np.bool_, [1, ads], self.excluded.ctypes.data)
        self.binding = binding
        session, raw = m.session, binding._iobinding
        # the session's own Run on the bound values: the public wrapper adds only checks for graph capture
        inner = getattr(session, "_sess", None)
        if inner is not None and hasattr(inner, "run_with_iobinding"):
            self.run = lambda: inner.run_with_iobinding(raw, None)
        else:
            self.run = lambda: session.run_with_iobinding(binding)

    def writes_in_place(self, mean: np.ndarray) -> bool:
        """True when a bound run fills this object's own output buffers with what ``session.run`` returns."""
        self.x[0] = mean
        self.ctr.fill(np.nan)
        names = ["ctr", "excluded"] if self.excluded is not None else ["ctr"]
        want = self.model.session.run(names, {INPUT_NAME: self.x.copy()})
        if self.excluded is not None:
            self.excluded[...] = ~want[1]
        self.run()
        got = [self.ctr, self.excluded] if self.excluded is not None else [self.ctr]
        return all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest ``scores``, best first; equal scores keep position order.

    Equals ``np.argsort(-scores, kind="stable")[:k]``; many candidates take a partial sort.
    """
    if len(scores) <= FULL_SORT_UP_TO or k >= len(scores):
        return np.argsort(-scores, kind="stable")[:k]
    kth = scores[np.argpartition(-scores, k - 1)[:k]].min()  # the k-th highest score
    if kth != kth:  # NaN: fewer than k comparable scores
        return np.argsort(-scores, kind="stable")[:k]
    above = np.flatnonzero(scores > kth)
    chosen = np.concatenate((above, np.flatnonzero(scores == kth)[: k - len(above)]))
    return chosen[np.argsort(-scores[chosen], kind="stable")]


class Ranker:
    """Scores users against every exported ad with the all-ads ONNX model.

    ``unknown_user``: "error" (raise :class:`UnknownUserError`) or "population_mean".
    ``feature_service``: the Feast FeatureService whose user views are read (None: the
    views tagged ``llmhyper.role: user_features``). ``reload_interval``: seconds between
    checks for a newer export (0: every call, None: never). ``online_lookup``: "auto" (direct
    SQLite reads when the online store is SQLite, else the Feast SDK), "sqlite" (required) or
    "feast" (always the SDK, the reference path).
    """

    def __init__(
        self,
        repo: str | Path,
        model_dir: str | Path,
        *,
        unknown_user: str = "error",
        feature_service: str | None = "ranking",
        reload_interval: float | None = 1.0,
        online_lookup: str = "auto",
    ) -> None:
        if unknown_user not in UNKNOWN_USER_POLICIES:
            raise ConfigError(
                f"The 'unknown_user' parameter of Ranker must be one of "
                f"{list(UNKNOWN_USER_POLICIES)}. Got {unknown_user!r} instead."
            )
        if online_lookup not in ONLINE_LOOKUPS:
            raise ConfigError(
                f"The 'online_lookup' parameter of Ranker must be one of {list(ONLINE_LOOKUPS)}. "
                f"Got {online_lookup!r} instead."
            )
        if reload_interval is not None and not reload_interval >= 0:
            raise ConfigError(
                f"The 'reload_interval' parameter of Ranker must be None or a number >= 0 "
                f"(seconds). Got {reload_interval!r} instead."
            )
        self.repo, self.model_dir = Path(repo), Path(model_dir)
        self.unknown_user, self.feature_service = unknown_user, feature_service
        self.reload_interval = reload_interval
        self.online_lookup = online_lookup
        self.store: FeatureStore = fa.open_store(repo)
        self._online_file = fa.online_store_path(self.store)
        self._online_stamp = self._file_identity()
        self._lock = threading.Lock()  # held while a reload builds its model
        self._next_check = 0.0
        self.reloads = 0
        self.last_reload_error: str | None = None
        self._failed_stamp: tuple[int, int, int] | None = None  # not retried until the manifest changes again
        self._hot = threading.local()  # each thread's _Hot for the model it last served
        self._hot_path = True  # False: rank() takes the plain route (session.run + full argsort), the reference
        self._model = self._load()
        self._next_check = time.monotonic() + (reload_interval or 0.0)

    # --- loading -------------------------------------------------------------------------

    def _user_refs(self, schema: FeatureSchema) -> tuple[tuple[str, ...], str]:
        """Feast refs (schema order) of the user features the service serves, and the join key."""
        names, views = schema.names, {f.name: f.view for f in schema.features}
        if self.feature_service is not None:
            try:
                service = self.store.get_feature_service(self.feature_service, allow_cache=False)
            except Exception as exc:  # feast raises its own FeatureServiceNotFoundException
                raise FeatureRepoError(
                    f"The registry has no FeatureService '{self.feature_service}' ({type(exc).__name__}). Define "
                    f"FeatureService(name='{self.feature_service}', features=[<user feature views>, ...]) in the "
                    "feature repo and run `feast apply`, or pass feature_service=None."
                ) from None
            served = {(p.name, f.name) for p in service.feature_view_projections for f in p.features}
            missing = [f"{views[n]}:{n}" for n in names if (views[n], n) not in served]
            if missing:
                raise FeatureRepoError(
                    f"FeatureService '{self.feature_service}' does not serve the user feature(s) {missing[:10]} "
                    f"that the model needs (all {len(names)} features of the views tagged "
                    f"{fa.ROLE_TAG}: {fa.USER_ROLE}). Add their views to the service and run `feast apply`."
                )
        keys = {tuple(self.store.get_feature_view(v).join_keys) for v in dict.fromkeys(views.values())}
        if len(keys) != 1 or len(next(iter(keys))) != 1:
            raise FeatureRepoError(
                f"The user feature views must share one single-column entity key. Got {sorted(keys)} instead."
            )
        return tuple(f"{views[n]}:{n}" for n in names), next(iter(keys))[0]

    def _load(self) -> _Model:
        """Read the manifest and its all-ads model, check them against the registry, build a session."""
        import onnxruntime as ort

        path = self.model_dir / MANIFEST_NAME
        try:
            stamp, raw = _stamp(path), path.read_bytes()
        except FileNotFoundError:
            raise ExportError(
                f"No export in {self.model_dir}: {MANIFEST_NAME} is missing. Run `llmhyper export "
                f"--out {self.model_dir}` first."
            ) from None
        try:
            manifest = Manifest.from_dict(json.loads(raw), source=str(path))
        except (ValueError, ManifestError) as exc:
            raise ExportError(f"Cannot read the export in {self.model_dir}: {exc}") from exc
        entry = manifest.models.get("all_ads")
        if entry is None or entry.kind != "all_ads":
            raise ExportError(f"The export in {self.model_dir} has no all-ads model. Re-run `llmhyper export`.")
        self.store.refresh_registry()
        schema = fa.read_feature_schema(self.store)
        if list(manifest.feature_names) != schema.names or manifest.feature_hash != schema.hash:
            raise StaleExportError(
                f"The export in {self.model_dir} is stale: it was made for features hash {manifest.feature_hash} "
                f"({len(manifest.feature_names)} features), but the registry now defines hash {schema.hash} "
                f"({len(schema)} features). Re-run `llmhyper materialize` and `llmhyper export --out "
                f"{self.model_dir}`."
            )
        model_bytes = (self.model_dir / entry.path).read_bytes()
        expected = manifest.files.get(entry.path)
        if expected is None or sha256_bytes(model_bytes) != expected.sha256:
            raise ExportError(
                f"{entry.path} in {self.model_dir} does not match its manifest (an export is in "
                "progress or was interrupted). Re-run `llmhyper export` if this persists."
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        refs, join_key = self._user_refs(schema)
        reader = None if self.online_lookup == "feast" else SqliteUserReader.for_store(self.store, refs)
        if reader is None and self.online_lookup == "sqlite":
            raise ConfigError(
                "online_lookup='sqlite' needs a SQLite online store whose user views share one string join key; "
                f"{self.repo / 'feature_store.yaml'} configures {type(self.store.config.online_store).__name__}. "
                "Use online_lookup='auto' or 'feast'."
            )
        _, users = fa.read_user_matrix(self.store, schema, sample=POPULATION_SAMPLE, seed=0)
        mean = fa.finite_population_mean(users, schema.names)
        return _Model(
            manifest=manifest,
            version=hashlib.sha256(raw).hexdigest()[:16],
            stamp=stamp,
            session=session,
            ids=tuple(entry.ad_ids),
            column={a: i for i, a in enumerate(entry.ad_ids)},
            sources=tuple(str(manifest.ads[a].meta.get("source", "")) for a in entry.ad_ids),
            refs=refs,
            names=tuple(schema.names),
            join_key=join_key,
            population_mean=np.nan_to_num(mean, nan=0.0).astype(np.float32),
            loaded_at=time.time(),
            reader=reader,
            masked="excluded" in {o.name for o in session.get_outputs()},
            priors=self._load_priors(tuple(entry.ad_ids)),
        )

    def reload(self) -> bool:
        """Load the export now if its manifest changed; True when a new model was swapped in."""
        with self._lock:
            current = self._model
            path, stamp = self.model_dir / MANIFEST_NAME, None
            try:
                stamp = _stamp(path)
                if stamp == current.stamp:
                    return False
                if hashlib.sha256(path.read_bytes()).hexdigest()[:16] == current.version:
                    self._model = replace(current, stamp=stamp)  # rewritten with the same bytes
                    return False
                model = self._load()
            except Exception as exc:  # keep serving the loaded model; report on /health
                self._failed_stamp = stamp
                self.last_reload_error = f"{type(exc).__name__}: {exc}"
                logger.warning("Keeping model %s: reload of %s failed: %s", current.version, self.model_dir, exc)
                return False
            self._model = model  # one reference assignment: requests see the old or the new model
            self.reloads += 1
            self.last_reload_error = None
            logger.info("Loaded export %s from %s", model.version, self.model_dir)
            return True

    def _file_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the SQLite online file; None when absent or not SQLite."""
        if self._online_file is None:
            return None
        try:
            st = os.stat(self._online_file)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _refresh_store(self) -> None:
        """Reopen the Feast store when its SQLite file was deleted or replaced.

        An open SQLite connection keeps reading a deleted or renamed file: without this a running
        service would never see the store that ``llmhyper repair`` rebuilt.
        """
        stamp = self._file_identity()
        if self._online_file is None or stamp == self._online_stamp:
            return
        self.store = fa.open_store(self.repo)  # one reference assignment, like a model reload
        self._online_stamp = stamp
        reader = self._model.reader
        if reader is not None:
            reader.store = self.store
            reader.reopen()
        priors = self._model.priors
        if priors is not None and priors.reader is not None:
            priors.reader.store = self.store
            priors.reader.reopen()

    def store_error(self) -> str | None:
        """Why the online store cannot serve the loaded model's user features (None when it can)."""
        from llmhyper_feast.store.online import check_online

        self._refresh_store()
        m = self._model
        try:
            if m.reader is not None:
                m.reader.check()
            else:
                check_online(self.store, m.refs, m.join_key)
        except StoreUnavailableError as exc:
            return str(exc)
        return None

    def _maybe_reload(self) -> None:
        if self.reload_interval is None or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + self.reload_interval
        self._refresh_store()
        try:
            stamp = _stamp(self.model_dir / MANIFEST_NAME)
        except OSError:
            return
        changed = stamp != self._model.stamp and stamp != self._failed_stamp
        if changed and not self._lock.locked():
            threading.Thread(target=self.reload, name="ranker-reload", daemon=True).start()

    # --- serving -----------------------------------------------------------------------------

    @property
    def model_version(self) -> str:
        """First 16 hex digits of the loaded manifest's sha256."""
        return self._model.version

    @property
    def ad_ids(self) -> tuple[str, ...]:
        return self._model.ids

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._model.names

    @property
    def population_mean(self) -> np.ndarray:
        return self._model.population_mean

    def health(self) -> dict[str, Any]:
        """What is loaded (model version, ad and feature counts, feature hash, reload state) and
        whether the online store is usable: ``status`` is "ok" or "unavailable" (see ``store_error``)."""
        m = self._model
        store_error = self.store_error()
        return {
            "status": "ok" if store_error is None else "unavailable",
            "store_error": store_error,
            "model_version": m.version,
            "n_ads": len(m.column),
            "n_features": len(m.names),
            "feature_hash": m.manifest.feature_hash,
            "producer": dict(m.manifest.producer),
            "model_dir": str(self.model_dir),
            "loaded_at": m.loaded_at,
            "reloads": self.reloads,
            "last_reload_error": self.last_reload_error,
            "unknown_user": self.unknown_user,
        }

    def user_vectors(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features float32 [U, n] after the missing-value policy, found [U], imputed mask [U, n]).

        Rows of users with no value at all hold the population mean and have found=False.
        """
        return self._user_vectors(self._model, user_ids)

    def _user_vectors(self, m: _Model, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if m.reader is not None:
            x = m.reader.read_many(user_ids)
        else:
            x = self._sdk_vectors(m, user_ids)
        missing = ~np.isfinite(x)  # absent (NaN) or non-finite values are imputed with the finite population mean
        found: np.ndarray = np.asarray(~np.isnan(x).all(axis=1))
        x = np.where(missing, m.population_mean, x)
        return x, found, missing & found[:, None]

    def _sdk_vectors(self, m: _Model, user_ids: Sequence[str]) -> np.ndarray:
        data = fa.get_online(self.store, list(m.refs), [{m.join_key: u} for u in user_ids])
        cols = [[np.nan if v is None else v for v in data[n]] for n in m.names]
        return np.ascontiguousarray(np.array(cols, np.float32).reshape(len(m.names), len(user_ids)).T)

    @property
    def lookup(self) -> str:
        """How user features are read now: "sqlite" (direct) or "feast" (the SDK)."""
        return "feast" if self._model.reader is None else "sqlite"

    def score(self, features: np.ndarray) -> np.ndarray:
        """Bare ONNX scoring: ctr float32 [B, M] (columns in :attr:`ad_ids` order) for [B, n] features.

        An ad the content rules exclude for a user scores ``exporters.EXCLUDED_SCORE`` (-1).
        """
        x = np.ascontiguousarray(features, dtype=np.float32)
        return self._model.session.run(["ctr"], {INPUT_NAME: x.reshape(-1, len(self._model.names))})[0]

    def _check_users(self, user_ids: Sequence[str], found: np.ndarray) -> None:
        if self.unknown_user == "error" and not found.all():
            unknown = [u for u, ok in zip(user_ids, found) if not ok]
            raise UnknownUserError(
                f"Unknown user(s) {unknown[:10]}: the online store has no feature values for them. Check the id, "
                "load their features (`feast materialize`), or serve unknown users with the population mean "
                "(unknown_user='population_mean').",
                unknown,
            )

    def score_users(self, user_ids: Sequence[str]) -> np.ndarray:
        """ctr float32 [U, M] for many users (one Feast lookup, one ONNX call)."""
        m = self._model
        x, found, _ = self._user_vectors(m, user_ids)
        self._check_users(user_ids, found)
        return m.session.run(["ctr"], {INPUT_NAME: x})[0]

    def rank(
        self, user_id: str, ads: Sequence[str] | None = None, k: int = 10, *, candidates: str = "all"
    ) -> RankResult:
        """Top ``k`` of ``ads`` (default: every exported ad) for ``user_id``, best first; ties keep column order.

        ``candidates="priors"`` limits or boosts the ads of the user's predicted advertisers (the online
        user priors view) under ``user_priors.filter``; see :mod:`llmhyper_feast.userpriors.filter`.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"The 'k' parameter of Ranker.rank must be an int >= 1. Got {k!r} instead.")
        if candidates != "all":
            self._check_candidates(candidates)
        if not isinstance(user_id, str) or not user_id:
            raise InputError(f"The 'user_id' parameter of Ranker.rank must be a non-empty str. Got {user_id!r}.")
        self._maybe_reload()
        m = self._model  # this request uses one model throughout, even if a reload swaps it
        idx = None
        if ads is not None:
            if isinstance(ads, str):
                raise InputError(
                    f"The 'ads' parameter of Ranker.rank must be a list of ad ids, not a str. "
                    f"Got {ads!r}; pass [{ads!r}]."
                )
            ads = list(dict.fromkeys(ads))
            if not ads:
                raise InputError("The 'ads' parameter of Ranker.rank must be None (every ad) or a non-empty list.")
            unknown = [a for a in ads if a not in m.column]
            if unknown:
                raise UnknownAdError(
                    f"Unknown ad id(s) {unknown[:20]}{' ...' if len(unknown) > 20 else ''} ({len(unknown)} of "
                    f"{len(ads)} candidates): the loaded export (model {m.version}, {len(m.column)} ads) does not "
                    "contain them. Check the ids; if they are new ads, run `llmhyper materialize` and "
                    "`llmhyper export`.",
                    unknown,
                )
            idx = np.fromiter((m.column[a] for a in ads), np.intp, len(ads))
        hot = self._hot_state(m) if self._hot_path else None
        if hot is None:
            ctr, excluded, found, imputed = self._score_plain(m, user_id)
        else:
            ctr, excluded, found, imputed = self._score_hot(m, hot, user_id)
        dropped = 0
        if excluded is not None and (hot is None or excluded.any()):  # content rules: ads this user must not see
            before = len(ctr) if idx is None else len(idx)
            idx = np.flatnonzero(~excluded) if idx is None else idx[~excluded[idx]]
            dropped = before - len(idx)
        cand = ctr if idx is None else ctr[idx]
        prior_filter = None
        if candidates == "all":
            top = np.argsort(-cand, kind="stable")[:k] if hot is None else _top_k(cand, k)
            cols = top if idx is None else idx[top]
        else:
            cols, prior_filter = self._prior_columns(m, user_id, ctr, idx, k)
        # the scores leave as Python floats: the buffers behind ``ctr`` are reused by this thread's next request
        items = tuple(
            RankedAd(m.ids[c], s, m.sources[c]) for c, s in zip(cols.tolist(), ctr[cols].tolist(), strict=True)
        )
        return RankResult(
            user_id,
            items,
            m.version,
            m.manifest.feature_hash,
            imputed,
            None if found else "population_mean",
            len(cand),
            dropped,
            prior_filter,
        )

    def _score_plain(self, m: _Model, user_id: str) -> tuple[np.ndarray, np.ndarray | None, bool, tuple[str, ...]]:
        """(ctr [M], excluded [M] or None, found, imputed feature names) by ``session.run`` on fresh arrays."""
        x, found, imputed = self._user_vectors(m, [user_id])
        self._check_users([user_id], found)
        names = tuple(n for n, miss in zip(m.names, imputed[0]) if miss)
        if m.masked:
            ctr, excluded = (o[0] for o in m.session.run(["ctr", "excluded"], {INPUT_NAME: x}))
            return ctr, excluded, bool(found[0]), names
        return m.session.run(["ctr"], {INPUT_NAME: x})[0][0], None, bool(found[0]), names

    def _hot_state(self, m: _Model) -> _Hot | None:
        """This thread's buffers for model ``m`` (made on its first request; None: use the plain route)."""
        state = getattr(self._hot, "state", None)
        if state is not None and state[0] is m:
            return state[1]
        hot: _Hot | None = None
        try:
            hot = _Hot(m)
            if not hot.writes_in_place(m.population_mean):
                logger.warning(
                    "IOBinding does not fill its buffers for model %s: ranking through session.run", m.version
                )
                hot = None
        except Exception as exc:  # an onnxruntime without usable IOBinding: serve through session.run
            logger.warning("IOBinding unavailable for model %s, ranking through session.run: %s", m.version, exc)
            hot = None
        self._hot.state = (m, hot)  # the old model's buffers go with the old state
        return hot

    def _score_hot(
        self, m: _Model, hot: _Hot, user_id: str
    ) -> tuple[np.ndarray, np.ndarray | None, bool, tuple[str, ...]]:
        """:meth:`_score_plain` into this thread's buffers with the bound session; returns views of them."""
        row = hot.x[0]
        if m.reader is not None:
            m.reader.read_into(user_id, row)
        else:
            row[:] = self._sdk_vectors(m, [user_id])[0]
        finite = np.isfinite(row)
        found = True
        imputed: tuple[str, ...] = ()
        if not finite.all():  # same policy as _user_vectors: impute what is not finite; all NaN is unknown
            found = not np.isnan(row).all()
            self._check_users([user_id], np.array([found]))
            missing = ~finite
            row[missing] = m.population_mean[missing]
            if found:
                imputed = tuple(n for n, miss in zip(m.names, missing.tolist()) if miss)
        hot.run()
        return hot.ctr[0], None if hot.excluded is None else hot.excluded[0], found, imputed

    # --- candidates="priors" (user priors as a candidate filter) --------------------------------

    def _load_priors(self, ad_ids: tuple[str, ...]) -> Any:
        """The export's ad -> advertiser index and the priors reader (a PriorsIndex saying why when unusable)."""
        from llmhyper_feast.userpriors.filter import PriorsIndex

        try:
            return PriorsIndex.load(self.store, ad_ids, direct=self.online_lookup != "feast")
        except Exception as exc:  # the plain ranking must load and serve whatever the priors views hold
            logger.warning("candidates='priors' unavailable for this export: %s", exc)
            return PriorsIndex(np.full(len(ad_ids), -1, np.int32), {}, None, f"{type(exc).__name__}: {exc}")

    @property
    def filter_settings(self) -> Any:
        """``user_priors.filter`` of the repo (llmhyper.yaml and environment), read once."""
        settings = getattr(self, "_filter_settings", None)
        if settings is None:
            from llmhyper_feast.config import load_settings

            settings = self._filter_settings = load_settings(self.repo).user_priors.filter
        return settings

    @filter_settings.setter
    def filter_settings(self, value: Any) -> None:
        self._filter_settings = value

    @staticmethod
    def _check_candidates(candidates: Any) -> None:
        from llmhyper_feast.userpriors.filter import CANDIDATE_MODES

        if candidates not in CANDIDATE_MODES:
            raise InputError(
                f"The 'candidates' parameter of Ranker.rank must be one of {list(CANDIDATE_MODES)}. "
                f"Got {str(candidates)[:100]!r} instead."
            )

    def _prior_columns(
        self, m: _Model, user_id: str, ctr: np.ndarray, idx: np.ndarray | None, k: int
    ) -> tuple[np.ndarray, str]:
        """(top ``k`` columns under the priors policy, "restrict"/"boost", or "no_prior" for plain ranking)."""
        from llmhyper_feast.userpriors.filter import select_columns

        policy = self.filter_settings
        weight = m.priors.weights(user_id, policy.advertisers)
        if weight is None:
            cand = ctr if idx is None else ctr[idx]
            top = np.argsort(-cand, kind="stable")[:k]
            return (top if idx is None else idx[top]), "no_prior"
        return select_columns(ctr, idx, weight, k, policy), policy.mode
