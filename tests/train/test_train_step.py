"""The training step's options: gradient accumulation (N micro-batches of B images update the
parameters as one batch of N * B, over several AdamW steps) and --grad-through-masks (the
gradient flows through the fed-back mask logits into the earlier rounds exactly as through the
PyTorch transcription's un-detached feedback; off, the default, test_train_model matches the
detached one)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from sam_jax.convert.keys import official_key
from sam_jax.train.losses import LossSettings
from sam_jax.train.optim import OptimizerSettings
from sam_jax.train.prompts import PromptSettings
from sam_jax.train.rollout import Batch, click_noise, rollout_loss, rollout_noise
from sam_jax.train.step import StepSettings, init_state, train_step_jit
from sam_jax.train.trainable import split_trainable
from tests.reference import training as ref
from tests.reference.compare import assert_close


def _batch(cfg, B, K, seed):
    """B images' embeddings with K valid objects each (discs and boxes), the second half of the
    images padded at the bottom."""
    r = np.random.default_rng(seed)
    S, g = cfg.image_size, cfg.image_embedding_size
    emb = r.normal(size=(B, cfg.prompt_embed_dim, g, g)).astype(np.float32)
    sizes = np.array([[S, S] if b % 2 == 0 else [S - 64, S] for b in range(B)], np.int32)
    yy, xx = np.mgrid[:S, :S]
    masks = np.zeros((B, K, S, S), bool)
    for b in range(B):
        for k in range(K):
            cy, cx, rad = r.integers(40, 150), r.integers(40, 200), r.integers(15, 40)
            masks[b, k] = (yy - cy) ** 2 + (xx - cx) ** 2 < rad**2
    return Batch(None, jnp.asarray(emb), jnp.asarray(sizes), jnp.asarray(masks), jnp.ones((B, K), bool))


def test_grad_accum_equals_one_big_batch(tiny):
    graphdef, trainable, fixed = split_trainable(tiny.model, ("image_encoder",))
    opt = OptimizerSettings(learning_rate=1e-3, schedule="constant", warmup_steps=1, weight_decay=0.1, eps=1e-4, clip_norm=1.0)
    big = StepSettings(PromptSettings(correction_points=1, mask_only_steps=1), LossSettings(), opt)
    micro = big._replace(grad_accum=2, batch_size=2)
    s_big, s_micro = init_state(trainable, big, 0), init_state(trainable, micro, 0)
    half = lambda b, m: Batch(None, *(x[2 * m : 2 * m + 2] for x in b[1:]))
    for step in range(3):  # AdamW steps past the first, which is about lr * sign(g)
        batch = _batch(tiny.config, 4, 2, seed=step)
        s_big, m_big = train_step_jit(graphdef, s_big, fixed, batch, settings=big)
        losses = []
        for m in range(2):
            before = jax.tree.map(np.asarray, s_micro.params)
            s_micro, mm = train_step_jit(graphdef, s_micro, fixed, half(batch, m), settings=micro)
            losses.append(float(mm["loss"]))
            if m == 0:  # a micro-batch alone changes nothing
                assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.tree.map(np.asarray, s_micro.params))))
        assert np.isclose(np.mean(losses), float(m_big["loss"]), rtol=1e-5)  # the same prompts were drawn
    assert int(s_micro.step) == 6 and int(s_big.step) == 3
    start = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(trainable)}
    ours = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(s_micro.params)}
    moved = 0
    for p, v in nnx.to_flat_state(s_big.params):
        theirs = np.asarray(v.get_value())
        # (An output never supervised gets no update; the attention key biases' gradients are
        # rounding noise, zero in exact arithmetic, so only their parameters are compared.)
        if not np.array_equal(theirs, start[p]) and p[-2:] != ("k_proj", "bias"):
            moved += 1
            assert_close(ours[p] - start[p], theirs - start[p], 1e-3, f"update of {p}")
        assert_close(ours[p], theirs, 1e-6, str(p))
    assert moved > 0.8 * len(start)


def _rollout_grads(tiny):
    """Gradients of the prompt encoder and mask decoder: {the transcription's grad_through_masks:
    {official key: (ours with --grad-through-masks, the transcription's)}}."""
    cfg = tiny.config
    batch = _batch(cfg, 2, 2, seed=7)
    P, S = 4, cfg.image_size
    settings = StepSettings(PromptSettings(correction_points=1, mask_only_steps=1, grad_through_masks=True))
    noise = rollout_noise(jax.random.PRNGKey(1), P, S, settings.prompts)
    noise = noise._replace(is_box=jnp.array([False, True, False, True]))
    graphdef, trainable, fixed = split_trainable(tiny.model, ("image_encoder",))
    emb = jnp.repeat(batch.embeddings, 2, axis=0)
    sizes = jnp.repeat(batch.input_sizes, 2, axis=0)
    gt, valid = batch.masks.reshape(P, S, S), batch.valid.reshape(P)

    def loss(params):
        return rollout_loss(nnx.merge(graphdef, params, fixed), emb, gt, valid, sizes, jnp.sum(valid), noise, settings)[0]

    grads = jax.jit(jax.grad(loss))(trainable)
    out = {}
    for flag in (True, False):
        official = tiny.official
        official.zero_grad(set_to_none=True)
        t = lambda a: torch.tensor(np.asarray(a))
        with torch.enable_grad():
            total, _ = ref.rollout(official, t(emb), t(gt), t(valid), t(sizes), t(noise.is_box), t(noise.box), t(noise.first_point),
                                   t(noise.mask_only), [t(click_noise(k, S)) for k in noise.step_keys], P, grad_through_masks=flag)
            total.backward()
        named = dict(official.named_parameters())
        for path, g in nnx.to_flat_state(grads):
            key, perm = official_key(path)
            rg = named[key].grad
            rg = np.zeros_like(np.asarray(g.get_value())) if rg is None else rg.numpy()
            out.setdefault(flag, {})[key] = (np.asarray(g.get_value()), rg if perm is None else rg.transpose(np.argsort(perm)))
    return out


def test_grad_through_masks(tiny):
    """Ours with --grad-through-masks against the transcription with the feedback un-detached
    (test_train_model compares the default, detached, on a whole interaction) and detached."""
    grads = _rollout_grads(tiny)
    on, detached = grads[True], grads[False]
    total = np.sqrt(sum(float((r**2).sum()) for _, r in on.values()))
    for key, (ours, theirs) in on.items():
        if key.endswith("k_proj.bias") or not theirs.any():  # rounding noise; never supervised (see test_train_model)
            assert np.linalg.norm(ours) <= 1e-6 * total, key
            continue
        if key.startswith("prompt_encoder.mask_downscaling.0."):  # rounding-set on both sides (see test_train_model)
            assert np.linalg.norm(ours - theirs) <= 1e-6 * total, key
            continue
        err = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
        assert err <= 1e-4, f"gradient of {key}: relative error {err:.2e}"
    # The fed-back mask carries gradient: the round after a mask-only step sees the earlier
    # rounds' outputs through it, so the decoder's gradients are not the detached ones.
    moved = [k for k, (ours, _) in on.items() if k.startswith("mask_decoder.transformer") and
             np.linalg.norm(ours - detached[k][1]) > 1e-3 * np.linalg.norm(detached[k][1])]
    assert len(moved) > 10
