"""Every torch-exact resize of `sam_jax.resample` against torch's `F.interpolate`, in one place:
the host matrices (bicubic and linear, weights read back from torch), the antialiased bilinear
weights (`apply_image_torch`), the device gather form, the slice form training uses (values and
gradients), and the banded composite the automatic mask generator uses (the official
`postprocess_masks` of a crop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam_jax.resample import (
    antialiased_linear_weights, bicubic_matrix, interpolate_bilinear, interpolate_linear, linear_matrix, resize_bicubic,
    resize_linear, upsample_logits,
)
from tests.reference.compare import assert_close


@pytest.mark.parametrize("n_in, n_out", [(16, 12), (16, 20), (64, 32), (64, 63), (64, 96), (5, 1), (1, 7), (3, 128)])
def test_resampling_weights_are_torchs(n_in, n_out):
    """The matrices are torch's weights (read back by resampling an identity), and applying them
    equals F.interpolate on data."""
    eye = torch.eye(n_in)
    torch_cubic = F.interpolate(eye.reshape(1, n_in, n_in, 1), size=(n_out, 1), mode="bicubic", align_corners=False)
    torch_linear = F.interpolate(eye[None], size=n_out, mode="linear", align_corners=False)
    np.testing.assert_allclose(bicubic_matrix(n_in, n_out), torch_cubic[0, :, :, 0].numpy().T, rtol=0, atol=5e-7)
    np.testing.assert_allclose(linear_matrix(n_in, n_out), torch_linear[0].numpy().T, rtol=0, atol=0)

    x = np.random.default_rng(0).normal(size=(1, 5, n_in, n_in + 3)).astype(np.float32)
    size = (n_out, n_out + 2)
    ref = F.interpolate(torch.from_numpy(x), size=size, mode="bicubic", align_corners=False).numpy()
    assert_close(resize_bicubic(x, size, axes=(2, 3)), ref, tol=2e-6, what="bicubic")
    ref = F.interpolate(torch.from_numpy(x[0]), size=n_out, mode="linear", align_corners=False).numpy()
    assert_close(resize_linear(x[0], n_out, axis=2), ref, tol=2e-6, what="linear")


@pytest.mark.parametrize("n_in, n_out", [(64, 32), (1800, 1024), (534, 1024), (7, 7), (100, 3)])
def test_antialiased_weights_are_torchs(n_in, n_out):
    """The weights of `apply_image_torch`: torch's bilinear with antialias=True, read back from an identity."""
    eye = torch.eye(n_in)[None, None]  # resizing the rows of an identity reads the weights back
    ref = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()
    np.testing.assert_allclose(antialiased_linear_weights(n_in, n_out), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(64, 64), (256, 256), (31, 97), (300, 1), (1, 5)])
def test_device_bilinear_is_torchs(size):
    """`interpolate_bilinear` (the model's postprocessing and rel-pos tables) and its slice twin
    `upsample_logits` (training: same values, and the same gradients) against F.interpolate."""
    x = np.random.default_rng(1).normal(0, 3, (2, 3, 16, 16)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False).numpy()
    assert_close(jax.jit(lambda a: interpolate_bilinear(a, size))(x), ref, tol=1e-6, what="gather form")
    ref1 = F.interpolate(torch.from_numpy(x[:, 0]), size=size[1], mode="linear", align_corners=False).numpy()
    assert_close(interpolate_linear(jnp.asarray(x[:, 0]), size[1], axis=-1), ref1, tol=1e-6, what="one axis")
    if size[0] == size[1]:
        assert_close(jax.jit(lambda a: upsample_logits(a, size[0]))(x), ref, tol=1e-6, what="slice form")
        w = np.random.default_rng(2).normal(size=(2, 3) + size).astype(np.float32)
        loss = lambda f: lambda a: jnp.sum(f(a) * w)
        g_slices = jax.grad(loss(lambda a: upsample_logits(a, size[0])))(x)
        t = torch.from_numpy(x).requires_grad_(True)
        with torch.enable_grad():
            (F.interpolate(t, size=size, mode="bilinear", align_corners=False) * torch.from_numpy(w)).sum().backward()
        assert_close(g_slices, t.grad.numpy(), tol=1e-5, what="slice form gradient")


@pytest.mark.parametrize("size", [(1200, 1800), (97, 131), (64, 64), (300, 2000), (5, 700)])
def test_crop_resampling_matches_official_postprocess(size):
    """The banded resampling matrices equal the official postprocess_masks (upsample to the
    input size, crop the padding, resize to the original size), padding rows zero."""
    from sam_jax.functional import automatic_mask_generator as dev
    from sam_jax.transforms import get_preprocess_shape

    h, w = size
    hi, wi = get_preprocess_shape(h, w, 256)
    low = np.random.default_rng(0).normal(0, 5, (3, 64, 64)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(low)[:, None], (256, 256), mode="bilinear", align_corners=False)[..., :hi, :wi]
    ref = F.interpolate(ref, (h, w), mode="bilinear", align_corners=False)[:, 0].numpy()
    rows, cols = dev.crop_resamplers(64, 256, (hi, wi), (h, w))
    ours = np.asarray(dev.upscale_to_crop(low, rows, cols))
    assert ours.shape == (3, dev.canvas(h), dev.canvas(w))
    assert np.abs(ours[:, :h, :w] - ref).max() <= 1e-5 * np.abs(ref).max()
    assert not ours[:, h:].any() and not ours[:, :, w:].any()
