"""Exported models load and agree in onnxruntime-node (a non-Python serving runtime).

Needs node and npm; installs onnxruntime-node into tests/exporters/node/node_modules once
(git-ignored) and skips with the reason when that is impossible (no node, offline, no
native binding for this platform).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from exporters import AdModelSet, export_models, model_name, reference_ctr

pytestmark = pytest.mark.node

NODE_DIR = Path(__file__).parent / "node"
ORT_NODE_VERSION = "1.30.0"
TOL = 1e-6


def _installed_version() -> str | None:
    meta = NODE_DIR / "node_modules" / "onnxruntime-node" / "package.json"
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None


def ensure_onnxruntime_node() -> str:
    """Return the node executable once onnxruntime-node is installed, or skip the test."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the onnxruntime-node check; not on PATH")
    if _installed_version() != ORT_NODE_VERSION:
        base = ["install", "--no-package-lock", "--no-audit", "--no-fund", "--loglevel=error"]
        # The postinstall script downloads GPU libraries; skip it, or all scripts if needed.
        attempts = [({"ONNXRUNTIME_NODE_INSTALL": "skip"}, []), ({}, ["--ignore-scripts"])]
        errors = []
        for extra_env, flags in attempts:
            try:
                proc = subprocess.run(
                    [npm, *base, *flags],
                    cwd=NODE_DIR,
                    env={**os.environ, **extra_env},
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
            except subprocess.TimeoutExpired:
                errors.append("npm install timed out after 300 s")
                continue
            if proc.returncode == 0 and _installed_version() == ORT_NODE_VERSION:
                break
            errors.append(proc.stderr.strip()[-300:] or f"exit code {proc.returncode}")
        else:
            pytest.skip(f"could not install onnxruntime-node {ORT_NODE_VERSION} (offline?): " + " | ".join(errors))
    target = subprocess.run(
        [node, "-p", "process.platform + '/' + process.arch"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    bindings = list((NODE_DIR / "node_modules/onnxruntime-node/bin").glob(f"napi-v*/{target}/onnxruntime_binding.node"))
    if not bindings:
        pytest.skip(f"the onnxruntime-node npm package ships no native binding for {target}")
    return node


def test_node_runtime_matches_python(
    model_set: AdModelSet, tmp_path: Path, ort_session: Callable[[Path], object]
) -> None:
    node = ensure_onnxruntime_node()
    out = tmp_path / "export"
    manifest = export_models(model_set, out, top_k=3)
    users = np.random.default_rng(7).standard_normal((64, model_set.n_features))
    users = users.astype("<f4")
    users.tofile(tmp_path / "users.bin")
    names = sorted(manifest.models)
    proc = subprocess.run(
        [node, str(NODE_DIR / "score.mjs"), str(out), str(tmp_path / "users.bin"), "64", *names],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["versions"]["node"] == ORT_NODE_VERSION
    results = report["results"]
    assert sorted(results) == names

    def node_array(name: str, output: str) -> np.ndarray:
        entry = results[name][output]
        return np.asarray(entry["data"]).reshape(entry["dims"])

    ref = reference_ctr(model_set.weights, model_set.bias, users).astype(np.float64)
    py_ctr, py_top, py_idx = ort_session(out / "all_ads/model.onnx").run(None, {"user_features": users})
    js_ctr = node_array("all_ads", "ctr")
    assert js_ctr.shape == (64, model_set.n_ads)
    assert np.max(np.abs(js_ctr - py_ctr)) < TOL
    assert np.max(np.abs(js_ctr - ref)) < TOL
    np.testing.assert_array_equal(node_array("all_ads", "top_indices"), py_idx)
    assert np.max(np.abs(node_array("all_ads", "top_scores") - py_top)) < TOL
    for j, ad_id in enumerate(model_set.ad_ids):
        skl, core = model_name("per_ad", ad_id), model_name("per_ad_core", ad_id)
        py_label, py_proba = ort_session(out / manifest.models[skl].path).run(None, {"user_features": users})
        js_proba = node_array(skl, "probabilities")
        assert np.max(np.abs(js_proba - py_proba)) < TOL, ad_id
        assert np.max(np.abs(js_proba[:, 1] - ref[:, j])) < TOL, ad_id
        np.testing.assert_array_equal(node_array(skl, "label"), py_label)
        js_core = node_array(core, "ctr")
        assert js_core.shape == (64, 1)
        assert np.max(np.abs(js_core[:, 0] - ref[:, j])) < TOL, ad_id
        assert np.max(np.abs(js_core[:, 0] - js_ctr[:, j])) < TOL, ad_id
