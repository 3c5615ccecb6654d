"""The official module path `segment_anything.utils.amg`: automatic-mask-generation utilities,
re-exported from where they live: host geometry and small-region removal in `sam_jax.masks`,
the device maths (stability score, mask boxes, crop-edge test, NMS) in
`sam_jax.functional.automatic_mask_generator`, RLE in `sam_jax.io.rle`."""

from ..functional.automatic_mask_generator import (
    batched_mask_to_box, box_area, calculate_stability_score, is_box_near_crop_edge, nms,
)
from ..io.rle import area_from_rle, coco_decode_rle, coco_encode_rle, mask_to_rle, rle_to_mask
from ..masks import (
    box_xyxy_to_xywh, build_all_layer_point_grids, build_point_grid, connected_components, generate_crop_boxes, mask_boxes,
    remove_small_regions, uncrop_boxes_xyxy, uncrop_points,
)

__all__ = [
    "area_from_rle", "batched_mask_to_box", "box_area", "box_xyxy_to_xywh", "build_all_layer_point_grids", "build_point_grid",
    "calculate_stability_score", "coco_decode_rle", "coco_encode_rle", "connected_components", "generate_crop_boxes",
    "is_box_near_crop_edge", "mask_boxes", "mask_to_rle", "nms", "remove_small_regions", "rle_to_mask", "uncrop_boxes_xyxy",
    "uncrop_points",
]
