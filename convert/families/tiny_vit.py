"""MobileSAM's TinyViT image encoder (`mobile_sam/modeling/tiny_vit_sam.py`), also LiteMedSAM's
(the same network with a 1x1 stride-1 stem) and sam-hq's `vit_tiny`.

Its published files carry TinyViT's unused classifier head (`norm_head`, `head`): dropped, as
the encoder does not build it. MobileSAM's and sam-hq's TinyViT still build it (ImageNet's 1000
classes; SAM never runs it), so an export puts an untrained one back: LayerNorm ones and zeros,
Linear zeros. LiteMedSAM's copy of the code has no classifier. Nothing in a TinyViT's weights says the input size (its attention
biases are per window, its prompt encoder has no size): the published models use a 64 x 64
embedding grid, so the input size is 64 x the stride (1024 for MobileSAM, 256 for LiteMedSAM);
another size is `image_size=N` at load time.
"""

from __future__ import annotations

import numpy as np

from sam_jax.config import SamConfig

from .common import count, shape_of

E = r"image_encoder\."
RULES = [
    ("batch_norm", E + r".*\.bn"),
    ("conv", E + r".*\.c|" + E + r"neck\.[02]"),
    ("layer_norm", E + r"layers\.\d+\.blocks\.\d+\.(attn|mlp)\.norm|" + E + r"neck\.[13]"),
]
DROPPED = [E + r"(norm_head|head)\..*"]
EMBEDDING_GRID = 64
CLASSIFIER_CLASSES = 1000  # MobileSAM's and sam-hq's `TinyViT(num_classes=1000)`


def detect(keys) -> bool:
    return "image_encoder.patch_embed.seq.0.c.weight" in keys


def restore(config: SamConfig) -> dict[str, np.ndarray]:
    """The classifier MobileSAM's TinyViT (the 3x3 stride-2 stem, patch 16) builds, untrained;
    LiteMedSAM's (the 1x1 stem) has none."""
    if config.patch_size != 16:
        return {}
    dim = config.tiny_vit_embed_dims[-1]
    return {
        "image_encoder.norm_head.weight": np.ones(dim, np.float32), "image_encoder.norm_head.bias": np.zeros(dim, np.float32),
        "image_encoder.head.weight": np.zeros((CLASSIFIER_CLASSES, dim), np.float32),
        "image_encoder.head.bias": np.zeros(CLASSIFIER_CLASSES, np.float32),
    }


def infer(state: dict) -> dict:
    """The SamConfig fields of a TinyViT encoder that its tensor shapes determine."""
    shape = shape_of(state)
    stages = count(state, r"image_encoder\.layers\.(\d+)\.")
    dims = [shape(f"image_encoder.layers.{i}.blocks.0.{'conv1.c' if i == 0 else 'mlp.fc1'}.weight")[1] for i in range(stages)]
    depths = [count(state, rf"image_encoder\.layers\.{i}\.blocks\.(\d+)\.") for i in range(stages)]
    # Stage 0 is convolutional: its head count and window size are unused (the official defaults stay).
    heads = [SamConfig.tiny_vit_num_heads[0]] + [shape(f"image_encoder.layers.{i}.blocks.0.attn.attention_biases")[0]
                                                 for i in range(1, stages)]
    # A window of w x w has w * w distinct (|dy|, |dx|) offsets, one learned bias each.
    windows = [SamConfig.tiny_vit_window_sizes[0]] + [
        round(shape(f"image_encoder.layers.{i}.blocks.0.attn.attention_biases")[1] ** 0.5) for i in range(1, stages)]
    stem_kernel = shape("image_encoder.patch_embed.seq.0.c.weight")[-1]
    in_chans = shape("image_encoder.patch_embed.seq.0.c.weight")[1]
    hidden = shape("image_encoder.layers.0.blocks.0.conv1.c.weight")[0]
    mlp = shape("image_encoder.layers.1.blocks.0.mlp.fc1.weight")[0]
    patch = 16 if stem_kernel == 3 else 4  # MobileSAM's 3x3 stride-2 stem, or LiteMedSAM's 1x1
    return {
        "encoder": "tiny_vit", "in_chans": in_chans, "patch_size": patch, "image_size": EMBEDDING_GRID * patch,
        "tiny_vit_embed_dims": dims, "tiny_vit_depths": depths, "tiny_vit_num_heads": heads, "tiny_vit_window_sizes": windows,
        "tiny_vit_mbconv_expand_ratio": hidden / dims[0], "tiny_vit_local_conv_size": shape("image_encoder.layers.1.blocks.0.local_conv.c.weight")[-1],
        "mlp_ratio": mlp / dims[1], "prompt_embed_dim": shape("image_encoder.neck.0.weight")[0],
        # LiteMedSAM's 1x1 stem is its own: its checkpoints take its preprocessing.
        **({"preprocess": "lite_medsam"} if patch == 4 else {}),
    }
