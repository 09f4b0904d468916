"""Public API surface and import hygiene of the exporters package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import exporters

PACKAGE_DIR = Path(exporters.__file__).parent


def test_public_api_is_pinned() -> None:
    assert sorted(exporters.__all__) == sorted(
        [
            "EXCLUDED_SCORE", "EXPORTER_NAME", "INPUT_NAME", "IR_VERSION", "ML_OPSET", "OPSET", "AdModelSet",
            "ExportInputError", "ExporterError", "Manifest", "ManifestError",
            "VerificationError", "__version__", "atomic_write_bytes", "build_all_ads_model",
            "build_core_ad_model", "build_skl2onnx_ad_model", "decode_ad_id", "encode_ad_id",
            "export_models", "load_vectors", "model_name", "read_manifest",
            "read_model_metadata", "reference_ctr", "verify_model_dir",
        ]
    )  # fmt: skip
    for name in exporters.__all__:
        assert hasattr(exporters, name), name
    assert (exporters.OPSET, exporters.IR_VERSION) == (13, 7)
    assert issubclass(exporters.ExportInputError, ValueError)
    assert issubclass(exporters.ExportInputError, exporters.ExporterError)


def test_never_imports_llmhyper_feast() -> None:
    for path in PACKAGE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "llmhyper_feast" for n in names), path.name


def test_import_is_light() -> None:
    code = (
        "import sys, exporters; "
        "print(sorted(m for m in ('llmhyper_feast', 'onnx', 'onnxruntime', 'skl2onnx', "
        "'sklearn', 'feast') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
