"""The named choices and default values that `sam-jax` shows in its help, as plain Python: the
command line reads them before it imports JAX (so that `--help` and a mistyped flag answer at
once), and the module each belongs to imports it from here, so every value is written once.
Floor 1: nothing is imported here."""

from __future__ import annotations

from typing import NamedTuple

# numerics: compute dtypes, and our matmul precisions -> the values of jax_default_matmul_precision.
DTYPES = ("float32", "bfloat16")
PRECISIONS = {"exact": "highest", "fast": "default"}

# evaluation.protocols: the prompt of each object, and which of the outputs is scored.
PROMPTS = ("box", "point", "clicks")
SELECTIONS = ("score", "oracle", "single")

# export.stablehlo: the platforms an exported encoder may be lowered for.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

# convert.export: the files and key layouts `sam-jax export-pth` writes.
FORMATS = ("pth", "safetensors")
LAYOUTS = ("official", "transformers")

# parallel.rendezvous: how long the processes of a run wait for each other at the coordinator.
JOIN_TIMEOUT_SECONDS = 120.0


class GeneratorDefaults(NamedTuple):
    """The official SamAutomaticMaskGenerator's defaults, which its signature reads from here."""

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"


GENERATOR = GeneratorDefaults()
