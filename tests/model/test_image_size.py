"""Image sizes other than the checkpoint's (the resampling itself: test_resample.py):
`load(..., image_size=N)` / `sam-jax convert --image-size N` against the official model built at
N whose pos_embed was resized by F.interpolate(bicubic) and whose rel-pos tables were resized
linearly (`helpers.official_at_size`), through the encoder, the predictor and AMG."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from tests.reference.compare import assert_close, assert_masks_match
from tests.reference.official import official_at_size
from sam_jax import SamAutomaticMaskGenerator, SamPredictor, load
from sam_jax.cli import main

# test_tiny is 256 (a 16 x 16 grid, windows of 6): 192 shrinks it to 12 x 12 (no window padding),
# 320 enlarges it to 20 x 20 (windows padded).
SIZES = [192, 320]


@pytest.fixture(scope="module")
def sized(cases):
    """N -> (official model at N, its config, our model loaded at N from the converted folder)."""
    built = {}

    def get(n):
        if n not in built:
            tiny = cases("test_tiny")
            official, cfg = official_at_size(tiny.official, tiny.config, n)
            built[n] = official, cfg, load(tiny.model_dir, image_size=n)
        return built[n]

    return get


@pytest.mark.parametrize("n", SIZES)
def test_encoder_at_size(sized, n):
    official, cfg, ours = sized(n)
    assert ours.config == cfg
    state = official.state_dict()
    assert_close(ours.image_encoder.pos_embed[...], state["image_encoder.pos_embed"].numpy(), tol=1e-6, what="pos_embed")
    for i in cfg.encoder_global_attn_indexes:
        ref = state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].numpy()
        assert ref.shape[0] == 2 * n // 16 - 1
        assert_close(ours.image_encoder.blocks[i].attn.rel_pos_h[...], ref, tol=1e-6, what="rel_pos_h")
    x = np.random.default_rng(1).normal(size=(2, 3, n, n)).astype(np.float32)
    ref = official.image_encoder(torch.from_numpy(x)).numpy()
    assert ref.shape == (2, cfg.prompt_embed_dim, n // 16, n // 16)
    graphdef, params = nnx.split(ours.image_encoder)
    encode = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))  # eager NNX would dispatch op by op
    assert_close(encode(params, jnp.asarray(x)), ref, what=f"embedding at {n}")


def _image(h, w, seed=0):
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7.0), np.cos(yy / 5.0), np.sin((xx + yy) / 11.0)], -1) * 100 + 128
    return np.clip(base + r.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def test_predictor_at_size(sized):
    """Resizing to N, the prompt grid (N/16), mask inputs (N/4) and postprocessing all follow."""
    from segment_anything import SamPredictor as Official

    n = 320
    official, cfg, model = sized(n)
    image = _image(150, 211)
    ours, ref = SamPredictor(model), Official(official)
    ours.set_image(image)
    ref.set_image(image)
    assert ours.input_size == tuple(ref.input_size) and max(ours.input_size) == n
    assert_close(ours.get_image_embedding(), ref.get_image_embedding().numpy(), what="embedding")
    points = dict(point_coords=np.array([[40.0, 30.0], [150.0, 100.0]]), point_labels=np.array([1, 0]))
    rounds = [dict(points, box=np.array([10.0, 15.0, 170.0, 120.0]))]
    for kw in rounds:
        masks, iou, low = ours.predict(**kw, multimask_output=True)
        rmasks, riou, rlow = ref.predict(**kw, multimask_output=True)
        assert low.shape == rlow.shape == (3, n // 4, n // 4)
        assert_close(low, rlow, what="low-res logits")
        np.testing.assert_allclose(iou, riou, atol=1e-4, rtol=0)
        logits = official.postprocess_masks(torch.from_numpy(rlow[None]), ref.input_size, ref.original_size)[0].numpy()
        assert_masks_match(masks, logits, margin=1e-4, what="masks")
        if len(rounds) == 1:  # a second round with the best mask as the (N/4)-sized mask input
            rounds.append(dict(points, mask_input=rlow[np.argmax(riou)][None]))


def test_amg_at_size(sized):
    from segment_anything import SamAutomaticMaskGenerator as Official

    official, _, model = sized(192)
    kw = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    image = _image(120, 170, seed=2)
    ours, ref = SamAutomaticMaskGenerator(model, **kw).generate(image), Official(official, **kw).generate(image)
    assert len(ours) == len(ref) == 36 * 3
    for o, r in zip(ours, ref):
        a, b = o["segmentation"], r["segmentation"]
        assert np.logical_and(a, b).sum() >= 0.99 * max(np.logical_or(a, b).sum(), 1)
        np.testing.assert_allclose(o["predicted_iou"], r["predicted_iou"], atol=1e-4)


def test_convert_and_cli_image_size(tiny, sized, tmp_path, capsys):
    out = tmp_path / "at192"
    args = ["convert", "--checkpoint", str(tiny.pth), "--config", str(tiny.pth.with_suffix(".json")), "--output", str(out)]
    assert main(args + ["--image-size", "192"]) == 0
    converted, direct = load(out), sized(192)[2]
    assert converted.config == direct.config
    for (path, a), (_, b) in zip(*(jax_flat(m) for m in (converted, direct))):
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    assert load(out, image_size=256).config.image_size == 256  # and back: a folder resizes too

    for bad in ("200", "0", "-16", "big"):
        with pytest.raises(SystemExit):
            main(args + ["--overwrite", "--image-size", bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert "argument --image-size: must be a positive multiple of 16" in err[-1]
    with pytest.raises(ValueError, match="positive multiple of the patch size 16, got 100"):
        load(tiny.pth, image_size=100)


def jax_flat(model):
    return [(p, np.asarray(v[...])) for p, v in nnx.to_flat_state(nnx.state(model))]


def test_same_size_is_unchanged(tiny):
    same = load(tiny.pth, image_size=tiny.config.image_size)
    for (_, a), (_, b) in zip(jax_flat(same), jax_flat(tiny.model)):
        np.testing.assert_array_equal(a, b)
