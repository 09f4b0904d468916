"""onnxruntime output of every exported model against the numpy reference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporters import (
    IR_VERSION,
    ML_OPSET,
    OPSET,
    AdModelSet,
    Manifest,
    VerificationError,
    export_models,
    load_vectors,
    verify_model_dir,
)

N_USERS = 1000
TOL = 1e-6
TOP_K = 7


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, model_set_factory: Callable[..., AdModelSet]
) -> tuple[AdModelSet, Path, Manifest]:
    ms = model_set_factory(n_ads=40, n_features=16, seed=11)
    out = tmp_path_factory.mktemp("parity")
    return ms, out, export_models(ms, out, top_k=TOP_K)


@pytest.fixture(scope="module")
def users() -> np.ndarray:
    return np.random.default_rng(2024).standard_normal((N_USERS, 16)).astype(np.float32)


def numpy_ctr(ms: AdModelSet, x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) @ ms.weights.astype(np.float64).T + ms.bias.astype(np.float64)
    return 1.0 / (1.0 + np.exp(-z))


def test_all_models_match_numpy_and_each_other(
    exported: tuple[AdModelSet, Path, Manifest],
    users: np.ndarray,
    ort_session: Callable[[Path], object],
) -> None:
    ms, out, manifest = exported
    ref = numpy_ctr(ms, users)
    all_ads = ort_session(out / manifest.models["all_ads"].path)
    ctr = all_ads.run(["ctr"], {"user_features": users})[0]
    assert ctr.shape == (N_USERS, ms.n_ads) and ctr.dtype == np.float32
    assert np.max(np.abs(ctr - ref)) < TOL
    for j, ad_id in enumerate(ms.ad_ids):
        per_ad = {m.kind: m for m in manifest.models_for_ad(ad_id).values()}
        label, proba = ort_session(out / per_ad["per_ad"].path).run(
            ["label", "probabilities"], {"user_features": users}
        )
        (core,) = ort_session(out / per_ad["per_ad_core"].path).run(["ctr"], {"user_features": users})
        assert proba.shape == (N_USERS, 2) and core.shape == (N_USERS, 1)
        assert np.max(np.abs(proba[:, 1] - ref[:, j])) < TOL, ad_id
        assert np.max(np.abs(proba[:, 0] - (1 - ref[:, j]))) < TOL, ad_id
        assert np.max(np.abs(core[:, 0] - ref[:, j])) < TOL, ad_id
        assert np.max(np.abs(core[:, 0] - ctr[:, j])) < TOL, ad_id
        assert np.max(np.abs(proba[:, 1] - ctr[:, j])) < TOL, ad_id
        np.testing.assert_array_equal(label, (ref[:, j] > 0.5).astype(np.int64))


def test_topk_matches_numpy_argsort(
    exported: tuple[AdModelSet, Path, Manifest],
    users: np.ndarray,
    ort_session: Callable[[Path], object],
) -> None:
    ms, out, manifest = exported
    assert manifest.top_k == TOP_K
    ctr, scores, idx = ort_session(out / "all_ads/model.onnx").run(
        ["ctr", "top_scores", "top_indices"], {"user_features": users}
    )
    assert idx.shape == (N_USERS, TOP_K) and idx.dtype == np.int64
    ref = numpy_ctr(ms, users)
    expected = np.argsort(-ref, axis=1, kind="stable")[:, :TOP_K]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, expected, axis=1), atol=TOL)
    assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_array_equal(scores, np.take_along_axis(ctr, idx, axis=1))


def test_every_model_file_passes_checker_at_pinned_format(
    exported: tuple[AdModelSet, Path, Manifest],
) -> None:
    _, out, manifest = exported
    paths = sorted(out.rglob("*.onnx"))
    assert len(paths) == 1 + 2 * 40 == len(manifest.models)
    for path in paths:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert model.ir_version == IR_VERSION
        opsets = {o.domain: o.version for o in model.opset_import}
        assert len(opsets) == len(model.opset_import), f"duplicate opset entry in {path}"
        uses_ml = any(n.domain == "ai.onnx.ml" for n in model.graph.node)
        assert opsets == ({"": OPSET, "ai.onnx.ml": ML_OPSET} if uses_ml else {"": OPSET})
    core = onnx.load(str(out / "ads/ad-000/core/model.onnx"))
    assert {n.op_type for n in core.graph.node} == {"MatMul", "Add", "Sigmoid"}
    assert all(n.domain == "" for n in core.graph.node)


def test_stored_test_vectors_verify(exported: tuple[AdModelSet, Path, Manifest]) -> None:
    _, out, manifest = exported
    for entry in manifest.models.values():
        model_dir = (out / entry.path).parent
        inputs, outputs = load_vectors(model_dir)
        assert list(inputs) == ["user_features"]
        assert [name for name, _ in outputs] == [o["name"] for o in entry.outputs]
        assert verify_model_dir(model_dir, atol=TOL) < TOL


def test_tampered_vector_fails_verification(exported: tuple[AdModelSet, Path, Manifest], tmp_path: Path) -> None:
    import shutil

    from onnx import numpy_helper

    _, out, _ = exported
    copy = tmp_path / "all_ads"
    shutil.copytree(out / "all_ads", copy)
    path = copy / "test_data_set_0/output_0.pb"
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    values = numpy_helper.to_array(tensor).copy()
    values[0, 0] += 1e-4
    path.write_bytes(numpy_helper.from_array(values, tensor.name).SerializeToString())
    with pytest.raises(VerificationError, match=r"'ctr'.*by 0\.0001.*at most 1e-06"):
        verify_model_dir(copy)
