"""The training loss of a whole simulated interaction on the official model structure: loss and the
gradient of every parameter equal the official `segment_anything` modules' under autograd (same
perturbed weights, converted by our converter, the same prompt noise), and AdamW steps from both
sides' gradients give the same parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from tests.reference import training as ref
from tests.reference.compare import assert_close
from sam_jax.convert.keys import official_key
from sam_jax.functional import embed_images
from sam_jax.train.losses import LossSettings
from sam_jax.train.trainable import split_trainable
from sam_jax.train.optim import OptimizerSettings
from sam_jax.train.prompts import PromptSettings
from sam_jax.train.rollout import click_noise, rollout_loss, rollout_noise
from sam_jax.train.step import StepSettings
from tests.train.test_train_optim import adamw_parity

SETTINGS = StepSettings(PromptSettings(correction_points=2, mask_only_steps=1), LossSettings())


def _data(S, seed=0):
    r = np.random.default_rng(seed)
    B, K = 2, 2
    images = r.integers(0, 256, size=(B, S, S, 3), dtype=np.uint8)
    sizes = np.array([[S, S], [S - 56, S]], np.int32)  # the second image is padded at the bottom
    images[1, S - 56 :] = 0
    gt = np.zeros((B, K, S, S), bool)
    gt[0, 0, 40:140, 60:200] = True
    gt[0, 1, 150:230, 20:90] = True
    yy, xx = np.mgrid[:S, :S]
    gt[1, 0] = (yy - 100) ** 2 + (xx - 120) ** 2 < 60**2
    valid = np.array([[True, True], [True, False]])
    return images, sizes, gt, valid


def test_rollout_loss_and_gradients_match_official(tiny):
    cfg = tiny.config
    S = cfg.image_size
    images, sizes, gt, valid = _data(S)
    B, K = valid.shape
    P = B * K
    graphdef, trainable, fixed = split_trainable(tiny.model)
    noise = rollout_noise(jax.random.PRNGKey(3), P, S, SETTINGS.prompts)
    noise = noise._replace(is_box=jnp.array([False, True, False, False]))  # a point, a box, a point, padding
    per_object = lambda x: jnp.repeat(x, K, axis=0)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, fixed)
        emb = embed_images(*nnx.split(model), jnp.asarray(images), jnp.asarray(sizes))
        v = jnp.asarray(valid.reshape(P))
        return rollout_loss(model, per_object(emb), jnp.asarray(gt.reshape(P, S, S)), v, per_object(jnp.asarray(sizes)),
                            jnp.sum(v), noise, SETTINGS)

    (loss, out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(trainable)

    official = tiny.official
    official.zero_grad(set_to_none=True)
    step_noise = [torch.tensor(np.asarray(click_noise(k, S))) for k in noise.step_keys]
    t = lambda a: torch.tensor(np.asarray(a))
    with torch.enable_grad():
        x = torch.stack([official.preprocess(t(images[b, : sizes[b, 0], : sizes[b, 1]]).permute(2, 0, 1).float()) for b in range(B)])
        emb = official.image_encoder(x).repeat_interleave(K, dim=0)
        ref_loss, clicks = ref.rollout(
            official, emb, t(gt.reshape(P, S, S)), t(valid.reshape(P)), t(np.repeat(sizes, K, axis=0)), t(noise.is_box),
            t(noise.box), t(noise.first_point), t(noise.mask_only), step_noise, int(valid.sum()),
        )
        ref_loss.backward()

    # The same clicks were drawn (the thresholded predictions agree), in the same slots.
    for i in range(P):
        n = len(clicks[i])
        np.testing.assert_array_equal(np.asarray(out.point_coords[i, :n]), np.stack([c.numpy() for c, _ in clicks[i]]) if n else np.zeros((0, 2)))
        np.testing.assert_array_equal(np.asarray(out.point_labels[i, :n]), [l for _, l in clicks[i]])
    assert sum(len(c) for c in clicks) >= 5
    assert_close(float(loss), float(ref_loss), 1e-5, "rollout loss")

    named = dict(official.named_parameters())
    total = np.sqrt(sum(float((p.grad**2).sum()) for p in named.values()))
    ref_grads = {}
    for path, g in nnx.to_flat_state(grads):
        key, perm = official_key(path)
        rg = named[key].grad
        assert rg is not None, key
        rg = rg.numpy() if perm is None else rg.numpy().transpose(np.argsort(perm))  # official layout -> ours
        ours = np.asarray(g.get_value())
        if key.endswith("k_proj.bias"):
            # Zero in exact arithmetic (softmax ignores a constant added to all of a query's
            # logits): both sides are rounding noise, tiny against the whole gradient.
            assert max(np.linalg.norm(ours), np.linalg.norm(rg)) <= 1e-6 * total, key
        elif key.startswith("prompt_encoder.mask_downscaling.0.") and cfg.mask_in_chans // 4 == 2:
            # This convolution feeds a LayerNorm over test_tiny's two channels, whose output is
            # their sign times the scale: its input gradient is eps-sized and set by rounding on
            # both sides (measured 2e-3 of this small gradient, 5e-7 of the whole).
            assert np.linalg.norm(ours - rg) <= 1e-6 * total, key
        elif not rg.any():  # an output never supervised: no gradient leaks into it on our side either
            assert not ours.any(), key
        else:
            err = np.linalg.norm(ours - rg) / np.linalg.norm(rg)
            assert err <= 1e-4, f"gradient of {key}: relative error {err:.2e}"
        ref_grads["/".join(map(str, path))] = rg
    assert len(ref_grads) == len(named)

    # Three AdamW steps from each side's own gradients give the same parameters. Adam divides each
    # entry by its own magnitude (a first step is about lr * sign(g)), so entries whose gradient
    # is at rounding level would move by +-lr on either side: eps = 1e-4 keeps those (and only
    # those) proportional to their gradient. The parameters are compared (1e-5 relative), not the
    # updates on their own scale (the attention key biases' updates are rounding noise).
    s = OptimizerSettings(learning_rate=1e-3, total_steps=3, warmup_steps=1, weight_decay=0.1, eps=1e-4, clip_norm=1.0, layer_decay=0.8)
    adamw_parity(trainable, [grads] * 3, s, cfg.encoder_depth, "model", their_grads=[ref_grads] * 3, update_tol=None)
