"""HQ-SAM's mask decoder (`segment_anything_hq/modeling/mask_decoder_hq.py`): SAM's decoder plus
the HQ output token (`hf_token`, `hf_mlp`) and the layers that fuse an early encoder feature
(`compress_vit_feat`, `embedding_encoder`, `embedding_maskfeature`)."""

from __future__ import annotations

D = r"mask_decoder\."
RULES = [
    ("embedding", D + r"hf_token"),
    ("conv_transpose", D + r"(compress_vit_feat|embedding_encoder)\.[03]"),
    ("conv", D + r"embedding_maskfeature\.[03]"),
    ("layer_norm", D + r"(compress_vit_feat|embedding_encoder|embedding_maskfeature)\.1"),
]
DROPPED: list[str] = []


def restore(config) -> dict:
    """Nothing dropped to put back: the reference module holds exactly the parameters."""
    return {}


def detect(keys) -> bool:
    return "mask_decoder.hf_token.weight" in keys


def infer(state: dict) -> dict:
    """The decoder is SAM's plus the HQ parts; their widths follow from the rest of the config."""
    return {"decoder": "hq"}
