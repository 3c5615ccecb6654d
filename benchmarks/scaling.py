"""Scaling with the device count: image embeddings per second (`SamPredictor.embed_images`, the
batch split over the devices) and training examples per second (`train_step_jit` on a data mesh,
parameters replicated; with --fsdp N split over N), on 1, 2, 4, 8 devices, each count in a fresh
subprocess, against the one-device run.

    python -m benchmarks.scaling                      # simulated CPU devices (XLA_FLAGS), shapes_tiny
    python -m benchmarks.scaling --platform gpu --config vit_b --devices 1,2,4,8 --batch 16 --images 32
    python -m benchmarks.scaling --smoke              # 1 and 2 devices, one timed repeat (a test runs it)

On a CPU the simulated devices share the same cores, so the figures measure the overhead of
splitting (and that it computes), not a speed-up; on a multi-GPU or TPU host (--platform gpu/tpu)
the first N real devices are used and the efficiency is the real one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = "--child"


def child(args) -> dict:
    import jax
    import numpy as np

    from sam_jax import SamPredictor, build_sam_from_config
    from sam_jax.parallel import fsdp_shardings, make_mesh, place
    from sam_jax.train.data import prepare
    from sam_jax.train.trainable import split_trainable
    from sam_jax.train.optim import OptimizerSettings
    from sam_jax.train.prompts import PromptSettings
    from sam_jax.train.sharding import pad_batch, padded_size
    from sam_jax.train.synthetic_shapes import make_example
    from sam_jax.train.rollout import Batch
from sam_jax.train.sharding import batch_shardings, state_shardings
from sam_jax.train.step import StepSettings, init_state, train_step_jit

    devices = jax.devices(args.platform)[: args.n] if args.platform else jax.devices()[: args.n]
    if len(devices) < args.n:
        raise SystemExit(f"only {len(devices)} {devices[0].platform} devices")
    model = build_sam_from_config(args.config)
    model.to(devices[0])
    mesh = make_mesh(devices, fsdp=args.fsdp) if args.n > 1 else None
    S = model.config.image_size
    rng = np.random.default_rng(0)

    def timed(fn, repeats):
        fn()  # compile
        fn()  # a step's output state may be placed differently from the first input: a second compile
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t) / repeats

    images = [rng.integers(0, 255, (S, S, 3), dtype=np.uint8) for _ in range(args.images)]
    predictor = SamPredictor(model, mesh=mesh)
    embed_s = timed(lambda: predictor.embed_images(images).features.block_until_ready(), args.repeats)

    settings = StepSettings(PromptSettings(correction_points=2, mask_only_steps=1), optimizer=OptimizerSettings(warmup_steps=0, schedule="constant"),
                            encoder_depth=model.config.encoder_depth)
    ex = [prepare(*make_example(0, i, S), S, args.objects, rng) for i in range(args.batch)]
    stack = lambda k: np.stack([e[k] for e in ex])
    batch = Batch(stack("image"), None, stack("input_size"), stack("masks"), stack("valid"))
    graphdef, trainable, fixed = split_trainable(model)
    state = init_state(trainable, settings, 0)
    if mesh is not None:
        batch = pad_batch(batch, padded_size(args.batch, mesh))
        state, fixed = place(state, state_shardings(state, mesh)), place(fixed, fsdp_shardings(fixed, mesh))
        batch = place(batch, batch_shardings(batch, mesh))
    box = [state]

    def step():
        box[0], metrics = train_step_jit(graphdef, box[0], fixed, batch, settings=settings, mesh=mesh)
        metrics["loss"].block_until_ready()

    train_s = timed(step, args.repeats)
    return {"devices": args.n, "platform": devices[0].platform, "embed_images_per_s": args.images / embed_s,
            "train_examples_per_s": args.batch / train_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="shapes_tiny")
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--platform", default=None, help="cpu (simulated devices, the default), gpu or tpu (real ones)")
    p.add_argument("--fsdp", type=int, default=1)
    p.add_argument("--images", type=int, default=16, help="images per embedding call")
    p.add_argument("--batch", type=int, default=8, help="training images per step")
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    counts = [int(n) for n in args.devices.split(",")]
    if args.smoke:
        counts, args.repeats, args.images, args.batch = [1, 2], 1, 4, 2
    rows = []
    for n in counts:
        env = dict(os.environ)
        if args.platform in (None, "cpu"):
            env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        argv = [sys.executable, "-m", "benchmarks.scaling", CHILD, "--n", str(n), "--config", args.config, "--fsdp", str(args.fsdp),
                "--images", str(args.images), "--batch", str(args.batch), "--objects", str(args.objects), "--repeats", str(args.repeats)]
        if args.platform:
            argv += ["--platform", args.platform]
        r = subprocess.run(argv, env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{n} devices: {r.stderr.strip().splitlines()[-1]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"| devices | embedding images/s | efficiency | training examples/s | efficiency |  ({args.config}, {rows[0]['platform']}, "
          f"{args.images} images per call, batch {args.batch}, fsdp {args.fsdp})")
    print("|---|---|---|---|---|")
    for r in rows:
        k = r["devices"] / base["devices"]
        print(f"| {r['devices']} | {r['embed_images_per_s']:.1f} | {r['embed_images_per_s'] / (k * base['embed_images_per_s']):.2f} "
              f"| {r['train_examples_per_s']:.1f} | {r['train_examples_per_s'] / (k * base['train_examples_per_s']):.2f} |")


if __name__ == "__main__":
    main()
