"""Model-zoo style test vectors: ``test_data_set_0/input_0.pb``, ``output_<i>.pb``.

Expected outputs come from a float64 numpy reference, not from onnxruntime, so any
runtime can check a model against an independent answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporters.errors import VerificationError
from exporters.model_set import EXCLUDED_SCORE
from exporters.onnx_graphs import INPUT_NAME, KIND_ALL_ADS, KIND_PER_AD, KIND_PER_AD_CORE

__all__ = [
    "TEST_DATA_DIR",
    "load_vectors",
    "random_users",
    "reference_ctr",
    "reference_excluded",
    "reference_outputs",
    "vector_files",
    "verify_model_dir",
]

TEST_DATA_DIR = "test_data_set_0"


def random_users(n_users: int, n_features: int, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal user feature rows, float32 [n_users, n_features]."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_users, n_features)).astype(np.float32)


def reference_ctr(weights: np.ndarray, bias: np.ndarray, users: np.ndarray) -> np.ndarray:
    """``sigmoid(users @ weights.T + bias)`` in float64, returned as float32 [N, M]."""
    logits = users.astype(np.float64) @ weights.astype(np.float64).T + bias.astype(np.float64)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def reference_excluded(exclusions: Any, users: np.ndarray) -> np.ndarray:
    """bool [N, M]: ad i is excluded for user u when ``users[u, j] > t`` for a pair (j, t) of ``exclusions[i]``."""
    x = np.asarray(users, np.float32)
    out = np.zeros((x.shape[0], len(exclusions)), bool)
    for i, pairs in enumerate(exclusions):
        for j, t in pairs:
            out[:, i] |= x[:, int(j)] > np.float32(t)
    return out


def reference_outputs(
    kind: str,
    weights: np.ndarray,
    bias: np.ndarray,
    users: np.ndarray,
    *,
    top_k: int | None = None,
    exclusions: Any = None,
) -> list[tuple[str, np.ndarray]]:
    """Expected (output name, value) pairs, in graph output order, for one model kind.

    ``exclusions`` (all-ads only): per ad, (feature index, threshold) pairs; see :func:`reference_excluded`.
    """
    ctr = reference_ctr(weights, bias, users)
    if kind == KIND_PER_AD:
        logits = users.astype(np.float64) @ weights[0].astype(np.float64) + float(bias[0])
        label = (logits > 0).astype(np.int64)
        probabilities = np.stack([1.0 / (1.0 + np.exp(logits)), ctr[:, 0]], axis=1)
        return [("label", label), ("probabilities", probabilities.astype(np.float32))]
    if kind == KIND_PER_AD_CORE:
        return [("ctr", ctr)]
    if kind == KIND_ALL_ADS:
        outs = [("ctr", ctr)]
        if exclusions is not None and any(len(e) for e in exclusions):
            excluded = reference_excluded(exclusions, users)
            ctr = np.where(excluded, np.float32(EXCLUDED_SCORE), ctr).astype(np.float32)
            outs = [("ctr", ctr), ("excluded", excluded)]
        if top_k is not None:
            order = np.argsort(-ctr, axis=1, kind="stable")[:, :top_k].astype(np.int64)
            outs += [
                ("top_scores", np.take_along_axis(ctr, order, axis=1)),
                ("top_indices", order),
            ]
        return outs
    raise ValueError(f"Unknown model kind {kind!r}.")


def vector_files(users: np.ndarray, outputs: list[tuple[str, np.ndarray]]) -> dict[str, bytes]:
    """Serialised TensorProtos keyed by path relative to the model's directory."""
    files = {f"{TEST_DATA_DIR}/input_0.pb": _tensor_bytes(users, INPUT_NAME)}
    for i, (name, value) in enumerate(outputs):
        files[f"{TEST_DATA_DIR}/output_{i}.pb"] = _tensor_bytes(value, name)
    return files


def load_vectors(
    model_dir: str | Path,
) -> tuple[dict[str, np.ndarray], list[tuple[str, np.ndarray]]]:
    """Read ``test_data_set_0`` of ``model_dir``: ({input name: array}, [(output name, array)])."""
    import onnx
    from onnx import numpy_helper

    base = Path(model_dir) / TEST_DATA_DIR

    def read(path: Path) -> tuple[str, np.ndarray]:
        tensor = onnx.TensorProto()
        tensor.ParseFromString(path.read_bytes())
        return tensor.name, numpy_helper.to_array(tensor)

    inputs = dict(read(p) for p in sorted(base.glob("input_*.pb"), key=_index))
    outputs = [read(p) for p in sorted(base.glob("output_*.pb"), key=_index)]
    return inputs, outputs


def verify_model_dir(model_dir: str | Path, *, atol: float = 1e-6) -> float:
    """Run ``model_dir/model.onnx`` with onnxruntime on its test vectors.

    Returns the largest absolute float difference; raises :class:`VerificationError` when
    it exceeds ``atol`` or an integer output differs.
    """
    import onnxruntime as ort

    model_dir = Path(model_dir)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs, expected = load_vectors(model_dir)
    got = session.run([name for name, _ in expected], inputs)
    worst = 0.0
    for (name, want), have in zip(expected, got, strict=True):
        if want.dtype.kind in "iub":  # integers and masks must match exactly
            if not np.array_equal(want, have):
                raise VerificationError(
                    f"Output {name!r} of {model_dir} differs from its test vector in "
                    f"{int(np.sum(want != have))} place(s); expected equal values."
                )
            continue
        diff = float(np.max(np.abs(want.astype(np.float64) - have))) if want.size else 0.0
        worst = max(worst, diff)
        if diff > atol:
            raise VerificationError(
                f"Output {name!r} of {model_dir} differs from its test vector by {diff:.3g}; "
                f"at most {atol:.3g} was expected."
            )
    return worst


def _tensor_bytes(value: np.ndarray, name: str) -> bytes:
    from onnx import numpy_helper

    tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
    data: bytes = tensor.SerializeToString(deterministic=True)
    return data


def _index(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])
