"""Triton Inference Server ``config.pbtxt`` for an exported ONNX model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

__all__ = ["io_specs", "triton_config"]

_TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def io_specs(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Graph inputs and outputs as ``{"name", "dtype", "shape"}``; symbolic dims are names."""
    import onnx

    def spec(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        shape: list[int | str] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim
        ]
        return {"name": value.name, "dtype": dtype, "shape": shape}

    initializers = {t.name for t in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def triton_config(name: str, model: onnx.ModelProto) -> str:
    """``config.pbtxt`` text: onnxruntime_onnx platform, no implicit batching.

    With ``max_batch_size: 0`` Triton takes ``dims`` as the full tensor shape, so the
    batch dimension is written as -1.
    """
    inputs, outputs = io_specs(model)
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 0",
        *_section("input", inputs),
        *_section("output", outputs),
    ]
    return "\n".join(lines) + "\n"


def _section(kind: str, specs: list[dict[str, Any]]) -> list[str]:
    lines = [f"{kind} ["]
    for i, spec in enumerate(specs):
        dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in spec["shape"])
        lines += [
            "  {",
            f'    name: "{spec["name"]}"',
            f"    data_type: {_TRITON_TYPES[spec['dtype']]}",
            f"    dims: [ {dims} ]",
            "  }" + ("," if i < len(specs) - 1 else ""),
        ]
    lines.append("]")
    return lines
