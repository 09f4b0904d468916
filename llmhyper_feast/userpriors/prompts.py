"""Messages asking for a user's next advertisers: pure functions of the profile and the pool."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

__all__ = ["PROMPT_VERSION", "build_messages", "prompt_hash"]

PROMPT_VERSION = "userpriors-1"

_SYSTEM = (
    "You help an ad platform anticipate purchases. From a shopper's recent activity and profile you "
    "predict which advertisers the shopper will buy from next. You answer with JSON only."
)


def build_messages(
    profile_text: str,
    pool: Sequence[str],
    advertisers: Mapping[str, tuple[str, str]],
    interests: Sequence[str],
    *,
    k: int,
    max_interests: int,
    as_of: str,
) -> list[dict[str, str]]:
    """System and user messages for one user (``pool`` and ``interests`` are the only allowed answers)."""
    lines = [f"- {a}: {advertisers.get(a, (a, '?'))[0]} ({advertisers.get(a, (a, '?'))[1]})" for a in pool]
    user = (
        f"Shopper activity up to {as_of}.\n{profile_text}\n\n"
        f"Candidate advertisers (id: brand (category)); the shopper's own advertisers come first, then the "
        f"period's most popular ones:\n" + "\n".join(lines) + "\n\n"
        f"Task: rank the {k} candidates the shopper is most likely to convert with next, likeliest first. "
        "Past conversions are the strongest signal, then clicks, then the categories the shopper stands out on. "
        f"Use candidate ids exactly as written, each at most once. Also name up to {max_interests} interests "
        f"from this list that describe the shopper best: {', '.join(interests)}.\n"
        'Answer with one JSON object: {"advertisers": [ids], "interests": [names]}.'
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def prompt_hash(messages: Sequence[Mapping[str, object]]) -> str:
    """A short hash of the messages (what the view stores next to each list)."""
    text = json.dumps(list(messages), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(f"{PROMPT_VERSION}\n{text}".encode()).hexdigest()[:16]
