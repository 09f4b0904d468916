"""Content rules: ads that must not be shown to users high on a feature (``llmhyper_policy.yaml``).

The optional file ``<repo>/llmhyper_policy.yaml`` holds rules such as::

    rules:
      - id: no_meat_to_vegetarians
        description: Meat products are not shown to users who very likely eat no meat.
        user_feature: vegetarian      # a registered user feature
        above: 0.7                    # users whose value is strictly above this do not see the ad
        match:
          keywords: [steak, sausages, meat]   # whole words of the title or caption, any case
          categories: [butcher]               # the ad content's category, when it has one

An ad *triggers* a rule when one keyword occurs as a whole word (case-insensitive) in its
title or caption, or its category is listed. :func:`tag_ad` is the one tagging function (the
LLM judge may add tags of its own later); the ranker and the exported all-ads ONNX model drop
a tagged ad for a user whose feature value is above the rule's threshold.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmhyper_feast.errors import ConfigError
from llmhyper_feast.features import Ad

__all__ = ["POLICY_FILE", "ContentRule", "Policy", "exclusions", "load_policy", "tag_ad"]

POLICY_FILE = "llmhyper_policy.yaml"
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


class RuleMatch(BaseModel):
    """What makes an ad trigger a rule: any keyword (whole word, any case) or any category."""

    model_config = _STRICT
    keywords: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()


class ContentRule(BaseModel):
    """One rule: ads matching ``match`` are not shown to users whose ``user_feature`` is above ``above``."""

    model_config = _STRICT
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str = Field(min_length=1)
    user_feature: str
    above: float = Field(allow_inf_nan=False)
    match: RuleMatch

    @cached_property
    def pattern(self) -> re.Pattern[str] | None:
        """The keywords as one case-insensitive whole-word regex (None without keywords)."""
        words = [w.strip() for w in self.match.keywords if w.strip()]
        if not words:
            return None
        return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)


class Policy(BaseModel):
    """Every content rule of a repo (none when ``llmhyper_policy.yaml`` is absent)."""

    model_config = _STRICT
    rules: tuple[ContentRule, ...] = ()

    @property
    def hash(self) -> str:
        """16 hex digits identifying the rules ("" for no rules, so an absent file changes no hash)."""
        if not self.rules:
            return ""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def rule(self, rule_id: str) -> ContentRule:
        """The rule named ``rule_id`` (ConfigError when there is none)."""
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise ConfigError(f"No content rule '{rule_id}' in {POLICY_FILE}; known: {[r.id for r in self.rules]}.")


def load_policy(repo: str | Path, feature_names: Sequence[str]) -> Policy:
    """The rules of ``<repo>/llmhyper_policy.yaml`` (an empty Policy when absent), validated strictly.

    ``feature_names``: the registered user features; a rule naming another feature is a ConfigError.
    """
    path = Path(repo) / POLICY_FILE
    if not path.exists():
        return Policy()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        reason = str(exc).replace("\n", " ")
        raise ConfigError(f"{path} is not valid YAML ({reason}). Fix the file or delete it.") from None
    return parse_policy(raw, feature_names, source=str(path))


def parse_policy(raw: Any, feature_names: Sequence[str], *, source: str = POLICY_FILE) -> Policy:
    """Validate a loaded policy mapping (see :func:`load_policy`)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source} must hold a mapping with a 'rules' list. Got {type(raw).__name__}.")
    try:
        policy = Policy.model_validate(_tuples(raw))
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)[:5]
        )
        raise ConfigError(
            f"{source} is invalid ({where}). Each rule needs id, description, user_feature, above and "
            "match: {keywords: [...], categories: [...]}; no other keys."
        ) from None
    seen: set[str] = set()
    for rule in policy.rules:
        if rule.id in seen:
            raise ConfigError(f"{source} defines the rule id '{rule.id}' twice; rule ids must be unique.")
        seen.add(rule.id)
        if rule.user_feature not in feature_names:
            raise ConfigError(
                f"{source}: rule '{rule.id}' names the user feature '{rule.user_feature}', which is not "
                f"registered. Registered user features: {list(feature_names)}."
            )
        if rule.pattern is None and not rule.match.categories:
            raise ConfigError(f"{source}: rule '{rule.id}' matches nothing; give match.keywords or match.categories.")
    return policy


def _tuples(value: Any) -> Any:
    """YAML lists as tuples (the strict models take tuples)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def tag_ad(ad: Ad, policy: Policy, category: str | None = None) -> tuple[str, ...]:
    """Ids of the rules ``ad`` triggers (policy order): a keyword in its title or caption, or its category."""
    text = f"{ad.title}\n{ad.caption}"
    folded = category.casefold() if isinstance(category, str) else None
    out = []
    for rule in policy.rules:
        hit = rule.pattern is not None and rule.pattern.search(text) is not None
        if not hit and folded is not None:
            hit = any(c.casefold() == folded for c in rule.match.categories)
        if hit:
            out.append(rule.id)
    return tuple(out)


def exclusions(
    policy: Policy, tags: Sequence[Sequence[str]], feature_names: Sequence[str]
) -> list[list[tuple[int, float]]]:
    """Per ad, the (feature index, threshold) pairs its tags imply: above any threshold, the ad is excluded."""
    index = {n: i for i, n in enumerate(feature_names)}
    out = []
    for ad_tags in tags:
        pairs = []
        for rule_id in ad_tags:
            rule = policy.rule(rule_id)
            if rule.user_feature not in index:
                raise ConfigError(
                    f"Content rule '{rule.id}' uses the user feature '{rule.user_feature}', which the model does "
                    f"not have ({list(feature_names)[:10]} ...). Fix {POLICY_FILE} or re-run `feast apply`."
                )
            pairs.append((index[rule.user_feature], float(rule.above)))
        out.append(sorted(set(pairs)))
    return out
