"""Building blocks shared by the encoder and decoder (the official `modeling/common.py`)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def gelu(x: jax.Array) -> jax.Array:
    """torch.nn.GELU: the exact erf form (jax.nn.gelu defaults to the tanh approximation)."""
    return jax.nn.gelu(x, approximate=False)


class GELU(nnx.Module):
    """Parameter-free activation layer, so Sequential indexes match the official nn.Sequential."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu(x)


class Sequential(nnx.List):
    """nn.Sequential whose parameter paths are `name/<index>/...` like the official state-dict keys."""

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self:
            x = layer(x)
        return x


class Buffer(nnx.Variable):
    """A non-trainable tensor that the official model keeps in its state dict (a registered buffer)."""


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, like torch: the one-pass E[x^2]-E[x]^2 loses digits on large activations.
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


def LayerNorm2d(dim: int, eps: float = 1e-6, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """The official LayerNorm2d normalises channels of NCHW maps; on our NHWC maps that is a LayerNorm."""
    return layer_norm(dim, eps, rngs)


class MLPBlock(nnx.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int, act: Callable = gelu, *, rngs: nnx.Rngs):
        self.lin1 = nnx.Linear(embedding_dim, mlp_dim, rngs=rngs)
        self.lin2 = nnx.Linear(mlp_dim, embedding_dim, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin2(self.act(self.lin1(x)))
