"""Fused attention with SAM's decomposed relative-position bias, as a Pallas kernel.

    out = softmax(q @ k^T + bias) @ v,   bias[i, j] = rel_h[i, ky(j)] + rel_w[i, kx(j)]

for key j at (ky, kx) = divmod(j, k_w) of the key grid. Flash-attention style: each program owns
a block of queries, streams the keys in blocks of whole key rows through an online softmax, and
keeps only (block_q, C) state, so neither the (N, N) logits nor an (N, N) bias is ever written to
memory. Because a block holds whole rows (or, for float32 on Triton, half rows), its bias is two
broadcast adds of the factors in float32 (`layout.py`), with no product and no one-hot keys.

Backends (both also run in Pallas interpret mode, `interpret=True`, which the tests use):
- "triton" (NVIDIA GPUs): `attention_triton.py`; float32 at exact precision through three
  TF32 tensor-core products per dot (`split.py`).
- "mosaic" (TPU): `attention_mosaic.py`; K and V resident in VMEM, queries on the lanes.

Precision: bfloat16 inputs use bfloat16 products with float32 accumulation and a float32 softmax
(P rounded to bfloat16 for P @ V, as the XLA bfloat16 path). float32 inputs are exact
(float32-equivalent products, error ~1e-7) when traced under the "exact" setting
(`jax.default_matmul_precision` "highest" or "float32", or unset), else one fast pass (TF32 on
GPU, one bfloat16 pass on TPU), as XLA's default would be.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import attention_mosaic, attention_triton

BACKENDS = ("triton", "mosaic")
# Platform -> backend of the kernel on that platform.
KERNEL_BACKENDS = {"cuda": "triton", "tpu": "mosaic"}
_EXACT_PRECISIONS = (None, "highest", "float32")


def exact_products() -> bool:
    """Whether the matmul precision being traced under asks for float32-equivalent products."""
    return jax.config.jax_default_matmul_precision in _EXACT_PRECISIONS


def fused_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_h: jax.Array | None,
    rel_w: jax.Array | None,
    k_size: tuple[int, int],
    *,
    backend: str,
    interpret: bool = False,
    exact: bool | None = None,
) -> jax.Array:
    """softmax(q @ k^T + bias) @ v for q, k, v (G, N, C) float32 or bfloat16 (q already scaled),
    the decomposed bias given by rel_h (G, N, k_h) and rel_w (G, N, k_w) (both None: no bias),
    N = k_h * k_w. Returns (G, N, C) float32, as `sam_jax.modeling.image_encoder.attention`.

    backend: "triton" (GPU) or "mosaic" (TPU); interpret: run the kernel in Pallas interpret mode
    (any backend); exact: float32 inputs with float32-equivalent products (default: from the
    matmul precision traced under, see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if q.dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"q, k, v must be float32 or bfloat16, got {q.dtype}")
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    exact = exact_products() if exact is None else exact
    if backend == "mosaic":
        return attention_mosaic.attention(q, k, v, rel_h, rel_w, k_size, exact=exact, interpret=interpret)
    mode = "bf16" if q.dtype == jnp.bfloat16 else "tf32x3" if exact else "tf32"
    return attention_triton.attention(q, k, v, rel_h, rel_w, k_size, mode=mode, interpret=interpret)
