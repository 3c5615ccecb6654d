"""Model-level parity with the official PyTorch SAM on the same (perturbed, converted) weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.reference.compare import assert_close, assert_masks_match
from sam_jax.modeling import postprocess_masks
from sam_jax.modeling.image_encoder import get_rel_pos


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_image_encoder(case):
    S = case.config.image_size
    x = _rng().normal(size=(2, 3, S, S)).astype(np.float32)
    ref = case.official.image_encoder(torch.from_numpy(x)).numpy()
    ours = case.model.image_encoder(jnp.asarray(x))
    assert_close(ours, ref, what=f"{case.name} image embedding")


def _prompts(cfg, B=3, N=4, seed=1):
    r = _rng(seed)
    S = cfg.image_size
    pts = r.uniform(-10, S + 10, size=(B, N, 2)).astype(np.float32)  # points outside are allowed
    labels = r.integers(-1, 2, size=(B, N)).astype(np.int64)
    x0 = r.uniform(0, S / 2, size=(B, 2))
    boxes = np.concatenate([x0, x0 + r.uniform(1, S / 2, size=(B, 2))], 1).astype(np.float32)
    g = 4 * (S // cfg.patch_size)
    masks = r.normal(size=(B, 1, g, g)).astype(np.float32) * 5
    return pts, labels, boxes, masks


@pytest.mark.parametrize("kinds", ["points", "boxes", "points+boxes", "masks", "points+masks", "none"])
def test_prompt_encoder(case, kinds):
    pts, labels, boxes, masks = _prompts(case.config)
    use = set(kinds.split("+"))
    t = lambda a: torch.from_numpy(a)
    ref_sparse, ref_dense = case.official.prompt_encoder(
        points=(t(pts), t(labels)) if "points" in use else None,
        boxes=t(boxes) if "boxes" in use else None,
        masks=t(masks) if "masks" in use else None,
    )
    sparse, dense = case.model.prompt_encoder(
        (jnp.asarray(pts), jnp.asarray(labels)) if "points" in use else None,
        jnp.asarray(boxes) if "boxes" in use else None,
        jnp.asarray(masks) if "masks" in use else None,
    )
    assert_close(sparse, ref_sparse.numpy(), what="sparse") if ref_sparse.numel() else None
    assert sparse.shape == tuple(ref_sparse.shape)
    assert_close(dense, ref_dense.numpy(), what="dense")


def test_dense_pe(case):
    ref = case.official.prompt_encoder.get_dense_pe().numpy()
    assert_close(case.model.prompt_encoder.get_dense_pe(), ref, what="dense pe")


@pytest.mark.parametrize("multimask", [True, False])
def test_mask_decoder(case, multimask):
    cfg = case.config
    g = cfg.image_size // cfg.patch_size
    r = _rng(2)
    emb = r.normal(size=(1, cfg.prompt_embed_dim, g, g)).astype(np.float32)
    pts, labels, boxes, masks = _prompts(cfg)
    t = torch.from_numpy
    sp, de = case.official.prompt_encoder(points=(t(pts), t(labels)), boxes=t(boxes), masks=t(masks))
    ref_masks, ref_iou = case.official.mask_decoder(
        image_embeddings=t(emb), image_pe=case.official.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sp, dense_prompt_embeddings=de, multimask_output=multimask,
    )
    pe = case.model.prompt_encoder
    sparse, dense = pe((jnp.asarray(pts), jnp.asarray(labels)), jnp.asarray(boxes), jnp.asarray(masks))
    masks_, iou = case.model.mask_decoder(jnp.asarray(emb), pe.get_dense_pe(), sparse, dense, multimask)
    assert_close(masks_, ref_masks.numpy(), what="low-res masks")
    assert_close(iou, ref_iou.numpy(), what="iou predictions")


def test_padded_tokens_do_not_change_outputs(tiny):
    """Bucket padding (label -2) must be invisible: the official pad token (-1) is not."""
    cfg = tiny.config
    g = cfg.image_size // cfg.patch_size
    emb = jnp.asarray(_rng(3).normal(size=(1, cfg.prompt_embed_dim, g, g)).astype(np.float32))
    pts, labels, _, _ = _prompts(cfg, B=2, N=3)
    labels = np.abs(labels)  # real points only
    pe, dec = tiny.model.prompt_encoder, tiny.model.mask_decoder
    sp, de = pe((jnp.asarray(pts), jnp.asarray(labels)), None, None)
    ref = dec(emb, pe.get_dense_pe(), sp, de, True)

    pts_p = np.concatenate([pts, np.full((2, 5, 2), 123.0, np.float32)], 1)
    lab_p = np.concatenate([labels, np.full((2, 5), -2)], 1)
    sp_p, de_p = pe((jnp.asarray(pts_p), jnp.asarray(lab_p)), None, None)
    # The official pad token sits after the points; move the ignored slots behind it as well.
    out = dec(emb, pe.get_dense_pe(), sp_p, de_p, True, token_mask=jnp.asarray(np.concatenate([lab_p, [[-1]] * 2], 1) != -2))
    for a, b in zip(out, ref):
        assert_close(a, b, tol=1e-5, what="padded decode")
    # ...whereas feeding the same slots as official "not a point" tokens does change the result.
    unmasked = dec(emb, pe.get_dense_pe(), sp_p, de_p, True)
    assert np.max(np.abs(np.asarray(unmasked[0]) - np.asarray(ref[0]))) > 1e-3


def test_sam_forward_end_to_end(tiny):
    """The official Sam.forward (batched images, prompts, postprocessing) against ours."""
    cfg = tiny.config
    r = _rng(4)
    pts, labels, boxes, masks = _prompts(cfg, B=2, N=2)
    batch = [
        {"image": r.uniform(0, 255, size=(3, cfg.image_size, 192)).astype(np.float32), "original_size": (300, 225),
         "point_coords": pts, "point_labels": labels},
        {"image": r.uniform(0, 255, size=(3, 200, cfg.image_size)).astype(np.float32), "original_size": (100, 128),
         "boxes": boxes, "mask_inputs": masks},
    ]
    to_t = lambda rec: {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in rec.items()}
    to_j = lambda rec: {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in rec.items()}
    for multimask in (True, False):
        ref = tiny.official([to_t(b) for b in batch], multimask_output=multimask)
        ours = tiny.model([to_j(b) for b in batch], multimask_output=multimask)
        for o, rf, b in zip(ours, ref, batch):
            assert_close(o["low_res_logits"], rf["low_res_logits"].numpy(), what="low-res logits")
            assert_close(o["iou_predictions"], rf["iou_predictions"].numpy(), what="iou")
            # Logits at full size, to check postprocessing; then the thresholded masks.
            input_size = b["image"].shape[-2:]
            logits = tiny.official.postprocess_masks(rf["low_res_logits"], input_size, b["original_size"]).numpy()
            assert_masks_match(o["masks"], logits, what="masks")


@pytest.mark.parametrize("input_size,original_size", [((256, 192), (300, 225)), ((200, 256), (100, 128)), ((256, 256), (256, 256))])
def test_postprocess_masks(tiny, input_size, original_size):
    low = _rng(5).normal(size=(2, 3, 64, 64)).astype(np.float32) * 10
    ref = tiny.official.postprocess_masks(torch.from_numpy(low), input_size, original_size).numpy()
    ours = postprocess_masks(tiny.config, jnp.asarray(low), input_size, original_size)
    assert_close(ours, ref, tol=1e-5, what="postprocess")


@pytest.mark.parametrize("q,k,length", [(14, 14, 27), (14, 14, 13), (8, 8, 31), (7, 14, 27), (14, 7, 27)])
def test_get_rel_pos_with_interpolation(q, k, length):
    from segment_anything.modeling.image_encoder import get_rel_pos as official

    table = _rng(6).normal(size=(length, 16)).astype(np.float32)
    assert_close(get_rel_pos(q, k, jnp.asarray(table)), official(q, k, torch.from_numpy(table)).numpy(), tol=1e-6)


@pytest.mark.parametrize("hw", [(14, 14), (64, 64), (7, 9)])
def test_blocked_attention_equals_batched(hw):
    """The CPU path (groups and row blocks one at a time) and the accelerator path (one batched
    product) both equal the official materialised formula."""
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    from sam_jax.modeling.image_encoder import attention, batched_attention, blocked_attention, decomposed_rel_pos

    r = _rng(7)
    G, N, C = 3, hw[0] * hw[1], 8
    q, k, v = (r.normal(size=(G, N, C)).astype(np.float32) for _ in range(3))
    tables = [r.normal(size=(2 * s - 1, C)).astype(np.float32) for s in hw]
    t = torch.from_numpy
    logits = add_decomposed_rel_pos(t(q) * 0.3 @ t(k).transpose(1, 2), t(q), *map(t, tables), hw, hw)
    ref = (torch.softmax(logits, dim=-1) @ t(v)).numpy()
    q, k, v = map(jnp.asarray, (q, k, v))
    tables = [jnp.asarray(x) for x in tables]
    rel_h, rel_w = decomposed_rel_pos(q, *tables, hw, hw)
    for fn in (blocked_attention, batched_attention, attention):
        assert_close(fn(q * 0.3, k, v, rel_h, rel_w, hw), ref, tol=1e-5, what=fn.__name__)
    assert_close(blocked_attention(q, k, v, None, None, hw), jax.nn.softmax(q @ jnp.swapaxes(k, 1, 2), -1) @ v, tol=1e-5)
