"""The ONNX part of ranking against its numpy floor, like for like, in one process.

Builds, with onnx.helper, graphs of the same ops as the exported all-ads model
(``exporters/onnx_graphs.py``: MatMul + Add + Sigmoid, and the content-rule mask: Gather, Greater,
Cast, MatMul, Greater, Where) for 1 user x 120 ads x 20 features, and times each through
onnxruntime (``run()`` and IOBinding with preallocated buffers, one intra-op thread) against numpy
computing the same thing with in-place ops. Also an Identity graph: onnxruntime's own per-call
overhead. Best of 5 rounds, microseconds per call.

    python benchmarks/bench_onnx_floor.py
"""

import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

n, ads = 20, 120
rng = np.random.default_rng(0)
W = rng.normal(size=(n, ads)).astype(np.float32)
b = rng.normal(size=ads).astype(np.float32)
x = rng.random((1, n)).astype(np.float32)


def model(nodes, inits):
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])


ident = model([helper.make_node("Identity", ["x"], ["y"])], [])
lin = model(
    [helper.make_node("Gemm", ["x", "W", "b"], ["z"]), helper.make_node("Sigmoid", ["z"], ["y"])],
    [onnx.numpy_helper.from_array(W, "W"), onnx.numpy_helper.from_array(b, "b")],
)


def bound(sess, out_shape):
    bind = sess.io_binding()
    y = np.empty(out_shape, np.float32)
    bind.bind_cpu_input("x", x)
    bind.bind_output("y", "cpu", 0, np.float32, list(out_shape), y.ctypes.data)
    return lambda: sess.run_with_iobinding(bind)


def numpy_floor():
    """sigmoid(x @ W + b) with in-place ops; returns the scores."""
    z = x @ W
    z += b
    np.negative(z, out=z)
    np.exp(z, out=z)
    z += 1
    np.reciprocal(z, out=z)
    return z


def t(fn, reps=20000):
    for _ in range(2000):
        fn()
    best = []
    for _ in range(5):
        s = time.perf_counter()
        for _ in range(reps):
            fn()
        best.append((time.perf_counter() - s) / reps * 1e6)
    return min(best)


print(f"numpy floor (x@W+b, sigmoid)       {t(numpy_floor):6.2f} us")
print(f"ORT Identity graph, run()          {t(lambda: ident.run(['y'], {'x': x})):6.2f} us")
print(f"ORT Identity graph, IOBinding      {t(bound(ident, (1, n))):6.2f} us")
print(f"ORT Gemm+Sigmoid, IOBinding        {t(bound(lin, (1, ads))):6.2f} us")
# the exported graph's shape: MatMul + Add + Sigmoid (no rules), and with the content-rule mask
m3 = model(
    [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["y"]),
    ],
    [onnx.numpy_helper.from_array(W, "W"), onnx.numpy_helper.from_array(b, "b")],
)
feat = np.array([0, 3], np.int64)
thr = np.array([0.5, 0.7], np.float32)
owner = (rng.random((2, ads)) < 0.1).astype(np.float32)
masked = model(
    [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["raw"]),
        helper.make_node("Gather", ["x", "f"], ["rv"], axis=1),
        helper.make_node("Greater", ["rv", "t"], ["rh"]),
        helper.make_node("Cast", ["rh"], ["rhf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["rhf", "o"], ["hpa"]),
        helper.make_node("Greater", ["hpa", "zero"], ["ex"]),
        helper.make_node("Where", ["ex", "neg", "raw"], ["y"]),
    ],
    [
        onnx.numpy_helper.from_array(a, nm)
        for a, nm in (
            (W, "W"),
            (b, "b"),
            (feat, "f"),
            (thr, "t"),
            (owner, "o"),
            (np.array(0, np.float32), "zero"),
            (np.array(-1, np.float32), "neg"),
        )
    ],
)


def numpy_masked():
    """numpy_floor() with the content-rule mask: excluded ads score -1."""
    z = numpy_floor()
    hits = (x[:, feat] > thr).astype(np.float32) @ owner
    np.copyto(z, -1.0, where=hits > 0)
    return z


print(f"ORT MatMul+Add+Sigmoid, IOBinding  {t(bound(m3, (1, ads))):6.2f} us")
print(f"numpy floor with the rule mask     {t(numpy_masked):6.2f} us")
print(f"ORT with the rule mask, IOBinding  {t(bound(masked, (1, ads))):6.2f} us")

# like for like: the graphs compute what numpy computes
for name, sess, ref in (("plain", m3, numpy_floor()), ("masked", masked, numpy_masked())):
    got = sess.run(["y"], {"x": x})[0]
    assert np.allclose(got, ref, atol=1e-6), f"{name}: onnxruntime and numpy disagree"
    if name == "masked":
        assert (ref == -1).any() and (ref != -1).any(), "the rule mask must drop some ads and keep others"
print("checked: each graph's scores equal numpy's (atol 1e-6)")
