"""Hugging Face `transformers` SAM checkpoints (`SamModel`, `model.safetensors`) <-> official keys.

`hf_to_official` renames a transformers state dict's keys (read by `safetensors.py`, or from a
`pytorch_model.bin`) to the official segment-anything naming that the rest of the converter understands, and
`official_to_hf` is the exact inverse.

Every tensor keeps its value, shape and layout: the mapping is a pure renaming (no transpose, no
rescale, no split or merge). Verified against transformers 5.24.0 `SamModel(SamConfig())` (vit_b):
its 315 state-dict keys map onto the 314 keys of `sam_model_registry["vit_b"]().state_dict()` with
identical shapes. `{i}`/`{j}` are indices, `{n}` a norm or linear number, `{p}` is `weight|bias`:

    HF key                                                  official key
    shared_image_embedding.positional_embedding             prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    prompt_encoder.shared_embedding.positional_embedding    (tied copy of the row above: checked equal, dropped)
    vision_encoder.pos_embed                                image_encoder.pos_embed
    vision_encoder.patch_embed.projection.{p}               image_encoder.patch_embed.proj.{p}
    vision_encoder.layers.{i}.layer_norm{n}.{p}             image_encoder.blocks.{i}.norm{n}.{p}
    vision_encoder.layers.{i}.attn.{qkv,proj}.{p}           image_encoder.blocks.{i}.attn.{qkv,proj}.{p}
    vision_encoder.layers.{i}.attn.rel_pos_{h,w}            image_encoder.blocks.{i}.attn.rel_pos_{h,w}
    vision_encoder.layers.{i}.mlp.lin{n}.{p}                image_encoder.blocks.{i}.mlp.lin{n}.{p}
    vision_encoder.neck.conv1.weight                        image_encoder.neck.0.weight
    vision_encoder.neck.layer_norm1.{p}                     image_encoder.neck.1.{p}
    vision_encoder.neck.conv2.weight                        image_encoder.neck.2.weight
    vision_encoder.neck.layer_norm2.{p}                     image_encoder.neck.3.{p}
    prompt_encoder.point_embed.{i}.weight                   prompt_encoder.point_embeddings.{i}.weight
    prompt_encoder.not_a_point_embed.weight                 (same)
    prompt_encoder.no_mask_embed.weight                     (same)
    prompt_encoder.mask_embed.conv1.{p}                     prompt_encoder.mask_downscaling.0.{p}
    prompt_encoder.mask_embed.layer_norm1.{p}               prompt_encoder.mask_downscaling.1.{p}
    prompt_encoder.mask_embed.conv2.{p}                     prompt_encoder.mask_downscaling.3.{p}
    prompt_encoder.mask_embed.layer_norm2.{p}               prompt_encoder.mask_downscaling.4.{p}
    prompt_encoder.mask_embed.conv3.{p}                     prompt_encoder.mask_downscaling.6.{p}
    mask_decoder.iou_token.weight                           (same)
    mask_decoder.mask_tokens.weight                         (same)
    mask_decoder.transformer.layers.{i}.{attn}.{proj}.{p}   (same)
    mask_decoder.transformer.layers.{i}.mlp.lin{n}.{p}      (same)
    mask_decoder.transformer.layers.{i}.layer_norm{n}.{p}   mask_decoder.transformer.layers.{i}.norm{n}.{p}
    mask_decoder.transformer.final_attn_token_to_image.{proj}.{p}    (same)
    mask_decoder.transformer.layer_norm_final_attn.{p}      mask_decoder.transformer.norm_final_attn.{p}
    mask_decoder.upscale_conv1.{p}                          mask_decoder.output_upscaling.0.{p}
    mask_decoder.upscale_layer_norm.{p}                     mask_decoder.output_upscaling.1.{p}
    mask_decoder.upscale_conv2.{p}                          mask_decoder.output_upscaling.3.{p}
    mask_decoder.{head}.proj_in.{p}                         mask_decoder.{head}.layers.0.{p}
    mask_decoder.{head}.layers.{i}.{p}                      mask_decoder.{head}.layers.{i+1}.{p}
    mask_decoder.{head}.proj_out.{p}                        mask_decoder.{head}.layers.{K-1}.{p}

`{attn}` is `self_attn|cross_attn_token_to_image|cross_attn_image_to_token`, `{proj}` is
`q_proj|k_proj|v_proj|out_proj`, `{head}` is `output_hypernetworks_mlps.{j}` or
`iou_prediction_head`, and `K` the head's number of linear layers (3 in SAM).

`official_to_hf` writes both tied keys, as `SamModel.state_dict()` has them; `save_pretrained`
files hold only `shared_image_embedding.positional_embedding`, which is enough. Any other unknown
key raises `ValueError`; the official non-persistent buffers `pixel_mean`/`pixel_std` have no HF
counterpart (HF keeps them in the image processor) and are rejected by `official_to_hf`.

Numerics of HF's model vs the official one, with the same weights: identical except that HF's
mask-decoder `TwoWayAttentionBlock` layer norms (`layer_norm1..4`) use eps 1e-6 where the official
`norm1..4` use torch's default 1e-5 (every other norm matches: 1e-6 in the encoder, neck, mask
downscaling and upscaling, 1e-5 for `norm_final_attn`). HF's `SamConfig.vision_config.scale` (384)
only scales the random init of the positional matrix; the forward pass is the official
`2*pi * (2*coords - 1) @ G` followed by [sin, cos], so the matrix is copied as is. Checked with
perturbed random vit_b weights loaded into both (`load_state_dict(strict=True)`): image embeddings
agree to 2e-6 (max error relative to max magnitude); decoder masks/IoU to 4e-5/8e-5, and to 1e-6
once HF's decoder-block eps is set to 1e-5.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

_PLACEHOLDERS = {
    "i": r"\d+",
    "n": r"[1-4]",
    "p": r"weight|bias",
    "vattn": r"qkv\.weight|qkv\.bias|proj\.weight|proj\.bias|rel_pos_h|rel_pos_w",
    "attn": r"self_attn|cross_attn_token_to_image|cross_attn_image_to_token",
    "proj": r"q_proj|k_proj|v_proj|out_proj",
}

# (HF pattern, official pattern); the patterns are disjoint, so at most one matches a key.
_TABLE: list[tuple[str, str]] = [
    ("shared_image_embedding.positional_embedding", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    ("vision_encoder.pos_embed", "image_encoder.pos_embed"),
    ("vision_encoder.patch_embed.projection.{p}", "image_encoder.patch_embed.proj.{p}"),
    ("vision_encoder.layers.{i}.layer_norm{n}.{p}", "image_encoder.blocks.{i}.norm{n}.{p}"),
    ("vision_encoder.layers.{i}.attn.{vattn}", "image_encoder.blocks.{i}.attn.{vattn}"),
    ("vision_encoder.layers.{i}.mlp.lin{n}.{p}", "image_encoder.blocks.{i}.mlp.lin{n}.{p}"),
    ("vision_encoder.neck.conv1.weight", "image_encoder.neck.0.weight"),
    ("vision_encoder.neck.layer_norm1.{p}", "image_encoder.neck.1.{p}"),
    ("vision_encoder.neck.conv2.weight", "image_encoder.neck.2.weight"),
    ("vision_encoder.neck.layer_norm2.{p}", "image_encoder.neck.3.{p}"),
    ("prompt_encoder.point_embed.{i}.weight", "prompt_encoder.point_embeddings.{i}.weight"),
    ("prompt_encoder.not_a_point_embed.weight", "prompt_encoder.not_a_point_embed.weight"),
    ("prompt_encoder.no_mask_embed.weight", "prompt_encoder.no_mask_embed.weight"),
    ("prompt_encoder.mask_embed.conv1.{p}", "prompt_encoder.mask_downscaling.0.{p}"),
    ("prompt_encoder.mask_embed.layer_norm1.{p}", "prompt_encoder.mask_downscaling.1.{p}"),
    ("prompt_encoder.mask_embed.conv2.{p}", "prompt_encoder.mask_downscaling.3.{p}"),
    ("prompt_encoder.mask_embed.layer_norm2.{p}", "prompt_encoder.mask_downscaling.4.{p}"),
    ("prompt_encoder.mask_embed.conv3.{p}", "prompt_encoder.mask_downscaling.6.{p}"),
    ("mask_decoder.iou_token.weight", "mask_decoder.iou_token.weight"),
    ("mask_decoder.mask_tokens.weight", "mask_decoder.mask_tokens.weight"),
    ("mask_decoder.transformer.layers.{i}.{attn}.{proj}.{p}", "mask_decoder.transformer.layers.{i}.{attn}.{proj}.{p}"),
    ("mask_decoder.transformer.layers.{i}.mlp.lin{n}.{p}", "mask_decoder.transformer.layers.{i}.mlp.lin{n}.{p}"),
    ("mask_decoder.transformer.layers.{i}.layer_norm{n}.{p}", "mask_decoder.transformer.layers.{i}.norm{n}.{p}"),
    ("mask_decoder.transformer.final_attn_token_to_image.{proj}.{p}",
     "mask_decoder.transformer.final_attn_token_to_image.{proj}.{p}"),
    ("mask_decoder.transformer.layer_norm_final_attn.{p}", "mask_decoder.transformer.norm_final_attn.{p}"),
    ("mask_decoder.upscale_conv1.{p}", "mask_decoder.output_upscaling.0.{p}"),
    ("mask_decoder.upscale_layer_norm.{p}", "mask_decoder.output_upscaling.1.{p}"),
    ("mask_decoder.upscale_conv2.{p}", "mask_decoder.output_upscaling.3.{p}"),
]

_TIED_HF = "prompt_encoder.shared_embedding.positional_embedding"
_PE_HF = "shared_image_embedding.positional_embedding"

# The MLP heads: HF `proj_in, layers.0..K-3, proj_out` are official `layers.0..K-1`.
_HEAD = r"(?P<head>mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))"
_HF_HEAD = re.compile(_HEAD + r"\.(?:(?P<end>proj_in|proj_out)|layers\.(?P<i>\d+))\.(?P<p>weight|bias)")
_OFFICIAL_HEAD = re.compile(_HEAD + r"\.layers\.(?P<i>\d+)\.(?P<p>weight|bias)")


def _compile(pattern: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", pattern)  # literal, name, literal, name, ...
    return re.compile("".join(
        f"(?P<{part}>{_PLACEHOLDERS[part]})" if k % 2 else re.escape(part) for k, part in enumerate(parts)
    ))


_HF_TO_OFFICIAL = [(_compile(hf), official) for hf, official in _TABLE]
_OFFICIAL_TO_HF = [(_compile(official), hf) for hf, official in _TABLE]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for rx, template in rules:
        if m := rx.fullmatch(key):
            return template.format(**m.groupdict())
    return None


def _head_sizes(keys, rx: re.Pattern) -> dict[str, int]:
    """head -> 1 + the largest `layers.{i}` index under it (0 for a head without `layers.{i}`)."""
    sizes: dict[str, int] = {}
    for key in keys:
        if (m := rx.fullmatch(key)) and m["i"] is not None:
            sizes[m["head"]] = max(sizes.get(m["head"], 0), int(m["i"]) + 1)
    return sizes


def _fail(direction: str, unknown: list[str]) -> None:
    if unknown:
        raise ValueError(f"{direction}: {len(unknown)} key(s) the mapping does not know: " + ", ".join(sorted(unknown)))


def hf_to_official(state: dict[str, Any]) -> dict[str, Any]:
    """Renames a HF `SamModel` state dict to official segment-anything keys (values unchanged).

    The tied `prompt_encoder.shared_embedding.positional_embedding` must equal
    `shared_image_embedding.positional_embedding` when both are present and is then dropped.
    Raises ValueError listing every key the mapping does not know."""
    state = dict(state)
    if _TIED_HF in state:
        tied = state.pop(_TIED_HF)
        if _PE_HF not in state:
            state[_PE_HF] = tied
        elif not np.array_equal(np.asarray(tied), np.asarray(state[_PE_HF])):
            raise ValueError(f"{_TIED_HF} differs from the tied {_PE_HF}")
    hidden = _head_sizes(state, _HF_HEAD)  # number of HF `layers.{i}` per head
    out, unknown = {}, []
    for key, value in state.items():
        if m := _HF_HEAD.fullmatch(key):
            if m["end"] is None:
                i = int(m["i"]) + 1
            else:
                i = 0 if m["end"] == "proj_in" else hidden.get(m["head"], 0) + 1
            new = f"{m['head']}.layers.{i}.{m['p']}"
        else:
            new = _rename(key, _HF_TO_OFFICIAL)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    _fail("hf_to_official", unknown)
    return out


def official_to_hf(state: dict[str, Any]) -> dict[str, Any]:
    """Renames an official segment-anything state dict to HF `SamModel` keys (values unchanged):
    the exact inverse of `hf_to_official`, writing both tied positional-embedding keys.
    Raises ValueError listing every key the mapping does not know."""
    depth = _head_sizes(state, _OFFICIAL_HEAD)  # K per head
    out, unknown = {}, []
    for key, value in state.items():
        if m := _OFFICIAL_HEAD.fullmatch(key):
            i, k = int(m["i"]), depth[m["head"]]
            if k < 2:
                raise ValueError(f"official_to_hf: {m['head']} has {k} layer(s); HF needs proj_in and proj_out")
            end = "proj_in" if i == 0 else "proj_out" if i == k - 1 else f"layers.{i - 1}"
            new = f"{m['head']}.{end}.{m['p']}"
        else:
            new = _rename(key, _OFFICIAL_TO_HF)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    _fail("official_to_hf", unknown)
    if _PE_HF in out:
        out[_TIED_HF] = out[_PE_HF]
    return out


def is_hf_state_dict(state: dict[str, Any]) -> bool:
    """True when the keys look like a HF `SamModel` checkpoint rather than the official naming."""
    return any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in state)
