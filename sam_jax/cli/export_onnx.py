"""`sam-jax export-onnx`: the official ONNX export of the prompt encoder + mask decoder (sam-hq's
for an HQ-SAM checkpoint, with its flags --hq-token-only and --multimask-output), or with
`--encoder` the image encoder (its outputs are the decoder's `image_embeddings` input, and for
HQ-SAM its `interm_embeddings`)."""

from __future__ import annotations

import argparse
import importlib.util

from ..io.outputs import check_output
from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p)
    p.add_argument("--output", required=True, help="output .onnx file")
    p.add_argument("--encoder", action="store_true",
                   help="export the image encoder instead: image (B, 3, S, S) preprocessed and padded -> image_embeddings "
                        "(and interm_embeddings for HQ-SAM; weights over 2 GB go to OUTPUT.data beside it)")
    p.add_argument("--return-single-mask", action="store_true", help="output only the best mask (SAM's decoder)")
    p.add_argument("--hq-token-only", action="store_true",
                   help="HQ-SAM: the HQ mask alone (default: SAM's mask plus the HQ mask, as sam-hq)")
    p.add_argument("--multimask-output", action="store_true",
                   help="HQ-SAM: SAM's mask is the best of its multimask outputs (default: its single-mask output)")
    p.add_argument("--use-stability-score", action="store_true", help="stability scores instead of predicted IoU")
    p.add_argument("--return-extra-metrics", action="store_true", help="also output stability scores and areas")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (>= 11, default 17)")
    p.add_argument("--gelu-approximate", action="store_true",
                   help="tanh approximations of the GELUs, for runtimes with a slow or no Erf")
    p.add_argument("--quantize-out", default=None, help="also write a dynamically uint8-quantized model here")
    common.add_quiet_argument(p)
    common.add_overwrite_argument(p, "existing ONNX files written by sam-jax")


def run(args: argparse.Namespace) -> int:
    onnx = common.deferred(".export.onnx")
    need = ["onnx"] + (["onnxruntime"] if args.quantize_out else [])
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} not installed: {onnx.ONNX_HINT}")
    decoder_only = [f for f in ("return_single_mask", "hq_token_only", "multimask_output", "use_stability_score",
                                "return_extra_metrics", "quantize_out", "gelu_approximate") if getattr(args, f)]
    if args.encoder and decoder_only:
        raise ValueError(f"--{decoder_only[0].replace('_', '-')} applies to the decoder export, not to --encoder")
    outputs = [args.output] + ([args.quantize_out] if args.quantize_out else [])
    for i, output in enumerate(outputs):  # before loading anything
        check_output(output, kind="file", overwrite=args.overwrite, is_own=onnx.is_own_onnx, what=onnx.ONNX_OUTPUT,
                     inputs=[args.checkpoint] + outputs[:i])
    model = common.model_spec(args, numerics=False).load(quiet=args.quiet)
    if args.encoder:
        print(f"wrote {onnx.export_encoder_onnx(model, args.output, opset=args.opset, overwrite=args.overwrite)}")
        return 0
    path = onnx.export_onnx(
        model, args.output, return_single_mask=args.return_single_mask, use_stability_score=args.use_stability_score,
        return_extra_metrics=args.return_extra_metrics, hq_token_only=args.hq_token_only,
        multimask_output=args.multimask_output, opset=args.opset, gelu_approximate=args.gelu_approximate,
        overwrite=args.overwrite,
    )
    print(f"wrote {path}")
    if args.quantize_out:
        print(f"wrote {onnx.quantize_onnx(path, args.quantize_out, overwrite=args.overwrite)} (dynamic uint8 quantization)")
    return 0
