"""Latency of ranking one user over M ads with the exported ONNX models, and batch throughput.

For each feature count n it times, per call: a numpy reference sigmoid(x W^T + b), the
all-ads model through ``run()``, the same with IOBinding (input/output buffers bound once),
the all-ads model with in-graph TopK, and M separate per-ad sessions (core ops and
skl2onnx). Medians and p99 are printed in microseconds with ratios against the numpy
reference measured in the same run and against the paper's 0.15 ms for 120 ads. Then
users/s for scoring a batch of users against all ads.

    python benchmarks/bench_onnx_ranking.py --repeats 2000
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np

from exporters import (
    AdModelSet,
    build_all_ads_model,
    build_core_ad_model,
    build_skl2onnx_ad_model,
)

PAPER_US = 150.0  # the paper ranks 120 ads in 0.147-0.157 ms


def make_set(n_ads: int, n_features: int, seed: int) -> AdModelSet:
    rng = np.random.default_rng(seed)
    ms = AdModelSet(
        feature_names=[f"f{j}" for j in range(n_features)],
        feature_hash="bench",
        ad_ids=[f"ad{i}" for i in range(n_ads)],
        weights=rng.uniform(-1, 1, (n_ads, n_features)).astype(np.float32),
        bias=rng.normal(-2, 0.5, n_ads).astype(np.float32),
        ad_meta=[{"source": "generated"}] * n_ads,
        producer_name="bench",
        producer_version="0",
    )
    ms.validate()
    return ms


def session(model: object, threads: int) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(
        model.SerializeToString(),
        opts,
        providers=["CPUExecutionProvider"],  # type: ignore[attr-defined]
    )


def time_calls(fn: Callable[[int], object], repeats: int, warmup: int) -> np.ndarray:
    """Per-call wall time in microseconds; ``fn`` gets the call index."""
    for i in range(warmup):
        fn(i)
    out = np.empty(repeats)
    clock = time.perf_counter_ns
    for i in range(repeats):
        start = clock()
        fn(i)
        out[i] = clock() - start
    return out / 1e3


def bench_latency(n: int, args: argparse.Namespace) -> list[tuple[str, np.ndarray]]:
    import onnxruntime as ort

    ms = make_set(args.ads, n, seed=n)
    users = np.random.default_rng(1).standard_normal((1024, n)).astype(np.float32)
    wt = np.ascontiguousarray(ms.weights.T)
    b = ms.bias

    def numpy_ref(i: int) -> np.ndarray:
        x = users[i % 1024 : i % 1024 + 1]
        return 1.0 / (1.0 + np.exp(-(x @ wt + b)))

    all_ads = session(build_all_ads_model(ms), args.threads)
    ranked = session(build_all_ads_model(ms, top_k=10), args.threads)

    def run_all(i: int) -> list[np.ndarray]:
        return all_ads.run(["ctr"], {"user_features": users[i % 1024 : i % 1024 + 1]})

    def run_topk(i: int) -> list[np.ndarray]:
        return ranked.run(None, {"user_features": users[i % 1024 : i % 1024 + 1]})

    x_buf = np.empty((1, n), dtype=np.float32)
    y_buf = np.empty((1, args.ads), dtype=np.float32)
    binding = all_ads.io_binding()
    binding.bind_input("user_features", "cpu", 0, np.float32, x_buf.shape, x_buf.ctypes.data)
    binding.bind_output("ctr", "cpu", 0, np.float32, y_buf.shape, y_buf.ctypes.data)

    def run_bound(i: int) -> np.ndarray:
        x_buf[:] = users[i % 1024]
        all_ads.run_with_iobinding(binding)
        return y_buf

    core = [session(build_core_ad_model(ms, a), args.threads) for a in ms.ad_ids]
    skl = [session(build_skl2onnx_ad_model(ms, a), args.threads) for a in ms.ad_ids]

    def run_per_ad(sessions: list, output: str) -> Callable[[int], list]:
        def run(i: int) -> list:
            feed = {"user_features": users[i % 1024 : i % 1024 + 1]}
            return [s.run([output], feed)[0] for s in sessions]

        return run

    per_core, per_skl = run_per_ad(core, "ctr"), run_per_ad(skl, "probabilities")
    ref = numpy_ref(5)  # every variant must agree before it is timed
    for got in (run_all(5)[0], run_bound(5), run_topk(5)[0]):
        assert np.max(np.abs(got - ref)) < 1e-6
    assert np.max(np.abs(np.hstack(per_core(5)) - ref)) < 1e-6
    assert np.max(np.abs(np.vstack(per_skl(5))[:, 1] - ref[0])) < 1e-6
    assert ort.get_device() == "CPU"

    per_ad_repeats = max(20, args.repeats // 10)
    return [
        ("numpy reference", time_calls(numpy_ref, args.repeats, args.warmup)),
        ("all-ads run()", time_calls(run_all, args.repeats, args.warmup)),
        ("all-ads IOBinding", time_calls(run_bound, args.repeats, args.warmup)),
        ("all-ads + TopK(10) run()", time_calls(run_topk, args.repeats, args.warmup)),
        (f"{args.ads} per-ad core sessions", time_calls(per_core, per_ad_repeats, 10)),
        (f"{args.ads} per-ad skl2onnx sessions", time_calls(per_skl, per_ad_repeats, 10)),
    ]


def bench_batch(n: int, args: argparse.Namespace) -> list[tuple[str, float]]:
    ms = make_set(args.ads, n, seed=n)
    users = np.random.default_rng(2).standard_normal((args.batch_users, n)).astype(np.float32)
    wt, b = np.ascontiguousarray(ms.weights.T), ms.bias
    all_ads = session(build_all_ads_model(ms), args.threads)

    def numpy_batch(_: int) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(users @ wt + b)))

    def onnx_batch(_: int) -> list[np.ndarray]:
        return all_ads.run(["ctr"], {"user_features": users})

    def onnx_chunks(_: int) -> list:
        return [all_ads.run(["ctr"], {"user_features": users[s : s + 256]}) for s in range(0, len(users), 256)]

    out = []
    for label, fn in (
        ("numpy, one call", numpy_batch),
        ("all-ads ONNX, one call", onnx_batch),
        ("all-ads ONNX, chunks of 256", onnx_chunks),
    ):
        seconds = np.median(time_calls(fn, args.batch_repeats, 2)) / 1e6
        out.append((label, args.batch_users / seconds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2000, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ads", type=int, default=120)
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--batch-users", type=int, default=10_000)
    parser.add_argument("--batch-repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads, 0=default")
    args = parser.parse_args()

    import onnxruntime as ort

    blas = ""
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i.get('architecture', '')}" for i in threadpool_info())
    except ImportError:
        pass
    print(
        f"python {platform.python_version()}, numpy {np.__version__} ({blas}), "
        f"onnxruntime {ort.__version__}; {args.ads} ads; repeats {args.repeats}"
    )
    for n in args.features:
        rows = bench_latency(n, args)
        base = float(np.median(rows[0][1]))
        print(f"\n1 user x {args.ads} ads, n={n} features")
        print(f"  {'variant':34s} {'median us':>10s} {'p99 us':>10s} {'x numpy':>8s} {'x paper':>8s}")
        for label, us in rows:
            med, p99 = float(np.median(us)), float(np.percentile(us, 99))
            print(f"  {label:34s} {med:10.1f} {p99:10.1f} {med / base:8.2f} {med / PAPER_US:8.3f}")
    for n in args.features:
        print(f"\nbatch: {args.batch_users} users x {args.ads} ads, n={n}")
        rows = bench_batch(n, args)
        base = rows[0][1]
        for label, users_per_s in rows:
            print(f"  {label:34s} {users_per_s:12,.0f} users/s  ({users_per_s / base:.2f} x numpy)")


if __name__ == "__main__":
    main()
