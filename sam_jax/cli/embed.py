"""`sam-jax embed`: an image's embedding as a `.npy`, the `image_embeddings` input of the ONNX decoder."""

from __future__ import annotations

import argparse

from ..io.images import read_image
from ..io.outputs import check_output
from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p)
    p.add_argument("--image", required=True, help="image file (EXIF orientation applied, converted to RGB)")
    p.add_argument("--output", required=True, help="output .npy: the (1, C, h, w) float32 image_embeddings input")
    common.add_overwrite_argument(p, "an existing embedding .npy")
    common.add_runtime_arguments(p)
    common.add_quiet_argument(p)
    common.add_numerics_arguments(p)


def run(args: argparse.Namespace) -> int:
    onnx = common.deferred(".export.onnx")
    check_output(args.output, kind="file", overwrite=args.overwrite, is_own=onnx.is_embedding_npy,
                 what=onnx.EMBEDDING_OUTPUT, inputs=[args.image, args.checkpoint])
    common.setup_runtime(args)
    image = read_image(args.image)
    model = common.load_model(args)
    with common.deferred(".runtime.progress").status(f"embedding {args.image}", args.quiet):
        path = onnx.save_image_embedding(model, image, args.output, overwrite=args.overwrite)
    print(f"wrote {path}: embedding of a {image.shape[1]}x{image.shape[0]} image")
    return 0
