"""Job: ``llmhyper doctor``: check that a Feast repo is ready for llmhyper and name the fix for each problem.

Every check reads through the same functions the jobs use (``store/feast_adapter.py``,
``config.resolve_settings``, ``jobs.materialize.status``), so a check that passes means the
job it guards will find what it needs. Checks that need an earlier one (the registry, the
store) are reported as ``skip`` when that one failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmhyper_feast.errors import LLMHyperError

__all__ = ["Check", "DoctorReport", "doctor"]

Status = Literal["ok", "warn", "FAIL", "skip"]
IMPRESSIONS_ROLE = "impressions"
IMPRESSION_COLUMNS = ("user_id", "ad_id", "clicked", "event_timestamp")
ONLINE_SAMPLE = 20


@dataclass
class Check:
    """One check: what was checked, its outcome, what was found and (unless ok) the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        """``<status> <name>: <detail>[ -> fix: <fix>]``."""
        return f"{self.status:<4} {self.name}: {self.detail}" + (f" -> fix: {self.fix}" if self.fix else "")


@dataclass
class DoctorReport:
    """Every check of one repo, in the order they ran."""

    repo: Path
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready mapping."""
        return {"repo": str(self.repo), "ok": not self.failed, "checks": [asdict(c) for c in self.checks]}


class _Doctor:
    def __init__(self, repo: Path, impressions: Path | None, flags: dict[str, Any] | None = None) -> None:
        self.repo = repo
        self.flags = flags or {}
        self.impressions = impressions
        self.report = DoctorReport(repo)
        self.store: Any = None
        self.settings: Any = None
        self.schema: Any = None
        self.user_ids: list[str] = []
        self.ad_ids: list[str] = []

    def add(self, name: str, status: Status, detail: str, fix: str = "") -> Check:
        check = Check(name, status, detail, fix)
        self.report.checks.append(check)
        return check

    def run(self, name: str, body: Callable[[], None], *, needs: Any = True) -> None:
        """Run ``body``; our errors become a FAIL naming their own fix (each message says it)."""
        if not needs:
            self.add(name, "skip", "needs the checks above to pass first")
            return
        try:
            body()
        except LLMHyperError as exc:
            self.add(name, "FAIL", *_split(str(exc)))

    # --- the checks, in order -------------------------------------------------------------

    def feature_store_yaml(self) -> None:
        import yaml

        from llmhyper_feast.store.layout import check_repo

        path = check_repo(self.repo) / "feature_store.yaml"
        try:
            config = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            self.add("feature_store.yaml", "FAIL", f"{path} does not parse: {exc}", f"fix the YAML in {path}")
            return
        missing = [k for k in ("project", "provider") if not (isinstance(config, dict) and config.get(k))]
        if missing:
            self.add("feature_store.yaml", "FAIL", f"{path} lacks {missing}", f"add {missing} to {path}")
            return
        self.add("feature_store.yaml", "ok", f"project {config['project']}, provider {config['provider']}")

    def settings_file(self) -> None:
        from llmhyper_feast.config import CONFIG_FILE, resolve_settings

        self.settings = resolve_settings(self.repo, self.flags)
        where = self.repo / CONFIG_FILE
        self.add(
            "llmhyper.yaml",
            "ok",
            f"{'valid' if where.exists() else 'absent: defaults used'} (llm {self.settings.llm.name}, "
            f"embedder {self.settings.embedder.name}, prior {self.settings.prior.name})",
        )

    def registry(self) -> None:
        from llmhyper_feast.store import feast_adapter as fa
        from llmhyper_feast.store import guard

        path = fa.local_registry_path(self.repo)
        if path is not None and not path.exists():
            self.add("registry", "FAIL", f"{path} does not exist (never applied)", f"llmhyper apply --repo {self.repo}")
            return
        guard.check_registry_is_own(self.repo)
        self.store = fa.open_store(self.repo)
        self.add("registry", "ok", f"{path or 'remote registry'} belongs to this repo")

    def roles(self) -> None:
        from llmhyper_feast.store import feast_adapter as fa

        views = self.store.list_feature_views(allow_cache=False)
        by_role: dict[str, list[Any]] = {}
        for fv in views:
            by_role.setdefault(fv.tags.get(fa.ROLE_TAG, ""), []).append(fv)
        apply = f"llmhyper apply --repo {self.repo}"
        users = by_role.get(fa.USER_ROLE, [])
        if not users:
            self.add(
                "role user_features",
                "FAIL",
                "no view is tagged llmhyper.role: user_features",
                "define user views with llmhyper_feast.definitions.user_features_view (or tag them), then " + apply,
            )
        else:
            self.user_features(users, apply)
        for role, helper in (
            (fa.AD_CONTENT_ROLE, "ad_content_view"),
            (fa.WARM_ROLE, "llmhyper_views"),
            (fa.GENERATED_ROLE, "llmhyper_views"),
        ):
            found = by_role.get(role, [])
            if len(found) != 1:
                self.add(
                    f"role {role}",
                    "FAIL",
                    f"expected one view tagged llmhyper.role: {role}, found {[v.name for v in found] or 'none'}",
                    f"define it with llmhyper_feast.definitions.{helper}(...), then {apply}",
                )
            else:
                self.view_fields(role, found[0], apply)
        imps = by_role.get(IMPRESSIONS_ROLE, [])
        if imps:
            fv = imps[0]
            columns = {*fv.join_keys, *(f.name for f in fv.features), fv.batch_source.timestamp_field}
            lacking = [c for c in IMPRESSION_COLUMNS if c not in columns]
            if lacking:
                self.add(
                    "role impressions",
                    "FAIL",
                    f"view '{fv.name}' lacks columns {lacking}",
                    f"give it {list(IMPRESSION_COLUMNS)}, then {apply}",
                )
            else:
                self.add("role impressions", "ok", f"view '{fv.name}' has {list(IMPRESSION_COLUMNS)}")

    def user_features(self, users: list[Any], apply: str) -> None:
        from llmhyper_feast.store import feast_adapter as fa

        problems, numeric = [], 0
        for fv in users:
            for f in fv.features:
                dtype = str(f.dtype).split(".")[-1]
                if not (f.description or "").strip():
                    problems.append(f"{fv.name}:{f.name} has no description")
                if dtype not in fa.NUMERIC_DTYPES:
                    problems.append(f"{fv.name}:{f.name} is {dtype}, not numeric")
                else:
                    numeric += 1
        names = ", ".join(v.name for v in users)
        if problems:
            self.add(
                "user features",
                "FAIL",
                f"{len(problems)} problem(s): {'; '.join(problems[:5])}",
                "give every user Field a numeric dtype and a description (what it measures, period, scale), then "
                + apply,
            )
            return
        if not numeric:
            self.add("user features", "FAIL", f"views {names} have no fields", "add numeric Fields, then " + apply)
            return
        self.schema = fa.read_feature_schema(self.store)
        self.add("user features", "ok", f"{len(self.schema.features)} described numeric features in {names}")

    def view_fields(self, role: str, fv: Any, apply: str) -> None:
        from llmhyper_feast import definitions as d
        from llmhyper_feast.store import feast_adapter as fa

        expected = {fa.WARM_ROLE: d.WARM_FIELDS, fa.GENERATED_ROLE: d.GENERATED_FIELDS}.get(role)
        required = d.AD_CONTENT_FIELDS if role == fa.AD_CONTENT_ROLE else expected or ()
        have = {f.name: str(f.dtype).split(".")[-1] for f in fv.features}
        wrong = [s.name for s in required if s.name not in have]
        if expected is not None:
            wrong += [s.name for s in expected if s.name in have and have[s.name] != s.dtype]
        if wrong:
            helper = "ad_content_view" if role == fa.AD_CONTENT_ROLE else "llmhyper_views"
            self.add(
                f"role {role}",
                "FAIL",
                f"view '{fv.name}' lacks or mistypes fields {wrong}",
                f"define it with llmhyper_feast.definitions.{helper}(...), then {apply}",
            )
            return
        self.add(f"role {role}", "ok", f"view '{fv.name}'")

    def sources(self) -> None:
        from llmhyper_feast.store import feast_adapter as fa

        ids, users = fa.read_user_matrix(self.store, self.schema, inputs=self.settings.inputs)
        self.user_ids = [str(u) for u in ids[:ONLINE_SAMPLE]]
        self.add("source user features", "ok", f"{len(ids)} users x {users.shape[1]} features readable")
        _, ads = fa.read_ads(self.store, inputs=self.settings.inputs)
        self.ad_ids = [str(a) for a in ads["ad_id"].head(ONLINE_SAMPLE)]
        counts = ads["status"].value_counts().to_dict() if len(ads) else {}
        if not len(ads):
            self.add(
                "source ad content",
                "FAIL",
                "no ads in the ad content source",
                "write ad rows (ad_id, title, caption, image_uri, launch_date, status, event_timestamp)",
            )
        elif not counts.get("retired"):
            self.add(
                "source ad content",
                "warn",
                f"{len(ads)} ads, none retired: no warm ad to learn from",
                "mark ads with clicks to train on as status 'retired'",
            )
        else:
            self.add("source ad content", "ok", f"{len(ads)} ads ({', '.join(f'{k}={v}' for k, v in counts.items())})")
        for role in (fa.WARM_ROLE, fa.GENERATED_ROLE):
            view = fa.view_for_role(self.store, role).name
            rows = len(fa.read_latest(self.store, view))
            self.add(f"source {view}", "ok", f"{rows} ads stored offline")

    def impressions_table(self) -> None:
        from llmhyper_feast.jobs.train import read_impressions

        df = read_impressions(self.repo, self.impressions)  # the registered view, else the file train-warm reads
        lacking = [c for c in IMPRESSION_COLUMNS if c not in df.columns]
        if lacking:
            self.add(
                "impressions",
                "FAIL",
                f"the impressions table lacks columns {lacking}",
                f"write {list(IMPRESSION_COLUMNS)} (clicked is 0/1)",
            )
            return
        self.add("impressions", "ok", f"{len(df)} rows, {int(df['clicked'].sum())} clicks")

    def online(self) -> None:
        from llmhyper_feast.errors import StoreUnavailableError
        from llmhyper_feast.store import feast_adapter as fa

        date = "$(date -u +%Y-%m-%dT%H:%M:%S)"
        load = f"feast -c {self.repo} materialize-incremental {date} (or `llmhyper repair --repo {self.repo}`)"
        content = fa.view_for_role(self.store, fa.AD_CONTENT_ROLE).name
        probes = [
            ("online user features", self.user_ids, [f"{f.view}:{f.name}" for f in self.schema.features], "user_id"),
            ("online ad content", self.ad_ids, [f"{content}:title"], "ad_id"),
        ]
        for name, ids, refs, key in probes:
            if not ids:
                continue
            try:
                got = fa.get_online(self.store, refs, [{key: i} for i in ids])
            except StoreUnavailableError as exc:
                self.add(name, "FAIL", *_split(str(exc)))
                return
            column = refs[0].split(":")[1]
            missing = sum(v is None for v in got[column])
            if missing:
                self.add(name, "FAIL", f"{missing} of {len(ids)} sampled rows stored offline are not online", load)
            else:
                self.add(name, "ok", f"{len(ids)} sampled rows online")

    def weights_online(self) -> None:
        from llmhyper_feast.jobs.materialize import status

        table = status(self.repo, self.settings)
        counts = table["state"].value_counts().to_dict()
        text = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no ads"
        hint = table.attrs.get("hint", "")
        if counts.get("online-missing") or counts.get("online-stale"):
            self.add("online weights", "FAIL", text, hint)
        elif not counts.get("warm"):
            fix = f"llmhyper train-warm --repo {self.repo}, then llmhyper materialize --repo {self.repo}"
            self.add("online weights", "warn", f"{text}: no warm ad has trained weights", fix)
        elif counts.get("cold-missing") or counts.get("cold-stale"):
            self.add("online weights", "warn", text, hint)
        else:
            self.add("online weights", "ok", text)


def _split(message: str) -> tuple[str, str]:
    """(what is wrong, the fix) of one of our error messages: its first sentence, then the rest."""
    first = message.strip().split("\n")[0]
    head, sep, rest = first.partition(". ")
    return (head, rest.strip()) if sep and rest.strip() else (first, "see the message")


def doctor(
    repo: str | Path, *, impressions: str | Path | None = None, flags: dict[str, Any] | None = None
) -> DoctorReport:
    """Check ``repo`` for llmhyper; every failed check names its fix. Nothing is written.

    ``flags`` (dotted settings keys) are the backend settings the jobs will run with: weights are
    current or stale for those.
    """
    d = _Doctor(Path(repo).resolve(), Path(impressions) if impressions else None, flags)
    d.run("feature_store.yaml", d.feature_store_yaml)
    if any(c.status == "FAIL" for c in d.report.checks):
        return d.report
    d.run("llmhyper.yaml", d.settings_file)
    d.run("registry", d.registry)
    d.run("roles", d.roles, needs=d.store is not None)
    roles_ok = d.store is not None and d.schema is not None and not d.report.failed
    d.run("sources", d.sources, needs=roles_ok)
    d.run("impressions", d.impressions_table, needs=d.store is not None)
    ready = roles_ok and d.settings is not None and not d.report.failed
    d.run("online", d.online, needs=ready)
    d.run("online weights", d.weights_online, needs=ready)
    return d.report
