"""The official ViT image encoder (`segment_anything/modeling/image_encoder.py`)."""

from __future__ import annotations


from .common import ConversionError, count, shape_of

RULES = [
    ("layer_norm", r"image_encoder\.(blocks\.\d+\.norm[12]|neck\.[13])"),
    ("conv", r"image_encoder\.(patch_embed\.proj|neck\.[02])"),
]
DROPPED: list[str] = []


def restore(config) -> dict:
    """Nothing dropped to put back: the reference module holds exactly the parameters."""
    return {}


def detect(keys) -> bool:
    return "image_encoder.patch_embed.proj.weight" in keys


def infer(state: dict) -> dict:
    """The image-encoder fields of SamConfig that the tensor shapes determine."""
    shape = shape_of(state)
    cfg: dict = {}
    embed_dim, in_chans, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    cfg.update(encoder_embed_dim=embed_dim, in_chans=in_chans, patch_size=patch)
    depth = count(state, r"image_encoder\.blocks\.(\d+)\.")
    cfg["encoder_depth"] = depth
    cfg["mlp_ratio"] = shape("image_encoder.blocks.0.mlp.lin1.weight")[0] / embed_dim
    cfg["qkv_bias"] = "image_encoder.blocks.0.attn.qkv.bias" in state
    cfg["use_abs_pos"] = "image_encoder.pos_embed" in state
    cfg["use_rel_pos"] = "image_encoder.blocks.0.attn.rel_pos_h" in state
    cfg["prompt_embed_dim"] = shape("image_encoder.neck.0.weight")[0]
    # The mask input is 4x the embedding grid and the grid is image_size / patch_size.
    grid = None
    if cfg["use_abs_pos"]:
        grid = shape("image_encoder.pos_embed")[1]
    if cfg["use_rel_pos"]:
        head_dim = shape("image_encoder.blocks.0.attn.rel_pos_h")[1]
        cfg["encoder_num_heads"] = embed_dim // head_dim
        sizes = [(shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] + 1) // 2 for i in range(depth)]
        grid = grid or max(sizes)
        cfg["encoder_global_attn_indexes"] = [i for i, s in enumerate(sizes) if s == grid]
        windows = {s for s in sizes if s != grid}
        if len(windows) > 1:
            raise ConversionError(f"blocks use several window sizes {sorted(windows)}: not a SAM encoder")
        cfg["window_size"] = windows.pop() if windows else 0
    if grid is not None:
        cfg["image_size"] = grid * patch
    return cfg



