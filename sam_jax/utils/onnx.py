"""The official module path `segment_anything.utils.onnx`: `SamOnnxModel` lives in
`sam_jax.export.onnx.sam_onnx` and is re-exported here.

    >>> from sam_jax.utils.onnx import SamOnnxModel
    >>> onnx_model = SamOnnxModel(sam, return_single_mask=True)
    >>> onnx_model.export("sam_decoder.onnx", opset_version=17)     # the official notebook's torch.onnx.export
    >>> masks, scores, low_res_logits = onnx_model(**inputs)         # as the official module run in torch
"""

from ..export.onnx.sam_onnx import SamOnnxModel

__all__ = ["SamOnnxModel"]
