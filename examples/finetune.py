"""Fine-tune a SAM on your own masks, here on generated shapes, and look at a mask before and after.

    python examples/finetune.py --output runs/shapes --steps 200
    python examples/finetune.py --checkpoint sam_vit_b --train-data my_coco.json --output runs/mine

Without --train-data it writes a small COCO data set of generated shapes and, without
--checkpoint, starts from the shipped tiny shapes model with its mask decoder re-initialised (so
the decoder has something to learn). The image encoder is frozen: each image is embedded once and
only the prompt encoder and mask decoder train (the common cheap fine-tune). The same as
`sam-jax train --freeze image_encoder ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from flax import nnx
from PIL import Image

import sam_jax
from sam_jax import assets
from sam_jax.train.data import open_dataset
from sam_jax.evaluation import evaluate
from sam_jax.train.config import TrainConfig
from sam_jax.train.trainer import Trainer
from sam_jax.train.optim import OptimizerSettings
from sam_jax.train.prompts import PromptSettings
from sam_jax.train.synthetic_shapes import make_example, write_coco
from sam_jax.io.overlay import overlay_masks
from sam_jax.runtime.progress import status


def fresh_decoder(model: sam_jax.Sam, seed: int = 1) -> sam_jax.Sam:
    """`model` with a randomly initialised mask decoder (same structure)."""
    new = sam_jax.Sam(model.config, rngs=nnx.Rngs(seed))
    nnx.update(new.image_encoder, nnx.state(model.image_encoder))
    nnx.update(new.prompt_encoder, nnx.state(model.prompt_encoder))
    return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="model to fine-tune (default: the shipped shapes model, decoder re-initialised)")
    ap.add_argument("--train-data", help="COCO JSON or SA-1B folder (default: generated shapes)")
    ap.add_argument("--output", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    out = Path(args.output)

    # Each long step says when it starts and ends (the trainer shows its own steps).
    with status(f"loading {args.checkpoint or 'the shipped shapes model'}"):
        model = sam_jax.load(args.checkpoint) if args.checkpoint else fresh_decoder(sam_jax.load(assets.SHAPES_TINY))
    if args.train_data:
        data = args.train_data
    else:
        folder = out.parent / f"{out.name}-data"
        with status(f"writing 300 generated images into {folder}"):
            data = folder / "instances.json" if folder.exists() else write_coco(folder, 300, seed=7)
    source = open_dataset(data)
    config = TrainConfig(
        steps=args.steps, batch_size=8, objects_per_image=4, freeze=("image_encoder",), log_every=max(1, args.steps // 10),
        checkpoint_every=0, prompts=PromptSettings(correction_points=2, mask_only_steps=1),
        optimizer=OptimizerSettings(learning_rate=args.lr, schedule="cosine", warmup_steps=min(20, args.steps // 10),
                                    weight_decay=0.05, clip_norm=1.0),
    )
    # One click at each object's centre, the output of best predicted IoU: `sam-jax eval --prompt point --limit 20`.
    with status("one-click mIoU before training (20 images)"):
        before = evaluate(model, data, prompt="point", limit=20).miou()
    trained = Trainer(model, source, config, out, overwrite=args.overwrite).run()
    with status("one-click mIoU after training (20 images)"):
        after = evaluate(trained, data, prompt="point", limit=20).miou()
    print(f"one-click mIoU on 20 training images: {before:.3f} before, {after:.3f} after; the model is in {out}")

    # One held-out image, one centre click, before and after.
    image, masks = make_example(seed=123, index=0)
    panels = []
    for m in (model, trained):
        p = sam_jax.SamPredictor(m)
        p.set_image(image)
        ys, xs = np.nonzero(masks[0])
        click = np.array([[xs.mean(), ys.mean()]])
        pred, scores, _ = p.predict(click, np.array([1]))
        panels.append(np.asarray(overlay_masks(image, pred[np.argmax(scores)][None], points=click, labels=[1])))
    Image.fromarray(np.concatenate(panels, axis=1)).resize((512, 256), Image.NEAREST).save(out / "before_after.png")
    print(f"wrote {out / 'before_after.png'} (left: before, right: after)")


if __name__ == "__main__":
    main()
