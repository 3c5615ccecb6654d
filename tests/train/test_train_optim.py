"""Optimizer: schedules and the layer-decay table at chosen steps, freezing, and AdamW steps equal
to torch.optim.AdamW (with parameter groups for layer decay and no-decay parameters)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from tests.reference.compare import assert_close
from sam_jax import build_sam_from_config
from sam_jax.train.trainable import split_trainable
from sam_jax.train.optim import OptimizerSettings, decay_steps, layer_decay_table, learning_rate, make_optimizer, weight_decay_mask


def test_step_schedule_at_chosen_steps():
    s = OptimizerSettings(learning_rate=8e-4, total_steps=90000, warmup_steps=250)
    assert decay_steps(s) == [60000, 86666]
    expected = {0: 8e-4 / 250, 124: 8e-4 * 125 / 250, 249: 8e-4, 250: 8e-4, 59999: 8e-4, 60000: 8e-5, 86665: 8e-5, 86666: 8e-6, 89999: 8e-6}
    for step, lr in expected.items():
        assert np.isclose(float(learning_rate(step, s)), lr, rtol=1e-6), step


def test_cosine_and_constant_schedules():
    s = OptimizerSettings(learning_rate=1e-3, total_steps=1100, warmup_steps=100, schedule="cosine")
    for step, lr in {0: 1e-5, 99: 1e-3, 100: 1e-3, 600: 5e-4, 1100: 0.0, 5000: 0.0}.items():
        assert np.isclose(float(learning_rate(step, s)), lr, rtol=1e-5, atol=1e-9), step
    c = s._replace(schedule="constant", warmup_steps=0)
    assert float(learning_rate(0, c)) == float(learning_rate(10**6, c)) == np.float32(1e-3)
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(0, s._replace(schedule="linear"))


def test_layer_decay_table_and_decay_mask():
    model = build_sam_from_config("test_tiny")  # depth 4
    params = nnx.state(model, nnx.Param)
    table = {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(layer_decay_table(params, 4, 0.8))}
    assert table["image_encoder/patch_embed/proj/kernel"] == table["image_encoder/pos_embed"] == pytest.approx(0.8**5)
    assert table["image_encoder/blocks/0/attn/qkv/kernel"] == pytest.approx(0.8**4)
    assert table["image_encoder/blocks/3/mlp/lin2/bias"] == pytest.approx(0.8)
    assert table["image_encoder/neck/0/kernel"] == table["mask_decoder/iou_token/embedding"] == 1.0
    mask = {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(weight_decay_mask(params))}
    assert mask["image_encoder/blocks/0/attn/qkv/kernel"] and mask["image_encoder/pos_embed"]
    assert not mask["image_encoder/blocks/0/attn/qkv/bias"] and not mask["image_encoder/blocks/0/norm1/scale"]
    assert not mask["mask_decoder/output_upscaling/1/scale"] and mask["prompt_encoder/point_embeddings/0/embedding"]


def test_freeze_by_module_and_regex():
    model = build_sam_from_config("test_tiny")
    _, train, fixed = split_trainable(model, ["image_encoder", r"iou_prediction_head/layers/\d+/bias"])
    names = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(train)]
    assert names and not any(n.startswith("image_encoder") or ("iou_prediction_head" in n and n.endswith("bias")) for n in names)
    assert any("iou_prediction_head" in n for n in names)
    n_all = len(nnx.to_flat_state(nnx.state(model)))
    assert len(names) + len(nnx.to_flat_state(fixed)) == n_all  # nothing lost: frozen + buffers
    with pytest.raises(ValueError, match="matches no parameter"):
        split_trainable(model, ["decoder_that_is_not"])
    with pytest.raises(ValueError, match="valid regular expression"):
        split_trainable(model, ["(unclosed"])
    with pytest.raises(ValueError, match="nothing to train"):
        split_trainable(model, ["image_encoder", "prompt_encoder", "mask_decoder"])


def _torch_adamw(params, grads_per_step, s: OptimizerSettings, mult, decay):
    """torch.optim.AdamW with one group per (layer multiplier, decay or not), the schedule set per step."""
    tensors = {k: torch.tensor(np.asarray(v), dtype=torch.float32, requires_grad=True) for k, v in params.items()}
    groups = {}
    for k in tensors:
        groups.setdefault((mult[k], decay[k]), []).append(k)
    opt = torch.optim.AdamW(
        [{"params": [tensors[k] for k in ks], "mult": m, "weight_decay": s.weight_decay if d else 0.0} for (m, d), ks in groups.items()],
        lr=s.learning_rate, betas=(s.b1, s.b2), eps=s.eps,
    )
    for step, grads in enumerate(grads_per_step):
        for k, t in tensors.items():
            t.grad = torch.tensor(np.asarray(grads[k]))
        torch.nn.utils.clip_grad_norm_(list(tensors.values()), s.clip_norm)
        for g in opt.param_groups:
            g["lr"] = float(learning_rate(step, s)) * g["mult"]
        opt.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


def adamw_parity(params: nnx.State, grads_per_step: list, s: OptimizerSettings, depth: int, what: str = "", their_grads=None, update_tol=1e-4):
    """Runs `make_optimizer` on `grads_per_step` and torch's AdamW on `their_grads` ({path: array}
    per step; default the same gradients); compares every parameter."""
    flat = lambda st: {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(st)}
    tx = make_optimizer(s, params, depth)
    state = tx.init(params)
    ours = params
    for grads in grads_per_step:
        updates, state = jax.jit(tx.update)(grads, state, ours)
        ours = optax.apply_updates(ours, updates)
    mult = flat(layer_decay_table(params, depth, s.layer_decay))
    decay = flat(weight_decay_mask(params))
    theirs = _torch_adamw(flat(params), their_grads or [flat(g) for g in grads_per_step], s, mult, decay)
    for k, v in flat(ours).items():
        if update_tol is not None:
            assert np.abs(theirs[k] - flat(params)[k]).max() > 0, f"{k} did not move"
            assert_close(v - flat(params)[k], theirs[k] - flat(params)[k], update_tol, f"{what} update of {k}")
        assert_close(v, theirs[k], 1e-5, f"{what} {k}")


def test_adamw_steps_match_torch():
    model = build_sam_from_config("test_tiny")
    _, params, _ = split_trainable(model, ["prompt_encoder"])
    r = np.random.default_rng(0)
    grads = [jax.tree.map(lambda p: jnp.asarray(r.normal(size=p.shape) * (0.01 + i), jnp.float32), params) for i in range(4)]
    s = OptimizerSettings(learning_rate=1e-2, total_steps=4, warmup_steps=2, decay_boundaries=(0.75,),
                          weight_decay=0.05, eps=1e-6, clip_norm=50.0, layer_decay=0.7)
    adamw_parity(params, grads, s, model.config.encoder_depth)
