"""Numerical settings: the matmul precision reaches every product of the model at trace time, and
platform-specific code is chosen when lowering, for the platform lowered for."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import sam_jax
from sam_jax.functional import decode_prompts, embed_images
from sam_jax.predictor import pad_prompts
from sam_jax.modeling.image_encoder import attention
from sam_jax.modeling.sam import with_numerics
from tests.reference.jaxpr import iter_eqns

PRODUCTS = ("dot_general", "conv_general_dilated")


def _product_precisions(jaxpr) -> list:
    """The precision of every matmul and convolution in a traced program (None: backend default)."""
    return [e.params["precision"] for e, _ in iter_eqns(jaxpr) if e.primitive.name in PRODUCTS]


def _traced_model(model):
    """The jaxprs of the embedding, of a decode with every prompt kind, and of the official forward."""
    from flax import nnx

    cfg = model.config
    S, g = cfg.image_size, 4 * cfg.image_embedding_size
    graphdef, params = nnx.split(model)
    images = jnp.zeros((1, S, S, 3), jnp.uint8)
    emb = jax.make_jaxpr(embed_images, static_argnums=0)(graphdef, params, images, jnp.array([[S, S]]))
    prompts = pad_prompts(np.zeros((2, 3, 2)), np.ones((2, 3)), np.zeros((2, 4)), np.zeros((2, 1, g, g)), 2, g)
    features = jnp.zeros((1, cfg.prompt_embed_dim, S // 16, S // 16))
    dec = jax.make_jaxpr(decode_prompts, static_argnums=(0, 4))(graphdef, params, features, prompts, True)
    record = {"image": jnp.zeros((3, S, S)), "point_coords": jnp.zeros((1, 2, 2)), "point_labels": jnp.ones((1, 2)),
              "mask_inputs": jnp.zeros((1, 1, g, g))}
    fwd = jax.make_jaxpr(lambda r: model([{**r, "original_size": (S, S)}], multimask_output=True))(record)
    return {"embed_images": emb, "decode_prompts": dec, "Sam.__call__": fwd}


@pytest.mark.parametrize("precision,expected", [("exact", jax.lax.Precision.HIGHEST), ("fast", jax.lax.Precision.DEFAULT)])
def test_precision_reaches_every_product(tiny, precision, expected):
    """Every matmul and convolution of the encoder, prompt encoder and decoder is traced at the
    requested precision, whatever the global default (this test configuration sets it to highest)."""
    model = with_numerics(tiny.model, precision=precision)
    for name, jaxpr in _traced_model(model).items():
        found = _product_precisions(jaxpr)
        assert len(found) > 10, name
        assert all(p == (expected, expected) for p in found), f"{name}: {sorted(set(map(str, found)))}"


def _lowered_text(fn, platform: str, *args) -> str:
    return jax.export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()


def test_attention_chosen_when_lowering():
    """The CPU path (a loop over groups) and the batched path are chosen by the platform that the
    computation is lowered for, not by the backend present when it is traced: exporting from this
    CPU-only machine for an accelerator gives the batched product, for CPU the loop."""
    G, hw, C = 2, (8, 8), 16
    q = jax.ShapeDtypeStruct((G, hw[0] * hw[1], C), jnp.float32)
    rel = [jax.ShapeDtypeStruct((G, hw[0] * hw[1], s), jnp.float32) for s in hw]
    fn = lambda q, k, v, rh, rw: attention(q, k, v, rh, rw, hw)
    assert "stablehlo.while" in _lowered_text(fn, "cpu", q, q, q, *rel)
    for platform in ("cuda", "tpu"):
        assert "stablehlo.while" not in _lowered_text(fn, platform, q, q, q, *rel), platform


def test_bfloat16_computes_in_bfloat16(tiny):
    """dtype="bfloat16": every product of the encoder, prompt encoder and decoder takes bfloat16
    inputs, except the relative-position factors (float32 by design, a small einsum); softmax and
    norm statistics run in float32, and every output is float32."""
    model = with_numerics(tiny.model, dtype="bfloat16")
    for name, jaxpr in _traced_model(model).items():
        kinds = {}
        for e, _ in iter_eqns(jaxpr):
            if e.primitive.name in PRODUCTS + ("exp", "rsqrt"):
                kinds.setdefault(e.primitive.name, set()).add(tuple(str(v.aval.dtype) for v in e.invars))
        assert kinds["exp"] == {("float32",)} and kinds["rsqrt"] == {("float32",)}, name
        assert kinds["conv_general_dilated"] == {("bfloat16", "bfloat16")}, name
        assert ("bfloat16", "bfloat16") in kinds["dot_general"], name
        assert all(str(a.dtype) in ("float32", "bool") for a in jaxpr.out_avals), name
    rel_pos_products = [e for e, _ in iter_eqns(_traced_model(model)["embed_images"])
                        if e.primitive.name == "dot_general" and e.invars[0].aval.dtype == jnp.float32]
    assert len(rel_pos_products) == 2 * tiny.config.encoder_depth


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


def test_bfloat16_against_official_float32(tiny):
    """The bfloat16 path end to end (SamPredictor(dtype=...)) against the official float32
    predictor on the same perturbed weights: the bounds stated in the README."""
    from segment_anything import SamPredictor as Official

    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    official, ours = Official(tiny.official), sam_jax.SamPredictor(tiny.model, dtype="bfloat16")
    assert ours.model.numerics.dtype == "bfloat16" and tiny.model.numerics.dtype == "float32"
    official.set_image(image)
    ours.set_image(image)
    err = np.abs(np.asarray(ours.features) - official.features.numpy()).max() / np.abs(official.features.numpy()).max()
    assert err < 3e-2, f"embedding: relative error {err:.3g}"
    points = np.random.default_rng(1).uniform(0, 200, (8, 1, 2))
    masks, iou, low = ours.predict_batch(points, np.ones((8, 1)))
    ref_masks, ref_iou, ref_low = official.predict_torch(
        official.transform.apply_coords_torch(torch.from_numpy(points).float(), image.shape[:2]), torch.ones(8, 1))
    assert masks.dtype == bool and iou.dtype == low.dtype == np.float32
    assert np.abs(low - ref_low.numpy()).max() / np.abs(ref_low.numpy()).max() < 6e-2
    assert np.abs(iou - ref_iou.numpy()).max() < 3e-2
    ious = [_mask_iou(m, r) for m, r in zip(masks.reshape(-1, *masks.shape[-2:]), ref_masks.numpy().reshape(-1, *masks.shape[-2:]))]
    assert min(ious) > 0.95, f"lowest mask IoU against float32: {min(ious):.3f}"


def test_numerics_options(tiny):
    """load, SamPredictor and the CLI select dtype and precision; bad values are one-line errors
    raised before the checkpoint is read."""
    from sam_jax.cli import build_parser, common

    assert tiny.model.numerics == ("float32", "exact", "auto")  # sam_jax.load's default
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, got 'float16'"):
        sam_jax.load("missing", dtype="float16")
    with pytest.raises(ValueError, match="precision must be one of exact, fast, got 'highest'"):
        sam_jax.load("missing", precision="highest")
    with pytest.raises(ValueError, match="attention must be one of auto, xla, pallas, interpret, got 'flash'"):
        with_numerics(tiny.model, attention="flash")
    flags = ["--checkpoint", str(tiny.model_dir), "--dtype", "bfloat16", "--matmul-precision", "fast"]
    for command in (["amg", "--input", "x", "--output", "y"], ["demo"], ["embed", "--image", "x", "--output", "y"]):
        args = build_parser().parse_args(command + flags)
        assert (args.dtype, args.matmul_precision) == ("bfloat16", "fast")
    model = common.load_model(args)  # sam_jax.load(..., dtype="bfloat16", precision="fast")
    assert model.numerics == ("bfloat16", "fast", "auto") == model.image_encoder.numerics == model.prompt_encoder.numerics
    assert sam_jax.SamPredictor(model).model.numerics == ("bfloat16", "fast", "auto")
    assert sam_jax.SamPredictor(model, dtype=jnp.float32).model.numerics == ("float32", "fast", "auto")


def test_gelu_is_torchs_exact_gelu():
    """GELU's erf is a rational expression of our own (one pass on XLA's CPU): within float32
    rounding of torch's exact GELU and of erf itself, over the whole range, in float32; bfloat16
    inputs get torch's bfloat16 GELU to its rounding."""
    import math
    from sam_jax.modeling.common import erf, gelu

    x = np.concatenate([np.linspace(-12, 12, 200_001), [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0]]).astype(np.float32)
    exact = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.abs(np.asarray(erf(jnp.asarray(x))) - exact).max() < 4e-7
    ours = np.asarray(gelu(jnp.asarray(x)))
    ref = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    # atol: the negative tail, where 1 + erf cancels (XLA's own lax.erf is as far from torch there)
    assert np.allclose(ours, ref, rtol=1e-6, atol=2e-6)
    assert np.array_equal(ours[np.abs(x) >= 8], ref[np.abs(x) >= 8])  # saturated: x, or (-)0
    xb = jnp.asarray(x, jnp.bfloat16)
    refb = torch.nn.functional.gelu(torch.tensor(np.asarray(xb.astype(jnp.float32))).bfloat16()).float().numpy()
    got = np.asarray(gelu(xb).astype(jnp.float32))
    assert gelu(xb).dtype == jnp.bfloat16 and np.allclose(got, refb, rtol=8e-3, atol=1e-6)


def test_gelu_gradient_is_torchs():
    """GELU's derivative is torch's backward formula (not the derivative of the erf approximation)."""
    from sam_jax.modeling.common import gelu

    x = np.linspace(-10, 10, 40_001).astype(np.float32)
    ours = np.asarray(jax.vmap(jax.grad(lambda v: gelu(v)))(jnp.asarray(x)))
    t = torch.tensor(x, requires_grad=True)
    with torch.enable_grad():  # other tests of a worker may leave autograd off
        torch.nn.functional.gelu(t).sum().backward()
    assert np.allclose(ours, t.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_fusion_fence_is_the_identity():
    """The fence before the encoders' necks changes no float32 bit (infinities, NaN, subnormals
    included), so it cannot move a result; other dtypes pass through untouched."""
    from sam_jax.modeling.common import fusion_fence

    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 10.0 ** np.arange(-40, 36, 76 / 4096)
    x = np.concatenate([x, np.array([np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3.4e38], np.float32)]).astype(np.float32)
    out = np.asarray(jax.jit(fusion_fence)(jnp.asarray(x)))
    assert out.tobytes() == x.tobytes()
    assert np.isnan(np.asarray(fusion_fence(jnp.float32(np.nan))))
    b = jnp.asarray(x[:10], jnp.bfloat16)
    assert fusion_fence(b) is b
