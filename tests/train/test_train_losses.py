"""Training loss against its PyTorch transcription (tests/torch_reference.py): values and gradients
on the same logits and targets, and the focal term against torchvision's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from tests.reference import training as ref
from tests.reference.compare import assert_close
from sam_jax.train.losses import LossSettings, dice_loss, mask_iou, mask_terms, reduce_terms, sigmoid_focal_loss


def _case(P=5, M=3, H=12, W=10, seed=0):
    r = np.random.default_rng(seed)
    logits = (r.normal(size=(P, M, H, W)) * 3).astype(np.float32)
    iou = r.uniform(0, 1, size=(P, M)).astype(np.float32)
    targets = np.zeros((P, H, W), np.float32)
    for i in range(P):
        y, x = r.integers(0, H - 3), r.integers(0, W - 3)
        targets[i, y : y + r.integers(2, 6), x : x + r.integers(2, 6)] = 1
    valid = np.ones(P, bool)
    return logits, iou, targets, valid


def _region(sizes, H, W):
    """(P, 2) (h, w) -> (P, H, W) bool, the top-left h x w of each object's square."""
    return (np.arange(H)[None, :, None] < sizes[:, 0, None, None]) & (np.arange(W)[None, None, :] < sizes[:, 1, None, None])


def _ours(logits, iou, targets, valid, candidates=None, settings=LossSettings(), num=None, sizes=None):
    num = valid.sum() if num is None else num
    region = None if sizes is None else jnp.asarray(_region(sizes, *targets.shape[1:]))

    def f(lg, io):
        terms = mask_terms(lg, io, jnp.asarray(targets), None if candidates is None else jnp.asarray(candidates), settings, region)
        return reduce_terms(terms, jnp.asarray(valid), jnp.asarray(num), settings)[0], terms

    (loss, terms), (gl, gi) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(jnp.asarray(logits), jnp.asarray(iou))
    return float(loss), terms, np.asarray(gl), np.asarray(gi)


def _theirs(logits, iou, targets, valid, candidates=None, settings=LossSettings(), num=None, sizes=None):
    num = valid.sum() if num is None else num
    lg = torch.tensor(logits, requires_grad=True)
    io = torch.tensor(iou, requires_grad=True)
    with torch.enable_grad():
        terms = ref.loss_terms(lg, io, torch.tensor(targets), None if candidates is None else torch.tensor(candidates),
                               settings.focal_weight, settings.dice_weight, settings.iou_loss == "l1", settings.supervise_all_iou,
                               sizes=sizes)
        loss = ref.total_loss(terms, torch.tensor(valid), num, settings.focal_weight, settings.dice_weight, settings.iou_weight)
        loss.backward()
    return float(loss), terms, lg.grad.numpy(), io.grad.numpy()


def _compare(*args, **kw):
    loss, terms, gl, gi = _ours(*args, **kw)
    rloss, rterms, rgl, rgi = _theirs(*args, **kw)
    assert list(np.asarray(terms.best)) == rterms["best"]
    assert_close(loss, rloss, 1e-5, "loss")
    for k in ("focal", "dice", "iou"):
        assert_close(getattr(terms, k), rterms[k].detach().numpy(), 1e-5, k)
    assert_close(gl, rgl, 1e-5, "d loss / d logits")
    assert_close(gi, rgi, 1e-5, "d loss / d iou predictions")
    return loss, terms


def test_focal_matches_torchvision():
    logits, _, targets, _ = _case()
    t = torch.tensor(targets)[:, None].expand(-1, 3, -1, -1)
    tv = torchvision.ops.sigmoid_focal_loss(torch.tensor(logits), t, alpha=0.25, gamma=2.0, reduction="none").mean(dim=(-2, -1))
    assert_close(sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(targets)[:, None]), tv.numpy(), 1e-6, "focal")
    assert_close(ref.focal(torch.tensor(logits), t), tv.numpy(), 1e-6, "reference focal")


@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("settings", [LossSettings(), LossSettings(iou_loss="l1", supervise_all_iou=True)], ids=["mse", "l1_all"])
def test_loss_and_gradients(M, settings):
    _compare(*_case(M=M), settings=settings)


def test_loss_over_the_image_not_its_padding():
    """A 2:1 image fills half of the padded square: the terms are those of its own pixels (the
    reference crops them out), so the focal term keeps its weight against the dice (20:1, not
    10:1), and nothing the padding holds changes the loss or receives a gradient."""
    logits, iou, targets, valid = _case(P=4, H=12, W=12)
    sizes = np.array([[6, 12], [12, 6], [12, 12], [5, 7]])  # 2:1 landscape, 1:2 portrait, square, odd
    region = _region(sizes, 12, 12)
    targets = targets * region
    loss, terms = _compare(logits, iou, targets, valid, sizes=sizes)
    # The landscape object's terms equal those of its crop, computed without any padding.
    crop = _ours(logits[:1, :, :6, :], iou[:1], targets[:1, :6, :], valid[:1])[1]
    for k in ("focal", "dice", "iou"):
        assert np.isclose(float(getattr(terms, k)[0]), float(getattr(crop, k)[0]), rtol=1e-6), k
    # Whatever the padding holds: the same loss, and no gradient there.
    noisy = np.where(region[:, None], logits, 40.0 * np.sign(np.random.default_rng(1).normal(size=logits.shape)))
    loss2, _, gl, _ = _ours(noisy.astype(np.float32), iou, targets, valid, sizes=sizes)
    assert np.isclose(loss, loss2, rtol=1e-6) and not gl[~np.broadcast_to(region[:, None], gl.shape)].any()
    # Averaged over the whole square (the padding predicted as confident background, costing
    # nothing), the 2:1 image's focal term would be half as large: weight 10, not 20, against the dice.
    background = np.where(region[:, None], logits, -40.0).astype(np.float32)
    whole = _ours(background[:1], iou[:1], targets[:1], valid[:1])[1]
    assert np.isclose(float(whole.focal[0]), 0.5 * float(terms.focal[0]), rtol=1e-4)


def test_candidates_and_padded_objects():
    logits, iou, targets, valid = _case(P=6)
    valid[[1, 4]] = False  # padded slots: no loss, no gradient
    candidates = np.array([[0, 1, 1]] * 3 + [[1, 0, 0]] * 3, bool)
    _, _, gl, gi = _ours(logits, iou, targets, valid, candidates)
    _compare(logits, iou, targets, valid, candidates)
    assert not gl[[1, 4]].any() and not gi[[1, 4]].any()
    # A global object count from elsewhere (a sharded batch) divides every term.
    l1 = _ours(logits, iou, targets, valid, num=4)[0]
    l2 = _ours(logits, iou, targets, valid, num=8)[0]
    assert np.isclose(l1, 2 * l2, rtol=1e-6)


def test_empty_targets_perfect_predictions_and_ties():
    logits, iou, targets, valid = _case(P=4)
    targets[0] = 0  # empty target
    logits[1] = np.where(targets[1] > 0, 30.0, -30.0)  # perfect on every output
    logits[2, 2] = logits[2, 0]  # a tie between outputs 0 and 2: the first is supervised
    _, terms = _compare(logits, iou, targets, valid)
    assert int(terms.best[2]) in (0, 1)
    assert float(terms.dice[1]) < 1e-6 and float(mask_iou(jnp.asarray(logits[1, 0]), jnp.asarray(targets[1]))) == 1.0
    # No valid object at all: zero loss, no NaN.
    loss = _ours(logits, iou, targets, np.zeros(4, bool))[0]
    assert loss == 0.0


def test_dice_formula():
    p = np.array([[0.0, 2.0], [-1.0, 1.0]], np.float32)
    y = np.array([[1, 0], [0, 1]], np.float32)
    s = 1 / (1 + np.exp(-p))
    expected = 1 - (2 * (s * y).sum() + 1) / (s.sum() + y.sum() + 1)
    assert np.isclose(float(dice_loss(jnp.asarray(p), jnp.asarray(y))), expected, rtol=1e-6)
