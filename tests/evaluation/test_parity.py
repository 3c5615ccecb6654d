"""Evaluation parity: every protocol and selection, per object and per click, against the same
protocol transcribed from its definition onto the official SamPredictor with the same weights
(`tests/reference/evaluation.py`): IoU within 1e-3."""

from __future__ import annotations

import numpy as np
import pytest

from sam_jax.evaluation import evaluate
from sam_jax.io.coco import read_annotations

PROTOCOLS = [(prompt, select) for prompt in ("box", "point", "clicks") for select in ("score", "oracle", "single")]


@pytest.fixture(scope="module")
def data(eval_set):
    return read_annotations(eval_set)


@pytest.mark.parametrize("prompt, select", PROTOCOLS, ids=[f"{p}-{s}" for p, s in PROTOCOLS])
def test_protocol_matches_the_official_predictor(tiny, eval_set, data, prompt, select):
    from tests.reference.evaluation import reference

    clicks = 3 if prompt == "clicks" else None
    ours = evaluate(tiny.model, data, prompt=prompt, select=select, clicks=clicks)
    theirs = reference(tiny.official, eval_set, prompt, select, clicks or 1)
    assert [o.annotation_id for o in ours.objects] == list(theirs) == [103, 106, 109, 112, 115, 77]
    got = np.array([o.ious for o in ours.objects])
    want = np.array(list(theirs.values()))
    worst = np.abs(got - want).max()
    print(f"{prompt}/{select}: {len(got)} objects x {got.shape[1]} rounds, max |IoU - official| {worst:.2e}, "
          f"mIoU {got[:, -1].mean():.4f}")
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    assert ours.summary["count"] == 6 and ours.summary["images"] == 2
