"""Model families: what the converter knows of each architecture. A family is a key mapping (which
official module paths are which layer kind: `RULES`), the keys its published files carry that
the model does not use (`DROPPED`), how to recognise its files (`detect`), the config fields
its tensor shapes determine (`infer`) and, for an export, the dropped keys its own PyTorch model
holds all the same (`restore`). Adding a family is adding a module here and its entry
below; `keys.py` and the pipeline read these tables and nothing else.

    image encoders   vit (the official ImageEncoderViT), tiny_vit (MobileSAM's and LiteMedSAM's TinyViT)
    mask decoders    sam (the official MaskDecoder; the prompt encoder, shared by all, with it),
                     hq (HQ-SAM's MaskDecoderHQ)
"""

from __future__ import annotations

from types import ModuleType

from . import hq, sam, tiny_vit, vit

ENCODERS: dict[str, ModuleType] = {"vit": vit, "tiny_vit": tiny_vit}
DECODERS: dict[str, ModuleType] = {"sam": sam, "hq": hq}
FAMILIES: tuple[ModuleType, ...] = (*ENCODERS.values(), *DECODERS.values())


def encoder_of(keys) -> str:
    """The image-encoder family whose keys these are ("vit", ...); "vit" when none matches (the
    shape checks then name what is missing)."""
    return next((name for name, f in ENCODERS.items() if f.detect(keys)), "vit")


def decoder_of(keys) -> str:
    """The mask-decoder family whose keys these are ("sam", ...)."""
    return next((name for name, f in reversed(DECODERS.items()) if f.detect(keys)), "sam")
