"""Evaluating SAM by the protocols of the SAM papers: a box, the centre point, or simulated
correction clicks per annotated object, with the output chosen by score, by oracle or single; mIoU
overall, by COCO object size and per click. What `sam-jax eval` runs and what training validates
with (docs/evaluation.md states the protocols).

    protocols.py   the prompts, the click rule, the output selection, the area ranges (pure NumPy)
    run.py         evaluate(), evaluate_protocols(): predictions through SamPredictor on every given device

The annotation reader is `sam_jax.io.coco`; the runner that writes a results folder is
`sam_jax.runners.evaluate`.
"""

from .protocols import (
    AREA_RANGES, PROMPTS, SELECTIONS, Click, Protocol, area_range, box_prompt, farthest_point, first_click, next_click,
)
from .run import Evaluation, ObjectResult, disk_baseline, evaluate, evaluate_protocols, selected_images, summarize

__all__ = [
    "AREA_RANGES", "PROMPTS", "SELECTIONS", "Click", "Evaluation", "ObjectResult", "Protocol", "area_range", "box_prompt",
    "disk_baseline", "evaluate", "evaluate_protocols", "farthest_point", "first_click", "next_click", "selected_images", "summarize",
]
