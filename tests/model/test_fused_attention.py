"""The fused Pallas attention kernel with the decomposed bias: in interpret mode on CPU it equals
the official formula (windowed and global grids, with and without padding, the vit_b/l/h head
dims), the whole encoder with it equals the official encoder, and it lowers for GPU (Triton) and
TPU (Mosaic) from this CPU-only machine."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.reference.compare import assert_close
from sam_jax.kernels.attention import fused_attention
from sam_jax.modeling.image_encoder import attention, batched_attention, decomposed_rel_pos
from sam_jax.modeling.sam import with_numerics

# Head dims: 64 is vit_b's and vit_l's, 80 vit_h's. Grids: vit windows (14x14, 196 keys: padded
# to the block size), a global grid (32x32), and a ragged one (7x9: padded, not square).
GRIDS = [(14, 14), (32, 32), (7, 9)]


def _inputs(G, hw, C, seed=0):
    r = np.random.default_rng(seed)
    N = hw[0] * hw[1]
    q, k, v = (r.normal(size=(G, N, C)).astype(np.float32) for _ in range(3))
    tables = [r.normal(size=(2 * s - 1, C)).astype(np.float32) * 0.5 for s in hw]
    return q, k, v, tables


def _official(q, k, v, tables, hw, scale):
    """The official materialised attention (add_decomposed_rel_pos, softmax, @ v) in torch."""
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    t = torch.from_numpy
    logits = add_decomposed_rel_pos((t(q) * scale) @ t(k).transpose(1, 2), t(q), *map(t, tables), hw, hw)
    return (torch.softmax(logits, dim=-1) @ t(v)).numpy()


def _run(q, k, v, tables, hw, scale, backend, dtype=jnp.float32):
    q, k, v = (jnp.asarray(x, dtype) for x in (q, k, v))
    rel_h, rel_w = decomposed_rel_pos(q.astype(jnp.float32), *map(jnp.asarray, tables), hw, hw)
    fn = jax.jit(lambda *a: fused_attention(*a, hw, backend=backend, interpret=True))
    return fn(q * scale, k, v, rel_h, rel_w)


@pytest.mark.parametrize("backend", ["triton", "mosaic"])
@pytest.mark.parametrize("C", [64, 80])
@pytest.mark.parametrize("hw", GRIDS, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_kernel_equals_official(backend, C, hw):
    q, k, v, tables = _inputs(2, hw, C)
    out = _run(q, k, v, tables, hw, C**-0.5, backend)
    assert out.dtype == jnp.float32
    assert_close(out, _official(q, k, v, tables, hw, C**-0.5), tol=1e-5, what=f"{backend} {hw} C={C}")


@pytest.mark.parametrize("backend", ["triton", "mosaic"])
def test_kernel_without_bias(backend):
    q, k, v, _ = _inputs(3, (6, 6), 32)
    out = jax.jit(lambda *a: fused_attention(*a, (6, 6), backend=backend, interpret=True))(q, k, v, None, None)
    assert_close(out, jax.nn.softmax(q @ np.swapaxes(k, 1, 2), -1) @ v, tol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "mosaic"])
def test_kernel_bfloat16(backend):
    """bfloat16 q, k, v (the dtype="bfloat16" model): within 2e-2 of the float32 official result,
    and within 1e-2 of the XLA path given the same bfloat16 inputs (both round P to bfloat16)."""
    hw, C = (32, 32), 64
    q, k, v, tables = _inputs(2, hw, C, seed=1)
    out = _run(q, k, v, tables, hw, C**-0.5, backend, jnp.bfloat16)
    assert_close(out, _official(q, k, v, tables, hw, C**-0.5), tol=2e-2, what="vs float32")
    qb, kb, vb = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    rel = decomposed_rel_pos(qb.astype(jnp.float32), *map(jnp.asarray, tables), hw, hw)
    assert_close(out, batched_attention(qb * C**-0.5, kb, vb, *rel, hw), tol=1e-2, what="vs XLA bfloat16")


def test_kernel_gradient_is_the_exact_one():
    """The kernel's custom VJP (the exact formula's) gives the XLA path's gradients."""
    hw, C = (6, 6), 16
    q, k, v, tables = (jax.tree.map(jnp.asarray, x) for x in _inputs(2, hw, C, seed=2))
    rel = decomposed_rel_pos(q, *tables, hw, hw)
    loss = lambda kernel: lambda *a: jnp.sum(jnp.sin(attention(*a, hw, kernel)))
    ours = jax.jit(jax.grad(loss("interpret"), argnums=(0, 1, 2, 3, 4)))(q, k, v, *rel)
    ref = jax.jit(jax.grad(loss("xla"), argnums=(0, 1, 2, 3, 4)))(q, k, v, *rel)
    for a, b in zip(ours, ref):
        assert_close(a, b, tol=1e-5)


def test_encoder_with_kernel_equals_official(case):
    """The whole image encoder with every attention (windowed with window padding for
    test_tiny, unpadded for test_divisible, and global) through the kernel."""
    S = case.config.image_size
    x = np.random.default_rng(3).normal(size=(1, 3, S, S)).astype(np.float32)
    model = with_numerics(case.model, attention="interpret")
    ours = jax.jit(model.image_encoder)(jnp.asarray(x))
    assert_close(ours, case.official.image_encoder(torch.from_numpy(x)).numpy(), what=f"{case.name} embedding")


TRITON_CALL = "__gpu$xla.gpu.triton"


@pytest.mark.parametrize("platform,custom_call", [("cuda", TRITON_CALL), ("tpu", "tpu_custom_call")])
@pytest.mark.parametrize("C", [64, 80])
def test_kernel_lowers_for_accelerators(platform, custom_call, C):
    """attention="pallas" exported for GPU and TPU at the vit grids (64x64 global, 14x14 windows):
    one kernel call per attention, and no (N, N) logits anywhere in the program. Only JAX's
    lowering runs here: Triton's and Mosaic's own compilers run on the device (see
    benchmarks/accelerator.py)."""
    for hw, G in (((64, 64), 12), ((14, 14), 12 * 25)):
        N = hw[0] * hw[1]
        x = jax.ShapeDtypeStruct((G, N, C), jnp.float32)
        rel = [jax.ShapeDtypeStruct((G, N, s), jnp.float32) for s in hw]
        fn = jax.jit(lambda *a: attention(*a, hw, "pallas"))
        exported = jax.export.export(fn, platforms=[platform], disabled_checks=[
            jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(x, x, x, *rel)
        text = exported.mlir_module()
        assert text.count(f"custom_call @{custom_call}") == 1
        assert f"{N}x{N}x" not in text and f"{N}x{hw[0]}x{hw[1]}x" not in text


def test_encoder_lowers_with_kernel_for_accelerators(tiny):
    """The whole model's embedding with attention="pallas" lowers for GPU and TPU (one kernel
    call per block), and keeps the XLA path when lowered for CPU."""
    from flax import nnx

    from sam_jax.functional import embed_images

    model = with_numerics(tiny.model, attention="pallas")
    graphdef, params = nnx.split(model)
    S = tiny.config.image_size
    args = (params, jax.ShapeDtypeStruct((1, S, S, 3), jnp.uint8), jax.ShapeDtypeStruct((1, 2), jnp.int32))
    fn = jax.jit(lambda p, i, s: embed_images(graphdef, p, i, s))
    depth = tiny.config.encoder_depth
    for platform, kernels in (("cuda", (depth, 0)), ("tpu", (0, depth)), ("cpu", (0, 0))):
        text = jax.export.export(fn, platforms=[platform], disabled_checks=[
            jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(*args).mlir_module()
        assert (text.count(f"custom_call @{TRITON_CALL}"), text.count("custom_call @tpu_custom_call")) == kernels, platform
