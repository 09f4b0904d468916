"""Per-ad exclusions inside the all-ads model: every runtime drops the same ads for the same users."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from exporters import (
    EXCLUDED_SCORE,
    AdModelSet,
    ExportInputError,
    build_all_ads_model,
    export_models,
    read_model_metadata,
    reference_ctr,
    verify_model_dir,
)

# ad 1: excluded when feature 4 > 0.7; ad 3: when feature 0 > 0.2 or feature 4 > 0.5
EXCLUSIONS = [[], [(4, 0.7)], [], [(0, 0.2), (4, 0.5)], [], []]


def _with_exclusions(model_set: AdModelSet, exclusions: object = EXCLUSIONS) -> AdModelSet:
    return dataclasses.replace(model_set, exclusions=exclusions)


def test_excluded_ads_score_the_sentinel_above_the_threshold_only(
    model_set: AdModelSet, tmp_path: Path, ort_session: Callable[[Path], object]
) -> None:
    ms = _with_exclusions(model_set)
    export_models(ms, tmp_path, per_ad=False, core_ops=False, top_k=6)
    session = ort_session(tmp_path / "all_ads" / "model.onnx")
    users = np.full((4, ms.n_features), 0.1, np.float32)
    users[1, 4] = np.nextafter(np.float32(0.7), np.float32(0))  # just below ad 1's threshold (ad 3's applies)
    users[2, 4] = np.nextafter(np.float32(0.7), np.float32(1))  # just above: ads 1 and 3 excluded
    users[3, 0] = 0.25  # only ad 3's first pair
    ctr, excluded, top_scores, top_indices = session.run(
        ["ctr", "excluded", "top_scores", "top_indices"], {"user_features": users}
    )
    want = np.zeros((4, 6), bool)
    want[1, 3] = True
    want[2, [1, 3]] = True
    want[3, 3] = True
    assert excluded.dtype == bool and np.array_equal(excluded, want)
    plain = reference_ctr(ms.weights, ms.bias, users)
    np.testing.assert_allclose(ctr[~want], plain[~want], atol=1e-6)
    assert (ctr[want] == EXCLUDED_SCORE).all()
    # the in-graph ranking puts excluded ads after every allowed one
    for row in range(4):
        tail = top_indices[row, -int(want[row].sum()) :] if want[row].any() else []
        assert set(int(i) for i in tail) == set(np.flatnonzero(want[row]))
        assert (top_scores[row, : 6 - int(want[row].sum())] > 0).all()
    assert verify_model_dir(tmp_path / "all_ads") <= 1e-6  # the shipped test vectors include the mask
    meta = read_model_metadata(tmp_path / "all_ads" / "model.onnx")
    assert meta["exclusions"] == [[list(p) for p in e] for e in EXCLUSIONS]
    assert float(meta["excluded_score"]) == EXCLUDED_SCORE


def test_no_exclusions_keep_the_plain_graph(model_set: AdModelSet) -> None:
    for ms in (model_set, _with_exclusions(model_set, [[] for _ in model_set.ad_ids])):
        model = build_all_ads_model(ms)
        assert [o.name for o in model.graph.output] == ["ctr"]
        assert "exclusions" not in read_model_metadata(model)


@pytest.mark.parametrize(
    "bad",
    [[[(5, 0.1)]] + [[]] * 5, [[(0, float("nan"))]] + [[]] * 5, [[(True, 0.1)]] + [[]] * 5, [[]] * 5, "x"],
    ids=["index-out-of-range", "nan-threshold", "bool-index", "one-list-short", "a-string"],
)
def test_malformed_exclusions_are_refused(model_set: AdModelSet, bad: object) -> None:
    with pytest.raises(ExportInputError, match="exclusions"):
        _with_exclusions(model_set, bad).validate()
