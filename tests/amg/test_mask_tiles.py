"""Automatic masks band by band (`functional/mask_tiles.py`): the same statistics, masks and RLE as
the whole-canvas computation (the official maths on the full-resolution logits), a fraction of
its memory, and RLE records equal to the host encoder's and the official `mask_to_rle_pytorch`."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator, rle_counts
from sam_jax.functional import automatic_mask_generator as dev
from sam_jax.functional import mask_tiles
from sam_jax.io.rle import coco_encode_rle, mask_to_rle
from sam_jax.transforms import get_preprocess_shape


def _whole_canvas(low, rows, cols, crop_hw):
    """(K, Hc, Wc) full-resolution logits, -inf off the crop: what the generator thresholded
    before it worked in bands."""
    Hc, Wc = rows[0].shape[0] * dev.BAND_TILE, cols[0].shape[0] * dev.BAND_TILE
    inside = (jnp.arange(Hc)[:, None] < crop_hw[0]) & (jnp.arange(Wc)[None, :] < crop_hw[1])
    return jnp.where(inside, dev.upscale_to_crop(low, rows, cols), -jnp.inf)


def _whole_canvas_stats(low, rows, cols, crop_hw, threshold, offset, tiles=1):
    logits = _whole_canvas(low, rows, cols, crop_hw)
    return dev.calculate_stability_score(logits, threshold, offset), dev.batched_mask_to_box(logits > threshold)


def _logits(seed, k, n):
    """Random low-res logits with ties: regions exactly at the threshold (0) and at threshold
    +/- offset (+/-1), whole-number logits, an empty and a full mask."""
    r = np.random.default_rng(seed)
    low = r.normal(0, 2, (k, n, n)).astype(np.float32)
    low[0, n // 6 : n // 2] = 0.0
    low[1, :, : n // 3] = 1.0
    low[1, n // 2 :, n // 2 :] = -1.0
    low[2] = np.round(low[2])
    low[3] = -8.0  # empty
    low[4] = 8.0  # full
    return low


# (low-res side, image_size, crop (h, w), tiles per band): a canvas exactly the crop's height
# (1280), one just past a canvas size (1281 on 1536), the 1024 model's shapes.
SHAPES = [(64, 256, (150, 211), 1), (64, 256, (1280, 300), 4), (64, 256, (1281, 97), 3), (256, 1024, (700, 500), 2)]


def _setup(shape, seed=0, k=7):
    low_len, size, crop, tiles = shape
    rows, cols = dev.crop_resamplers(low_len, size, get_preprocess_shape(*crop, size), crop)
    return _logits(seed, k, low_len), rows, cols, np.array(crop, np.int32), tiles


@pytest.mark.parametrize("shape", SHAPES)
def test_band_stats_equal_whole_canvas(shape):
    low, rows, cols, crop_hw, tiles = _setup(shape)
    for threshold, offset in [(0.0, 1.0), (0.0, 0.0), (0.5, 0.25)]:
        args = (low, rows, cols, crop_hw, np.float32(threshold), np.float32(offset))
        ref = jax.jit(_whole_canvas_stats)(*args)
        ours = jax.jit(mask_tiles.band_stats, static_argnames="tiles")(*args, tiles=tiles)
        np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(ref[0]))  # bit for bit, NaN for 0/0 too
        np.testing.assert_array_equal(ours[1], ref[1])
    assert np.asarray(ref[1])[3].tolist() == [0, 0, 0, 0]  # the empty mask's box


@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[3:])
def test_band_masks_equal_whole_canvas(shape):
    low, rows, cols, crop_hw, tiles = _setup(shape, seed=1)
    masks = np.asarray(jax.jit(_whole_canvas)(low, rows, cols, crop_hw)) > 0
    packed, area = jax.jit(dev.render_masks, static_argnames=("chunk", "tiles"))(
        low, np.arange(8, dtype=np.int32) % 7, rows, cols, crop_hw, np.float32(0), chunk=4, tiles=tiles)
    masks = np.concatenate([masks, masks[:1]])
    np.testing.assert_array_equal(np.unpackbits(np.asarray(packed), axis=-1).view(bool), masks)
    np.testing.assert_array_equal(area, masks.sum(axis=(1, 2)))


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_boundaries_give_the_official_rle(shape):
    """The crop's masks placed in images around it: at the corner (the first pixel set or not),
    of the image's full height (columns run into each other), full width, at the bottom-right
    (the last pixel), inside."""
    import torch
    from segment_anything.utils.amg import mask_to_rle_pytorch

    low, rows, cols, crop_hw, tiles = _setup(shape, seed=2)
    h, w = (int(v) for v in crop_hw)
    masks = np.asarray(jax.jit(_whole_canvas)(low, rows, cols, crop_hw))[:, :h, :w] > 0
    assert masks[:, 0, 0].any() and not masks[:, 0, 0].all() and masks[:, -1, -1].any()
    boundaries = jax.jit(dev.render_boundaries, static_argnames=("chunk", "tiles"))
    for H, W, x0, y0 in [(h, w, 0, 0), (h, w + 9, 0, 0), (h, w + 9, 9, 0), (h, w + 9, 4, 0), (h + 4, w, 0, 0),
                         (h + 4, w, 0, 4), (h + 5, w + 7, 3, 5), (h + 5, w + 7, 7, 5), (h + 5, w + 7, 3, 2)]:
        image = np.zeros((len(masks), H, W), bool)
        image[:, y0 : y0 + h, x0 : x0 + w] = masks
        changes, area = boundaries(low, np.arange(len(low), dtype=np.int32), rows, cols, crop_hw, np.array([x0, y0], np.int32),
                                   np.array([H, W], np.int32), np.float32(0), chunk=4, tiles=tiles)
        counts = rle_counts(np.asarray(changes), (x0, y0), (H, W))
        official = mask_to_rle_pytorch(torch.from_numpy(image))
        assert [{"size": [H, W], "counts": c} for c in counts] == official == mask_to_rle(image), (H, W, x0, y0)
        assert all(type(c) is int for cs in counts for c in cs)
        np.testing.assert_array_equal(area, masks.sum(axis=(1, 2)))


def test_rle_records_equal_the_host_encoders():
    """Every output mode gives the records the host encoders make of the binary masks, byte for
    byte (the RLE modes never bring the masks to the host), across crops: the shapes model's
    masks are objects, so crops inside the image keep some."""
    import sam_jax
    from sam_jax import assets
    from sam_jax.train.synthetic_shapes import make_example

    model = sam_jax.load(assets.SHAPES_TINY)
    image = np.kron(make_example(seed=0, size=64)[0], np.ones((2, 3, 1), np.uint8))[:, :181]  # 128 x 181
    kw = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0, crop_n_layers=1,
              crop_nms_thresh=1.0, crop_n_points_downscale_factor=2)
    binary = SamAutomaticMaskGenerator(model, **kw).generate(image)
    assert len({tuple(r["crop_box"]) for r in binary}) >= 3
    rles = mask_to_rle(np.stack([r.pop("segmentation") for r in binary]))
    for mode, encode in [("uncompressed_rle", lambda r: r), ("coco_rle", coco_encode_rle)]:
        ours = SamAutomaticMaskGenerator(model, output_mode=mode, **kw).generate(image)
        expected = [{"segmentation": encode(rle), **r} for r, rle in zip(binary, rles)]
        assert json.dumps(ours) == json.dumps(expected)
        assert [r["area"] for r in ours] == [sum(rle["counts"][1::2]) for rle in rles]


def _crop_program_temp_bytes(plan: dev.BackendPlan, stats=None, chunk=None) -> int:
    """Temporary bytes of the compiled crop program (CPU memory analysis) for the test_tiny model
    on a 1280 x 2048 canvas (a 1200 x 1800 photo), 1,024 points in batches of 64, under `plan`;
    `stats` replaces the band statistics (a fresh trace), `chunk` the plan's."""
    from flax import nnx

    from sam_jax import get_config
    from sam_jax.convert.shapes import abstract_model

    cfg = get_config("test_tiny")
    graphdef, state = nnx.split(abstract_model(cfg))
    params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), state)
    S, g = cfg.image_size, cfg.image_size // 16
    rows, cols = dev.crop_resamplers(4 * g, S, get_preprocess_shape(1200, 1800, S), (1200, 1800))
    canvas = (rows[0].shape[0] * dev.BAND_TILE, cols[0].shape[0] * dev.BAND_TILE)
    assert canvas == (1280, 2048)
    masks = 64 * cfg.num_multimask_outputs
    chunk = chunk or dev.stats_chunk(plan, masks, canvas, 4 * g)
    tiles = dev.band_tiles(plan, chunk, canvas, 4 * g)
    box = np.array([0, 0, 1800, 1200], np.float32)
    settings = dev.AmgSettings(*(np.float32(v) for v in (0.88, 0.95, 1.0, 0.7, 0.0)))
    original = dev.band_stats

    def crop(*args, **kwargs):  # a new function, so that nothing traced before is reused
        return dev.process_crop(*args, **kwargs)

    try:
        dev.band_stats = stats or original
        compiled = jax.jit(crop, static_argnames=("graphdef", "chunk", "tiles")).lower(
            graphdef, params, jax.ShapeDtypeStruct((1, cfg.prompt_embed_dim, g, g), jnp.float32), np.int32(0),
            np.zeros((16, 64, 2), np.float32), np.ones((16, 64), bool), rows, cols, np.array([1200, 1800], np.int32),
            box, box, settings, chunk=chunk, tiles=tiles).compile()
    finally:
        dev.band_stats = original
    return compiled.memory_analysis().temp_size_in_bytes


def test_crop_program_memory_is_a_quarter_of_the_whole_canvas_one():
    """The crop program against the same program with the whole-canvas statistics and the
    earlier plans (CPU: 4 masks at a time; accelerators: 2 GiB of statistics, 64 masks at a
    time here): at most a quarter of its temporary memory on both plans."""
    limit = (2 << 30) // (12 * 1280 * 2048)  # the earlier accelerator plan: 2 GiB over 3 float32 canvases a mask
    steps = -(-192 // limit)
    earlier_chunk = {"cpu": 4, "accelerator": -(-192 // steps)}
    assert earlier_chunk["accelerator"] == 64
    for name, plan in [("cpu", dev.PLANS["cpu"]), ("accelerator", dev.ACCELERATOR_PLAN)]:
        before = _crop_program_temp_bytes(plan, _whole_canvas_stats, chunk=earlier_chunk[name])
        after = _crop_program_temp_bytes(plan)
        print(f"{name}: crop program temp {before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB")
        assert before >= earlier_chunk[name] * 1280 * 2048 * 4  # it held a chunk's float32 logits at least
        assert after <= before / 4, (name, before, after)
