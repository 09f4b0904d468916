"""Flat and Triton repository layouts, config.pbtxt, and filesystem-safe ad directories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporters import AdModelSet, decode_ad_id, export_models, verify_model_dir


def triton_model_config_class() -> type:
    """The subset of Triton's inference.ModelConfig that our config.pbtxt may use.

    Field numbers and enum values follow Triton's model_config.proto; parsing with
    text_format is strict, so a misspelt or unknown field fails the test.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="triton_model_config_subset.proto", package="inference", syntax="proto3"
    )
    dtype = file.enum_type.add(name="DataType")
    for number, name in [(0, "TYPE_INVALID"), (9, "TYPE_INT64"), (11, "TYPE_FP32")]:
        dtype.value.add(name=name, number=number)

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        msg = file.message_type.add(name=name)
        for field_name, number, ftype, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name

    opt, rep = fdp.LABEL_OPTIONAL, fdp.LABEL_REPEATED
    tensor = [
        ("name", 1, fdp.TYPE_STRING, opt, ""),
        ("data_type", 2, fdp.TYPE_ENUM, opt, ".inference.DataType"),
    ]
    message("ModelInput", [*tensor, ("dims", 4, fdp.TYPE_INT64, rep, "")])
    message("ModelOutput", [*tensor, ("dims", 3, fdp.TYPE_INT64, rep, "")])
    message(
        "ModelConfig",
        [
            ("name", 1, fdp.TYPE_STRING, opt, ""),
            ("platform", 2, fdp.TYPE_STRING, opt, ""),
            ("max_batch_size", 4, fdp.TYPE_INT32, opt, ""),
            ("input", 5, fdp.TYPE_MESSAGE, rep, ".inference.ModelInput"),
            ("output", 6, fdp.TYPE_MESSAGE, rep, ".inference.ModelOutput"),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_config(path: Path) -> object:
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(encoding="utf-8"), triton_model_config_class()())


def test_flat_layout_paths(model_set: AdModelSet, tmp_path: Path) -> None:
    manifest = export_models(model_set, tmp_path)
    assert manifest.models["all_ads"].path == "all_ads/model.onnx"
    assert manifest.models["ad-brand~2Fshoes"].path == "ads/brand~2Fshoes/model.onnx"
    assert manifest.models["ad_core-brand~2Fshoes"].path == "ads/brand~2Fshoes/core/model.onnx"
    ad_dirs = sorted(p.name for p in (tmp_path / "ads").iterdir())
    assert sorted(decode_ad_id(d) for d in ad_dirs) == sorted(model_set.ad_ids)
    assert not (tmp_path / "brand").exists()  # the '/' did not create a directory
    assert len(list(tmp_path.rglob("model.onnx"))) == 1 + 2 * model_set.n_ads


def test_triton_layout(model_set: AdModelSet, tmp_path: Path, ort_session: Callable[[Path], object]) -> None:
    manifest = export_models(model_set, tmp_path, layout="triton", top_k=2)
    top_dirs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert top_dirs == sorted(manifest.models)
    assert len(top_dirs) == 1 + 2 * model_set.n_ads
    type_names = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}
    for name in top_dirs:
        model_path = tmp_path / name / "1" / "model.onnx"
        assert manifest.models[name].path == f"{name}/1/model.onnx"
        config = parse_config(tmp_path / name / "config.pbtxt")
        assert config.name == name
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 0
        graph = onnx.load(str(model_path)).graph
        for section, values in ((config.input, graph.input), (config.output, graph.output)):
            assert [t.name for t in section] == [v.name for v in values]
            for spec, value in zip(section, values, strict=True):
                dims = [d.dim_value or -1 for d in value.type.tensor_type.shape.dim]
                assert list(spec.dims) == dims and dims[0] == -1
                enum = spec.DESCRIPTOR.fields_by_name["data_type"].enum_type
                assert enum.values_by_number[spec.data_type].name == type_names[value.type.tensor_type.elem_type]
        assert verify_model_dir(tmp_path / name / "1") < 1e-6
    config = parse_config(tmp_path / "all_ads/config.pbtxt")
    assert [list(o.dims) for o in config.output] == [[-1, 6], [-1, 2], [-1, 2]]
    assert list(config.input[0].dims) == [-1, 5]
    x = np.zeros((3, 5), dtype=np.float32)
    session = ort_session(tmp_path / "all_ads/1/model.onnx")
    assert session.run(None, {"user_features": x})[0].shape == (3, 6)


def test_unparseable_config_would_fail(tmp_path: Path) -> None:
    from google.protobuf import text_format

    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nplatfrom: "onnxruntime_onnx"\n', encoding="utf-8")
    with pytest.raises(text_format.ParseError):
        parse_config(path)
