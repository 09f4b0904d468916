"""Capacity plan on paper: what each daily job costs at a stated scale, from figures measured here.

Every input below is either a figure a benchmark in this folder printed (named next to it) or an
assumption stated as one (scale, endpoint throughput, change rates). Change them with flags; the
script prints one table per job family and the totals. Nothing here is measured by this script.

    python benchmarks/capacity_plan.py
    python benchmarks/capacity_plan.py --endpoint-prompt-tps 20000 --endpoint-output-tps 2000
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

# --- measured on this 2-core machine (see README "Benchmarks"; the script that printed each) ------
PROMPT_TOKENS_PER_AD = 2_299  # bench_local_llm.py: 20 features, 3 shots, one call per ad
OUTPUT_TOKENS_PER_AD = 230  # README "What make demo runs": ~230 decoded tokens for a 20-feature answer
CALLS_PER_AD = 1.0  # generation.batch_size 0 (all features in one call), samples 1
CLIENT_CPU_MS_PER_CALL_ONLINE = 8.3  # bench_openai_batch.py: online, concurrency 32
CLIENT_CPU_MS_PER_CALL_BATCH = 2.8  # bench_openai_batch.py: Batch API path
CALIBRATION_MS_PER_AD = 1.5  # bench_calibration.py: intercept solve over 100k users
PRIORS_PROMPT_TOKENS_PER_USER = 692  # bench_user_priors.py --parts throughput
PRIORS_USERS_PER_MIN_PER_CLIENT = 520  # bench_user_priors.py: one 2-core client, concurrency 32, loaded machine
PRIORS_OUTPUT_TOKENS_PER_USER = 120  # a 20-id ranked list plus 3 interests as JSON (constrained), estimated
# per-ad L2 logistic fits on one core with one BLAS thread: 18 ms per 500-impression ad (training/warm.py
# fit_ad, README "Engines"), i.e. 36 s per million impressions, taken as linear in the rows
WARM_FIT_S_PER_M_IMPRESSIONS = 36.0
ONLINE_ROWS_PER_S_SQLITE = 5_100  # bench_materialize.py
ONLINE_ROWS_PER_S_REDIS = 1_788  # bench_redis_materialize.py (Feast's own materialize: 1,584)
HTTP_RPS_PER_2_CORES = 1_686  # bench_http.py: llmhyper serve, direct SQLite lookup, closed loop
BYTES_PER_WEIGHT_ROW = 600  # a weights row: 20 float32 + intercept, calibration and provenance columns
BYTES_PER_PRIORS_ROW = 400  # 20 advertiser ids, scores, interests, hashes


@dataclass
class Line:
    job: str
    calls: float
    prompt_tokens: float
    output_tokens: float
    endpoint_hours: float
    client_cpu_hours: float
    note: str


def plan(a: argparse.Namespace) -> list[Line]:
    """One line per daily job, computed from the measured inputs and the stated scale."""

    def endpoint_hours(calls: float, prompt: float, output: float) -> float:
        # the slower of the three limits: prompt tokens, output tokens, requests
        return max(prompt / a.endpoint_prompt_tps, output / a.endpoint_output_tps, calls / a.endpoint_rps) / 3600

    new_calls = a.new_ads * CALLS_PER_AD * (1 + a.reask_rate) * (2 if a.judge else 1)
    new_prompt = new_calls * PROMPT_TOKENS_PER_AD
    new_out = new_calls * OUTPUT_TOKENS_PER_AD
    users_today = a.users * a.priors_changed_share
    pr_prompt = users_today * PRIORS_PROMPT_TOKENS_PER_USER
    pr_out = users_today * PRIORS_OUTPUT_TOKENS_PER_USER
    cpu = CLIENT_CPU_MS_PER_CALL_BATCH if a.batch else CLIENT_CPU_MS_PER_CALL_ONLINE
    retire_fit_h = a.new_ads * a.impressions_per_retired_ad / 1e6 * WARM_FIT_S_PER_M_IMPRESSIONS / 3600
    full_fit_h = a.warm_ads * a.impressions_per_retired_ad / 1e6 * WARM_FIT_S_PER_M_IMPRESSIONS / 3600
    return [
        Line(
            "LLM-HYPER: weights for new ads",
            new_calls,
            new_prompt,
            new_out,
            endpoint_hours(new_calls, new_prompt, new_out),
            new_calls * cpu / 3.6e6,
            f"{'with' if a.judge else 'no'} judge, {a.reask_rate:.0%} re-asks",
        ),
        Line(
            "calibration of new ads",
            0,
            0,
            0,
            0,
            a.new_ads * CALIBRATION_MS_PER_AD / 3.6e6,
            "intercept over a 100k-user sample",
        ),
        Line(
            "user priors: daily incremental",
            users_today,
            pr_prompt,
            pr_out,
            endpoint_hours(users_today, pr_prompt, pr_out),
            users_today * cpu / 3.6e6,
            f"{a.priors_changed_share:.0%} of users changed profile",
        ),
        Line(
            "warm training: ads retiring today",
            0,
            0,
            0,
            0,
            retire_fit_h,
            f"{a.impressions_per_retired_ad:,} impressions per ad",
        ),
        Line(
            "warm training: all warm ads (weekly)",
            0,
            0,
            0,
            0,
            full_fit_h,
            "spread over Ray workers",
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000_000)
    ap.add_argument("--warm-ads", type=int, default=200_000)
    ap.add_argument("--new-ads", type=int, default=5_000, help="new (cold) ads a day; as many retire")
    ap.add_argument("--impressions-per-retired-ad", type=int, default=50_000)
    ap.add_argument("--priors-changed-share", type=float, default=0.10, help="users re-inferred a day")
    ap.add_argument("--reask-rate", type=float, default=0.05)
    ap.add_argument("--judge", action="store_true", help="generation.judge on (one more call per batch)")
    ap.add_argument("--batch", action="store_true", help="LLM jobs through the Batch API (client CPU)")
    ap.add_argument("--peak-qps", type=float, default=20_000, help="ranking requests per second at peak")
    ap.add_argument(
        "--endpoint-prompt-tps", type=float, default=50_000, help="assumed endpoint prefill tokens/s (stated)"
    )
    ap.add_argument("--endpoint-output-tps", type=float, default=5_000, help="assumed endpoint decode tokens/s")
    ap.add_argument("--endpoint-rps", type=float, default=50, help="assumed endpoint requests/s")
    ap.add_argument("--cores-per-worker", type=int, default=2)
    a = ap.parse_args()

    print(
        f"scale: {a.users:,} users, {a.warm_ads:,} warm ads, {a.new_ads:,} new ads/day; endpoint (assumed): "
        f"{a.endpoint_prompt_tps:,.0f} prompt tok/s, {a.endpoint_output_tps:,.0f} output tok/s, "
        f"{a.endpoint_rps:.0f} req/s"
    )
    lines = plan(a)
    print(
        f"\n{'daily job':<38} {'LLM calls':>10} {'prompt tok':>12} {'output tok':>11} {'endpoint h':>10} "
        f"{'our CPU h':>16}  note"
    )
    for x in lines:
        print(
            f"{x.job:<38} {x.calls:>10,.0f} {x.prompt_tokens:>12,.0f} {x.output_tokens:>11,.0f} "
            f"{x.endpoint_hours:>10.2f} {x.client_cpu_hours:>16.2f}  {x.note}"
        )
    total_endpoint = sum(x.endpoint_hours for x in lines[:3])
    print(f"{'LLM endpoint, daily total':<38} {'':>10} {'':>12} {'':>11} {total_endpoint:>10.2f}")
    weekly = lines[-1].client_cpu_hours
    workers_for_weekly = math.ceil(weekly / 4 / a.cores_per_worker)  # finish within a 4-hour window
    print(
        f"\nRay: the weekly refit of every warm ad is {weekly:.1f} CPU-hours: {workers_for_weekly} workers of "
        f"{a.cores_per_worker} cores finish it in 4 h."
    )

    rows = a.warm_ads + a.new_ads
    print(
        f"Feast online: rewriting every weight row ({rows:,}) takes {rows / ONLINE_ROWS_PER_S_REDIS / 60:.1f} min "
        f"into Redis at {ONLINE_ROWS_PER_S_REDIS:,} rows/s ({rows / ONLINE_ROWS_PER_S_SQLITE / 60:.1f} min into "
        f"SQLite); the day's {a.new_ads:,} new rows take {a.new_ads / ONLINE_ROWS_PER_S_REDIS:.0f} s. User priors: "
        f"{a.users * a.priors_changed_share / ONLINE_ROWS_PER_S_REDIS / 60:.0f} min a day into Redis from one writer."
    )
    gb = 1e9
    history_gb = a.users * a.priors_changed_share * BYTES_PER_PRIORS_ROW * 365 / gb
    print(
        f"storage: weights {a.warm_ads * BYTES_PER_WEIGHT_ROW / gb:.2f} GB per warm snapshot, "
        f"{a.new_ads * BYTES_PER_WEIGHT_ROW * 365 / gb:.2f} GB/year of generated rows; user priors "
        f"{a.users * BYTES_PER_PRIORS_ROW / gb:.1f} GB online, {history_gb:.0f} "
        "GB/year offline history."
    )
    users_today = a.users * a.priors_changed_share
    client_h = users_today / PRIORS_USERS_PER_MIN_PER_CLIENT / 60
    print(
        f"user priors client side: {users_today:,.0f} users at {PRIORS_USERS_PER_MIN_PER_CLIENT} users/min per 2-core "
        f"client is {client_h:.0f} client-hours (profiles, prompts, parsing); `priors generate` runs in one process "
        f"today, so this is the first limit: {math.ceil(client_h / 4)} processes sharing the users by hash would "
        "finish in 4 h, if the endpoint keeps up."
    )
    boxes = math.ceil(a.peak_qps / HTTP_RPS_PER_2_CORES)
    print(f"serving: {a.peak_qps:,.0f} ranking req/s at peak needs {boxes} 2-core `llmhyper serve` replicas.")


if __name__ == "__main__":
    main()
