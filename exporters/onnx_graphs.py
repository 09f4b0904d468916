"""ONNX graphs for per-ad and all-ads CTR models, pinned to opset 13 / IR version 7.

Opset 13 / IR 7 is the newest format every target runtime accepts (onnxruntime for
Python, Node and Web, Triton's onnxruntime backend); onnx's own defaults are rejected by
them and down-conversion fails, so graphs are built at this opset directly. Inputs must be
a validated :class:`AdModelSet`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters._version import EXPORTER_NAME, EXPORTER_VERSION
from exporters.errors import ExporterError, ExportInputError
from exporters.model_set import EXCLUDED_SCORE, AdModelSet, canonical_meta, encode_ad_id

if TYPE_CHECKING:
    import onnx

__all__ = [
    "INPUT_NAME",
    "IR_VERSION",
    "KIND_ALL_ADS",
    "KIND_PER_AD",
    "KIND_PER_AD_CORE",
    "ML_OPSET",
    "OPSET",
    "build_all_ads_model",
    "build_core_ad_model",
    "build_skl2onnx_ad_model",
    "read_model_metadata",
]

OPSET = 13
ML_OPSET = 1  # the ai.onnx.ml version skl2onnx pairs with opset 13
IR_VERSION = 7
INPUT_NAME = "user_features"
KIND_ALL_ADS = "all_ads"
KIND_PER_AD = "per_ad"  # skl2onnx LinearClassifier (ai.onnx.ml)
KIND_PER_AD_CORE = "per_ad_core"  # MatMul + Add + Sigmoid, default domain only
_JSON_KEYS = frozenset({"feature_names", "ad_ids", "ad_meta", "top_k", "exclusions"})


def build_all_ads_model(model_set: AdModelSet, *, top_k: int | None = None) -> onnx.ModelProto:
    """One model scoring every ad: ``user_features`` [batch, n] -> ``ctr`` [batch, M].

    Column j of ``ctr`` is ``model_set.ad_ids[j]``. With ``top_k`` the graph also ranks:
    ``top_scores`` and ``top_indices`` [batch, top_k], best first. With exclusions (see
    :class:`AdModelSet`) the graph also outputs ``excluded`` (bool [batch, M]) and an excluded
    ad's ``ctr`` is ``EXCLUDED_SCORE`` (-1), so it ranks after every allowed ad.
    """
    m = model_set.n_ads
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= m):
        raise ExportInputError(
            f"The 'top_k' parameter must be None or an int in [1, {m}] (the number of ads). Got {top_k!r} instead."
        )
    excl = model_set.exclusions if model_set.has_exclusions else None
    model = _linear_sigmoid_model(KIND_ALL_ADS, model_set.weights, model_set.bias, top_k=top_k, exclusions=excl)
    _set_metadata(model, model_set, KIND_ALL_ADS, list(model_set.ad_ids), top_k=top_k, exclusions=excl)
    return model


def build_core_ad_model(model_set: AdModelSet, ad_id: str) -> onnx.ModelProto:
    """Per-ad model with default-domain ops only: ``user_features`` -> ``ctr`` [batch, 1]."""
    i = _row(model_set, ad_id)
    weights, bias = model_set.weights[i : i + 1], model_set.bias[i : i + 1]
    model = _linear_sigmoid_model(f"ad_core-{encode_ad_id(ad_id)}", weights, bias)
    _set_metadata(model, model_set, KIND_PER_AD_CORE, [ad_id])
    return model


def build_skl2onnx_ad_model(model_set: AdModelSet, ad_id: str) -> onnx.ModelProto:
    """Per-ad model converted by skl2onnx from a LogisticRegression holding the ad's weights.

    Outputs ``label`` (int64 [batch], 1 when ctr > 0.5) and ``probabilities``
    (float32 [batch, 2]; column 1 is the ctr).
    """
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    i = _row(model_set, ad_id)
    clf = LogisticRegression()
    clf.coef_ = model_set.weights[i : i + 1].astype(np.float64)
    clf.intercept_ = model_set.bias[i : i + 1].astype(np.float64)
    clf.classes_ = np.array([0, 1], dtype=np.int64)
    clf.n_features_in_ = model_set.n_features
    model: onnx.ModelProto = convert_sklearn(
        clf,
        name=f"ad-{encode_ad_id(ad_id)}",
        initial_types=[(INPUT_NAME, FloatTensorType([None, model_set.n_features]))],
        options={id(clf): {"zipmap": False}},
        target_opset=OPSET,
    )
    # skl2onnx lists the default domain twice; keep one entry per domain.
    del model.opset_import[:]
    model.opset_import.extend([onnx.helper.make_opsetid("", OPSET), onnx.helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    if model.ir_version != IR_VERSION:
        raise ExporterError(  # pragma: no cover - guards against a skl2onnx change
            f"skl2onnx produced IR version {model.ir_version}, expected {IR_VERSION} for "
            f"opset {OPSET}. Pin skl2onnx to a version that honours target_opset."
        )
    _set_metadata(model, model_set, KIND_PER_AD, [ad_id])
    return model


def read_model_metadata(model: onnx.ModelProto | str | Path) -> dict[str, Any]:
    """Return a model's ``metadata_props`` with JSON-encoded values decoded."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        out[prop.key] = json.loads(prop.value) if prop.key in _JSON_KEYS else prop.value
    return out


def _row(model_set: AdModelSet, ad_id: str) -> int:
    try:
        return model_set.index_of(ad_id)
    except ValueError:
        raise ExportInputError(
            f"Ad id {ad_id!r} is not in the model set ({model_set.n_ads} ads). Pass one of its ad_ids."
        ) from None


def _linear_sigmoid_model(
    graph_name: str,
    weights: np.ndarray,
    bias: np.ndarray,
    *,
    top_k: int | None = None,
    exclusions: Any = None,
) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    m, n = weights.shape
    initializers = [
        numpy_helper.from_array(np.ascontiguousarray(weights.T, dtype=np.float32), "weights"),
        numpy_helper.from_array(np.ascontiguousarray(bias, dtype=np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("MatMul", [INPUT_NAME, "weights"], ["xw"], name="matmul"),
        helper.make_node("Add", ["xw", "bias"], ["logits"], name="add_bias"),
        helper.make_node("Sigmoid", ["logits"], ["ctr_raw" if exclusions else "ctr"], name="sigmoid"),
    ]
    outputs = [helper.make_tensor_value_info("ctr", TensorProto.FLOAT, ["batch", m])]
    if exclusions:
        # E (ad, feature, threshold) triples: gather each pair's feature, compare with its threshold,
        # and sum the hits per ad with a 0/1 [E, M] matrix; any hit excludes the ad
        triples = [(i, int(j), float(t)) for i, pairs in enumerate(exclusions) for j, t in pairs]
        owner = np.zeros((len(triples), m), np.float32)
        owner[np.arange(len(triples)), [i for i, _, _ in triples]] = 1.0
        initializers += [
            numpy_helper.from_array(np.array([j for _, j, _ in triples], np.int64), "exclusion_features"),
            numpy_helper.from_array(np.array([t for _, _, t in triples], np.float32), "exclusion_thresholds"),
            numpy_helper.from_array(owner, "exclusion_owner"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(EXCLUDED_SCORE, np.float32), "excluded_score"),
        ]
        nodes += [
            helper.make_node("Gather", [INPUT_NAME, "exclusion_features"], ["rule_values"], name="rule_values", axis=1),
            helper.make_node("Greater", ["rule_values", "exclusion_thresholds"], ["rule_hits"], name="rule_hits"),
            helper.make_node("Cast", ["rule_hits"], ["rule_hits_f"], name="rule_hits_f", to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["rule_hits_f", "exclusion_owner"], ["hits_per_ad"], name="hits_per_ad"),
            helper.make_node("Greater", ["hits_per_ad", "zero"], ["excluded"], name="excluded"),
            helper.make_node("Where", ["excluded", "excluded_score", "ctr_raw"], ["ctr"], name="mask"),
        ]
        outputs.append(helper.make_tensor_value_info("excluded", TensorProto.BOOL, ["batch", m]))
    if top_k is not None:
        initializers.append(numpy_helper.from_array(np.array([top_k], dtype=np.int64), "k"))
        nodes.append(
            helper.make_node(
                "TopK",
                ["ctr", "k"],
                ["top_scores", "top_indices"],
                name="rank",
                axis=-1,
                largest=1,
                sorted=1,
            )
        )
        outputs += [
            helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, ["batch", top_k]),
            helper.make_tensor_value_info("top_indices", TensorProto.INT64, ["batch", top_k]),
        ]
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n])],
        outputs,
        initializer=initializers,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=EXPORTER_NAME,
        producer_version=EXPORTER_VERSION,
    )


def _set_metadata(
    model: onnx.ModelProto,
    model_set: AdModelSet,
    kind: str,
    ad_ids: list[str],
    *,
    top_k: int | None = None,
    exclusions: Any = None,
) -> None:
    rows = [model_set.index_of(a) for a in ad_ids]
    props: dict[str, Any] = {
        "model_kind": kind,
        "feature_names": list(model_set.feature_names),
        "feature_hash": model_set.feature_hash,
        "ad_ids": ad_ids,
        "ad_meta": [canonical_meta(model_set.ad_meta[r]) for r in rows],
        "producer": model_set.producer_name,
        "producer_version": model_set.producer_version,
        "exporter": EXPORTER_NAME,
        "exporter_version": EXPORTER_VERSION,
        "input": INPUT_NAME,
    }
    if top_k is not None:
        props["top_k"] = top_k
    if exclusions:
        props["exclusions"] = [[[int(j), float(t)] for j, t in pairs] for pairs in exclusions]
        props["excluded_score"] = EXCLUDED_SCORE
    del model.metadata_props[:]
    for key in sorted(props):
        value = props[key]
        text = _dumps(value) if key in _JSON_KEYS else str(value)
        entry = model.metadata_props.add()
        entry.key, entry.value = key, text
    model.doc_string = (
        f"CTR model ({kind}) for {len(ad_ids)} ad(s) over {model_set.n_features} user "
        f"features; produced by {model_set.producer_name} {model_set.producer_version}."
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
