"""Two-way transformer of the mask decoder (the official `modeling/transformer.py`).

`token_mask` (B, N) marks the prompt tokens that exist; absent (bucket-padding) tokens are removed
from every attention in which tokens are keys, so they cannot change the result for real tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from .common import MLPBlock, layer_norm


class TwoWayTransformer(nnx.Module):
    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        *,
        rngs: nnx.Rngs,
    ):
        self.layers = nnx.List(
            [
                TwoWayAttentionBlock(
                    embedding_dim, num_heads, mlp_dim, attention_downsample_rate, skip_first_layer_pe=(i == 0), rngs=rngs
                )
                for i in range(depth)
            ]
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate, rngs=rngs)
        self.norm_final_attn = layer_norm(embedding_dim, 1e-5, rngs)

    def __call__(
        self,
        image_embedding: jax.Array,
        image_pe: jax.Array,
        point_embedding: jax.Array,
        token_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """image_embedding: (B or 1, C, h, w); image_pe: (1, C, h, w); point_embedding: (B, N, C);
        token_mask: (B, N).

        Returns the processed tokens (B, N, C) and image features (B, h*w, C)."""
        # An image batch of 1 stays 1 until the first image-to-token attention makes the keys
        # prompt-specific: the projections of shared keys are computed once, not per prompt.
        image_embedding = _flatten(image_embedding)
        image_pe = _flatten(image_pe)
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe, token_mask)
        q = queries + point_embedding
        k = keys + image_pe
        queries = queries + self.final_attn_token_to_image(q, k, keys)
        return self.norm_final_attn(queries), keys


def _flatten(x: jax.Array) -> jax.Array:
    """(B, C, h, w) -> (B, h*w, C)."""
    return jnp.transpose(x.reshape(x.shape[0], x.shape[1], -1), (0, 2, 1))


class TwoWayAttentionBlock(nnx.Module):
    """Self-attention of tokens, token-to-image attention, MLP, image-to-token attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
        *,
        rngs: nnx.Rngs,
    ):
        self.self_attn = Attention(embedding_dim, num_heads, rngs=rngs)
        self.norm1 = layer_norm(embedding_dim, 1e-5, rngs)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate, rngs=rngs)
        self.norm2 = layer_norm(embedding_dim, 1e-5, rngs)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, jax.nn.relu, rngs=rngs)
        self.norm3 = layer_norm(embedding_dim, 1e-5, rngs)
        self.norm4 = layer_norm(embedding_dim, 1e-5, rngs)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate, rngs=rngs)
        self.skip_first_layer_pe = skip_first_layer_pe

    def __call__(self, queries, keys, query_pe, key_pe, token_mask=None):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_mask)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_mask)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries, token_mask))
        return queries, keys


class Attention(nnx.Module):
    """Attention that can downscale the embedding size after projection to queries, keys and values."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, *, rngs: nnx.Rngs):
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nnx.Linear(embedding_dim, self.internal_dim, rngs=rngs)
        self.k_proj = nnx.Linear(embedding_dim, self.internal_dim, rngs=rngs)
        self.v_proj = nnx.Linear(embedding_dim, self.internal_dim, rngs=rngs)
        self.out_proj = nnx.Linear(self.internal_dim, embedding_dim, rngs=rngs)

    def __call__(self, q, k, v, key_mask: jax.Array | None = None) -> jax.Array:
        """q: (B, Nq, C); k, v: (B, Nk, C); key_mask: (B, Nk) True for keys that exist."""
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        # (B, heads, N, C) products; a batch of 1 on either side broadcasts (shared image keys).
        # Logits and softmax in float32 even when the projections compute in bfloat16.
        attn = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
        if key_mask is not None:
            attn = jnp.where(key_mask[:, None, None, :], attn, -jnp.inf)
        attn = jax.nn.softmax(attn, axis=-1).astype(v.dtype)
        out = (attn @ v).transpose(0, 2, 1, 3)
        return self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))

    def _separate_heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(0, 2, 1, 3)
