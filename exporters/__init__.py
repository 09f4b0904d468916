"""Export per-ad linear CTR models as ONNX (opset 13 / IR 7) for any serving runtime.

Depends on numpy, onnx, skl2onnx and onnxruntime only (imported when used), and never
imports ``llmhyper_feast``. Typical use::

    from exporters import AdModelSet, export_models, read_manifest

    models = AdModelSet(feature_names, feature_hash, ad_ids, weights, bias, ad_meta,
                        producer_name="llmhyper-feast", producer_version="0.1.0")
    manifest = export_models(models, "out/onnx", top_k=10)
"""

from exporters._version import EXPORTER_NAME, EXPORTER_VERSION
from exporters.errors import ExporterError, ExportInputError, ManifestError, VerificationError
from exporters.manifest import Manifest, read_manifest
from exporters.model_set import EXCLUDED_SCORE, AdModelSet, decode_ad_id, encode_ad_id
from exporters.onnx_graphs import (
    INPUT_NAME,
    IR_VERSION,
    ML_OPSET,
    OPSET,
    build_all_ads_model,
    build_core_ad_model,
    build_skl2onnx_ad_model,
    read_model_metadata,
)
from exporters.vectors import load_vectors, reference_ctr, verify_model_dir
from exporters.writer import atomic_write_bytes, export_models, model_name

__version__ = EXPORTER_VERSION

__all__ = [
    "EXCLUDED_SCORE",
    "EXPORTER_NAME",
    "INPUT_NAME",
    "IR_VERSION",
    "ML_OPSET",
    "OPSET",
    "AdModelSet",
    "ExportInputError",
    "ExporterError",
    "Manifest",
    "ManifestError",
    "VerificationError",
    "__version__",
    "atomic_write_bytes",
    "build_all_ads_model",
    "build_core_ad_model",
    "build_skl2onnx_ad_model",
    "decode_ad_id",
    "encode_ad_id",
    "export_models",
    "load_vectors",
    "model_name",
    "read_manifest",
    "read_model_metadata",
    "reference_ctr",
    "verify_model_dir",
]
