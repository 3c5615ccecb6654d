"""An official module's state dict loaded into one of our modules through the converter's own key
mapping (`sam_jax.convert.keys`: the families' layer rules, BatchNorm statistics, dropped keys):
the module-level tests of the family's parts use the same mapping as the converter."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sam_jax.convert.keys import official_to_params


def load_official(build, state_dict: dict, prefix: str) -> nnx.Module:
    """The module `build()` makes (shape-only, no random init) with every variable set from an
    official state dict of that module (torch tensors or arrays), its keys read as if under
    `prefix` ("image_encoder" or "mask_decoder") in a whole model; fails on any missing, unused
    or mis-shaped key."""
    whole = {f"{prefix}.{k}": np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
    params = {path[1:]: value for path, value in official_to_params(whole).items()}
    graphdef, state = nnx.split(nnx.eval_shape(build))
    flat = nnx.to_flat_state(state)
    paths = {path for path, _ in flat}
    missing, unused = paths - set(params), set(params) - paths
    assert not missing and not unused, f"missing {sorted(missing)[:5]}, unused {sorted(unused)[:5]}"
    for path, var in flat:
        assert var.shape == params[path].shape, f"{path}: {var.shape} != {params[path].shape}"
        var.set_value(jnp.asarray(params[path], var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
