"""Prompts that ask an LLM to write the weights of a cold ad's logistic CTR model.

``build_messages`` returns OpenAI-style chat messages, ordered so that everything shared by all
calls of a run comes first and provider prefix caches can reuse it:

1. ``system``: the role, the criteria for choosing weights, the output rules, then the
   definitions of *all* user features in schema order (the same for every ad and every batch,
   and it lets the model see each requested feature next to the others);
2. ``user``: the few-shot examples (the retrieved warm ads, most similar first, with their trained
   weights), the cold ad, and the request naming the features of this batch and the exact JSON
   shape. Its content is a string, or OpenAI content parts when an image is attached.

Answer shapes (see ``answer_template``): plain ``{"<feature>": <number>, ...}``; with
``reasoning=True`` ``{"analysis", "alignment", "key_factors", "summary": <string>,
"weights": {"<feature>": <number>, ...}}``.

All functions are pure. Change ``PROMPT_VERSION`` whenever the wording changes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmhyper_feast.backends.embedders.base import local_path_from_uri
from llmhyper_feast.errors import ConfigError, DataError
from llmhyper_feast.features import Ad, FeatureDefinition, FeatureSchema, Neighbour, clean_text

PROMPT_VERSION = "v1"
MAX_IMAGE_BYTES = 5_000_000

#: String fields the reasoning variant asks for, in order, before "weights".
REASONING_FIELDS: tuple[str, ...] = ("analysis", "alignment", "key_factors", "summary")

_ROLE = """\
You are a modelling specialist on an ads-ranking team. For a new ad you write the parameters of \
that ad's own click-through-rate model, a logistic regression over user features:

    P(click | user, ad) = sigmoid(w_1 * x_1 + w_2 * x_2 + ... + w_n * x_n + b)

where x_i is the user's value of feature i and w_i is the weight you choose for it. The ad has \
no click history yet, so the weights must come from what the ad offers, what each feature \
measures, and the trained weights of similar ads that are already running. The intercept b is \
set later; write only the feature weights."""

_CRITERIA = """\
How to choose the weights:
1. For each feature, work out from its definition which customer interest, habit or trait it measures.
2. Work out which product or offer the ad promotes and what kind of customer is likely to want it.
3. Use the example ads in proportion to their similarity to the new ad: a close example's \
weights are strong evidence, a distant example's weights are weak evidence.
4. Keep the weights centred near zero. Most should lie within [{lo}, {hi}]; go beyond that only \
when the examples clearly support it, and never beyond [{neg_max}, {max}].
5. A positive weight means a high feature value makes a click more likely. Use a negative weight \
when a high value signals dislike of, or a conflict with, the offer, and a weight near 0 when the \
feature has little to do with the ad."""

_OUTPUT_PLAIN = """\
Output rules:
- Reply with a single JSON object and nothing else: no markdown, no code fences, no comments.
- Use exactly the keys the request lists, spelled as given; add none and leave none out.
- Every value is a plain JSON number such as -0.35: never a string, null, NaN or Infinity."""

_OUTPUT_REASONING = """\
Output rules:
- Reply with a single JSON object and nothing else: no markdown, no code fences, no comments.
- First fill four short text fields, in this order: "analysis" (what the ad offers and to whom), \
"alignment" (how the requested features relate to that audience), "key_factors" (the features \
that matter most, and in which direction), "summary" (one or two sentences).
- Then give "weights": an object with exactly the feature names the request lists, spelled as \
given, adding none and leaving none out.
- Every weight is a plain JSON number such as -0.35: never a string, null, NaN or Infinity, and \
its sign must agree with what your text says about that feature."""

_NO_EXAMPLES = (
    "Examples: none are given for this ad, so base the weights on the "
    "feature definitions and the new ad alone, and keep them close to zero where unsure."
)


def _clean(text: str) -> str:
    return " ".join(clean_text(str(text)).split())


def _num(x: float) -> str:
    value = round(float(x), 3) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:.3f}"


def _check_max_abs(max_abs: float) -> float:
    if isinstance(max_abs, bool) or not isinstance(max_abs, (int, float)) or not math.isfinite(max_abs) or max_abs <= 0:
        raise ConfigError(
            f"The 'max_abs' parameter of build_messages must be a finite number > 0. Got {max_abs!r} instead."
        )
    return float(max_abs)


def _definitions(schema: FeatureSchema) -> str:
    lines = [
        f"User features ({len(schema)} in total, in model order). Every feature is listed so you "
        "can see how they relate; each request names the ones to weigh."
    ]
    for f in schema.features:
        desc = _clean(f.description) or "(no description registered)"
        lines.append(f"- {f.name} [{f.dtype}]: {desc}")
    return "\n".join(lines)


def system_message(schema: FeatureSchema, *, reasoning: bool = False, max_abs: float = 3.0) -> dict[str, str]:
    """The system message shared by every call of a run (role, criteria, output rules, definitions)."""
    max_abs = _check_max_abs(max_abs)
    typical = min(1.0, max_abs)
    criteria = _CRITERIA.format(lo=f"{-typical:g}", hi=f"{typical:g}", neg_max=f"{-max_abs:g}", max=f"{max_abs:g}")
    rules = _OUTPUT_REASONING if reasoning else _OUTPUT_PLAIN
    return {"role": "system", "content": "\n\n".join([_ROLE, criteria, rules, _definitions(schema)])}


def _ad_lines(ad: Ad, include_caption: bool) -> list[str]:
    lines = [f"Title: {_clean(ad.title)}"]
    if include_caption:
        lines.append(f"Caption: {_clean(ad.caption) or '(none)'}")
    return lines


def _examples(
    neighbours: Sequence[Neighbour], schema: FeatureSchema, include_caption: bool, weight_scale: float = 1.0
) -> str:
    if not neighbours:
        return _NO_EXAMPLES
    ordered = sorted(neighbours, key=lambda n: -float(n.similarity))
    parts = [
        f"Examples: {len(ordered)} running {'ad' if len(ordered) == 1 else 'ads'} similar to the new ad, "
        "most similar first, each with the weights its model learned from real clicks."
    ]
    for i, nb in enumerate(ordered, 1):
        weights = [float(w) for w in list(nb.warm.weights)]
        if len(weights) != len(schema) or not all(math.isfinite(w) for w in weights):
            raise DataError(
                f"Warm ad '{nb.warm.ad.ad_id}' has {len(weights)} weights (finite: "
                f"{all(math.isfinite(w) for w in weights)}); expected {len(schema)} finite weights in "
                "schema order. Retrain it or drop it from the warm set."
            )
        body = ", ".join(f'"{name}": {_num(w * weight_scale)}' for name, w in zip(schema.names, weights))
        parts.append(
            "\n".join(
                [
                    f"Example {i} (similarity {_num(nb.similarity)})",
                    *_ad_lines(nb.warm.ad, include_caption),
                    f"Trained weights: {{{body}}}",
                ]
            )
        )
    return "\n\n".join(parts)


def answer_template(batch: Sequence[FeatureDefinition], *, reasoning: bool = False) -> str:
    """The exact JSON shape requested for ``batch``, with placeholders for the values."""
    weights = "{" + ", ".join(f'"{f.name}": <number>' for f in batch) + "}"
    if not reasoning:
        return weights
    texts = ", ".join(f'"{k}": "<text>"' for k in REASONING_FIELDS)
    return "{" + texts + ', "weights": ' + weights + "}"


def _check_batch(batch: Sequence[FeatureDefinition], schema: FeatureSchema) -> None:
    if not batch:
        raise DataError("The feature batch is empty; ask for at least one feature (see feature_batches).")
    known = set(schema.names)
    names = [f.name for f in batch]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DataError(
            f"Features {unknown} are not in the schema {schema.names}; batches must come from the same schema."
        )
    if len(set(names)) != len(names):
        raise DataError(f"The feature batch names a feature twice: {names}.")


def build_messages(
    ad: Ad,
    batch: Sequence[FeatureDefinition],
    schema: FeatureSchema,
    neighbours: Sequence[Neighbour],
    *,
    reasoning: bool = False,
    include_caption: bool = True,
    image_data_url: str | None = None,
    max_abs: float = 3.0,
    weight_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """Chat messages asking for the weights of the features in ``batch`` for the cold ``ad``.

    ``include_caption=False`` drops every caption (the cold ad's and the examples'): the
    no-image-information ablation. ``image_data_url`` (a ``data:image/...`` or http(s) URL)
    attaches the ad's image as an OpenAI ``image_url`` content part. Example weights are shown
    multiplied by ``weight_scale`` (the answer scale; the caller divides answers by it).
    """
    _check_batch(batch, schema)
    if not _clean(ad.title):
        raise DataError(f"Ad '{ad.ad_id}' has an empty title; the prompt needs the ad's title or message.")
    if image_data_url is not None and not (
        isinstance(image_data_url, str) and image_data_url.startswith(("data:image/", "https://", "http://"))
    ):
        raise DataError(
            "The 'image_data_url' parameter of build_messages must be a 'data:image/...;base64,' URL "
            f"(see image_to_data_url) or an http(s) URL. Got {str(image_data_url)[:40]!r} instead."
        )
    system = system_message(schema, reasoning=reasoning, max_abs=max_abs)
    cold = "\n".join(["New ad to model:", *_ad_lines(ad, include_caption)])
    if image_data_url is not None:
        cold += "\nImage: attached below."
    names = ", ".join(f.name for f in batch)
    request = (
        f"Request: write the weights of these {len(batch)} features now: {names}.\n"
        "Answer with exactly this JSON shape, replacing each placeholder with your value:\n"
        f"{answer_template(batch, reasoning=reasoning)}"
    )
    if not (isinstance(weight_scale, (int, float)) and 0 < weight_scale < math.inf):
        raise ConfigError(f"The 'weight_scale' parameter of build_messages must be > 0. Got {weight_scale!r} instead.")
    head = _examples(neighbours, schema, include_caption, weight_scale) + "\n\n" + cold
    if image_data_url is None:
        content: str | list[dict[str, Any]] = head + "\n\n" + request
    else:
        content = [
            {"type": "text", "text": head},
            {"type": "image_url", "image_url": {"url": image_data_url}},
            {"type": "text", "text": request},
        ]
    return [system, {"role": "user", "content": content}]


def prompt_hash(messages: list[dict[str, Any]]) -> str:
    """sha256 of the messages as canonical JSON (sorted keys, everything included), 16 hex chars."""
    payload = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def feature_batches(schema: FeatureSchema, batch_size: int | None) -> list[list[FeatureDefinition]]:
    """Split the schema, in order, into batches of ``batch_size``; None or <= 0 gives one batch."""
    features = list(schema.features)
    if not features:
        return []
    if batch_size is None or batch_size <= 0:
        return [features]
    return [features[i : i + batch_size] for i in range(0, len(features), batch_size)]


@dataclass(frozen=True)
class ImagePolicy:
    """Which ad images may be read and sent.

    Only regular files whose real path (symlinks followed) lies under one of ``roots`` and
    that hold at most ``max_bytes`` are read; relative paths are relative to ``base``. http(s)
    URIs are passed to the LLM as they are when ``allow_remote``, else rejected.
    """

    roots: tuple[Path, ...]
    base: Path | None = None
    max_bytes: int = MAX_IMAGE_BYTES
    allow_remote: bool = False

    @classmethod
    def for_repo(
        cls,
        repo: str | os.PathLike[str],
        roots: Sequence[str | os.PathLike[str]] = (),
        *,
        max_bytes: int = MAX_IMAGE_BYTES,
        allow_remote: bool = False,
    ) -> ImagePolicy:
        """The policy of a repo: ``roots`` relative to it, or its data folder when none are given."""
        base = Path(repo).resolve()
        folders = [Path(r).expanduser() for r in roots] or [base / "data"]
        return cls(
            tuple((f if f.is_absolute() else base / f).resolve() for f in folders), base, max_bytes, allow_remote
        )

    def image_url(self, uri: str | os.PathLike[str]) -> str:
        """The URL to send for ``uri``: a ``data:`` URL of the local file, or the allowed remote URL.

        Raises DataError saying why the image cannot be sent.
        """
        text = os.fspath(uri)
        if isinstance(text, str) and text.lower().startswith(("http://", "https://")):
            if not self.allow_remote:
                raise DataError(
                    f"The ad image {_shown(text)} is a remote URL; remote images are not sent unless "
                    "inputs.allow_remote_images is true (or download the image under the repo's data folder)."
                )
            return text
        path = Path(text) if isinstance(uri, os.PathLike) else local_path_from_uri(text)
        if self.base is not None and not path.is_absolute():
            path = self.base / path
        return image_to_data_url(path, roots=self.roots, max_bytes=self.max_bytes)


def _shown(path: object) -> str:
    """A path for an error message: quoted, control characters escaped, at most 200 characters."""
    text = repr(str(path))
    return text if len(text) <= 200 else text[:197] + "..."


def _read_regular_file(path: Path, roots: Sequence[Path] | None, max_bytes: int) -> bytes:
    """The bytes of ``path`` after the policy checks (real path under ``roots``, regular file, size)."""
    try:
        real = path.resolve(strict=True)  # follows every symlink
    except (OSError, RuntimeError) as exc:
        raise DataError(
            f"Could not read the ad image {_shown(path)}: {exc}. Expected a readable PNG or JPEG file."
        ) from None
    if roots is not None and not any(real.is_relative_to(r) for r in roots):
        raise DataError(
            f"The ad image {_shown(path)} resolves to {_shown(real)}, outside the allowed image folders "
            f"{[str(r) for r in roots]}. Move it under the repo's data folder or add its folder to inputs.image_roots."
        )
    try:
        if not stat.S_ISREG(os.stat(real).st_mode):  # a FIFO or device would block or never end
            raise DataError(
                f"The ad image {_shown(path)} is not a regular file. Point image_uri at a PNG or JPEG file."
            )
        # O_NONBLOCK: should a FIFO replace the file after the check, open() does not wait for a writer
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise DataError(
                    f"The ad image {_shown(path)} is not a regular file. Point image_uri at a PNG or JPEG file."
                )
            if st.st_size > max_bytes:
                raise DataError(
                    f"The ad image {_shown(path)} has {st.st_size} bytes, more than the {max_bytes} allowed. "
                    "Shrink it or raise inputs.max_image_bytes."
                )
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise DataError(
            f"Could not read the ad image {_shown(path)}: {exc}. Expected a readable PNG or JPEG file."
        ) from None
    if len(data) > max_bytes:  # the file grew after fstat
        raise DataError(
            f"The ad image {_shown(path)} has more than {max_bytes} bytes. Shrink it or raise inputs.max_image_bytes."
        )
    return data


def image_to_data_url(
    path: str | os.PathLike[str], *, roots: Sequence[Path] | None = None, max_bytes: int = MAX_IMAGE_BYTES
) -> str:
    """Read a PNG or JPEG file (local path or file:// URI) into a base64 ``data:`` URL.

    Only a regular file of at most ``max_bytes`` is read, and, when ``roots`` is given, only
    one whose real path lies under one of them. Errors never quote the file's content.
    """
    local = local_path_from_uri(path if isinstance(path, (str, Path)) else Path(path))
    data = _read_regular_file(local, roots, max_bytes)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    elif data.startswith(b"\xff\xd8\xff"):
        mime = "image/jpeg"
    else:
        raise DataError(f"The ad image {_shown(path)} is not a PNG or JPEG file. Convert it to PNG or JPEG.")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _serialise(messages: list[dict[str, Any]]) -> str:
    # Key order as sent on the wire (role before content), not sorted: this is what prefixes share.
    return json.dumps(messages, ensure_ascii=False, separators=(",", ":"))


def shared_prefix_chars(messages_list: Sequence[list[dict[str, Any]]]) -> int:
    """Length of the longest common prefix of the serialised message lists (0 for none)."""
    if not messages_list:
        return 0
    return len(os.path.commonprefix([_serialise(m) for m in messages_list]))


def render_messages(messages: list[dict[str, Any]]) -> str:
    """Readable text of the messages, every part included (for golden files and debugging)."""
    out: list[str] = []
    for msg in messages:
        out.append(f"===== {msg['role']} =====")
        content = msg["content"]
        if isinstance(content, str):
            out.append(content)
            continue
        for part in content:
            if part.get("type") == "text":
                out.append("----- text -----")
                out.append(part["text"])
            else:
                out.append(f"----- {part.get('type')} -----")
                out.append(json.dumps({k: v for k, v in part.items() if k != "type"}, ensure_ascii=False))
    return "\n".join(out) + "\n"
