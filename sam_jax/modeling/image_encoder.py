"""ViT image encoder (the official `modeling/image_encoder.py`), on NHWC activations."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ..kernels.attention import KERNEL_BACKENDS, fused_attention
from ..kernels.selection import auto_kernel_platforms
from ..numerics import Numerics, traced_with_numerics
from ..resample import interpolate_linear
from .common import LayerNorm2d, MLPBlock, Sequential, fusion_fence, layer_norm


class ImageEncoderViT(nnx.Module):
    remat: bool = False  # training sets it on a view: each block's activations recomputed in the backward pass

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (),
        *,
        rngs: nnx.Rngs,
    ):
        self.img_size = img_size
        self.numerics = Numerics()
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, rngs=rngs)
        self.pos_embed = nnx.Param(jnp.zeros((1, grid, grid, embed_dim))) if use_abs_pos else None
        self.blocks = nnx.List(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias,
                    use_rel_pos,
                    window_size=window_size if i not in global_attn_indexes else 0,
                    input_size=(grid, grid),
                    rngs=rngs,
                )
                for i in range(depth)
            ]
        )
        self.neck = Sequential(
            [
                nnx.Conv(embed_dim, out_chans, (1, 1), use_bias=False, rngs=rngs),
                LayerNorm2d(out_chans, rngs=rngs),
                nnx.Conv(out_chans, out_chans, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs),
                LayerNorm2d(out_chans, rngs=rngs),
            ]
        )

    @traced_with_numerics
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, 3, S, S) normalised, padded images -> (B, out_chans, S/16, S/16) image embeddings."""
        return self._forward(x)[0]

    @traced_with_numerics
    def with_early_features(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, 3, S, S) -> (embeddings (B, out_chans, g, g), early (B, g, g, embed_dim)): early is
        the output of the first global-attention block (HQ-SAM's `interm_embeddings[0]`)."""
        embeddings, early = self._forward(x)
        if early is None:
            raise ValueError("no global-attention block: the encoder has no early feature")
        return embeddings, early

    def _forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        x = self.patch_embed(jnp.transpose(x, (0, 2, 3, 1)))
        if self.pos_embed is not None:
            x = x + self.pos_embed[...]
        early = None
        for blk in self.blocks:
            x = nnx.remat(Block.__call__)(blk, x) if self.remat else blk(x)
            if early is None and blk.window_size == 0:
                early = x
        # XLA's CPU backend otherwise fuses the last MLP into the neck's convolutions and feeds
        # that fusion each constant of GELU as a full-size array (0.26 s of vit_b's 5.8 s).
        x = fusion_fence(x)
        return jnp.transpose(self.neck(x), (0, 3, 1, 2)), early


class Block(nnx.Module):
    """Transformer block with windowed (window_size > 0) or global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        self.norm1 = layer_norm(dim, 1e-6, rngs)
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, attn_size, rngs=rngs)
        self.norm2 = layer_norm(dim, 1e-6, rngs)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), rngs=rngs)
        self.window_size = window_size

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Attention(nnx.Module):
    """Multi-head self-attention with decomposed relative position bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.numerics = Numerics()  # its `attention` field picks the implementation
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nnx.Linear(dim, dim * 3, use_bias=qkv_bias, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size must be provided when using relative positional encoding")
            self.rel_pos_h = nnx.Param(jnp.zeros((2 * input_size[0] - 1, head_dim)))
            self.rel_pos_w = nnx.Param(jnp.zeros((2 * input_size[1] - 1, head_dim)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, dim) -> (B, H, W, dim)."""
        B, H, W, _ = x.shape
        # (3, B * heads, H * W, head_dim), the official layout.
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1)
        rel_h = rel_w = None
        if self.use_rel_pos:
            rel_h, rel_w = decomposed_rel_pos(q.astype(jnp.float32), self.rel_pos_h[...], self.rel_pos_w[...], (H, W), (H, W))
        x = attention(q * self.scale, k, v, rel_h, rel_w, (H, W), self.numerics.attention)
        x = x.reshape(B, self.num_heads, H, W, -1).transpose(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x.astype(q.dtype))


def attention(q, k, v, rel_h, rel_w, k_size: tuple[int, int], kernel: str = "auto") -> jax.Array:
    """softmax(q @ k^T + bias) @ v per group, for q, k, v (G, N, C) (G = batch * heads); the
    decomposed bias is rel_h (G, N, k_h) + rel_w (G, N, k_w), broadcast over the key grid.
    Returns (G, N, C) float32.

    The implementation is chosen per platform when the computation is lowered (so an exported
    or AOT-compiled function picks the right one for where it runs, not where it was traced):
    on CPU the cache-blocked loop; on GPU and TPU one batched product, or the fused Pallas kernel
    where `kernel` asks for it: "auto" (where `sam_jax.kernels.selection` records it measured
    faster and exact for this kind of attention and dtype), "pallas" (on every platform of
    KERNEL_BACKENDS), "xla" (never), "interpret" (the kernel in Pallas interpret mode, on any
    platform: for tests). All are exact at float32 precision."""
    if kernel == "interpret":
        return _fused(q, k, v, rel_h, rel_w, k_size, "triton", True)
    platforms = {"auto": auto_kernel_platforms(k_size, q.dtype), "pallas": tuple(KERNEL_BACKENDS), "xla": ()}[kernel]
    kernels = {p: functools.partial(_fused, k_size=k_size, backend=KERNEL_BACKENDS[p], interpret=False) for p in platforms}
    return jax.lax.platform_dependent(
        q, k, v, rel_h, rel_w,
        cpu=functools.partial(blocked_attention, k_size=k_size),
        default=functools.partial(batched_attention, k_size=k_size),
        **kernels,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _fused(q, k, v, rel_h, rel_w, k_size, backend, interpret):
    return fused_attention(q, k, v, rel_h, rel_w, k_size, backend=backend, interpret=interpret)


def _fused_fwd(q, k, v, rel_h, rel_w, k_size, backend, interpret):
    return _fused(q, k, v, rel_h, rel_w, k_size, backend, interpret), (q, k, v, rel_h, rel_w)


def _fused_bwd(k_size, backend, interpret, residuals, cotangent):
    # The kernel has no backward pass of its own: gradients come from the exact batched formula
    # (which materialises the logits), so training through the kernel is correct, not fused.
    return jax.vjp(functools.partial(batched_attention, k_size=k_size), *residuals)[1](cotangent)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _attention_rows(q, k, v, rel_h, rel_w, k_size: tuple[int, int]) -> jax.Array:
    """The reference formula on (..., rows, C) queries against all (..., N, C) keys: logits and
    softmax in float32 even when q, k, v are bfloat16."""
    k_h, k_w = k_size
    a = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32)
    if rel_h is not None:
        a = (a.reshape(a.shape[:-1] + (k_h, k_w)) + rel_h[..., :, None] + rel_w[..., None, :]).reshape(a.shape)
    p = jax.nn.softmax(a, axis=-1).astype(v.dtype)
    return jnp.matmul(p, v, preferred_element_type=jnp.float32)


def batched_attention(q, k, v, rel_h, rel_w, k_size: tuple[int, int]) -> jax.Array:
    """`attention` as one batched product over all groups: materialises the (G, N, N) logits."""
    return _attention_rows(q, k, v, rel_h, rel_w, k_size)


def blocked_attention(q, k, v, rel_h, rel_w, k_size: tuple[int, int]) -> jax.Array:
    """`attention` one group at a time, and long query ranges in blocks of rows, so that the
    (rows, N) logits stay in a CPU's cache. Each row's softmax is still the full, exact one:
    blocking changes memory traffic, not maths."""
    G, N, _ = q.shape
    block = _row_block(N, k.shape[1])

    def group(args):
        qg, kg, vg, rh, rw = args
        if block == N:
            return _attention_rows(qg, kg, vg, rh, rw, k_size)
        split = lambda t: None if t is None else t.reshape(N // block, block, t.shape[-1])
        out = jax.lax.map(lambda b: _attention_rows(b[0], kg, vg, b[1], b[2], k_size), (split(qg), split(rh), split(rw)))
        return out.reshape(N, -1)

    return jax.lax.map(group, (q, k, v, rel_h, rel_w))


def _row_block(n_q: int, n_k: int, budget_bytes: int = 2**21) -> int:
    """The largest divisor of n_q whose (rows, n_k) float32 logits fit in `budget_bytes`."""
    target = max(1, budget_bytes // (4 * n_k))
    if target >= n_q:
        return n_q
    return max(d for d in range(1, target + 1) if n_q % d == 0)


def window_partition(x: jax.Array, window_size: int) -> tuple[jax.Array, tuple[int, int]]:
    """(B, H, W, C) -> (B * num_windows, ws, ws, C), zero-padding H and W at the end to multiples of ws.

    The padded tokens are zeros that take part in attention as keys, exactly as in the official code."""
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.reshape(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: jax.Array, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> jax.Array:
    """Inverse of window_partition: (B * num_windows, ws, ws, C) -> (B, H, W, C) without padding."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.reshape(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W, :]


def get_rel_pos(q_size: int, k_size: int, rel_pos: jax.Array) -> jax.Array:
    """(L, C) table -> (q_size, k_size, C) embeddings of the relative positions.

    When L differs from 2 * max(q_size, k_size) - 1 the table is linearly resampled first, as the
    official code does with F.interpolate(mode='linear')."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    rel_pos_resized = interpolate_linear(rel_pos, max_rel_dist, axis=0)
    # Same float arithmetic as the official coordinates, truncated to integers like `.long()`.
    q_coords = jnp.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = jnp.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos_resized[relative_coords.astype(jnp.int32)]


def decomposed_rel_pos(
    q: jax.Array,
    rel_pos_h: jax.Array,
    rel_pos_w: jax.Array,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[jax.Array, jax.Array]:
    """The two factors of the decomposed relative position bias (MViTv2).

    q: (G, q_h*q_w, C) unscaled queries. Returns rel_h (G, q_h*q_w, k_h) and rel_w
    (G, q_h*q_w, k_w): the bias of key (ky, kx) is rel_h[..., ky] + rel_w[..., kx]. They are
    added inside the attention logits, never materialised as a (q, k) tensor of their own."""
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w)
    G, _, dim = q.shape
    r_q = q.reshape(G, q_h, q_w, dim)
    rel_h = jnp.einsum("bhwc,hkc->bhwk", r_q, Rh).reshape(G, q_h * q_w, k_h)
    rel_w = jnp.einsum("bhwc,wkc->bhwk", r_q, Rw).reshape(G, q_h * q_w, k_w)
    return rel_h, rel_w


class PatchEmbed(nnx.Module):
    """Image to patch embedding: a stride-`patch_size` convolution."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, *, rngs: nnx.Rngs):
        p = (patch_size, patch_size)
        self.proj = nnx.Conv(in_chans, embed_dim, p, strides=p, padding="VALID", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H/p, W/p, embed_dim)."""
        return self.proj(x)
