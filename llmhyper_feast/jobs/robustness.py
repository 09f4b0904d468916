"""Job: counterfactual robustness of the generated weights (the paper's accuracy of weight direction).

Each labelled ad (an ad with a target feature, the feature it is mostly about) is rewritten
into three variants with respect to that feature: ``enhanced`` (appeals to it more),
``diminished`` (conflicts with it or steers away) and ``neutralized`` (generic, its cues
removed). The original and every variant get weights from the configured source, through the
same generation code as ``generate`` (retrieval, prompts, validation, the judge when on) but
without touching the generation log. A variant is correct when the raw generated weight ``S``
of the target feature moves as the rewrite intends:

    enhanced: S_cf > S_orig;   diminished: S_cf < S_orig;   neutralized: |S_cf| < |S_orig|

(ties count as wrong). Accuracy per variant is the share of correct pairs. Pairs where the
original or the variant fell back to the prior are left out and listed.

Rewrites come from a file (CSV or JSONL: ad_id, target_feature, variant, title, caption), from
the LLM (one request per ad and variant), or, for the demo world, from the hand-written
phrases of ``datasets/demo_catalog.py``. Images are not sent: variants change the text only,
so originals are generated from their text too. With ``--llm none`` the prior writes the
weights; it sees the text only through retrieval of similar warm ads, so its accuracy is
reported as a baseline, not as the LLM's.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmhyper_feast.config import Settings
from llmhyper_feast.errors import AnswerError, BackendError, ConfigError, DataError, InputError, NotFoundError
from llmhyper_feast.features import Ad, FeatureSchema, clean_text
from llmhyper_feast.store.layout import RepoLayout

if TYPE_CHECKING:
    from llmhyper_feast.backends.llm.base import AnswerFormat, LLMBackend

__all__ = [
    "VARIANTS",
    "Counterfactual",
    "demo_counterfactuals",
    "direction_correct",
    "read_labels",
    "read_variants",
    "rewrite_counterfactuals",
    "robustness",
]

VARIANTS: tuple[str, ...] = ("enhanced", "diminished", "neutralized")
_TEXT_LIMIT = 200  # characters of a rewritten title or caption the local backend may write

_REWRITE_SYSTEM = """\
You edit ad copy for a controlled experiment on an ads-ranking model. You get an ad (its title \
and a caption describing its image), one user feature from the recommender's feature store \
(its name and definition) and the kind of change to make. Rewrite the title and the caption:
- enhanced: make the ad appeal more clearly to people who score high on the feature;
- diminished: make the ad appeal less to them, e.g. by steering it toward another audience or \
an interest that conflicts with the feature;
- neutralized: make the ad generic, removing the words that tie it to the feature's interest.
Keep the product believable and the length similar, and change only what the change needs. \
Reply with a single JSON object and nothing else: \
{"title": "<new title>", "caption": "<new caption>", "explanation": "<one sentence>"}."""


@dataclass(frozen=True)
class Counterfactual:
    """One rewritten variant of an ad with respect to its target feature."""

    ad_id: str
    target_feature: str
    variant: str
    title: str
    caption: str = ""


def direction_correct(variant: str, original: float, counterfactual: float) -> bool:
    """Whether the target feature's weight moved as ``variant`` intends (ties are wrong)."""
    if variant == "enhanced":
        return counterfactual > original
    if variant == "diminished":
        return counterfactual < original
    if variant == "neutralized":
        return abs(counterfactual) < abs(original)
    raise InputError(f"Unknown variant {variant!r}; expected one of {list(VARIANTS)}.")


# --- sources of variants and labels ------------------------------------------------------------


def _read_records(path: Path, required: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) of every row of a CSV or JSONL file, with ``required`` columns checked."""
    if not path.is_file():
        raise InputError(f"{path} does not exist. Pass an existing CSV or JSONL file.")
    records: list[tuple[str, dict[str, Any]]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{i} is not JSON ({exc.msg}). Write one JSON object per line.") from None
            if not isinstance(value, dict):
                raise InputError(f"{path}:{i} must be a JSON object. Got {type(value).__name__} instead.")
            records.append((f"{path}:{i}", value))
    elif path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path} misses the columns {missing}. Its header must name {list(required)}.")
            records = [(f"{path}:{i}", dict(row)) for i, row in enumerate(reader, 2)]
    else:
        raise InputError(f"{path} must end in .csv or .jsonl. Got '{path.suffix}' instead.")
    for where, record in records:
        bad = [c for c in required if not isinstance(record.get(c), str) or not str(record[c]).strip()]
        if bad:
            raise InputError(f"{where} needs non-empty text in {bad}. Fill them in or drop the row.")
    if not records:
        raise InputError(f"{path} holds no rows. Add at least one.")
    return records


def read_variants(path: str | Path) -> list[Counterfactual]:
    """Hand-written variants from a CSV or JSONL file (ad_id, target_feature, variant, title[, caption])."""
    out: list[Counterfactual] = []
    seen: set[tuple[str, str, str]] = set()
    for where, r in _read_records(Path(path), ("ad_id", "target_feature", "variant", "title")):
        variant = str(r["variant"]).strip().lower()
        if variant not in VARIANTS:
            raise InputError(f"{where} has variant {r['variant']!r}; expected one of {list(VARIANTS)}.")
        key = (str(r["ad_id"]).strip(), str(r["target_feature"]).strip(), variant)
        if key in seen:
            raise InputError(f"{where} repeats ad {key[0]!r}, feature {key[1]!r}, variant {variant!r}. Keep one row.")
        seen.add(key)
        caption = r.get("caption")
        out.append(Counterfactual(*key, title=str(r["title"]).strip(), caption=str(caption or "").strip()))
    return out


def read_labels(path: str | Path) -> dict[str, str]:
    """Target feature per ad from a CSV or JSONL file (ad_id, target_feature)."""
    labels: dict[str, str] = {}
    for where, r in _read_records(Path(path), ("ad_id", "target_feature")):
        ad_id = str(r["ad_id"]).strip()
        if ad_id in labels:
            raise InputError(f"{where} labels ad {ad_id!r} a second time. Keep one target feature per ad.")
        labels[ad_id] = str(r["target_feature"]).strip()
    return labels


def demo_counterfactuals(ads: Sequence[Ad]) -> list[Counterfactual]:
    """Hand-written variants of the demo ads among ``ads`` (target: the ad's category feature)."""
    from llmhyper_feast.datasets.demo_catalog import counterfactual_variants

    out = []
    for ad in ads:
        found = counterfactual_variants(ad.title, ad.caption)
        if found is None:
            continue
        target, variants = found
        out += [Counterfactual(ad.ad_id, target, v, *variants[v]) for v in VARIANTS]
    return out


def _demo_labels(layout: RepoLayout) -> dict[str, str]:
    import pandas as pd

    if not layout.demo_truth.is_file():
        return {}
    truth = pd.read_parquet(layout.demo_truth, columns=["ad_id", "category"])
    return dict(zip(truth["ad_id"], truth["category"]))


# --- LLM rewrites ----------------------------------------------------------------------------------


def rewrite_format() -> AnswerFormat:
    """The answer shape of a rewrite: strict JSON schema plus an equivalent regex."""
    from llmhyper_feast.backends.llm.base import AnswerFormat

    keys = ("title", "caption", "explanation")
    schema = {
        "type": "object",
        "properties": {k: {"type": "string"} for k in keys},
        "required": list(keys),
        "additionalProperties": False,
    }
    text = f'"[^"\\\\\\x00-\\x1f]{{1,{_TEXT_LIMIT}}}"'
    body = r",[ ]?".join(f'"{k}":[ ]?{text}' for k in keys)
    return AnswerFormat(name="ad_rewrite", schema=schema, pattern=r"\{[ ]?" + body + r"[ ]?\}")


def parse_rewrite(text: str) -> tuple[str, str]:
    """(title, caption) of a rewrite answer; AnswerError unless it is exactly the requested object."""
    body = str(text or "").strip()
    fence = re.fullmatch(r"```(?:json|JSON)?\s*(.*?)\s*```", body, re.DOTALL)
    body = fence.group(1) if fence else body
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise AnswerError(f"The rewrite is not JSON ({exc.msg}); expected {{title, caption, explanation}}.") from None
    if not isinstance(value, dict) or set(value) != {"title", "caption", "explanation"}:
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise AnswerError(f"The rewrite must hold exactly title, caption, explanation. Got {got} instead.")
    if not all(isinstance(value[k], str) for k in value) or not clean_text(value["title"]).strip():
        raise AnswerError("The rewrite's fields must be strings and its title non-empty.")
    return " ".join(clean_text(value["title"]).split()), " ".join(clean_text(value["caption"]).split())


def rewrite_counterfactuals(
    backend: LLMBackend,
    ads: Sequence[Ad],
    labels: dict[str, str],
    schema: FeatureSchema,
    settings: Settings,
) -> tuple[list[Counterfactual], list[dict[str, str]]]:
    """Variants written by ``backend`` for every ad with a label; (variants, skipped with the reason)."""
    from llmhyper_feast.backends.llm.base import ChatRequest, ChatResult

    definitions = {f.name: f.description for f in schema.features}
    fmt = rewrite_format()
    jobs: list[tuple[Ad, str, str]] = [(ad, labels[ad.ad_id], v) for ad in ads if ad.ad_id in labels for v in VARIANTS]
    requests = []
    for ad, target, variant in jobs:
        user = "\n".join(
            [
                "Ad:",
                f"Title: {' '.join(clean_text(ad.title).split())}",
                f"Caption: {' '.join(clean_text(ad.caption).split()) or '(none)'}",
                "",
                f"Feature: {target}: {' '.join(clean_text(definitions[target]).split())}",
                f"Change: {variant}",
            ]
        )
        requests.append(
            ChatRequest(
                messages=({"role": "system", "content": _REWRITE_SYSTEM}, {"role": "user", "content": user}),
                feature_names=(target,),
                temperature=settings.generation.temperature,
                seed=settings.generation.seed,
                max_tokens=400,
                answer_format=fmt,
            )
        )
    results = backend.complete_many(requests, concurrency=settings.generation.concurrency, progress=False)
    out, skipped = [], []
    max_title, max_caption = settings.inputs.max_title_chars, settings.inputs.max_caption_chars
    for (ad, target, variant), result in zip(jobs, results):
        try:
            if not isinstance(result, ChatResult):
                raise result
            if not result.samples or (result.truncated and result.truncated[0]):
                raise AnswerError("The rewrite was cut off at max_tokens or missing.")
            title, caption = parse_rewrite(result.samples[0])
        except BackendError as exc:
            if getattr(exc, "fatal", False):
                raise
            skipped.append({"ad_id": ad.ad_id, "variant": variant, "reason": f"rewrite failed: {exc}"})
            continue
        out.append(Counterfactual(ad.ad_id, target, variant, title[:max_title], caption[:max_caption]))
    return out, skipped


# --- the job -------------------------------------------------------------------------------------


def _summary(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    correct = sum(p["correct"] for p in pairs)
    return {"n": len(pairs), "correct": correct, "accuracy": correct / len(pairs) if pairs else None}


def robustness(
    repo: str | Path,
    settings: Settings,
    *,
    variants_path: str | Path | None = None,
    rewrite: bool = False,
    labels_path: str | Path | None = None,
    ad_ids: Sequence[str] | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate weights for originals and variants, score each variant's direction, save the result.

    Variants come from ``variants_path``, else from the LLM with ``rewrite`` (labels from
    ``labels_path`` or the demo world's truth), else from the demo catalog. Returns the result
    also written to ``data/robustness.json``.
    """
    from llmhyper_feast.generation.runner import generate_rows
    from llmhyper_feast.jobs.generate import build_index
    from llmhyper_feast.store import feast_adapter as fa
    from llmhyper_feast.store.files import atomic_write_json
    from llmhyper_feast.store.redact import redact

    if limit is not None and limit < 1:
        raise InputError(f"The 'limit' parameter of robustness must be an int >= 1. Got {limit!r} instead.")
    if variants_path is not None and (rewrite or labels_path is not None):
        raise InputError("--variants already holds the rewrites: drop --rewrite/--labels, or drop --variants.")
    layout = RepoLayout.of(repo)
    store, inputs = build_index(layout.root, settings, progress=progress)
    ads, _ = fa.read_ads(store)
    by_id = {a.ad_id: a for a in ads}
    names = inputs.schema.names
    skipped: list[dict[str, str]] = []

    if variants_path is not None:
        counterfactuals = read_variants(variants_path)
        source = f"file {Path(variants_path).name}"
        wanted = list(dict.fromkeys(c.ad_id for c in counterfactuals))
    else:
        wanted = [a.ad_id for a in ads if a.ad_id not in inputs.warm]  # the cold ads, as generate sees them
        counterfactuals = []
        source = "llm rewrite" if rewrite else "demo catalog"
    if ad_ids:
        unknown = [a for a in ad_ids if a not in by_id]
        if unknown:
            raise NotFoundError(f"Unknown ad id(s) {unknown[:5]}: they are not in the ad content view.")
        wanted = [a for a in wanted if a in set(ad_ids)] if variants_path is not None else list(ad_ids)
    if variants_path is None:
        candidates = [by_id[a] for a in wanted]
        if rewrite:
            if inputs.backend is None:
                raise ConfigError(
                    "--rewrite needs an LLM to write the variants, but llm.name is none. Choose a backend "
                    "(--llm openai or local), or pass hand-written variants with --variants FILE."
                )
            labels = read_labels(labels_path) if labels_path is not None else _demo_labels(layout)
            labelled = [a for a in candidates if a.ad_id in labels][:limit]
            if labelled:
                counterfactuals, skipped = rewrite_counterfactuals(
                    inputs.backend, labelled, labels, inputs.schema, settings
                )
        else:
            counterfactuals = demo_counterfactuals(candidates)
            if limit is not None:
                keep = set(list(dict.fromkeys(c.ad_id for c in counterfactuals))[:limit])
                counterfactuals = [c for c in counterfactuals if c.ad_id in keep]
    else:
        keep = set(wanted[:limit] if limit is not None else wanted)
        counterfactuals = [c for c in counterfactuals if c.ad_id in keep]
    if not counterfactuals:
        raise DataError(
            f"No labelled ads to test in {layout.root} ({source}): the robustness check needs ads with a target "
            "feature. Pass --variants FILE (ad_id, target_feature, variant, title, caption), or --rewrite with "
            "--labels FILE (ad_id, target_feature)."
        )
    missing_ads = sorted({c.ad_id for c in counterfactuals} - set(by_id))
    if missing_ads:
        raise NotFoundError(f"Variants name ads {missing_ads[:5]} that are not in the ad content view. Fix the file.")
    bad_targets = sorted({c.target_feature for c in counterfactuals} - set(names))
    if bad_targets:
        raise InputError(f"Target features {bad_targets} are not user features of this repo; expected some of {names}.")

    # originals and variants keep the original's id: retrieval then excludes the same ad for all of them
    originals = list(dict.fromkeys(c.ad_id for c in counterfactuals))
    texts = [Ad(a, by_id[a].title, by_id[a].caption) for a in originals]
    texts += [Ad(c.ad_id, c.title, c.caption) for c in counterfactuals]
    rows = generate_rows(texts, inputs, log_dir=None, progress=progress)
    if rows.attrs.get("stopped"):
        raise BackendError(
            f"robustness could not generate every original and variant: {rows.attrs['stopped']}. Fix the backend "
            "and re-run (answers already received are cached)."
        )
    records = rows.to_dict("records")
    original_rows = dict(zip(originals, records[: len(originals)]))
    pairs: list[dict[str, Any]] = []
    for c, row in zip(counterfactuals, records[len(originals) :]):
        base = original_rows[c.ad_id]
        if "fallback" in (base["origin"], row["origin"]):
            which = "original" if base["origin"] == "fallback" else "variant"
            reason = base["fallback_reason"] if which == "original" else row["fallback_reason"]
            skipped.append({"ad_id": c.ad_id, "variant": c.variant, "reason": f"{which} fell back: {reason}"})
            continue
        i = names.index(c.target_feature)
        before, after = float(base["weights"][i]), float(row["weights"][i])
        pairs.append(
            {
                **asdict(c),
                "original": before,
                "counterfactual": after,
                "correct": direction_correct(c.variant, before, after),
            }
        )
    by_variant = {v: _summary([p for p in pairs if p["variant"] == v]) for v in VARIANTS}
    for v in VARIANTS:
        moved = [p["counterfactual"] - p["original"] for p in pairs if p["variant"] == v]
        by_variant[v]["mean_change"] = sum(moved) / len(moved) if moved else None
    result = {
        "source": inputs.source_id,
        "variants_from": source,
        "judge": settings.generation.judge,
        "ads": len(originals),
        "by_variant": by_variant,
        "overall": _summary(pairs),
        "note": (
            "weights from the prior, which sees the ad text only through retrieval: a baseline, not an LLM result"
            if inputs.backend is None
            else "raw generated weights (before calibration), text only (no images)"
        ),
        "pairs": pairs,
        "skipped": [{**s, "reason": redact(s["reason"])} for s in skipped],
    }
    atomic_write_json(layout.robustness, result)
    return result
