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


def random_model(config, seed: int = 0):
    """A Sam of `config` with random values in every variable (none left at its constant init:
    norms, BatchNorm statistics, attention biases and position tables all vary), drawn with NumPy
    on a shape-only model: much faster than the initializers on CPU, for tests that compare the
    model with itself (sharded, batched, exported)."""
    import jax.numpy as jnp
    import numpy as np

    from sam_jax.modeling import Sam

    r = np.random.default_rng(seed)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0))))
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        name, shape = path[-1], var.shape
        if name == "kernel":  # (..., fan_in, out): unit-variance outputs
            value = r.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif name == "var":  # BatchNorm's running variance
            value = np.exp(r.normal(0, 0.3, shape))
        elif name == "scale":
            value = 1 + r.normal(0, 0.1, shape)
        elif name in ("bias", "mean", "pos_embed", "rel_pos_h", "rel_pos_w"):
            value = r.normal(0, 0.1, shape)
        else:  # embeddings, attention bias tables, the prompt encoder's Gaussian matrix
            value = r.normal(0, 0.5, shape)
        var.set_value(jnp.asarray(np.asarray(value, var.dtype)))  # cast on the host: no compilation per shape
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
