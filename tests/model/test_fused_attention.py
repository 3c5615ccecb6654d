"""The fused Pallas attention kernels with the decomposed bias: in interpret mode on CPU they equal
the official formula (windowed and global grids, with and without padding, rows of keys that are
not a power of two, the vit_b/l/h head dims; float32 through the Triton kernel's explicit TF32x3
split, the arithmetic the GPU runs), the whole encoder with them equals the official encoder,
and they lower for GPU (Triton) and TPU (Mosaic) from this CPU-only machine. Their builds for
the devices are checked in test_kernel_build.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sam_jax.kernels import selection
from sam_jax.kernels.attention import fused_attention
from sam_jax.kernels.split import split_tf32
from sam_jax.modeling.image_encoder import attention, batched_attention, decomposed_rel_pos
from sam_jax.modeling.sam import with_numerics
from tests.reference.compare import assert_close

# Head dims: 64 is vit_b's and vit_l's, 80 vit_h's. Grids: vit windows (14x14, 196 keys: rows
# padded to 16, several rows per key block), a global grid (32x32), a ragged one (7x9: padded,
# not square), and rows of 48 keys as vit's global grid at 768 px (padded to 64 and masked; float32
# on Triton cuts them in half-row blocks).
GRIDS = [(14, 14), (32, 32), (7, 9), (8, 48)]


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
@pytest.mark.parametrize("hw,C", [((32, 32), 64), ((14, 14), 80), ((8, 48), 80)], ids=["32x32-64", "14x14-80", "8x48-80"])
def test_kernel_bfloat16(backend, hw, C):
    """bfloat16 q, k, v (the dtype="bfloat16" model): no further from the float32 official result
    than the XLA bfloat16 path given the same inputs (both take bfloat16 products, float32 logits
    and softmax, and P rounded to bfloat16), and within 2e-2 of it."""
    q, k, v, tables = _inputs(2, hw, C, seed=1)
    ref = _official(q, k, v, tables, hw, C**-0.5)
    qb, kb, vb = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    rel = decomposed_rel_pos(qb.astype(jnp.float32), *map(jnp.asarray, tables), hw, hw)
    xla_err = assert_close(batched_attention(qb * C**-0.5, kb, vb, *rel, hw), ref, tol=2e-2, what="XLA bfloat16")
    kernel_err = assert_close(_run(q, k, v, tables, hw, C**-0.5, backend, jnp.bfloat16), ref, tol=2e-2, what=backend)
    assert kernel_err <= xla_err, (kernel_err, xla_err)


def test_tf32_split_is_exact_to_2e_22():
    """hi and lo are TF32 values (13 low mantissa bits clear) and hi + lo is x to 2^-22 |x|, so
    the three TF32 products of split.dot_tf32x3 are float32-equivalent."""
    r = np.random.default_rng(4)
    x = (r.normal(size=100_000) * 10.0 ** r.uniform(-4, 4, size=100_000)).astype(np.float32)
    hi, lo = (np.asarray(t) for t in jax.jit(split_tf32)(jnp.asarray(x)))
    for t in (hi, lo):
        assert not (t.view(np.uint32) & np.uint32(0x1FFF)).any()
    residue = np.abs(x.astype(np.float64) - hi.astype(np.float64) - lo.astype(np.float64))
    assert (residue <= np.abs(x) * 2.0**-22).all()
    assert (np.abs(lo) <= np.abs(x) * 2.0**-11).all()


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


def test_auto_takes_the_kernel_only_where_the_table_says(monkeypatch):
    """attention="auto" follows `sam_jax.kernels.selection.AUTO_KERNEL`: XLA everywhere with
    today's empty table; with an entry, the kernel on that platform for that kind of attention
    and dtype only."""

    def kernel_calls(platform, hw, dtype):
        N = hw[0] * hw[1]
        x = jax.ShapeDtypeStruct((2, N, 16), dtype)
        rel = [jax.ShapeDtypeStruct((2, N, s), jnp.float32) for s in hw]
        text = jax.export.export(jax.jit(lambda *a: attention(*a, hw, "auto")), platforms=[platform], disabled_checks=[
            jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(x, x, x, *rel).mlir_module()
        return text.count(f"custom_call @{TRITON_CALL}") + text.count("custom_call @tpu_custom_call")

    cases = [(p, hw, d) for p in ("cuda", "tpu") for hw in ((14, 14), (32, 32)) for d in (jnp.bfloat16, jnp.float32)]
    assert [kernel_calls(*c) for c in cases] == [0] * len(cases)
    monkeypatch.setitem(selection.AUTO_KERNEL, ("cuda", "global", "bfloat16"),
                        selection.Measurement("a GPU", "today", "rows.jsonl", speedup=2.0, rel_err=5e-3))
    assert [kernel_calls(*c) for c in cases] == [int(c == ("cuda", (32, 32), jnp.bfloat16)) for c in cases]
    monkeypatch.setitem(selection.AUTO_KERNEL, ("cuda", "global", "float32"),
                        selection.Measurement("a GPU", "today", "rows.jsonl", speedup=2.0, rel_err=1e-6))
    assert kernel_calls("cuda", (32, 32), jnp.float32) == 1  # measured at the exact setting ...
    with jax.default_matmul_precision("default"):
        assert kernel_calls("cuda", (32, 32), jnp.float32) == 0  # ... and only there
