"""Benchmark the intercept (delta) solver against scipy.optimize.brentq.

Setup: 100k users with 16-64 features (mix of 0/1 flags, [0, 1] shares and standardised
counts), unit-norm random ad weights, alpha drawn around 0.02. For each ad we solve
mean_u sigmoid(z_u + delta) = alpha with

- ``solve_delta`` (safeguarded Newton; stops when |mean - alpha| < 1e-9, then refines; its
  evaluation count comes from a separate, untimed run);
- ``brentq`` on the same function and bracket with xtol = 4e-9: the mean's slope in delta is
  at most 1/4, so this guarantees the same |mean - alpha| <= 1e-9; once with
  scipy.special.expit as the sigmoid, once with our faster in-place sigmoid (this separates
  the gain from fewer evaluations from the gain from a cheaper evaluation);
- ``brentq`` with its default xtol (2e-12), closer to our final precision.

Then ``solve_deltas`` on many ads at once against a Python loop of ``solve_delta`` over the
columns of the same [n_users, n_ads] matrix. Ratios are against references timed in the
same run (best of 3).

Run: python benchmarks/bench_calibration.py [--users 100000] [--ads 20]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import cast

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, logit

import llmhyper_feast.calibration.solve as cal
from llmhyper_feast.calibration.solve import _sigmoid_inplace, solve_delta, solve_deltas

TOL = 1e-9


def make_users(rng: np.random.Generator, n_users: int, n_features: int) -> np.ndarray:
    cols: list[np.ndarray] = []
    for kind in rng.integers(0, 3, size=n_features):
        if kind == 0:
            cols.append(rng.random(n_users) < rng.uniform(0.05, 0.5))
        elif kind == 1:
            cols.append(rng.beta(2.0, 5.0, size=n_users))
        else:
            cols.append((rng.poisson(rng.uniform(0.5, 5.0), size=n_users) - 2.0) / 1.5)
    return np.column_stack(cols).astype(np.float64)


def make_ads(rng: np.random.Generator, n_ads: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    theta = rng.normal(size=(n_features, n_ads))
    theta /= np.linalg.norm(theta, axis=0)
    alphas = np.clip(rng.lognormal(np.log(0.02), 0.4, size=n_ads), 1e-4, 0.2)
    return theta, alphas


def brentq_delta(z: np.ndarray, alpha: float, xtol: float, fast: bool) -> tuple[float, int]:
    la = float(logit(alpha))
    buf = np.empty_like(z)

    def f(d: float) -> float:
        if fast:
            np.add(z, d, out=buf)
            return float(_sigmoid_inplace(buf).mean()) - alpha
        return float(expit(z + d).mean()) - alpha

    root, info = brentq(f, la - z.max(), la - z.min(), xtol=xtol, full_output=True)
    return root, info.function_calls


def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def err(z: np.ndarray, delta: float, alpha: float) -> float:
    return abs(float(expit(z + delta).mean()) - alpha)


def count_our_evals(z: np.ndarray, alpha: float) -> int:
    """Sigmoid passes over the users made by solve_delta (untimed, instrumented run)."""
    calls = 0

    def counting(x: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        return _sigmoid_inplace(x)

    cal._sigmoid_inplace = counting
    try:
        solve_delta(z, alpha)
    finally:
        cal._sigmoid_inplace = _sigmoid_inplace
    return calls


def bench_single(rng: np.random.Generator, n_users: int, n_ads: int) -> None:
    methods = {
        "solve_delta": lambda z, a: (solve_delta(z, a), 0),
        "brentq xtol=4e-9 (expit)": lambda z, a: brentq_delta(z, a, 4 * TOL, fast=False),
        "brentq xtol=4e-9 (fast sigmoid)": lambda z, a: brentq_delta(z, a, 4 * TOL, fast=True),
        "brentq xtol=2e-12 (expit)": lambda z, a: brentq_delta(z, a, 2e-12, fast=False),
    }
    print(f"delta solve: {n_users} users, {n_ads} ads per feature count, tol {TOL:g} on the mean")
    print(f"  {'n_feat':>6}  {'method':<32} {'ms/ad':>7} {'x ours':>7} {'evals':>6} {'max |mean-alpha|':>17}")
    for n_features in (16, 32, 64):
        users = make_users(rng, n_users, n_features)
        theta, alphas = make_ads(rng, n_ads, n_features)
        z_all = users @ theta
        cols = [np.ascontiguousarray(z_all[:, j]) for j in range(n_ads)]
        t_ours = None
        for name, solve in methods.items():
            total, evals, worst = 0.0, 0, 0.0
            for z, a in zip(cols, alphas):
                t, out = timed(lambda: solve(z, float(a)))
                d, calls = cast(tuple[float, int], out)
                total += t
                evals += calls or count_our_evals(z, float(a))
                worst = max(worst, err(z, d, float(a)))
            t_ours = total if t_ours is None else t_ours
            print(
                f"  {n_features:>6}  {name:<32} {1e3 * total / n_ads:7.2f} {total / t_ours:7.2f} "
                f"{evals / n_ads:6.1f} {worst:17.2e}"
            )


def bench_batch(rng: np.random.Generator, n_users: int, n_ads: int) -> None:
    print("\nsolve_deltas (all ads at once) vs a loop of solve_delta over the columns, 32 features")
    for nu, na in ((n_users, n_ads), (2_000, 1_000), (200, 5_000)):
        users = make_users(rng, nu, 32)
        theta, alphas = make_ads(rng, na, 32)
        z_all = users @ theta  # [n_users, n_ads], C order, as a matmul gives it
        loop = lambda: np.array([solve_delta(z_all[:, j], float(alphas[j])) for j in range(na)])  # noqa: E731
        t_loop, d_loop = timed(loop, 2)
        t_vec, d_vec = timed(lambda: solve_deltas(z_all, alphas), 2)
        e_vec = max(err(z_all[:, j], d_vec[j], alphas[j]) for j in range(na))  # type: ignore[index]
        print(
            f"  {nu:>7} users x {na:>5} ads: loop {1e3 * t_loop:8.1f} ms, solve_deltas "
            f"{1e3 * t_vec:8.1f} ms, speed-up {t_loop / t_vec:5.2f}x; max |d_vec - d_loop| "
            f"{np.max(np.abs(d_vec - d_loop)):.1e}, max |mean - alpha| {e_vec:.1e}"
        )  # type: ignore[operator]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--ads", type=int, default=20)
    ap.add_argument("--batch-ads", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    bench_single(rng, args.users, args.ads)
    bench_batch(rng, args.users, args.batch_ads)


if __name__ == "__main__":
    main()
