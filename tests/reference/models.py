"""sam-jax models the tests and benchmarks make from others (JAX only, no torch)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from sam_jax import Sam, SamConfig
from sam_jax.build_sam import model_from_params
from sam_jax.convert.shapes import parameter_shapes


def with_fresh_output_heads(model, seed: int = 7):
    """`model` with its decoder's output heads (mask tokens, hypernetworks, IoU token and head)
    re-initialised: a model that must learn again which masks to draw and how good they are."""
    fresh = type(model)(model.config, rngs=nnx.Rngs(seed))
    kept = nnx.state(model)
    for name in ("mask_tokens", "iou_token", "output_hypernetworks_mlps", "iou_prediction_head"):
        kept["mask_decoder"][name] = nnx.state(fresh.mask_decoder)[name]
    nnx.update(fresh, kept)
    return fresh


def random_model(config: SamConfig, seed: int = 0) -> Sam:
    """A model of `config` with random weights drawn on the host as a fine-tuned model's might be
    (no zero biases, no unit norms, BatchNorm statistics away from 0 and 1; kernels scaled by
    their fan-in, so that activations stay of order one), without JAX's random init (eager, it
    compiles op by op: slow). For tests that compare a model with itself (sharded, batched,
    exported) or give both sides the same weights."""
    rng = np.random.default_rng(seed)
    params = {}
    for path, spec in parameter_shapes(config).items():
        noise = rng.standard_normal(spec.shape)
        leaf = path[-1]
        if leaf == "kernel":
            value = noise / np.sqrt(np.prod(spec.shape[:-1]))
        elif leaf == "var":
            value = np.exp(0.5 * noise)
        elif leaf == "scale":
            value = 1 + 0.1 * noise
        elif leaf in ("embedding", "positional_encoding_gaussian_matrix"):
            value = noise
        else:  # biases, BatchNorm means, position tables, attention biases
            value = 0.1 * noise
        params[path] = value.astype(np.float32)
    return model_from_params(config, params)
