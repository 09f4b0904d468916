"""Seconds per call of the 'local' backend (SmolLM2-135M GGUF via transformers + outlines) on CPU.

Prompts are built with the project's prompt builder for a realistic size: 20 user features,
5 few-shot examples, 10 features per call. Prints the model load time, the first call (which
also builds the output constraint), then the steady-state seconds per request at several
batch sizes, each as a ratio against batch size 1 measured in the same run, and the
estimated time of a demo generation run (ads x feature batches x samples).

    python benchmarks/bench_local_llm.py [--requests 8] [--batch-sizes 1,4,8] [--ads 25]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmhyper_feast.backends.llm import get_backend  # noqa: E402
from llmhyper_feast.backends.llm import local as local_module  # noqa: E402
from llmhyper_feast.backends.llm.base import ChatRequest  # noqa: E402
from llmhyper_feast.errors import AnswerError  # noqa: E402
from llmhyper_feast.features import Ad, FeatureDefinition, FeatureSchema, Neighbour, WarmAd  # noqa: E402
from llmhyper_feast.generation.answers import parse_answer  # noqa: E402
from llmhyper_feast.generation.prompts import build_messages  # noqa: E402

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
    count: int, schema: FeatureSchema, batch: list[FeatureDefinition], seed: int = 0, shots: int = 5
) -> list[ChatRequest]:
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(count):
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
        messages = build_messages(ad, batch, schema, neighbours)
        requests.append(
            ChatRequest(messages=tuple(messages), feature_names=tuple(f.name for f in batch), temperature=0.5, seed=i)
        )
    return requests


def run(backend, requests) -> tuple[float, int]:
    start = time.perf_counter()
    results = backend.complete_many(requests, progress=False)
    elapsed = time.perf_counter() - start
    valid = 0
    for request, result in zip(requests, results):
        if isinstance(result, Exception):
            print("  error:", result)
            continue
        for sample in result.samples:
            try:
                parse_answer(sample, request.feature_names)
                valid += 1
            except AnswerError as exc:
                print("  invalid:", exc)
    return elapsed, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="requests per batch-size measurement")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--ads", type=int, default=25, help="ads in the estimated demo run")
    parser.add_argument("--feature-batches", type=int, default=2)
    parser.add_argument("--shots", type=int, default=5, help="few-shot examples per prompt")
    parser.add_argument("--features-per-call", type=int, default=10)
    args = parser.parse_args()
    import torch

    schema = make_schema()
    batch = list(schema.features[: args.features_per_call])
    print(f"torch threads: {torch.get_num_threads()}, cpu count: {os.cpu_count()}")

    backend = get_backend("local", {"batch_size": 1})
    start = time.perf_counter()
    _, tokenizer, _ = local_module._load(backend.path)
    load_s = time.perf_counter() - start
    prompt_tokens = len(
        tokenizer.apply_chat_template(
            local_module.flatten_messages(make_requests(1, schema, batch, shots=args.shots)[0].messages),
            tokenize=True,
            add_generation_prompt=True,
            return_dict=True,
        )["input_ids"]
    )
    print(
        f"model: {backend.model_id}  load: {load_s:.1f} s  prompt: {prompt_tokens} tokens "
        f"({args.shots} shots, {len(schema)} features, {len(batch)} per call)"
    )

    first, valid = run(backend, make_requests(1, schema, batch, seed=100, shots=args.shots))
    print(f"first call (builds the constraint index): {first:.1f} s, valid answers {valid}/1")

    per_request: dict[int, float] = {}
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        backend = get_backend("local", {"batch_size": size})
        requests = make_requests(args.requests, schema, batch, seed=size, shots=args.shots)
        elapsed, valid = run(backend, requests)
        per_request[size] = elapsed / len(requests)
        ratio = per_request[min(per_request)] / per_request[size]
        print(
            f"batch_size={size}: {elapsed:.1f} s for {len(requests)} requests = {per_request[size]:.2f} s/request "
            f"(speed-up vs batch_size={min(per_request)}: {ratio:.2f}x), valid {valid}/{len(requests)}"
        )
    best = min(per_request, key=per_request.get)
    calls = args.ads * args.feature_batches
    print(
        f"best batch_size={best}: estimated demo run of {args.ads} ads x {args.feature_batches} feature batches "
        f"x 1 sample = {calls} calls: {calls * per_request[best] / 60:.1f} min (+ load {load_s:.0f} s)"
    )


if __name__ == "__main__":
    main()
