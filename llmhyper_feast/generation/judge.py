"""LLM-as-judge: a second call that checks each feature batch's weights against the ad.

With ``generation.judge: on`` every feature batch whose weights passed validation is shown to
the judge (same backend, cache, seeds and redaction as generation): the ad, the definitions of
the batch's features, the averaged weights and, in the reasoning variant, the first valid
sample's texts. The judge answers strict JSON naming the weights whose sign or size contradicts
the ad. A flagged batch is asked once more with a prompt that quotes the objections, and the
new weights are judged again; if the judge still objects, the batch falls back to the prior
(the ad's origin becomes ``fallback``). A judge answer that fails validation, or a judge call
that fails, never discards weights: it is recorded in ``judge_note``.

Consistency rate (the paper's sign agreement between reasoning and weights), reasoning variant
only: for every feature of a batch the judge also reports the direction the *text* states or
clearly implies, one of ``+``, ``-``, ``0`` (says it does not matter) or ``none`` (not
addressed). It is compared with the sign of the first valid sample's weight (the sample whose
text the judge read), where ``|w| <= NEUTRAL_BAND`` counts as ``0``. Features reported as
``none`` are left out. It is measured on the first answer, before any regeneration: it
describes the generating model, not the repair.

Log columns added per ad (only when the judge is on): ``judge_flags`` (JSON list of
``{"round", "feature", "problem", "why"}``), ``judge_calls`` (judge API calls, 0 when cached),
``regenerated`` (batches asked again), ``judge_rejected`` (batches that fell back),
``consistency_agree`` / ``consistency_total`` and ``judge_note``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from llmhyper_feast.backends.llm.base import AnswerFormat, ChatRequest, ChatResult
from llmhyper_feast.errors import AnswerError, InputError
from llmhyper_feast.features import Ad, FeatureSchema, clean_text
from llmhyper_feast.generation.answers import WeightOutcome, decode_json, request_weights
from llmhyper_feast.store.redact import redact

if TYPE_CHECKING:
    from llmhyper_feast.backends.llm.base import LLMBackend
    from llmhyper_feast.generation.runner import GenerationInputs

__all__ = [
    "DIRECTIONS",
    "JUDGE_VERSION",
    "NEUTRAL_BAND",
    "PROBLEMS",
    "Flag",
    "JudgeRejected",
    "Verdict",
    "consistency",
    "judge_chunk",
    "judge_format",
    "judge_messages",
    "judge_summary",
    "parse_verdict",
    "regeneration_request",
    "weight_sign",
]

JUDGE_VERSION = "j1"  # change with the wording of the judge's prompt
PROBLEMS: tuple[str, ...] = ("sign", "size")
DIRECTIONS: tuple[str, ...] = ("+", "-", "0", "none")
NEUTRAL_BAND = 0.05  # |weight| at or below this counts as "no effect" when comparing signs
WHY_LIMIT = 200  # characters of one flag's reason

_SYSTEM = """\
You review the weights of a new ad's click model before it goes live. The model is a logistic \
regression over user features, P(click) = sigmoid(w_1 * x_1 + ... + w_n * x_n + b): a positive \
weight says users with a high value of that feature click more, a negative weight says they \
click less, and a weight near 0 says the feature does not matter for this ad.

Flag a weight only when it clearly contradicts what the ad offers:
- problem "sign": its direction is wrong, e.g. a positive weight on a vegetarian preference for \
an ad selling steaks, or a negative weight on the very interest the ad serves;
- problem "size": the direction may be fine but the size is not, e.g. the interest the ad is \
plainly about gets a weight near 0 or below unrelated features, or an unrelated feature gets \
one of the largest weights.
Leave defensible choices alone; an empty list of flags is the usual answer. Give each flag \
one short sentence saying why."""

_STATED = """\
You also get the written reasoning that came with the weights. For every listed feature, \
report in "stated" the direction that this text states or clearly implies for that feature, \
judging the words only and ignoring the numbers: "+" (raises clicks), "-" (lowers clicks), \
"0" (the text says it does not matter) or "none" (the text does not address it)."""

_OUTPUT = """\
Reply with a single JSON object and nothing else: {shape}. Name features exactly as listed, \
at most one flag per feature."""


@dataclass(frozen=True)
class Flag:
    """One objection of the judge to one feature's weight."""

    feature: str
    problem: str
    why: str


@dataclass(frozen=True)
class Verdict:
    """A validated judge answer: its flags and, in the reasoning variant, the stated directions."""

    flags: tuple[Flag, ...]
    stated: dict[str, str] = field(default_factory=dict)


class JudgeRejected(AnswerError):
    """The judge still objected after one regeneration: the batch falls back to the prior."""


def _check_names(feature_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(feature_names)
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise InputError(f"feature_names must be unique non-empty strings, at least one. Got {names!r} instead.")
    return names


def _shape(reasoning: bool) -> str:
    flags = '"flags": [{"feature": "<name>", "problem": "sign" or "size", "why": "<reason>"}, ...]'
    stated = ', "stated": {"<name>": "+", "-", "0" or "none", ...}' if reasoning else ""
    return "{" + flags + stated + "}"


def judge_format(feature_names: Sequence[str], *, reasoning: bool = False) -> AnswerFormat:
    """The judge's answer shape for one batch: strict JSON schema plus an equivalent regex."""
    names = _check_names(feature_names)
    flag = {
        "type": "object",
        "properties": {
            "feature": {"type": "string", "enum": list(names)},
            "problem": {"type": "string", "enum": list(PROBLEMS)},
            "why": {"type": "string"},
        },
        "required": ["feature", "problem", "why"],
        "additionalProperties": False,
    }
    properties: dict[str, Any] = {"flags": {"type": "array", "items": flag}}
    if reasoning:
        properties["stated"] = {
            "type": "object",
            "properties": {n: {"type": "string", "enum": list(DIRECTIONS)} for n in names},
            "required": list(names),
            "additionalProperties": False,
        }
    schema = {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}

    def alt(values: Sequence[str]) -> str:
        return "(?:" + "|".join(re.escape(json.dumps(v)) for v in values) + ")"

    sep = r"[ ]?"
    text = f'"[^"\\\\\\x00-\\x1f]{{1,{WHY_LIMIT}}}"'
    one = (
        r"\{"
        + sep
        + f'"feature":{sep}{alt(names)},{sep}"problem":{sep}{alt(PROBLEMS)},{sep}"why":{sep}{text}'
        + sep
        + r"\}"
    )
    items = f"(?:{one}(?:,{sep}{one}){{0,{len(names) - 1}}})?"
    pattern = r"\{" + sep + f'"flags":{sep}\\[{items}\\]'
    if reasoning:
        stated = f",{sep}".join(f"{re.escape(json.dumps(n))}:{sep}{alt(DIRECTIONS)}" for n in names)
        pattern += f',{sep}"stated":{sep}\\{{{sep}{stated}{sep}\\}}'
    pattern += sep + r"\}"
    return AnswerFormat(name="weight_review", schema=schema, pattern=pattern)


def _decode(text: str) -> tuple[Any, list[str]]:
    return decode_json(text, who="The judge's answer", shape='a JSON object {"flags": [...]}')


def parse_verdict(text: str, feature_names: Sequence[str], *, reasoning: bool = False) -> Verdict:
    """Validate one judge answer strictly; raise AnswerError listing every problem found.

    Rejected: anything but one JSON object with exactly ``flags`` (and ``stated`` in the reasoning
    variant), duplicate keys, flags that are not objects with exactly feature/problem/why,
    unknown features, problems other than sign/size, empty reasons, two flags for one feature,
    and ``stated`` without exactly one direction (+, -, 0, none) per feature.
    """
    names = _check_names(feature_names)
    value, duplicates = _decode(text)
    problems: list[str] = [f"duplicate keys {sorted(set(duplicates))}"] if duplicates else []
    if not isinstance(value, dict):
        raise AnswerError(f"The judge's answer must be a JSON object; got {type(value).__name__}.")
    top = ["flags", "stated"] if reasoning else ["flags"]
    if missing := [k for k in top if k not in value]:
        problems.append(f"missing keys {missing}")
    if extra := [k for k in value if k not in top]:
        problems.append(f"unexpected keys {extra}")
    flags: list[Flag] = []
    raw_flags = value.get("flags", [])
    if not isinstance(raw_flags, list):
        problems.append(f"'flags' must be a list; got {type(raw_flags).__name__}")
        raw_flags = []
    seen: set[str] = set()
    for i, item in enumerate(raw_flags):
        where = f"flag {i + 1}"
        if not isinstance(item, dict) or set(item) != {"feature", "problem", "why"}:
            keys = sorted(item) if isinstance(item, dict) else type(item).__name__
            problems.append(f"{where} must be an object with exactly feature, problem, why; got {keys}")
            continue
        feature, problem, why = item["feature"], item["problem"], item["why"]
        if feature not in names:
            problems.append(f"{where} names unknown feature {feature!r} (expected one of {list(names)})")
        elif feature in seen:
            problems.append(f"{where} flags {feature!r} a second time")
        if problem not in PROBLEMS:
            problems.append(f"{where} has problem {problem!r}; expected 'sign' or 'size'")
        if not isinstance(why, str) or not why.strip():
            problems.append(f"{where} has no reason ('why' must be a non-empty string)")
        if feature in names and feature not in seen and problem in PROBLEMS and isinstance(why, str) and why.strip():
            flags.append(Flag(feature, problem, clean_text(why).strip()[:WHY_LIMIT]))
        if isinstance(feature, str):
            seen.add(feature)
    stated: dict[str, str] = {}
    if reasoning and "stated" in value:
        raw = value["stated"]
        if not isinstance(raw, dict):
            problems.append(f"'stated' must be an object; got {type(raw).__name__}")
        else:
            if missing := [n for n in names if n not in raw]:
                problems.append(f"'stated' misses features {missing}")
            if extra := [k for k in raw if k not in names]:
                problems.append(f"'stated' names unknown features {extra}")
            if bad := [f"{k}={v!r}" for k, v in raw.items() if k in names and v not in DIRECTIONS]:
                problems.append(f"'stated' values must be one of {list(DIRECTIONS)}; got {bad}")
            stated = {n: raw[n] for n in names if raw.get(n) in DIRECTIONS}
    if problems:
        raise AnswerError("The judge's answer failed validation: " + "; ".join(problems) + ".")
    return Verdict(tuple(flags), stated)


def weight_sign(weight: float) -> str:
    """``+``, ``-`` or ``0`` (``|weight| <= NEUTRAL_BAND``): the direction a weight gives its feature."""
    return "0" if abs(weight) <= NEUTRAL_BAND else ("+" if weight > 0 else "-")


def consistency(stated: dict[str, str], weights: dict[str, float]) -> tuple[int, int]:
    """(agreeing, compared) features: stated direction vs weight sign, ``none`` left out."""
    compared = [f for f, d in stated.items() if d != "none" and f in weights]
    return sum(stated[f] == weight_sign(weights[f]) for f in compared), len(compared)


def judge_messages(
    ad: Ad,
    schema: FeatureSchema,
    weights: dict[str, float],
    *,
    reasoning_texts: dict[str, str] | None = None,
    include_caption: bool = True,
) -> list[dict[str, str]]:
    """Chat messages asking the judge to review ``weights`` (one feature batch) for ``ad``."""
    reasoning = bool(reasoning_texts)
    definitions = {f.name: f.description for f in schema.features}
    unknown = [n for n in weights if n not in definitions]
    if unknown:
        raise InputError(f"Weights for features {unknown} that are not in the schema {schema.names}.")
    system = "\n\n".join([_SYSTEM, *([_STATED] if reasoning else []), _OUTPUT.format(shape=_shape(reasoning))])
    lines = ["The ad:", f"Title: {' '.join(clean_text(ad.title).split())}"]
    if include_caption:
        lines.append(f"Caption: {' '.join(clean_text(ad.caption).split()) or '(none)'}")
    lines += ["", "Features (definition) and the weight written for each:"]
    for name, w in weights.items():
        desc = " ".join(clean_text(definitions[name]).split()) or "(no description registered)"
        lines.append(f"- {name} ({desc}): {round(float(w), 3) + 0.0:.3f}")
    if reasoning and reasoning_texts:
        lines += ["", "The reasoning written with the weights:"]
        lines += [f"{k}: {' '.join(clean_text(str(v)).split())}" for k, v in reasoning_texts.items()]
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}]


def regeneration_request(request: ChatRequest, verdict: Verdict, weights: dict[str, float]) -> ChatRequest:
    """``request`` asked afresh, with a closing message that quotes the judge's objections."""
    objections = "\n".join(
        f"- {f.feature} = {weights.get(f.feature, float('nan')):.3f}: wrong {f.problem} ({f.why})"
        for f in verdict.flags
    )
    note = (
        "A reviewer checked weights written earlier for this ad and objected to these:\n"
        f"{objections}\n"
        "Write the weights of the requested features again, fixing these where the reviewer is right, "
        "in exactly the JSON shape asked for above."
    )
    return replace(request, messages=(*request.messages, {"role": "user", "content": note}))


def _mean_weights(request: ChatRequest, outcome: WeightOutcome) -> dict[str, float]:
    mat = np.array([[s[f] for f in request.feature_names] for s in outcome.samples], dtype=np.float64)
    return dict(zip(request.feature_names, mat.mean(axis=0).tolist()))


def _judge(
    backend: LLMBackend,
    inputs: GenerationInputs,
    ads: Sequence[Ad],
    items: list[tuple[int, ChatRequest, WeightOutcome]],
) -> tuple[list[Verdict | str], list[int]]:
    """Ask the judge about each (ad index, request, outcome); a verdict or an error text each, and calls."""
    cfg = inputs.config
    requests = []
    for ad_i, request, outcome in items:
        texts = outcome.reasoning[0] if cfg.reasoning and outcome.reasoning else None
        requests.append(
            ChatRequest(
                messages=tuple(
                    judge_messages(
                        ads[ad_i],
                        inputs.schema,
                        _mean_weights(request, outcome),
                        reasoning_texts=texts,
                        include_caption=cfg.include_caption,
                    )
                ),
                feature_names=request.feature_names,
                n=1,
                temperature=0.0,
                seed=cfg.seed,
                max_tokens=120 + 90 * len(request.feature_names),
                answer_format=judge_format(request.feature_names, reasoning=texts is not None),
            )
        )
    results = backend.complete_many(requests, concurrency=cfg.concurrency, progress=False) if requests else []
    verdicts: list[Verdict | str] = []
    calls: list[int] = []
    for request, result in zip(requests, results):
        if not isinstance(result, ChatResult):
            verdicts.append(f"judge call failed: {result}")
            calls.append(0)
            continue
        calls.append(result.calls)
        try:
            if not result.samples or (result.truncated and result.truncated[0]):
                raise AnswerError("The judge's answer was cut off at max_tokens or missing.")
            reasoning = "stated" in request.answer_format.schema["properties"]  # type: ignore[union-attr]
            verdicts.append(parse_verdict(result.samples[0], request.feature_names, reasoning=reasoning))
        except AnswerError as exc:
            verdicts.append(str(exc))
    return verdicts, calls


def judge_chunk(
    inputs: GenerationInputs,
    ads: Sequence[Ad],
    requests: Sequence[Sequence[ChatRequest]],
    outcomes: Sequence[WeightOutcome],
) -> list[dict[str, Any]]:
    """Judge every valid batch of a chunk, regenerate flagged ones once, reject what stays flagged.

    ``requests[k]`` are ad ``k``'s batch requests and ``outcomes`` their outcomes, flat in the same
    order; outcomes are updated in place (regenerated samples, or ``failed=JudgeRejected``).
    Returns the judge's log columns for each ad (empty dicts when ``generation.judge`` is off).
    """
    backend = inputs.backend
    if inputs.config.judge != "on" or backend is None:
        return [{} for _ in ads]
    pairs = [(ad_i, r) for ad_i, reqs in enumerate(requests) for r in reqs]
    slots = [(ad_i, r, o) for (ad_i, r), o in zip(pairs, outcomes)]
    cols: list[dict[str, Any]] = [
        {
            "judge_flags": [],
            "judge_calls": 0,
            "regenerated": 0,
            "judge_rejected": 0,
            "consistency_agree": 0,
            "consistency_total": 0,
            "judge_note": [],
        }
        for _ in ads
    ]
    first = [(a, r, o) for a, r, o in slots if o.failed is None and o.samples]
    verdicts, calls = _judge(backend, inputs, ads, first)
    flagged: list[tuple[int, ChatRequest, WeightOutcome, Verdict]] = []
    for (ad_i, request, outcome), verdict, n_calls in zip(first, verdicts, calls):
        col = cols[ad_i]
        col["judge_calls"] += n_calls
        if isinstance(verdict, str):
            col["judge_note"].append(f"features {list(request.feature_names)}: {verdict}")
            continue
        if verdict.stated:
            agree, total = consistency(verdict.stated, outcome.samples[0])
            col["consistency_agree"] += agree
            col["consistency_total"] += total
        col["judge_flags"] += [{"round": 1, **vars(f)} for f in verdict.flags]
        if verdict.flags:
            flagged.append((ad_i, request, outcome, verdict))
    if flagged:
        again = [regeneration_request(r, v, _mean_weights(r, o)) for _, r, o, v in flagged]
        redone = request_weights(backend, again, concurrency=inputs.config.concurrency, progress=False)
        second: list[tuple[int, ChatRequest, WeightOutcome]] = []
        for (ad_i, _request, outcome, verdict), new_request, new in zip(flagged, again, redone):
            cols[ad_i]["regenerated"] += 1
            _merge(outcome, new)
            objections = "; ".join(f"{f.feature} ({f.problem}: {f.why})" for f in verdict.flags)
            if new.failed is not None:
                if isinstance(new.failed, AnswerError):  # a backend failure stays one: the next run retries it
                    outcome.failed = JudgeRejected(
                        f"the judge objected to {objections} and the regenerated answer failed: {new.failed}"
                    )
                continue
            second.append((ad_i, new_request, outcome))
        verdicts2, calls2 = _judge(backend, inputs, ads, second)
        for (ad_i, request, outcome), verdict2, n_calls in zip(second, verdicts2, calls2):
            col = cols[ad_i]
            col["judge_calls"] += n_calls
            if isinstance(verdict2, str):  # the regenerated weights stand unjudged
                col["judge_note"].append(f"features {list(request.feature_names)} (round 2): {verdict2}")
                continue
            col["judge_flags"] += [{"round": 2, **vars(f)} for f in verdict2.flags]
            if verdict2.flags:
                col["judge_rejected"] += 1
                objections = "; ".join(f"{f.feature} ({f.problem}: {f.why})" for f in verdict2.flags)
                outcome.failed = JudgeRejected(f"the judge still objected after one regeneration: {objections}")
    for col in cols:
        col["judge_flags"] = redact(json.dumps(col["judge_flags"]))
        col["judge_note"] = redact("; ".join(col["judge_note"]))
    return cols


def _merge(outcome: WeightOutcome, new: WeightOutcome) -> None:
    """Let the regenerated answer replace ``outcome``'s samples; usage adds up."""
    outcome.samples, outcome.reasoning = new.samples, new.reasoning
    outcome.errors.extend(f"regenerated: {e}" for e in new.errors)
    outcome.retried = outcome.retried or new.retried
    outcome.prompt_tokens += new.prompt_tokens
    outcome.completion_tokens += new.completion_tokens
    outcome.calls += new.calls
    outcome.latency_s += new.latency_s
    outcome.cached = outcome.cached and new.cached
    if new.failed is not None:
        outcome.failed = new.failed


def judge_summary(log: Any) -> dict[str, Any]:
    """Counts of the judge's work over generation-log rows (each ad's newest), and the consistency rate.

    Only rows written with the judge on count; the rate is None when no row compared any sign
    (the reasoning variant is off, or the judge's texts addressed no feature).
    """
    if log is None or len(log) == 0 or "judge_calls" not in log:
        judged = log.iloc[0:0] if log is not None and len(log) else None
    else:
        judged = log[log["judge_calls"].notna()]
    if judged is None or judged.empty:
        return {"ads_judged": 0, "consistency_rate": None}
    flags = [json.loads(f) if isinstance(f, str) and f else [] for f in judged["judge_flags"]]
    agree, total = int(judged["consistency_agree"].sum()), int(judged["consistency_total"].sum())
    return {
        "ads_judged": len(judged),
        "ads_flagged": sum(any(f["round"] == 1 for f in fl) for fl in flags),
        "flags": {p: sum(f["problem"] == p for fl in flags for f in fl if f["round"] == 1) for p in PROBLEMS},
        "batches_regenerated": int(judged["regenerated"].sum()),
        "batches_rejected": int(judged["judge_rejected"].sum()),
        "ads_fallback_by_judge": int((judged["judge_rejected"] > 0).sum()),
        "judge_calls": int(judged["judge_calls"].sum()),
        "judge_notes": int((judged["judge_note"].fillna("") != "").sum()),
        "consistency_agree": agree,
        "consistency_total": total,
        "consistency_rate": agree / total if total else None,
    }
