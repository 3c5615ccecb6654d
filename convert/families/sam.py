"""SAM's prompt encoder and mask decoder (`segment_anything/modeling/{prompt_encoder,mask_decoder,
transformer}.py`), shared by every family; the decoder family "sam"."""

from __future__ import annotations

from .common import count, shape_of

RULES = [
    ("embedding", r"prompt_encoder\.(point_embeddings\.\d+|not_a_point_embed|no_mask_embed)|mask_decoder\.(iou_token|mask_tokens)"),
    ("layer_norm", r"prompt_encoder\.mask_downscaling\.[14]|mask_decoder\.output_upscaling\.1"
                   r"|mask_decoder\.transformer\.(layers\.\d+\.norm[1-4]|norm_final_attn)"),
    ("conv_transpose", r"mask_decoder\.output_upscaling\.[03]"),
    ("conv", r"prompt_encoder\.mask_downscaling\.[036]"),
]
DROPPED: list[str] = []


def restore(config) -> dict:
    """Nothing dropped to put back: the reference module holds exactly the parameters."""
    return {}


def detect(keys) -> bool:
    return "mask_decoder.iou_token.weight" in keys


def infer(state: dict) -> dict:
    """The prompt-encoder and mask-decoder fields of SamConfig that the tensor shapes determine
    (the decoder's head count is in no shape: it comes from a config or the official 8)."""
    shape = shape_of(state)
    cfg: dict = {"mask_in_chans": shape("prompt_encoder.mask_downscaling.3.weight")[0]}
    cfg["decoder_depth"] = count(state, r"mask_decoder\.transformer\.layers\.(\d+)\.")
    cfg["decoder_mlp_dim"] = shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0]
    internal, dim = shape("mask_decoder.transformer.final_attn_token_to_image.q_proj.weight")  # Linear(dim, internal)
    cfg["attention_downsample_rate"] = dim // internal
    cfg["num_multimask_outputs"] = shape("mask_decoder.mask_tokens.weight")[0] - 1
    cfg["iou_head_depth"] = count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.")
    cfg["iou_head_hidden_dim"] = shape("mask_decoder.iou_prediction_head.layers.0.weight")[0]
    return cfg
