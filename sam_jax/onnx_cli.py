"""`sam-jax export-onnx` and `sam-jax embed`: the official ONNX decoder export and the image
embedding `.npy` that it takes, from a converted checkpoint directory (or an official .pth)."""

from __future__ import annotations

import sys


def add_export_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="directory from `sam-jax convert` (or an official .pth)")
    p.add_argument("--model-type", default=None, help="config to check a .pth against (default: inferred)")
    p.add_argument("--output", required=True, help="output .onnx file")
    p.add_argument("--return-single-mask", action="store_true", help="output only the best mask")
    p.add_argument("--use-stability-score", action="store_true", help="stability scores instead of predicted IoU")
    p.add_argument("--return-extra-metrics", action="store_true", help="also output stability scores and areas")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (>= 11, default 17)")
    p.add_argument("--quantize-out", default=None, help="also write a dynamically uint8-quantized model here")


def add_embed_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="directory from `sam-jax convert` (or an official .pth)")
    p.add_argument("--model-type", default=None, help="config to check a .pth against (default: inferred)")
    p.add_argument("--image", required=True, help="image file (EXIF orientation applied, converted to RGB)")
    p.add_argument("--output", required=True, help="output .npy: the (1, C, h, w) float32 image_embeddings input")


def _missing(modules: list[str]) -> str | None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return ", ".join(missing) or None


def export(args) -> int:
    from .onnx_export import ONNX_HINT

    need = ["onnx"] + (["onnxruntime"] if args.quantize_out else [])
    missing = _missing(need)
    if missing:
        print(f"sam-jax export-onnx: error: {missing} not installed: {ONNX_HINT}", file=sys.stderr)
        return 2
    from .amg_cli import _load_model
    from .onnx_export import export_onnx, quantize_onnx

    model = _load_model(args)
    path = export_onnx(
        model, args.output, return_single_mask=args.return_single_mask, use_stability_score=args.use_stability_score,
        return_extra_metrics=args.return_extra_metrics, opset=args.opset,
    )
    print(f"wrote {path}")
    if args.quantize_out:
        print(f"wrote {quantize_onnx(path, args.quantize_out)} (dynamic uint8 quantization)")
    return 0


def embed(args) -> int:
    from .amg_cli import _load_model, read_image
    from .onnx_export import save_image_embedding

    image = read_image(args.image)
    path = save_image_embedding(_load_model(args), image, args.output)
    print(f"wrote {path}: embedding of a {image.shape[1]}x{image.shape[0]} image")
    return 0
