"""Job: ``llmhyper init``: scaffold a new Feast repo for llmhyper, or add llmhyper's views to an existing one.

A new repo gets ``feature_store.yaml`` (SQLite online store, file offline store),
``feature_definitions.py`` written with :mod:`llmhyper_feast.definitions`, ``llmhyper.yaml`` with
the default settings, ``.feastignore`` and an empty ``data/``. ``existing`` writes only
``llmhyper_views.py``, which imports the repo's own entity and views and never edits its files.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmhyper_feast.errors import FeatureRepoError, InputError

__all__ = ["InitReport", "init_existing", "init_repo"]

VIEWS_FILE = "llmhyper_views.py"

FEATURE_STORE_YAML = """\
project: {project}
provider: local
registry: data/registry.db
online_store:
  type: sqlite
  path: data/online_store.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""

FEASTIGNORE = "data/\n"

DEFINITIONS = '''\
"""Feast definitions of {project}, scaffolded by `llmhyper init`.

Name here what is yours: entities, user feature views (with descriptions) and the ad content.
`llmhyper_views` adds what the plugin writes: trained and generated per-ad weights and the
`ranking` FeatureService. Run `llmhyper apply` after every edit, then `llmhyper doctor`.
"""

from pathlib import Path

from feast import Entity, Field
from feast.types import Float32
from feast.value_type import ValueType

from llmhyper_feast.definitions import ad_content_view, impressions_view, llmhyper_views, user_features_view

DATA = Path(__file__).resolve().parent / "data"

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A person who sees ads.")
ad = Entity(name="ad", join_keys=["ad_id"], value_type=ValueType.STRING, description="One ad: its message and image.")

# User features. Every Field is a feature the LLM writes a weight for, and its description is the
# definition the prompt shows: say what it measures, over which period and on which scale. Types
# must be numeric. Rows: data/user_profile.parquet with user_id, one column per field and
# event_timestamp. Replace these examples with your own; add more views with order=2, 3, ...
user_profile = user_features_view(
    "user_profile",
    user,
    [
        Field(
            name="sports",
            dtype=Float32,
            description="Share of the user's visits in the last 90 days to sports and fitness pages, 0 to 1.",
        ),
        Field(
            name="cooking",
            dtype=Float32,
            description="Share of the user's visits in the last 90 days to recipes and kitchen products, 0 to 1.",
        ),
        Field(
            name="travel",
            dtype=Float32,
            description="Share of the user's visits in the last 90 days to flights, hotels and trips, 0 to 1.",
        ),
        Field(
            name="deal_seeking",
            dtype=Float32,
            description="Share of the user's purchases in the last 180 days made with a coupon or on sale, 0 to 1.",
        ),
    ],
    data_dir=DATA,
    order=1,
    description="What each user is interested in and how they shop.",
)

# Ad content: data/ad_content.parquet with ad_id, title, caption, image_uri, launch_date, status
# (retired = has clicks to train a model on, active = new) and event_timestamp.
ad_content = ad_content_view(ad, data_dir=DATA)

# Impressions (what train-warm learns from): data/impressions.parquet with user_id, ad_id,
# clicked (0/1) and event_timestamp. Drop user_split=False once the rows carry a train/test
# user_split column.
ad_impressions = impressions_view(user, ad, data_dir=DATA, user_split=False)

warm_ad_weights, generated_ad_weights, ranking = llmhyper_views(ad, data_dir=DATA, user_views=[user_profile])
'''

EXISTING_VIEWS = '''\
"""llmhyper's views for this Feast repo, added by `llmhyper init --existing` (your files are untouched).

Imports the repo's ad entity{tag_note} and adds the views the plugin writes: trained and
generated per-ad weights{ranking_note}. Run `llmhyper apply`, then `llmhyper doctor`.
"""

from pathlib import Path

from llmhyper_feast.definitions import {helpers}
{imports}

DATA = Path(__file__).resolve().parent / "{data_dir}"

{body}
'''


@dataclass
class InitReport:
    """What ``init`` wrote."""

    repo: Path
    written: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """One line per file written and the next step."""
        lines = [f"wrote {p}" for p in self.written]
        lines.append(f"next: load data under {self.repo / 'data'}, then `llmhyper apply --repo {self.repo}`")
        return "\n".join(lines)


def _project_name(repo: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", repo.resolve().name).strip("_") or "llmhyper_repo"
    return name if name[0].isalpha() else f"repo_{name}"


def _default_settings_yaml() -> str:
    import yaml

    from llmhyper_feast.config import Settings

    data = Settings().model_dump(mode="json")
    keep = ("embedder", "llm", "prior", "generation", "calibration", "warm", "gate")
    body = yaml.safe_dump({k: data[k] for k in keep}, sort_keys=False)
    return (
        "# llmhyper-feast settings of this repo (the defaults). Precedence: CLI flag > env var > this file > default.\n"
        "# Secrets (API keys) are read from environment variables only.\n" + body
    )


def _write_all(files: dict[Path, str], *, force: bool) -> list[Path]:
    from llmhyper_feast.store.files import atomic_write_text

    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise InputError(
            f"Refusing to overwrite {', '.join(str(p) for p in existing)}. Pick another --repo, or pass --force "
            "to replace these files."
        )
    for path, text in files.items():
        atomic_write_text(path, text)
    return list(files)


def init_repo(repo: str | Path, *, force: bool = False) -> InitReport:
    """Scaffold a new Feast repo for llmhyper at ``repo``; existing files are refused unless ``force``."""
    root = Path(repo).resolve()
    project = _project_name(root)
    files = {
        root / "feature_store.yaml": FEATURE_STORE_YAML.format(project=project),
        root / "feature_definitions.py": DEFINITIONS.format(project=project),
        root / "llmhyper.yaml": _default_settings_yaml(),
        root / ".feastignore": FEASTIGNORE,
    }
    report = InitReport(root, _write_all(files, force=force))
    (root / "data").mkdir(parents=True, exist_ok=True)
    return report


@dataclass(frozen=True)
class _Found:
    module: str
    variable: str
    kind: str  # Entity or FeatureView


def _repo_objects(root: Path) -> dict[tuple[str, str], list[_Found]]:
    """(kind, Feast name) -> where a module-level ``x = Entity(name=...)`` / ``FeatureView(name=...)`` defines it."""
    ignored = [root / line.strip().rstrip("/") for line in _feastignore(root)]
    out: dict[tuple[str, str], list[_Found]] = {}
    for path in sorted(root.rglob("*.py")):
        if path.name == VIEWS_FILE or any(path.is_relative_to(i) for i in ignored) or ".venv" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                continue
            call = node.value
            if not isinstance(call, ast.Call):
                continue
            kind = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            if kind not in ("Entity", "FeatureView"):
                continue
            name = next(
                (k.value.value for k in call.keywords if k.arg == "name" and isinstance(k.value, ast.Constant)), None
            )
            if isinstance(name, str):
                out.setdefault((kind, name), []).append(_Found(module, node.targets[0].id, kind))
    return out


def _feastignore(root: Path) -> list[str]:
    path = root / ".feastignore"
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _find(objects: dict[tuple[str, str], list[_Found]], kind: str, name: str, root: Path, flag: str) -> _Found:
    found = objects.get((kind, name), [])
    if len(found) != 1:
        known = sorted(n for k, n in objects if k == kind)
        where = "is defined more than once" if found else "was not found"
        raise FeatureRepoError(
            f"{kind} '{name}' {where} in the .py files of {root} (as a module-level `x = {kind}(name='{name}', ...)`). "
            f"Known: {known or 'none'}. Pass {flag} with one of them."
        )
    return found[0]


def init_existing(
    repo: str | Path,
    *,
    ad_entity: str,
    user_views: list[str] | None = None,
    ad_content_view: str | None = None,
    force: bool = False,
) -> InitReport:
    """Write ``llmhyper_views.py`` into the existing Feast repo ``repo``: the plugin's views for its ad entity.

    ``user_views`` (Feast view names, in weight order) get the ``user_features`` role and the
    ranking FeatureService; ``ad_content_view`` gets the ``ad_content`` role. Both are tagged
    from ``llmhyper_views.py``; the repo's own files are not edited.
    """
    from llmhyper_feast.store.layout import check_repo

    root = check_repo(repo)
    objects = _repo_objects(root)
    ad = _find(objects, "Entity", ad_entity, root, "--ad-entity")
    users = [_find(objects, "FeatureView", v, root, "--user-view") for v in user_views or []]
    content = _find(objects, "FeatureView", ad_content_view, root, "--ad-content-view") if ad_content_view else None
    imports: dict[str, list[str]] = {}
    for item in [ad, *users, *([content] if content else [])]:
        imports.setdefault(item.module, []).append(item.variable)
    import_lines = "\n".join(f"from {m} import {', '.join(dict.fromkeys(vs))}" for m, vs in sorted(imports.items()))
    body: list[str] = []
    helpers = ["weight_views"]
    if users:
        helpers += ["ranking_service", "tag_user_views"]
        body.append(f"tag_user_views({', '.join(u.variable for u in users)})  # role user_features, in this order")
    if content:
        helpers.append("tag_ad_content")
        body.append(f"tag_ad_content({content.variable})")
    body.append(f"warm_ad_weights, generated_ad_weights = weight_views({ad.variable}, data_dir=DATA)")
    if users:
        body.append(f"ranking = ranking_service([{', '.join(u.variable for u in users)}], generated_ad_weights)")
    text = EXISTING_VIEWS.format(
        tag_note=" and tags your user feature and ad content views" if users or content else "",
        ranking_note=" and the ranking FeatureService" if users else "",
        helpers=", ".join(sorted(helpers)),
        imports=import_lines,
        data_dir="data",
        body="\n".join(body),
    )
    return InitReport(root, _write_all({root / VIEWS_FILE: text}, force=force))
