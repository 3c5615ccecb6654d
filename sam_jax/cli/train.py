"""`sam-jax train`: fine-tune a checkpoint on COCO instance annotations or SA-1B folders.

    sam-jax train --checkpoint sam_vit_b --train-data coco/instances_train.json --output runs/ft
    sam-jax train ... --freeze image_encoder            # decoder only, on cached image embeddings
    sam-jax train ... --resume                          # continue an interrupted run exactly
    sam-jax train ... --fsdp 4                          # parameters and AdamW state split over 4 devices
    sam-jax train ... --val-data val.json --val-every 200 --patience 5   # best/ by validation, early stop
    sam-jax train ... --lora-rank 8 --grad-accum 4      # LoRA on the encoder's attention, 4 batches per step
    sam-jax train ... --train-data cells/images --train-labels cells/labels   # instance label images

Every device of the platform is used (the batch split over them); in a multi-process run (see
--coordinator-address) every device of every process, each process running the same command.

The output folder is a checkpoint `sam_jax.load` reads once training ends (the last model; best/
holds the best by validation; see train/run_folder.py for what else it holds: the training state,
metrics.jsonl, TensorBoard events, the run's record). `sam-jax train-export` writes the model of
any saved step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..train.augment import KINDS as AUGMENT_KINDS
from ..train.augment import AugmentSettings
from ..train.config import (
    BOX_NOISE, IOU_LOSSES, SCHEDULES, WARMUP_STEPS, LoraSettings, LossSettings, OptimizerSettings, PromptSettings,
    TrainConfig, defaults,
)
from ..train.config import TARGETS as LORA_TARGETS
from . import common

D = defaults()  # every default of a run, from the library's settings (`sam_jax.train.config`)


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p, help="the model to start from: " + common.CHECKPOINT_HELP)
    p.add_argument("--train-data", required=True,
                   help="a COCO instances JSON, a folder of SA-1B image/JSON pairs, or with --train-labels a folder of images")
    p.add_argument("--val-data", help="validation data, same kinds (mIoU after 1 and 3 clicks and from the box, as `sam-jax eval` "
                                      "computes them; crowd annotations skipped)")
    p.add_argument("--image-dir", help="folder of the COCO file_names (default: the JSON's folder)")
    g = common.add_data_arguments(p)
    g.add_argument("--train-labels", metavar="DIR",
                   help="folder of instance label images, one per image of --train-data with the same name stem (.png or "
                        ".tif; each pixel its object's id, 0 the background)")
    g.add_argument("--val-labels", metavar="DIR", help="the same for --val-data")
    g.add_argument("--include-crowd", action="store_true",
                   help="train on iscrowd annotations too (skipped by default, as evaluation skips them)")
    g.add_argument("--allow-data-changes", action="store_true",
                   help="with --resume: continue although the training data changed (an image removed, annotations "
                        "edited); what changed is reported")
    p.add_argument("--output", required=True, help="output folder: the trained checkpoint, training state and metrics")
    g = p.add_argument_group("schedule")
    g.add_argument("--steps", type=int, default=D["steps"], help=f"optimizer steps (default {D['steps']})")
    g.add_argument("--batch-size", type=int, default=D["batch_size"],
                   help=f"images per step over all devices and processes (default {D['batch_size']}; padded with blank "
                        "rows to a multiple of the device count)")
    g.add_argument("--objects-per-image", type=int, default=D["objects_per_image"],
                   help=f"masks sampled per image (default {D['objects_per_image']})")
    g.add_argument("--lr", type=float, default=D["learning_rate"], help=f"peak learning rate (default {D['learning_rate']:g})")
    g.add_argument("--schedule", choices=SCHEDULES, default=D["schedule"],
                   help="after the warmup: /10 drops at 2/3 and 26/27 of the steps (the paper's), cosine, or constant "
                        f"(default {D['schedule']})")
    g.add_argument("--warmup-steps", type=int, default=D["warmup_steps"],
                   help=f"linear warmup (default: {WARMUP_STEPS}, or a tenth of --steps if less)")
    g.add_argument("--weight-decay", type=float, default=D["weight_decay"],
                   help=f"AdamW weight decay, not on biases and norms (default {D['weight_decay']:g})")
    g.add_argument("--clip-norm", type=float, default=D["clip_norm"],
                   help=f"gradient clipping by global norm (0: none; default {D['clip_norm']:g})")
    g.add_argument("--layer-decay", type=float, default=D["layer_decay"],
                   help=f"layer-wise lr decay over the ViT blocks (the paper: 0.8; default {D['layer_decay']:g}: none)")
    g.add_argument("--freeze", action="append", default=[], metavar="PART",
                   help="image_encoder, prompt_encoder, mask_decoder, or a regex over parameter paths (repeatable)")
    g.add_argument("--no-embedding-cache", action="store_true", help="with a frozen encoder, embed images at every step anyway")
    g.add_argument("--grad-accum", type=int, default=D["grad_accum"], metavar="N",
                   help="micro-batches of --batch-size images per optimizer step (optax.MultiSteps: one step of N * "
                        f"--batch-size images in the memory of one micro-batch; default {D['grad_accum']})")
    g.add_argument("--seed", type=int, default=D["seed"],
                   help=f"the data order, the objects and every prompt drawn (default {D['seed']})")
    g = p.add_argument_group("prompt simulation and loss")
    g.add_argument("--correction-points", type=int, default=D["correction_points"],
                   help=f"correction clicks after the first prompt (default {D['correction_points']})")
    g.add_argument("--mask-only-steps", type=int, default=D["mask_only_steps"],
                   help=f"rounds without a new click (default {D['mask_only_steps']})")
    g.add_argument("--box-noise", choices=BOX_NOISE, default=D["box_noise"],
                   help="noise of the box prompts: normal (std 0.1 of the side, clipped at 20 px) or uniform (SAM 2's) "
                        f"(default {D['box_noise']})")
    g.add_argument("--grad-through-masks", action="store_true", help="back-propagate through the fed-back mask logits")
    g.add_argument("--iou-loss", choices=IOU_LOSSES, default=D["iou_loss"],
                   help=f"loss of the IoU head: mse (the paper's) or l1 (SAM 2.1's) (default {D['iou_loss']})")
    g.add_argument("--supervise-all-iou", action="store_true", help="IoU head loss on every candidate output")
    g = p.add_argument_group("LoRA on the image encoder's attention (its other weights frozen; merged on export)")
    g.add_argument("--lora-rank", type=int, default=D["lora_rank"], metavar="R", help=f"rank of the factors (default {D['lora_rank']}: no LoRA)")
    g.add_argument("--lora-scale", type=float, default=D["lora_scale"],
                   help=f"the update is scale * x A B (PEFT's lora_alpha / r; default {D['lora_scale']:g})")
    g.add_argument("--lora-targets", type=_names(LORA_TARGETS), default=D["lora_targets"], metavar="qkv,proj",
                   help=f"the attention layers that get factors (default {','.join(D['lora_targets'])})")
    g = p.add_argument_group("augmentation (off by default; seeded, so a resumed run sees the same images)")
    g.add_argument("--augment", type=_names(AUGMENT_KINDS), default=(), metavar="hflip,vflip,rot90",
                   help="flips (each with probability 1/2) and rotations by a multiple of 90 degrees")
    g.add_argument("--scale-jitter", type=float, default=D["scale_jitter"], metavar="MAX",
                   help=f"zoom into a random window, by a factor log-uniform in [1, MAX] (default {D['scale_jitter']:g}: none)")
    g.add_argument("--crop-size", type=int, default=D["crop_size"], metavar="N",
                   help=f"images larger than N pixels on a side: a random N x N window at full resolution (default {D['crop_size']}: none)")
    g.add_argument("--color-jitter", type=float, default=D["color_jitter"], metavar="C",
                   help=f"brightness, contrast and saturation times a factor in [1 - C, 1 + C] (default {D['color_jitter']:g}: none)")
    g = p.add_argument_group("run")
    common.add_numerics_arguments(g)
    g.add_argument("--remat", action="store_true", help="recompute encoder activations in the backward pass (less memory)")
    g.add_argument("--log-every", type=int, default=D["log_every"], help=f"steps between metrics lines (default {D['log_every']})")
    g.add_argument("--val-every", type=int, default=D["val_every"], help=f"validate every N steps (default {D['val_every']}: at the end only)")
    g.add_argument("--val-images", type=int, default=D["val_images"],
                   help=f"validate on the first N images, a fixed sample (default {D['val_images']}: all of them)")
    g.add_argument("--patience", type=int, default=D["patience"],
                   help=f"stop after N validations without a better one-click mIoU (default {D['patience']}: never); best/ keeps the best")
    g.add_argument("--checkpoint-every", type=int, default=D["checkpoint_every"],
                   help=f"save the training state every N steps (default {D['checkpoint_every']})")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last saved state")
    common.add_overwrite_argument(p, "a previous run in --output (only the files a run writes)")
    common.add_quiet_argument(p)
    common.add_runtime_arguments(p)
    g.add_argument("--fsdp", type=int, default=1, metavar="N",
                   help="split parameters and optimizer state over N devices (must divide the device count; default %(default)s: replicated)")
    common.add_distributed_arguments(p)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run the flags describe; the library checks it (ValueError naming the setting)."""
    if args.fsdp < 1:
        raise ValueError("--fsdp must be at least 1")
    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, objects_per_image=args.objects_per_image, seed=args.seed,
        dtype=args.dtype, remat=args.remat, freeze=tuple(args.freeze), cache_embeddings=not args.no_embedding_cache,
        grad_accum=args.grad_accum, log_every=args.log_every, val_every=args.val_every, val_images=args.val_images,
        patience=args.patience, checkpoint_every=args.checkpoint_every,
        prompts=PromptSettings(correction_points=args.correction_points, mask_only_steps=args.mask_only_steps,
                               box_noise=args.box_noise, grad_through_masks=args.grad_through_masks),
        loss=LossSettings(iou_loss=args.iou_loss, supervise_all_iou=args.supervise_all_iou),
        optimizer=OptimizerSettings(learning_rate=args.lr, schedule=args.schedule, warmup_steps=args.warmup_steps,
                                    weight_decay=args.weight_decay, clip_norm=args.clip_norm, layer_decay=args.layer_decay),
        lora=LoraSettings(rank=args.lora_rank, scale=args.lora_scale, targets=args.lora_targets),
        augment=AugmentSettings(**{k: k in args.augment for k in AUGMENT_KINDS}, scale_jitter=args.scale_jitter,
                                crop_size=args.crop_size, color_jitter=args.color_jitter),
    )


def _names(allowed: tuple[str, ...]):
    """A comma-separated subset of `allowed`, as a tuple (argparse's one-line error otherwise)."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n for n in text.split(",") if n)
        wrong = [n for n in names if n not in allowed]
        if wrong or not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(allowed)}, got {text!r}")
        return names
    return parse


def training_mesh(args: argparse.Namespace):
    """Every device of the platform (of every process) on the data axis, or --fsdp of them on the
    fsdp axis (a `jax.sharding.Mesh`); None for a single device."""
    jax = common.deferred("jax")
    devices = jax.devices(args.device) if args.device else jax.devices()
    if len(devices) == 1 and args.fsdp == 1:
        return None
    if len(devices) % args.fsdp:
        raise ValueError(f"--fsdp {args.fsdp} must divide the device count {len(devices)}")
    return common.deferred(".parallel").make_mesh(devices, fsdp=args.fsdp)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    data = (args.train_data, args.val_data, args.image_dir, args.train_labels, args.val_labels)
    checkpoint = [args.checkpoint] if args.checkpoint and Path(args.checkpoint).exists() else []
    # The folder's refusals before the data and the model are read (they take a while); the Trainer checks again.
    common.deferred(".train.run_folder").check_run_output(args.output, data, checkpoint, resume=args.resume, overwrite=args.overwrite)
    common.join_processes(args)
    common.setup_runtime(args)
    if args.val_labels and not args.val_data:
        raise ValueError("--val-labels needs --val-data (the folder of their images)")
    if args.allow_data_changes and not args.resume:
        raise ValueError("--allow-data-changes applies to --resume")
    primary = common.deferred("jax").process_index() == 0
    quiet = args.quiet or not primary
    open_dataset = common.deferred(".train.data").open_dataset
    train = open_dataset(args.train_data, args.image_dir, labels=args.train_labels, quiet=quiet,
                         options=common.data_options(args, crowd=args.include_crowd))
    val = None
    if args.val_data:
        val = open_dataset(args.val_data, args.image_dir, labels=args.val_labels, options=common.data_options(args), quiet=quiet)
    for dataset in (train, val):
        if dataset is not None and primary and (dataset.skipped_text() or not args.quiet):
            print(f"sam-jax train: {dataset.summary()}", flush=True)
    model = common.load_model(args)
    Trainer = common.deferred(".train.trainer").Trainer
    trainer = Trainer(model, train, config, args.output, val, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                      mesh=training_mesh(args), allow_data_changes=args.allow_data_changes,
                      inputs=[common.model_spec(args).path(quiet=True)])
    try:
        trainer.run()
    except KeyboardInterrupt:
        saved = trainer.saved_step
        where = f"the last saved state is step {saved}" if saved is not None else "no training state was saved yet"
        print(f"sam-jax train: interrupted at step {trainer.step}; {where}: continue with --resume", file=sys.stderr, flush=True)
        return 130
    if not args.quiet:
        print(f"sam-jax train: wrote {args.output} (load it with sam_jax.load)")
    return 0
