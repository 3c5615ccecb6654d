"""Training throughput: sam-jax's compiled step against the official PyTorch modules trained with
the same recipe (tests/reference/training.py: the same loss, clicks and feedback, autograd, then
torch.optim.AdamW), on the same CPU, the same batch and weights; and peak memory of each, with
and without remat, as the RSS increase of a fresh subprocess after its imports.

    python -m benchmarks.train_speed --config shapes_tiny --batch 8 --objects 4 --steps 5

The PyTorch side calls the official prompt encoder and mask decoder one object at a time (each
object's prompt has its own point count, and the official padding token changes outputs), as the
parity reference does; the image encoder runs once per batch on both sides.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    return float(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20


def batch_arrays(cfg, B: int, K: int):
    from sam_jax.train.data import prepare
    from sam_jax.train.synthetic_shapes import make_example

    rng = np.random.default_rng(0)
    exs = [prepare(*make_example(0, i, cfg.image_size), cfg.image_size, K, rng) for i in range(B)]
    return {k: np.stack([e[k] for e in exs]) for k in exs[0]}


def run_ours(cfg, b, steps: int, remat: bool, settings) -> float:
    import jax
    import jax.numpy as jnp

    from sam_jax import build_sam_from_config
    from sam_jax.train.trainable import prepare_model, split_trainable
    from sam_jax.train.rollout import Batch
from sam_jax.train.step import init_state, train_step_jit

    model = build_sam_from_config(cfg)
    graphdef, trainable, fixed = split_trainable(prepare_model(model, remat=remat))
    state = init_state(trainable, settings, 0)
    batch = Batch(jnp.asarray(b["image"]), None, jnp.asarray(b["input_size"]), jnp.asarray(b["masks"]), jnp.asarray(b["valid"]))
    state, m = train_step_jit(graphdef, state, fixed, batch, settings=settings)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = train_step_jit(graphdef, state, fixed, batch, settings=settings)
    jax.block_until_ready(state)
    return (time.perf_counter() - t0) / steps


def run_official(cfg, b, steps: int, settings) -> float:
    import jax
    import torch

    from tests.reference import training as ref
    from tests.reference.official import build_official
    from sam_jax.train.rollout import click_noise, rollout_noise

    torch.set_grad_enabled(True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    official = build_official(cfg).to(dev)
    B, K = b["valid"].shape
    P, S = B * K, cfg.image_size
    opt = torch.optim.AdamW(official.parameters(), lr=1e-4, eps=1e-8, weight_decay=0.1)
    t = lambda a: torch.tensor(np.asarray(a), device=dev)
    noise = rollout_noise(jax.random.PRNGKey(0), P, S, settings.prompts)
    step_noise = [t(click_noise(k, S)) for k in noise.step_keys]
    gt = t(b["masks"].reshape(P, S, S))
    sizes = t(np.repeat(b["input_size"], K, axis=0))
    valid = t(b["valid"].reshape(P))

    def step():
        opt.zero_grad()
        x = torch.stack([official.preprocess(t(b["image"][i, : b["input_size"][i, 0], : b["input_size"][i, 1]]).permute(2, 0, 1).float()) for i in range(B)])
        emb = official.image_encoder(x).repeat_interleave(K, dim=0)
        loss, _ = ref.rollout(official, emb, gt, valid, sizes, t(noise.is_box), t(noise.box), t(noise.first_point),
                              t(noise.mask_only), step_noise, int(valid.sum()))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(official.parameters(), 0.1)
        opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


IMPLS = ("official", "ours", "ours-remat")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="shapes_tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--correction-points", type=int, default=2)
    ap.add_argument("--mask-only-steps", type=int, default=1)
    ap.add_argument("--impl", choices=IMPLS, help="one side alone (the memory subprocess)")
    ap.add_argument("--impls", default=",".join(IMPLS), help="the sides to run, in this order (default: all)")
    args = ap.parse_args(argv)

    if args.impl is None:
        rows = {}
        for impl in args.impls.split(","):
            passed = sys.argv[1:] if argv is None else list(argv)
            r = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", *passed, "--impl", impl],
                               cwd=ROOT, capture_output=True, text=True)
            line = [l for l in r.stdout.splitlines() if l.startswith("{")]
            rows[impl] = json.loads(line[-1]) if line else {"error": r.stderr[-500:]}
            print(impl, rows[impl], flush=True)
        return

    import jax  # (imports before the baseline RSS)
    import torch

    from sam_jax import get_config
    from sam_jax.train.optim import OptimizerSettings
    from sam_jax.train.prompts import PromptSettings
    from sam_jax.train.step import StepSettings

    cfg = get_config(args.config)
    settings = StepSettings(PromptSettings(correction_points=args.correction_points, mask_only_steps=args.mask_only_steps),
                            optimizer=OptimizerSettings(learning_rate=1e-4, total_steps=args.steps, clip_norm=0.1), encoder_depth=cfg.encoder_depth)
    b = batch_arrays(cfg, args.batch, args.objects)
    base = _rss_mib()
    if args.impl == "official":
        dt = run_official(cfg, b, args.steps, settings)
    else:
        dt = run_ours(cfg, b, args.steps, args.impl == "ours-remat", settings)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"impl": args.impl, "config": args.config, "s_per_step": round(dt, 4), "examples_per_s": round(args.batch / dt, 2),
           "rss_increase_mib": round(peak - base, 1)}
    if args.impl == "official" and torch.cuda.is_available():
        row["device"], row["peak_device_mib"] = torch.cuda.get_device_name(), round(torch.cuda.max_memory_allocated() / 2**20, 1)
    elif args.impl != "official" and jax.devices()[0].platform != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        row["device"], row["peak_device_mib"] = jax.devices()[0].device_kind, round(stats.get("peak_bytes_in_use", 0) / 2**20, 1)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
