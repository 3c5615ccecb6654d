"""`SamPredictor(model, resize="device")`: Pillow's BILINEAR resize (the host default, as the
official `ResizeLongestSide.apply_image`) computed on device, against the installed Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_jax import SamPredictor
from sam_jax.pillow_resize import PILLOW, pillow_vertical_first, resize_longest_side
from sam_jax.transforms import ResizeLongestSide

PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "images"  # the workplace's sample photos, when present
ORDER_KNOWN = PILLOW <= (13, 0)  # versions whose choice of pass order pillow_vertical_first follows


def _photos():
    found = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    return [pytest.param(p, id=p.name) for p in found] or [pytest.param(None, marks=pytest.mark.skip(f"no photos in {PHOTOS}"))]


def _check(image: np.ndarray, target: int) -> None:
    ref = ResizeLongestSide(target).apply_image(image)
    canvas, (h, w) = resize_longest_side(image, target)
    canvas = np.asarray(canvas)
    assert (h, w) == ref.shape[:2] and canvas.shape == (target, target, 3)
    assert not canvas[h:].any() and not canvas[:, w:].any()
    diff = np.abs(canvas[:h, :w].astype(int) - ref)
    assert diff.max() <= 1  # the promise
    if ORDER_KNOWN:
        assert diff.max() == 0, (image.shape, target, int((diff > 0).sum()))  # Pillow's own bytes


@pytest.mark.parametrize("photo", _photos())
@pytest.mark.parametrize("target", [1024, 256])
def test_device_resize_equals_pillow_on_photos(photo, target):
    _check(np.asarray(Image.open(photo).convert("RGB")), target)


# Shrinking and enlarging; either axis kept; tall and wide; the shapes where Pillow 13 runs the
# vertical pass first (a tall shrink, a height that shrinks while the width grows) and its tie.
SHAPES = [(1200, 1800), (1800, 1200), (2500, 1000), (3000, 17), (37, 1500), (1024, 700), (700, 1024), (300, 400),
          (1, 5), (1023, 1025), (40, 30), (1100, 1000)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_device_resize_equals_pillow_on_random_images(shape):
    r = np.random.default_rng(sum(shape))
    noise = r.integers(0, 256, shape + (3,), dtype=np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    smooth = np.stack([xx * 255 // max(shape[1] - 1, 1), yy * 255 // max(shape[0] - 1, 1), (xx + yy) % 256], -1).astype(np.uint8)
    for image in (noise, smooth):
        _check(image, 1024 if max(shape) > 1024 else 256)


def test_pass_order_rule_is_tested_on_both_sides():
    """The shapes above take both orders under the installed Pillow's rule (else the tests
    would not see a wrong order)."""
    orders = {pillow_vertical_first(s, ResizeLongestSide.get_preprocess_shape(*s, 1024 if max(s) > 1024 else 256))
              for s in SHAPES}
    assert orders == {True, False} or PILLOW < (12, 2)
    assert pillow_vertical_first((1000, 1000), (499, 750), (13, 0)) and not pillow_vertical_first((1000, 1000), (500, 750), (13, 0))
    assert not pillow_vertical_first((3000, 17), (1024, 6), (12, 1)) and pillow_vertical_first((3000, 17), (1024, 6), (12, 3))


def test_predictor_with_device_resize_gives_the_host_masks(tiny):
    """Same input bytes, so the same embedding, logits and masks as the default (the IoU of the
    masks of both resizes is 1)."""
    r = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:211]
    image = np.clip(np.stack([xx, yy, (xx * yy) % 255], -1) + r.normal(0, 8, (150, 211, 3)), 0, 255).astype(np.uint8)
    host, device = SamPredictor(tiny.model), SamPredictor(tiny.model, resize="device")
    for p in (host, device):
        p.set_image(image, "BGR")
    np.testing.assert_array_equal(np.asarray(host.features), np.asarray(device.features))
    pts, labels = np.array([[60.0, 50.0], [150.0, 120.0]]), np.array([1, 0])
    for a, b in zip(host.predict(pts, labels, return_logits=True), device.predict(pts, labels, return_logits=True)):
        np.testing.assert_array_equal(a, b)
    emb_host, emb_device = (p.embed_images([image, image[:90]]) for p in (host, device))  # a batch (the mesh path)
    assert emb_host.input_sizes == emb_device.input_sizes
    np.testing.assert_array_equal(np.asarray(emb_host.features), np.asarray(emb_device.features))
    with pytest.raises(ValueError, match="resize must be"):
        SamPredictor(tiny.model, resize="gpu")
