"""Seconds per ad of the 'local' backend (SmolLM2-135M GGUF via transformers + outlines) on CPU,
with and without reuse of the shared prefix's key/value cache, measured in one run.

Prompts are built with the project's prompt builder for a realistic size: 20 user features,
``--shots`` few-shot examples, ``--features-per-call`` features per call (0 = all in one call,
several values compare layouts). Prints the model load time, the prompt and prefix tokens, then
for every layout the seconds per ad with ``prefix_cache`` off and on. The two settings are timed
in alternating rounds on the same ads, so a machine shared with other work slows both alike and
the ratio stays meaningful; the absolute seconds do not. Ends with the estimated generation time
of ``--ads`` cold ads.

    python benchmarks/bench_local_llm.py [--ads-per-round 2] [--rounds 2] [--features-per-call 10,0]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmhyper_feast.backends.llm import get_backend  # noqa: E402
from llmhyper_feast.backends.llm import local as local_module  # noqa: E402
from llmhyper_feast.backends.llm.base import ChatRequest, LLMBackend  # noqa: E402
from llmhyper_feast.errors import AnswerError  # noqa: E402
from llmhyper_feast.features import Ad, FeatureDefinition, FeatureSchema, Neighbour, WarmAd  # noqa: E402
from llmhyper_feast.generation.answers import parse_answer  # noqa: E402
from llmhyper_feast.generation.prompts import build_messages, feature_batches  # noqa: E402

CATEGORIES = [
    "toys_games",
    "fashion",
    "beauty",
    "electronics",
    "home_furniture",
    "cooking",
    "fitness",
    "outdoor",
    "travel",
    "automotive",
    "pets",
    "books",
    "finance",
    "video_games",
    "baby_kids",
    "gardening",
]
EXTRA = {
    "deal_seeking": "Share of the user's purchases made during a sale or with a coupon, 0 to 1.",
    "premium_affinity": "How often the user buys items priced in the top quartile of their category, 0 to 1.",
    "mobile_share": "Fraction of the user's sessions that came from a phone rather than a computer.",
    "vegetarian": "Strength of the user's stated preference for meat-free food, 0 (none) to 1 (strict).",
}
PRODUCTS = [
    "Trail running shoes with a grippy sole",
    "Noise-cancelling wireless headphones",
    "Organic dog food, 10 kg",
    "Weekend city break to Lisbon",
    "Cast iron skillet, pre-seasoned",
    "Kids' wooden train set",
    "Budget travel credit card",
    "Raised garden bed kit",
    "Open-world adventure game for consoles",
    "Hardcover fantasy novel box set",
    "Yoga mat and block bundle",
    "Electric car charging cable",
]


def make_schema() -> FeatureSchema:
    """The 20 user features of the benchmark (16 category interests and 4 behaviours)."""
    feats = [
        FeatureDefinition(
            c,
            f"How strongly the user engaged with {c.replace('_', ' ')} products over the last "
            "30 days (views, carts and purchases), scaled to 0-1.",
        )
        for c in CATEGORIES
    ]
    feats += [FeatureDefinition(k, v) for k, v in EXTRA.items()]
    return FeatureSchema(tuple(feats))


def make_requests(
    count: int,
    schema: FeatureSchema,
    batch: list[FeatureDefinition],
    seed: int = 0,
    shots: int = 5,
    temperature: float = 0.5,
) -> list[ChatRequest]:
    """One request for ``batch`` per ad, for ``count`` made-up cold ads (ad ``seed + i``)."""
    return [r for i in range(count) for r in ad_requests(seed + i, schema, [batch], shots, temperature)]


def ad_requests(
    i: int, schema: FeatureSchema, batches: list[list[FeatureDefinition]], shots: int, temperature: float
) -> list[ChatRequest]:
    """The requests of made-up cold ad ``i``: one per feature batch, as the generation runner asks."""
    rng = np.random.default_rng(i)
    ad = Ad(f"cold-{i}", f"{PRODUCTS[i % len(PRODUCTS)]} (offer {i})", "A product photo on a plain background.")
    neighbours = [
        Neighbour(
            WarmAd(
                rng.normal(0, 0.5, len(schema)),
                ad=Ad(f"warm-{i}-{k}", PRODUCTS[(i + k + 1) % len(PRODUCTS)], "A lifestyle photo."),
            ),
            similarity=0.9 - 0.1 * k,
        )
        for k in range(shots)
    ]
    return [
        ChatRequest(
            messages=tuple(build_messages(ad, batch, schema, neighbours)),
            feature_names=tuple(f.name for f in batch),
            temperature=temperature,
            seed=0,
            max_tokens=40 + 14 * len(batch),  # what the generation runner asks for
        )
        for batch in batches
    ]


def run(backend: LLMBackend, requests: list[ChatRequest]) -> tuple[float, int, list[str]]:
    """(seconds, valid answers, answers) of one complete_many call."""
    start = time.perf_counter()
    results = backend.complete_many(requests, progress=False)
    elapsed = time.perf_counter() - start
    valid, answers = 0, []
    for request, result in zip(requests, results):
        if isinstance(result, Exception):
            print("  error:", result)
            continue
        answers.extend(result.samples)
        for sample in result.samples:
            try:
                parse_answer(sample, request.feature_names)
                valid += 1
            except AnswerError as exc:
                print("  invalid:", exc)
    return elapsed, valid, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ads-per-round", type=int, default=2, help="ads timed per setting and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (off, on, off, on, ...)")
    parser.add_argument("--features-per-call", default="10,0", help="comma-separated; 0 = all features in one call")
    parser.add_argument("--shots", type=int, default=3, help="few-shot examples per prompt")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per generate() call")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--ads", type=int, default=20, help="cold ads in the estimated generation run")
    args = parser.parse_args()
    import torch

    schema = make_schema()
    print(f"torch threads: {torch.get_num_threads()}, cpu count: {os.cpu_count()}")
    path = local_module.default_gguf_path()
    start = time.perf_counter()
    _, tokenizer, _ = local_module._load(path)
    load_s = time.perf_counter() - start
    print(f"model: {path.name}  load: {load_s:.1f} s")

    summary = []
    for fpc in [int(x) for x in args.features_per_call.split(",")]:
        batches = feature_batches(schema, fpc)
        sample = local_module.flatten_messages(
            ad_requests(0, schema, batches, args.shots, args.temperature)[0].messages
        )
        prompt = tokenizer.apply_chat_template(sample, tokenize=False, add_generation_prompt=True)
        prefix = local_module._prefix_text(tokenizer, sample) or ""
        n_prompt, n_prefix = len(tokenizer(prompt)["input_ids"]), len(tokenizer(prefix)["input_ids"])
        per_ad_tokens = n_prompt * len(batches)
        print(
            f"\n{len(schema)} features, {fpc or len(schema)} per call ({len(batches)} calls/ad), {args.shots} shots: "
            f"{n_prompt} prompt tokens per call, shared prefix {n_prefix} ({n_prefix / n_prompt:.0%}); "
            f"prefilled per ad: {per_ad_tokens} without reuse, {per_ad_tokens - n_prefix * len(batches)} with"
        )
        backends = {
            pc: get_backend("local", {"batch_size": args.batch_size, "prefix_cache": pc}) for pc in (False, True)
        }
        for pc, backend in backends.items():  # warm-up: builds the constraint index (and the prefix cache)
            elapsed, _, _ = run(backend, ad_requests(10_000, schema, batches, args.shots, args.temperature))
            print(f"  warm-up ad, prefix_cache={pc}: {elapsed:.1f} s")
        seconds = {False: 0.0, True: 0.0}
        valid = {False: 0, True: 0}
        same = total = 0
        for r in range(args.rounds):
            ads = range(r * args.ads_per_round, (r + 1) * args.ads_per_round)
            requests = [q for i in ads for q in ad_requests(i, schema, batches, args.shots, args.temperature)]
            answers = {}
            for pc, backend in backends.items():
                elapsed, ok, answers[pc] = run(backend, requests)
                seconds[pc] += elapsed
                valid[pc] += ok
                print(f"  round {r + 1}, prefix_cache={pc}: {elapsed / len(ads):.1f} s/ad")
            same += sum(a == b for a, b in zip(answers[False], answers[True]))
            total += len(requests)
        ads_timed = args.rounds * args.ads_per_round
        off, on = seconds[False] / ads_timed, seconds[True] / ads_timed
        print(
            f"  => prefix_cache off {off:.1f} s/ad, on {on:.1f} s/ad: {off / on:.2f}x faster; valid answers "
            f"{valid[False]}/{total} off, {valid[True]}/{total} on; identical answers {same}/{total}"
        )
        summary.append((fpc or len(schema), off, on))

    base = summary[0][1]
    print(f"\nper ad, relative to {summary[0][0]} features per call without reuse (= 1.00):")
    for fpc, off, on in summary:
        print(f"  {fpc:>2} per call: off {off / base:.2f}, on {on / base:.2f}")
    fpc, _, best = min(summary, key=lambda row: row[2])
    print(
        f"estimated generation of {args.ads} cold ads at {fpc} features per call with prefix reuse: "
        f"{math.ceil(args.ads * best)} s (+ model load {load_s:.0f} s) at this machine's current load"
    )


if __name__ == "__main__":
    main()
