"""Test-local mapping of the model families' official state-dict keys onto our modules' variables
(TinyViT of MobileSAM / LiteMedSAM / sam-hq, and sam-hq's MaskDecoderHQ), in the form of
`sam_jax.convert.keys`: the layer kind, and with it the layout change, is read off the official
module path (relative to the module: no `image_encoder.` / `mask_decoder.` prefix).

    kind              official leaf, layout             ours
    conv              weight (out, in/groups, kh, kw)   kernel (kh, kw, in/groups, out)
    conv_transpose    weight (in, out, kh, kw)          kernel (kh, kw, in, out)
    linear            weight (out, in)                  kernel (in, out)
    layer_norm        weight                            scale
    batch_norm        weight, running_mean,             scale, mean, var
                      running_var, num_batches_tracked  (num_batches_tracked dropped)
    embedding         weight                            embedding
    any               bias, attention_biases            same name, same layout

TinyViT's classifier head (`norm_head.*`, `head.*`) is dropped: our encoder does not build it.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

KINDS: list[tuple[str, re.Pattern, str, tuple[int, ...] | None]] = [
    # (kind, module path pattern, our leaf for `weight`, permutation official -> ours)
    ("batch_norm", re.compile(r".*\.bn"), "scale", None),
    ("conv", re.compile(r".*\.c|neck\.[02]|embedding_maskfeature\.[03]"), "kernel", (2, 3, 1, 0)),
    ("conv_transpose", re.compile(r"(output_upscaling|compress_vit_feat|embedding_encoder)\.[03]"), "kernel",
     (2, 3, 0, 1)),
    ("layer_norm", re.compile(r"(.*\.)?norm\w*|neck\.[13]"
                              r"|(output_upscaling|compress_vit_feat|embedding_encoder|embedding_maskfeature)\.1"),
     "scale", None),
    ("embedding", re.compile(r"iou_token|mask_tokens|hf_token"), "embedding", None),
    # qkv, proj, fc1, fc2 (TinyViT); *_proj, mlp.lin1/2, MLP layers (decoder)
    ("linear", re.compile(r".*"), "kernel", (1, 0)),
]
DROPPED = re.compile(r"(norm_head|head)\..*|.*\.num_batches_tracked")
BN_STATS = {"running_mean": "mean", "running_var": "var"}


def param_path(key: str) -> tuple[tuple, tuple[int, ...] | None]:
    """Official key -> (our variable path, permutation official -> ours or None)."""
    module, _, leaf = key.rpartition(".")
    perm = None
    if leaf == "weight":
        leaf, perm = next((ours, p) for _, rx, ours, p in KINDS if rx.fullmatch(module))
    else:
        leaf = BN_STATS.get(leaf, leaf)
    return tuple(int(p) if p.isdigit() else p for p in module.split(".")) + (leaf,), perm


def load_official(build, state_dict: dict, path_of=param_path) -> nnx.Module:
    """The module `build()` makes, built shape-only (no random init) and with every variable set
    from an official state dict (torch tensors or arrays) by `path_of` (official key -> (our path,
    permutation)); fails on any missing, unused or mis-shaped key."""
    params = {}
    for key, value in state_dict.items():
        if DROPPED.fullmatch(key):
            continue
        path, perm = path_of(key)
        value = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, np.float32)
        params[path] = np.transpose(value, perm) if perm is not None else value
    graphdef, state = nnx.split(nnx.eval_shape(build))
    flat = nnx.to_flat_state(state)
    paths = {path for path, _ in flat}
    missing, unused = paths - set(params), set(params) - paths
    assert not missing and not unused, f"missing {sorted(missing)[:5]}, unused {sorted(unused)[:5]}"
    for path, var in flat:
        assert var.shape == params[path].shape, f"{path}: {var.shape} != {params[path].shape}"
        var.set_value(jnp.asarray(params[path], var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
