"""What an exported image encoder takes and gives, per model family: one description shared by
the ONNX encoder (`onnx.encoder_onnx`) and the `jax.export` artifact (`stablehlo`).

Input `image` float32 (B, 3, S, S), S the model's image_size: the image already preprocessed as
the model's profile says (`PREPROCESSING`, `sam_jax.modeling.sam.preprocess`). The profile stays
outside the exported encoder, as in each family's own code, where it happens before the encoder
(the official `Sam.preprocess`; LiteMedSAM's and MedSAM's inference scripts min-max scale the
resized image themselves before calling the encoder).

Outputs: `image_embeddings` (B, C, S/p, S/p) (p the patch size, or TinyViT's stride), the
decoder's input; for an HQ-SAM model also `interm_embeddings` (1, B, S/p, S/p, D): the early
feature the HQ decoder fuses (D = `config.early_feature_dim`: the ViT's first global-attention
block's output, or TinyViT's layers[1] output), in sam-hq's layout, a stack over the encoder's
intermediate features. sam-hq's ViT stacks one per global-attention block, of which its decoder
reads only the first; the export stacks that one alone (as sam-hq's vit_tiny does), so that the
HQ decoder graph takes either.
"""

from __future__ import annotations

from ..config import SamConfig

PREPROCESSING = {
    "official": "the image resized so that its longest side is S (ResizeLongestSide, bilinear), "
                "(pixels - pixel_mean) / pixel_std per channel, zero-padded at the bottom and right to S x S",
    "lite_medsam": "the image resized so that its longest side is S, min-max scaled to [0, 1] over all the resized "
                   "image's pixels ((x - min) / max(max - min, 1e-8)), zero-padded at the bottom and right to S x S",
    "medsam": "the image resized to S x S (both sides), min-max scaled to [0, 1] over all its pixels ((x - min) / "
              "max(max - min, 1e-8)); no padding",
}


def image_input(config: SamConfig) -> str:
    """One line saying how this model's `image` input is made."""
    return f"{PREPROCESSING[config.preprocess]} (sam_jax.modeling.sam.preprocess, profile {config.preprocess!r})"


def encoder_outputs(config: SamConfig, batch: int | str) -> list[tuple[str, list]]:
    """(name, shape) of each output of the exported encoder of `config` (see the module docstring)."""
    g = config.image_embedding_size
    outputs = [("image_embeddings", [batch, config.prompt_embed_dim, g, g])]
    if config.decoder == "hq":
        outputs.append(("interm_embeddings", [1, batch, g, g, config.early_feature_dim]))
    return outputs
