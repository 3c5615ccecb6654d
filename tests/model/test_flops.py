"""FLOP counting (the benchmarks' FLOP column): torch's FlopCounterMode convention, loop bodies
once per iteration."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sam_jax.functional import embed_images
from tests.reference.jaxpr import matmul_flops


def test_encoder_flops_equal_torch_counter(case):
    """Our count of the embedding equals torch's count of the official image encoder (whose
    attention is one batched product, ours on CPU a loop over groups and row blocks)."""
    from flax import nnx

    S = case.config.image_size
    with FlopCounterMode(display=False) as counter:
        case.official.image_encoder(torch.zeros(1, 3, S, S))
    graphdef, params = nnx.split(case.model)
    ours = matmul_flops(embed_images, graphdef, params, jax.ShapeDtypeStruct((1, S, S, 3), jnp.uint8),
                        jax.ShapeDtypeStruct((1, 2), jnp.int32), static_argnums=(0,))
    assert ours == counter.get_total_flops() > 1e8


def test_loops_count_per_iteration():
    a = jax.ShapeDtypeStruct((5, 8, 16), jnp.float32)
    b = jax.ShapeDtypeStruct((16, 32), jnp.float32)
    one = 2 * 8 * 16 * 32
    assert matmul_flops(lambda a, b: a[0] @ b, a, b) == one
    assert matmul_flops(lambda a, b: jax.lax.map(lambda x: x @ b, a), a, b) == 5 * one
    nested = lambda a, b: jax.lax.map(lambda x: jax.lax.map(lambda r: r @ b, x.reshape(2, 4, 16)), a)
    assert matmul_flops(nested, a, b) == 5 * one
    loop = lambda a, b: jax.lax.fori_loop(0, 3, lambda i, acc: acc + a[i] @ b, jnp.zeros((8, 32)))
    assert matmul_flops(loop, a, b) == 3 * one
    # Of a cond's branches one runs: the dearer one counts.
    cond = lambda a, b: jax.lax.cond(a[0, 0, 0] > 0, lambda: a[0] @ b, lambda: jnp.zeros((8, 32)))
    assert matmul_flops(cond, a, b) == one
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), "VALID")
    x, k = np.zeros((1, 3, 16, 16), np.float32), np.zeros((8, 3, 4, 4), np.float32)
    assert matmul_flops(conv, x, k) == 2 * (8 * 7 * 7) * (3 * 4 * 4)
