"""Numerical settings: the matmul precision reaches every product of the model at trace time, and
platform-specific code is chosen when lowering, for the platform lowered for."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sam_jax
from sam_jax.functional import decode_prompts, embed_images, pad_prompts
from sam_jax.modeling.image_encoder import attention
from sam_jax.modeling.sam import with_numerics
from sam_jax.utils.jaxpr import iter_eqns

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


def test_precision_option_of_load(tiny):
    assert sam_jax.load(tiny.model_dir).numerics.precision == "exact"
    fast = sam_jax.load(tiny.model_dir, precision="fast")
    assert fast.numerics.precision == fast.image_encoder.numerics.precision == fast.mask_decoder.numerics.precision == "fast"
    with pytest.raises(ValueError, match="precision must be one of exact, fast"):
        sam_jax.load(tiny.model_dir, precision="highest")


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
