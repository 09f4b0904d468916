"""AdModelSet.validate() and ad-id encoding."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporters import AdModelSet, ExportInputError, decode_ad_id, encode_ad_id


def test_valid_set_passes(model_set: AdModelSet) -> None:
    model_set.validate()


def test_nan_weight_names_ad_and_feature(model_set: AdModelSet) -> None:
    weights = model_set.weights.copy()
    weights[2, 3] = np.nan
    bad = dataclasses.replace(model_set, weights=weights)
    with pytest.raises(ExportInputError, match="finite") as info:
        bad.validate()
    msg = str(info.value)
    assert "'.hidden'" in msg and "'user_feature_3'" in msg and "row 2, column 3" in msg


def test_inf_bias_rejected(model_set: AdModelSet) -> None:
    bias = model_set.bias.copy()
    bias[1] = np.inf
    with pytest.raises(ExportInputError, match=r"'bias'.*finite.*'brand/shoes'"):
        dataclasses.replace(model_set, bias=bias).validate()


def test_weights_shape_mismatch(model_set: AdModelSet) -> None:
    bad = dataclasses.replace(model_set, weights=model_set.weights[:, :4].copy())
    with pytest.raises(ExportInputError, match=r"shape .*\(6, 5\)\. Got \(6, 4\) instead"):
        bad.validate()


def test_bias_shape_mismatch(model_set: AdModelSet) -> None:
    bad = dataclasses.replace(model_set, bias=model_set.bias[:, None].copy())
    with pytest.raises(ExportInputError, match=r"'bias'.*shape \(6,\).*\(6, 1\)"):
        bad.validate()


def test_float64_weights_rejected_with_fix(model_set: AdModelSet) -> None:
    bad = dataclasses.replace(model_set, weights=model_set.weights.astype(np.float64))
    with pytest.raises(ExportInputError, match=r"float32.*float64.*np\.asarray"):
        bad.validate()


def test_duplicate_ad_id(model_set: AdModelSet) -> None:
    ids = list(model_set.ad_ids)
    ids[4] = ids[1]
    with pytest.raises(ExportInputError, match=r"duplicate ad id 'brand/shoes'.*position 4"):
        dataclasses.replace(model_set, ad_ids=ids).validate()


def test_duplicate_feature_name(model_set: AdModelSet) -> None:
    names = list(model_set.feature_names)
    names[0] = names[2]
    with pytest.raises(ExportInputError, match="duplicate feature 'user_feature_2'"):
        dataclasses.replace(model_set, feature_names=names).validate()


def test_ad_ids_differing_only_by_case(model_set: AdModelSet) -> None:
    ids = list(model_set.ad_ids)
    ids[5] = "AD-000"
    with pytest.raises(ExportInputError, match="letter case"):
        dataclasses.replace(model_set, ad_ids=ids).validate()


def test_meta_count_and_values(model_set: AdModelSet) -> None:
    with pytest.raises(ExportInputError, match=r"one dict per ad \(6\)\. Got 5"):
        dataclasses.replace(model_set, ad_meta=list(model_set.ad_meta)[:5]).validate()
    meta = [dict(m) for m in model_set.ad_meta]
    meta[0]["source"] = "llm"
    with pytest.raises(ExportInputError, match=r"'source' in \['generated', 'lr_cold', 'warm'\]"):
        dataclasses.replace(model_set, ad_meta=meta).validate()
    meta[0].update(source="warm", alpha=float("nan"))
    with pytest.raises(ExportInputError, match="'alpha' of ad 'ad-000' must be finite"):
        dataclasses.replace(model_set, ad_meta=meta).validate()
    meta[0].update(alpha=[0.1])
    with pytest.raises(ExportInputError, match="must be a str or a number"):
        dataclasses.replace(model_set, ad_meta=meta).validate()


def test_empty_producer_rejected(model_set: AdModelSet) -> None:
    with pytest.raises(ExportInputError, match="'producer_name'.*non-empty"):
        dataclasses.replace(model_set, producer_name=" ").validate()


def test_encoding_of_unsafe_ids() -> None:
    assert encode_ad_id("brand/shoes") == "brand~2Fshoes"
    assert encode_ad_id("..") == "~2E."
    assert encode_ad_id("a~b") == "a~7Eb"
    assert encode_ad_id("café") == "caf~C3~A9"
    assert encode_ad_id("ok-id_1.v2") == "ok-id_1.v2"


@given(st.text(min_size=1, max_size=40))
def test_encoding_is_safe_and_invertible(ad_id: str) -> None:
    enc = encode_ad_id(ad_id)
    assert re.fullmatch(r"[A-Za-z0-9_~\-][A-Za-z0-9_.~\-]*", enc)
    assert enc not in {".", ".."}
    assert decode_ad_id(enc) == ad_id
