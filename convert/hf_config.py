"""Hugging Face `transformers` SAM configs (the `config.json` saved beside `model.safetensors`)
<-> SamConfig fields.

transformers' `SamConfig` holds three sub-configs, `vision_config` (`SamVisionConfig`),
`prompt_encoder_config` (`SamPromptEncoderConfig`) and `mask_decoder_config`
(`SamMaskDecoderConfig`); field names and defaults are those of transformers 5.x
(`models/sam/configuration_sam.py`). A field the file leaves out has transformers' default, as
transformers itself reads the file (`save_pretrained` writes only what differs from it).

Every field that shapes or computes the model is mapped or checked: the mapped ones become
SamConfig fields (the converter then checks them against the tensor shapes); the ones the official
architecture fixes (activations, layer-norm epsilons, four point embeddings) must have transformers'
default, or the model is one sam-jax does not implement and the file is refused, naming the field.
transformers' mask-decoder `layer_norm_eps` default (1e-6) is accepted for the official decoder:
it is how transformers runs the official weights (see `hf.py`), and sam-jax runs them as the
official code does. The generic `PretrainedConfig` fields (`torch_dtype`, `id2label`, ...) and
training-only ones (`attention_dropout`, `initializer_range`) do not change the model and are
ignored.

`hf_config_dict` is the way back (an export in transformers' layout): every mapped field written
out, the fixed ones left to transformers' defaults, so that `hf_config_fields` reads back the
same fields.
"""

from __future__ import annotations

from typing import Any

HF_CONFIG = "config.json"

_DEFAULTS: dict[str, dict[str, Any]] = {
    "vision_config": {
        "hidden_size": 768, "output_channels": 256, "num_hidden_layers": 12, "num_attention_heads": 12,
        "num_channels": 3, "image_size": 1024, "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
        "qkv_bias": True, "mlp_ratio": 4.0, "use_abs_pos": True, "use_rel_pos": True, "window_size": 14,
        "global_attn_indexes": [2, 5, 8, 11], "num_pos_feats": 128, "mlp_dim": None,
    },
    "prompt_encoder_config": {
        "hidden_size": 256, "image_size": 1024, "patch_size": 16, "mask_input_channels": 16,
        "num_point_embeddings": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
    },
    "mask_decoder_config": {
        "hidden_size": 256, "hidden_act": "relu", "mlp_dim": 2048, "num_hidden_layers": 2, "num_attention_heads": 8,
        "attention_downsample_rate": 2, "num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": 256,
        "layer_norm_eps": 1e-6,
    },
}

# (sub-config, transformers field) -> SamConfig field
_MAPPED = {
    ("vision_config", "hidden_size"): "encoder_embed_dim",
    ("vision_config", "num_hidden_layers"): "encoder_depth",
    ("vision_config", "num_attention_heads"): "encoder_num_heads",
    ("vision_config", "num_channels"): "in_chans",
    ("vision_config", "image_size"): "image_size",
    ("vision_config", "patch_size"): "patch_size",
    ("vision_config", "qkv_bias"): "qkv_bias",
    ("vision_config", "use_abs_pos"): "use_abs_pos",
    ("vision_config", "use_rel_pos"): "use_rel_pos",
    ("vision_config", "window_size"): "window_size",
    ("vision_config", "global_attn_indexes"): "encoder_global_attn_indexes",
    ("vision_config", "output_channels"): "prompt_embed_dim",
    ("prompt_encoder_config", "mask_input_channels"): "mask_in_chans",
    ("mask_decoder_config", "mlp_dim"): "decoder_mlp_dim",
    ("mask_decoder_config", "num_hidden_layers"): "decoder_depth",
    ("mask_decoder_config", "num_attention_heads"): "decoder_num_heads",
    ("mask_decoder_config", "attention_downsample_rate"): "attention_downsample_rate",
    ("mask_decoder_config", "num_multimask_outputs"): "num_multimask_outputs",
    ("mask_decoder_config", "iou_head_depth"): "iou_head_depth",
    ("mask_decoder_config", "iou_head_hidden_dim"): "iou_head_hidden_dim",
}
# Fixed by the official architecture: only transformers' default describes it.
_FIXED = [
    ("vision_config", "hidden_act"), ("vision_config", "layer_norm_eps"),
    ("prompt_encoder_config", "hidden_act"), ("prompt_encoder_config", "layer_norm_eps"),
    ("prompt_encoder_config", "num_point_embeddings"),
    ("mask_decoder_config", "hidden_act"), ("mask_decoder_config", "layer_norm_eps"),
]


def is_hf_config(data: Any) -> bool:
    """True for the JSON of a transformers SamConfig (rather than a sam-jax SamConfig)."""
    return isinstance(data, dict) and (data.get("model_type") == "sam" or any(k in data for k in _DEFAULTS))


def hf_config_fields(data: dict, where: str = HF_CONFIG) -> dict[str, Any]:
    """SamConfig fields from a transformers SamConfig dict; ValueError, naming `where` and the
    field, for anything sam-jax cannot run as written."""
    if data.get("model_type", "sam") != "sam":
        raise ValueError(f"{where} describes a {data['model_type']!r:.40} model, not SAM (model_type 'sam')")
    subs = {}
    for sub, defaults in _DEFAULTS.items():
        given = data.get(sub) or {}
        if not isinstance(given, dict):
            raise ValueError(f"{where}: {sub} is not a JSON object")
        subs[sub] = {**defaults, **{k: v for k, v in given.items() if k in defaults}}
    problems = [
        f"{sub}.{field} is {subs[sub][field]!r:.40}, sam-jax implements only {_DEFAULTS[sub][field]!r}"
        for sub, field in _FIXED if subs[sub][field] != _DEFAULTS[sub][field]
    ]
    fields = {ours: subs[sub][field] for (sub, field), ours in _MAPPED.items()}
    vision, prompt, decoder = subs["vision_config"], subs["prompt_encoder_config"], subs["mask_decoder_config"]
    width = vision["hidden_size"]
    mlp_dim = vision["mlp_dim"] if vision["mlp_dim"] is not None else int(width * vision["mlp_ratio"])
    if not (type(width) is int and width > 0 and type(mlp_dim) is int and int(width * (mlp_dim / width)) == mlp_dim):
        problems.append(f"vision_config.mlp_dim {mlp_dim!r:.40} is not an MLP width for hidden_size {width!r:.40}")
    else:
        fields["mlp_ratio"] = mlp_dim / width
    for name, value in [("prompt_encoder_config.hidden_size", prompt["hidden_size"]),
                        ("mask_decoder_config.hidden_size", decoder["hidden_size"])]:
        if value != vision["output_channels"]:
            problems.append(f"{name} {value!r:.40} differs from vision_config.output_channels {vision['output_channels']!r:.40}")
    for field in ("image_size", "patch_size"):
        if prompt[field] != vision[field]:
            problems.append(f"prompt_encoder_config.{field} {prompt[field]!r:.40} differs from vision_config's {vision[field]!r:.40}")
    if isinstance(vision["output_channels"], int) and vision["num_pos_feats"] != vision["output_channels"] // 2:
        problems.append(f"vision_config.num_pos_feats {vision['num_pos_feats']!r:.40} is not half of output_channels")
    if problems:
        raise ValueError(f"{where}: a SAM model sam-jax cannot run as written: " + "; ".join(problems))
    return fields


def hf_config_dict(config) -> dict[str, Any]:
    """The transformers `config.json` of a sam-jax SamConfig (a ViT encoder and SAM's decoder, the
    only model transformers' `SamModel` builds); ValueError for another family."""
    if config.encoder != "vit" or config.decoder != "sam":
        raise ValueError(f"transformers' SamModel has no {config.encoder} encoder with a {config.decoder} decoder: "
                         "only a ViT encoder with SAM's decoder can be written in its layout")
    ours = config.to_dict()
    subs: dict[str, dict[str, Any]] = {sub: {} for sub in _DEFAULTS}
    for (sub, field), name in _MAPPED.items():
        subs[sub][field] = ours[name]
    dim = config.prompt_embed_dim
    subs["vision_config"].update(mlp_dim=int(config.encoder_embed_dim * config.mlp_ratio), num_pos_feats=dim // 2)
    subs["prompt_encoder_config"].update(hidden_size=dim, image_size=config.image_size, patch_size=config.patch_size)
    subs["mask_decoder_config"]["hidden_size"] = dim
    return {"architectures": ["SamModel"], "model_type": "sam", **subs}
