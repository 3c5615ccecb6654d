"""sam-jax models the tests and benchmarks make from others (JAX only, no torch)."""

from __future__ import annotations

from flax import nnx


def with_fresh_output_heads(model, seed: int = 7):
    """`model` with its decoder's output heads (mask tokens, hypernetworks, IoU token and head)
    re-initialised: a model that must learn again which masks to draw and how good they are."""
    fresh = type(model)(model.config, rngs=nnx.Rngs(seed))
    kept = nnx.state(model)
    for name in ("mask_tokens", "iou_token", "output_hypernetworks_mlps", "iou_prediction_head"):
        kept["mask_decoder"][name] = nnx.state(fresh.mask_decoder)[name]
    nnx.update(fresh, kept)
    return fresh
