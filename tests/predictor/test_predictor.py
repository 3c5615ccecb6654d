"""SamPredictor parity with the official SamPredictor on the same converted weights, and its
input checks."""

from __future__ import annotations

import numpy as np
import pytest

from tests.reference.compare import assert_close
from sam_jax.functional import bucket
from sam_jax.predictor import SamPredictor
from sam_jax.utils.transforms import ResizeLongestSide


def _image(h, w, seed=0):
    r = np.random.default_rng(seed)
    # Smooth content plus noise, so PIL's resampling has real structure to get right.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7.0), np.cos(yy / 5.0), np.sin((xx + yy) / 11.0)], -1) * 100 + 128
    return np.clip(base + r.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(params=[(301, 451), (97, 131)], ids=["larger", "smaller"])
def predictors(request, tiny):
    from segment_anything import SamPredictor as OfficialPredictor

    image = _image(*request.param)
    ours, ref = SamPredictor(tiny.model), OfficialPredictor(tiny.official)
    ours.set_image(image)
    ref.set_image(image)
    return ours, ref


def _compare(ours_out, ref_out, margin=1e-3):
    (m, iou, low), (rm, riou, rlow) = ours_out, ref_out
    assert m.shape == rm.shape and m.dtype == rm.dtype
    assert iou.shape == riou.shape and low.shape == rlow.shape
    assert_close(low, rlow, tol=1e-4, what="low-res logits")
    np.testing.assert_allclose(iou, riou, atol=1e-4, rtol=0)
    return m, rm


def _compare_masks(ours, ref, ref_predictor, low_ref, margin=1e-3):
    """Binary masks identical except where the official logit is within `margin` of zero."""
    import torch

    logits = ref_predictor.model.postprocess_masks(
        torch.from_numpy(low_ref.reshape((-1,) + low_ref.shape[-3:])), ref_predictor.input_size, ref_predictor.original_size
    ).numpy().reshape(ref.shape)
    bad = (ours != ref) & (np.abs(logits) > margin)
    assert not bad.any(), f"{int(bad.sum())} pixels differ away from the threshold"


def test_embedding_matches(predictors):
    ours, ref = predictors
    assert ours.original_size == ref.original_size and ours.input_size == tuple(ref.input_size)
    assert_close(np.asarray(ours.get_image_embedding()), ref.get_image_embedding().numpy(), what="embedding")


CASES = {
    "one point": dict(point_coords=np.array([[40.0, 30.0]]), point_labels=np.array([1])),
    "points": dict(point_coords=np.array([[40.0, 30.0], [12.5, 80.0], [60.0, 5.0]]), point_labels=np.array([1, 0, 1])),
    "outside point": dict(point_coords=np.array([[-20.0, 500.0]]), point_labels=np.array([1])),
    "box": dict(box=np.array([10.0, 15.0, 70.0, 90.0])),
    "box+points": dict(box=np.array([10.0, 15.0, 70.0, 90.0]), point_coords=np.array([[40.0, 30.0], [20, 20]]), point_labels=np.array([1, 0])),
}


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_predict(predictors, name, multimask):
    ours, ref = predictors
    kw = CASES[name]
    o = ours.predict(**kw, multimask_output=multimask)
    r = ref.predict(**kw, multimask_output=multimask)
    m, rm = _compare(o, r)
    _compare_masks(m, rm, ref, r[2])


def test_return_logits(predictors):
    ours, ref = predictors
    o = ours.predict(**CASES["box+points"], return_logits=True)
    r = ref.predict(**CASES["box+points"], return_logits=True)
    assert o[0].dtype == r[0].dtype == np.float32
    assert_close(o[0], r[0], tol=1e-4, what="full-size logits")


def test_mask_input_fed_back(predictors):
    ours, ref = predictors
    kw = CASES["points"]
    _, iou, low = ours.predict(**kw)
    _, riou, rlow = ref.predict(**kw)
    best = int(np.argmax(riou))
    o = ours.predict(**kw, mask_input=low[best][None], multimask_output=False)
    r = ref.predict(**kw, mask_input=rlow[best][None], multimask_output=False)
    m, rm = _compare(o, r)
    _compare_masks(m, rm, ref, r[2])


def test_batched_boxes(predictors):
    import torch

    ours, ref = predictors
    boxes = np.array([[10, 15, 70, 90], [0, 0, 30, 30], [5, 40, 100, 95]], float)
    o = ours.predict_batch(boxes=boxes)
    tb = ref.transform.apply_boxes_torch(torch.from_numpy(boxes).float(), ref.original_size)
    rm, riou, rlow = ref.predict_torch(None, None, tb, multimask_output=True)
    assert o[0].shape == tuple(rm.shape) == (3, 3) + ref.original_size
    m, rm = _compare(o, (rm.numpy(), riou.numpy(), rlow.numpy()))
    _compare_masks(m, rm, ref, rlow.numpy())
    # Each batched prompt equals the same prompt alone (the bucket padding is invisible).
    single = ours.predict(box=boxes[2])
    assert_close(o[2][2], single[2], tol=1e-5, what="batched vs single")


def test_batched_points(predictors):
    import torch

    ours, ref = predictors
    coords = np.array([[[40.0, 30.0], [12.5, 80.0]], [[60.0, 5.0], [1.0, 1.0]]])
    labels = np.array([[1, 0], [1, 1]])
    o = ours.predict_batch(coords, labels, multimask_output=False)
    tc = ref.transform.apply_coords_torch(torch.from_numpy(coords).float(), ref.original_size)
    r = ref.predict_torch(tc, torch.from_numpy(labels), multimask_output=False)
    _compare(o, tuple(t.numpy() for t in r))


def test_buckets_and_compilations(tiny):
    from sam_jax.runtime.memory import CompileCounter

    assert [bucket(n) for n in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]
    p = SamPredictor(tiny.model)
    p.set_image(_image(64, 80))
    p.predict(np.array([[1.0, 2.0]]), np.array([1]))  # compiles the 1-point bucket
    with CompileCounter() as same:
        p.predict(np.array([[3.0, 4.0]]), np.array([0]), box=np.array([0, 0, 5, 5]))  # same bucket, box is a flag
        p.predict(box=np.array([1, 1, 9, 9]))
    assert same.count("jit(decode_prompts)") == 0
    with CompileCounter() as masks:
        p.predict(np.array([[1.0, 2.0]]), np.array([1]), mask_input=np.zeros((1, 64, 64), np.float32))  # the mask variant
        p.predict(box=np.array([1, 1, 9, 9]), mask_input=np.ones((1, 64, 64), np.float32))
    assert masks.count("jit(decode_prompts)") == 1


def test_transforms_match_official():
    from segment_anything.utils.transforms import ResizeLongestSide as Official

    image = _image(97, 131)
    ours, ref = ResizeLongestSide(256), Official(256)
    np.testing.assert_array_equal(ours.apply_image(image), ref.apply_image(image))
    coords = np.array([[[1.0, 2.0], [96.5, 130.25]]])
    np.testing.assert_array_equal(ours.apply_coords(coords, (97, 131)), ref.apply_coords(coords, (97, 131)))
    boxes = np.array([[1.0, 2.0, 30, 40]])
    np.testing.assert_array_equal(ours.apply_boxes(boxes, (97, 131)), ref.apply_boxes(boxes, (97, 131)))


BAD = [
    (dict(point_coords=np.array([[1.0, 2.0]])), "point_labels must be supplied"),
    (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 0])), "point_labels must have shape"),
    (dict(point_coords=np.array([1.0, 2.0]), point_labels=np.array([1])), "point_coords must have shape"),
    (dict(point_coords=np.array([[np.nan, 2.0]]), point_labels=np.array([1])), "point_coords contains NaN"),
    (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([5])), "point_labels must be 1"),
    (dict(box=np.array([50.0, 10, 20, 40])), "x1 >= x0"),
    (dict(box=np.array([1.0, 2, 3])), "box must have shape"),
    (dict(mask_input=np.zeros((1, 32, 32), np.float32)), r"mask_input must have shape \(1, 64, 64\)"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m for _, m in BAD])
def test_bad_prompts(tiny, kwargs, message):
    p = SamPredictor(tiny.model)
    p.set_image(_image(20, 30))
    with pytest.raises(ValueError, match=message):
        p.predict(**kwargs)


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((20, 30), np.uint8), "grayscale"),
        (np.zeros((20, 30, 4), np.uint8), "RGBA"),
        (np.zeros((20, 30, 3), bool), "dtype uint8"),
        (np.zeros((0, 30, 3), np.uint8), "empty"),
        (np.zeros((2, 20, 30, 3), np.uint8), "HxWx3"),
    ],
)
def test_bad_images(tiny, image, message):
    with pytest.raises(ValueError, match=message):
        SamPredictor(tiny.model).set_image(image)


def test_predict_before_set_image(tiny):
    p = SamPredictor(tiny.model)
    with pytest.raises(ValueError, match="set_image"):
        p.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError):  # as the official predictor
        p.get_image_embedding()


def test_bgr_input(tiny):
    image = _image(40, 50)
    a, b = SamPredictor(tiny.model), SamPredictor(tiny.model)
    a.set_image(image)
    b.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    np.testing.assert_array_equal(np.asarray(a.get_image_embedding()), np.asarray(b.get_image_embedding()))


def test_embed_images_batch(tiny):
    images = [_image(40, 50, 1), _image(90, 30, 2)]
    p = SamPredictor(tiny.model)
    batch = p.embed_images(images)
    assert batch.features.shape[0] == 2
    for i, image in enumerate(images):
        p.set_image(image)
        single = np.asarray(p.get_image_embedding())
        assert_close(batch.features[i : i + 1], single, tol=1e-5, what=f"image {i}")
    p.set_image_embedding(batch, 1)
    assert p.original_size == (90, 30)
