"""ONNX emitters of `modeling/transformer.py`: the two-way transformer of the mask decoder. Batch 1
and all tokens real (the ONNX inputs have no empty prompt slots), so there is no token mask."""

from __future__ import annotations

import math

from ...modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from .builder import GraphBuilder, layer_norm, linear, mlp_block


def two_way_transformer(g: GraphBuilder, tr: TwoWayTransformer, image_embedding: str, image_pe: str,
                        point_embedding: str) -> tuple[str, str]:
    """image_embedding, image_pe: (1, C, h, w); point_embedding: (1, N, C) ->
    the processed tokens (1, N, C) and image features (1, h*w, C)."""
    image_embedding = _flatten(g, image_embedding)
    image_pe = _flatten(g, image_pe)
    queries, keys = point_embedding, image_embedding
    for layer in tr.layers:
        queries, keys = two_way_attention_block(g, layer, queries, keys, point_embedding, image_pe)
    q = g.op("Add", queries, point_embedding)
    k = g.op("Add", keys, image_pe)
    queries = g.op("Add", queries, attention(g, tr.final_attn_token_to_image, q, k, keys))
    return layer_norm(g, tr.norm_final_attn, queries), keys


def _flatten(g: GraphBuilder, x: str) -> str:
    """(1, C, h, w) -> (1, h*w, C)."""
    return g.op("Transpose", g.op("Reshape", x, g.ints([0, 0, -1])), perm=[0, 2, 1])


def two_way_attention_block(g: GraphBuilder, blk: TwoWayAttentionBlock, queries: str, keys: str,
                            query_pe: str, key_pe: str) -> tuple[str, str]:
    """Self-attention of tokens, token-to-image attention, MLP, image-to-token attention."""
    if blk.skip_first_layer_pe:
        queries = attention(g, blk.self_attn, queries, queries, queries)
    else:
        q = g.op("Add", queries, query_pe)
        queries = g.op("Add", queries, attention(g, blk.self_attn, q, q, queries))
    queries = layer_norm(g, blk.norm1, queries)

    q = g.op("Add", queries, query_pe)
    k = g.op("Add", keys, key_pe)
    queries = layer_norm(g, blk.norm2, g.op("Add", queries, attention(g, blk.cross_attn_token_to_image, q, k, keys)))

    queries = layer_norm(g, blk.norm3, g.op("Add", queries, mlp_block(g, blk.mlp, queries)))

    q = g.op("Add", queries, query_pe)
    k = g.op("Add", keys, key_pe)
    keys = layer_norm(g, blk.norm4, g.op("Add", keys, attention(g, blk.cross_attn_image_to_token, k, q, queries)))
    return queries, keys


def attention(g: GraphBuilder, attn: Attention, q: str, k: str, v: str) -> str:
    """Attention: q (1, Nq, C), k and v (1, Nk, C) -> (1, Nq, C)."""
    q = _separate_heads(g, linear(g, attn.q_proj, q), attn.num_heads)
    k = _separate_heads(g, linear(g, attn.k_proj, k), attn.num_heads)
    v = _separate_heads(g, linear(g, attn.v_proj, v), attn.num_heads)
    head_dim = attn.internal_dim // attn.num_heads
    logits = g.op("Div", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.const(math.sqrt(head_dim)))
    out = g.op("Transpose", g.op("MatMul", g.op("Softmax", logits, axis=-1), v), perm=[0, 2, 1, 3])
    return linear(g, attn.out_proj, g.op("Reshape", out, g.ints([0, 0, attn.internal_dim])))


def _separate_heads(g: GraphBuilder, x: str, num_heads: int) -> str:
    """(1, N, C) -> (1, heads, N, C / heads)."""
    return g.op("Transpose", g.op("Reshape", x, g.ints([0, 0, num_heads, -1])), perm=[0, 2, 1, 3])
