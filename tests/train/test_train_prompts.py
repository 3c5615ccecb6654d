"""Prompt simulation: clicks and noisy boxes equal the PyTorch transcription's on the same noise,
and their properties (clicks in the error region, box noise in bounds, the mask-only schedule)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.reference import training as ref
from sam_jax.train.prompts import PromptSettings, box_noise, in_image, mask_only_schedule, noisy_boxes, sample_points


def _masks(P=16, S=24, seed=0):
    r = np.random.default_rng(seed)
    gt = np.zeros((P, S, S), bool)
    pred = np.zeros((P, S, S), bool)
    for i in range(P):
        y, x = r.integers(0, S - 6, size=2)
        gt[i, y : y + r.integers(2, 10), x : x + r.integers(2, 10)] = True
        pred[i] = np.roll(gt[i], r.integers(-2, 3, size=2), axis=(0, 1))
    pred[0] = gt[0]  # already right: a background click
    gt[1] = pred[1] = False  # empty and right
    pred[2] = False  # nothing predicted: a click in the mask
    sizes = np.stack([r.integers(S // 2, S + 1, size=P), r.integers(S // 2, S + 1, size=P)], axis=1).astype(np.int32)
    sizes[:3] = S
    return gt, pred, sizes


def test_clicks_equal_reference_and_lie_in_the_error_region():
    gt, pred, sizes = _masks()
    P, S = gt.shape[:2]
    inside = np.asarray(in_image(jnp.asarray(sizes), S))
    for seed in range(3):
        noise = np.asarray(jax.random.uniform(jax.random.PRNGKey(seed), gt.shape))
        coords, labels = sample_points(jnp.asarray(gt), jnp.asarray(pred), jnp.asarray(noise), jnp.asarray(inside))
        rc, rl = ref.sample_point(torch.tensor(gt), torch.tensor(pred), torch.tensor(noise), torch.tensor(inside))
        np.testing.assert_array_equal(np.asarray(coords), rc.numpy())
        np.testing.assert_array_equal(np.asarray(labels), rl.numpy())
        for i, ((x, y), l) in enumerate(zip(np.asarray(coords).astype(int), np.asarray(labels))):
            assert inside[i, y, x]
            wrong = (gt[i] != pred[i]) & inside[i]
            if wrong.any():
                assert wrong[y, x] and l == int(gt[i, y, x])  # positive in a miss, negative in a false alarm
            else:
                assert not gt[i, y, x] and l == 0  # right already: a negative background click
        assert labels[2] == 1 and gt[2, int(coords[2, 1]), int(coords[2, 0])]


def test_clicks_are_uniform_over_the_region():
    gt = np.zeros((1, 8, 8), bool)
    gt[0, 2:4, 2:5] = True  # six pixels
    hits = np.zeros((8, 8))
    keys = jax.random.split(jax.random.PRNGKey(0), 3000)
    noise = jax.vmap(lambda k: jax.random.uniform(k, (1, 8, 8)))(keys)[:, 0]
    f = jax.vmap(lambda n: sample_points(jnp.asarray(gt), jnp.zeros_like(gt), n[None], jnp.ones_like(gt))[0][0])
    for x, y in np.asarray(f(noise)).astype(int):
        hits[y, x] += 1
    assert hits[~gt[0]].sum() == 0
    assert np.all(np.abs(hits[gt[0]] / 3000 - 1 / 6) < 0.03)


@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_noisy_boxes_equal_reference_and_stay_in_bounds(kind):
    gt, _, sizes = _masks(P=32, S=200, seed=3)
    s = PromptSettings(box_noise=kind)
    noise = np.asarray(box_noise(jax.random.PRNGKey(1), (32,), s)) * (3 if kind == "normal" else 1)
    boxes = np.asarray(noisy_boxes(jnp.asarray(gt), jnp.asarray(noise), jnp.asarray(sizes), s))
    expected = ref.noisy_box(torch.tensor(gt), torch.tensor(noise), torch.tensor(sizes), kind=kind).numpy()
    np.testing.assert_allclose(boxes, expected, rtol=0, atol=1e-5)
    for i in range(32):
        ys, xs = np.nonzero(gt[i])
        true = np.array([xs.min(), ys.min(), xs.max(), ys.max()], float) if len(xs) else np.zeros(4)
        h, w = sizes[i]
        assert boxes[i, 0] <= boxes[i, 2] and boxes[i, 1] <= boxes[i, 3]
        assert (boxes[i] >= 0).all() and boxes[i, [0, 2]].max() <= w - 1 and boxes[i, [1, 3]].max() <= h - 1
        side = np.array([true[2] - true[0], true[3] - true[1]] * 2)
        scale = np.abs(noise[i]) if kind == "normal" else 1.0
        bound = np.minimum(scale * 0.1 * side, 20.0) + 1e-4
        assert bound.max() <= 20.0 + 1e-4
        # Each sorted coordinate is within the bound of one of the two true ones on its axis.
        for j in range(4):
            assert min(abs(boxes[i, j] - true[j]), abs(boxes[i, j] - true[(j + 2) % 4])) <= bound[j] or boxes[i, j] in (0, w - 1, h - 1)


def test_mask_only_schedule():
    s = PromptSettings(correction_points=8, mask_only_steps=2)
    sched = np.asarray(mask_only_schedule(jax.random.PRNGKey(0), 500, s))
    assert sched.shape == (s.num_steps - 1, 500) == (10, 500)
    assert sched[-1].all() and (sched.sum(axis=0) == 2).all()
    positions = np.argmax(sched[:-1], axis=0)
    assert set(positions) == set(range(9))  # the extra one falls anywhere among the corrections
    none = mask_only_schedule(jax.random.PRNGKey(0), 3, PromptSettings(correction_points=3, mask_only_steps=0))
    assert not np.asarray(none).any()
