"""Augmentation: the image and its masks move together (every output pixel is one input pixel,
by a crop, a rotation by a multiple of 90 degrees and flips, and each mask follows its pixels),
the same seed gives the same examples and a resumed stream the same batches; and the flags of
the new training features reach TrainConfig."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sam_jax.cli import build_parser
from sam_jax.cli.train import config_from_args
from sam_jax.train.augment import AugmentSettings, augment
from sam_jax.train.config import TrainConfig
from sam_jax.train.data import open_dataset, training_dataset
from sam_jax.train.lora import LoraSettings
from sam_jax.train.synthetic_shapes import write_coco

ALL = AugmentSettings(hflip=True, vflip=True, rot90=True, scale_jitter=2.0, crop_size=48)


def _coordinate_image(H=70, W=90, n=5, seed=0):
    """An image whose pixel (y, x) holds (y, x, 0), and n random rectangles as masks."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    image = np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8)
    masks = np.zeros((n, H, W), bool)
    for k in range(n):
        y, x = r.integers(0, H - 10), r.integers(0, W - 10)
        masks[k, y : y + r.integers(5, 30), x : x + r.integers(5, 30)] = True
    return image, masks


def test_masks_follow_their_pixels():
    image, masks = _coordinate_image()
    seen = set()
    for seed in range(40):
        out, out_masks = augment(image, masks, np.random.default_rng(seed), ALL)
        y, x = out[..., 0].astype(int), out[..., 1].astype(int)
        h, w = out.shape[:2]
        assert max(h, w) <= 48 and min(h, w) >= 48 // 2 - 1  # the crop, then a zoom of at most 2
        # A rigid map: one step along an output axis is one step along an input axis.
        steps = {(int(y[0, 1] - y[0, 0]), int(x[0, 1] - x[0, 0])), (int(y[1, 0] - y[0, 0]), int(x[1, 0] - x[0, 0]))}
        assert np.array_equal(np.diff(y, axis=1), np.full((h, w - 1), y[0, 1] - y[0, 0]))
        assert np.array_equal(np.diff(x, axis=0), np.full((h - 1, w), x[1, 0] - x[0, 0]))
        assert all(abs(a) + abs(b) == 1 for a, b in steps)
        seen.add(tuple(sorted(steps)))
        # Each output mask is an input mask read at the output's source pixels; none is lost.
        moved = masks[:, y, x]
        kept = moved.any(axis=(1, 2))
        assert np.array_equal(out_masks, moved[kept])
    assert len(seen) == 4  # both orientations and both directions of each axis were drawn


def test_seeded_and_off_by_default():
    image, masks = _coordinate_image(seed=1)
    a = augment(image, masks, np.random.default_rng(3), ALL._replace(color_jitter=0.3))
    b = augment(image, masks, np.random.default_rng(3), ALL._replace(color_jitter=0.3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = augment(image, masks, np.random.default_rng(4), ALL._replace(color_jitter=0.3))
    assert not (a[0].shape == c[0].shape and np.array_equal(a[0], c[0]))
    rng = np.random.default_rng(5)
    off = augment(image, masks, rng, AugmentSettings())
    assert np.array_equal(off[0], image) and np.array_equal(off[1], masks)
    assert rng.random() == np.random.default_rng(5).random()  # off draws nothing
    # Colour jitter changes the image only.
    jittered, same = augment(image, masks, np.random.default_rng(6), AugmentSettings(color_jitter=0.5))
    assert np.array_equal(same, masks) and jittered.shape == image.shape and not np.array_equal(jittered, image)


def test_stream_is_seeded_and_resumes(tmp_path):
    source = open_dataset(write_coco(tmp_path / "shapes", 6, seed=2))
    aug = functools.partial(augment, settings=ALL._replace(crop_size=40, color_jitter=0.2))
    batches = lambda start=0, a=aug: iter(training_dataset(source, 64, 2, 2, seed=0, start=start, augment=a, num_threads=1))
    first = [next(it) for it in [batches()] for _ in range(5)]
    again = [next(it) for it in [batches()] for _ in range(5)]
    resumed = [next(it) for it in [batches(3)] for _ in range(2)]
    plain = [next(it) for it in [batches(a=None)] for _ in range(5)]
    same = lambda x, y: all(np.array_equal(x[k], y[k]) for k in x)
    assert all(same(x, y) for x, y in zip(first, again)) and all(same(x, y) for x, y in zip(first[3:], resumed))
    assert not all(same(x, y) for x, y in zip(first, plain))
    assert all(b["valid"].any() for b in first)  # windows are drawn again until they hold an object


def test_flags_reach_the_config():
    args = build_parser().parse_args([
        "train", "--train-data", "x", "--output", "o", "--augment", "hflip,rot90", "--scale-jitter", "1.5", "--crop-size", "512",
        "--color-jitter", "0.1", "--lora-rank", "4", "--lora-scale", "2", "--lora-targets", "qkv,proj", "--grad-accum", "3",
        "--val-every", "10", "--patience", "2", "--val-images", "20", "--iou-loss", "l1", "--grad-through-masks"])
    c = config_from_args(args)
    assert c.augment == AugmentSettings(hflip=True, rot90=True, scale_jitter=1.5, crop_size=512, color_jitter=0.1)
    assert c.lora == LoraSettings(rank=4, scale=2.0, targets=("qkv", "proj"))
    assert (c.grad_accum, c.val_every, c.patience, c.val_images) == (3, 10, 2, 20)
    assert c.loss.iou_loss == "l1" and c.prompts.grad_through_masks
    d = config_from_args(build_parser().parse_args(["train", "--train-data", "x", "--output", "o"]))
    assert not d.augment.active and d.lora.rank == 0 and d.grad_accum == 1 and not d.prompts.grad_through_masks
    assert d.val_images == 0  # the whole validation set
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--train-data", "x", "--output", "o", "--augment", "hflip,shear"])
    for bad, message in [(dict(augment=AugmentSettings(scale_jitter=0.5)), "scale_jitter"),
                         (dict(augment=AugmentSettings(color_jitter=1.0)), "color_jitter"),
                         (dict(grad_accum=0), "grad_accum"), (dict(patience=3), "needs val_every"),
                         (dict(lora=LoraSettings(rank=-1)), "lora rank")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)
