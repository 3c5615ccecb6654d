"""The accelerator table, in one short run on a GPU (or TPU) machine: rows are appended to a JSON
Lines file as they are measured, so a run cut short still returns what it measured.

    python -m benchmarks.accelerator --output accelerator.jsonl --time-limit 480
    python -m benchmarks.accelerator --smoke --output /tmp/smoke.jsonl     # CPU, tiny sizes, interpret mode

Needs jax with its CUDA plugin (or on TPU, libtpu), torch with CUDA for the official side, and
segment-anything. Stages, each row timed after a warm-up call (compilation excluded; `compile_s`
is that first call):
1. kernel: the fused Pallas attention against the exact XLA attention at the vit_b/l/h head
   counts and dims, for a 14x14 window batch (25 windows of one image) and the 64x64 global grid,
   in float32 (exact precision: the kernel must match to 1e-5 before "auto" may select it, see
   AUTO_KERNEL_PLATFORMS) and bfloat16; plus, in bfloat16, the bias folded into the dot product
   and `jax.nn.dot_product_attention(implementation="cudnn")`. Error: max |out - ref| / max |ref|
   against the XLA path in float32 at highest precision.
2. embed: vit_b embedding (images/s) at batch 1 and 8, float32 and bfloat16, ours with the XLA
   attention and with the kernel, the official model (float32, and bfloat16 under autocast) in the
   same run on the same weights; our error against the official float32 embedding.
3. click: one-click latency, image (numpy) -> set_image -> predict(one point) -> masks on the
   host, ours and official; and predict alone on an embedded image.
4. amg: automatic mask generation per image (generate(image) -> records on the host) for each
   of --amg-models at the official defaults, ours and official on the same "confident" weights
   (`cases.make_confident`, so masks survive the thresholds), with the mask counts and the lowest
   IoU of paired masks. Smoke: the tiny model, 4 points per side.
A time guard (--time-limit) stops before a measurement would start past the limit.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .precision import rel_err

ROOT = Path(__file__).resolve().parents[1]
# (model, heads, head dim, grid name, grid, groups per head at batch 1): vit_l shares vit_b's head
# dim with more heads; an image has 25 14x14 windows and one 64x64 global grid.
KERNEL_CASES = [
    (model, heads, dim, grid, hw, per_head)
    for model, heads, dim in (("vit_b", 12, 64), ("vit_l", 16, 64), ("vit_h", 16, 80))
    for grid, hw, per_head in (("window", (14, 14), 25), ("global", (64, 64), 1))
]
SMOKE_KERNEL_CASES = [("vit_h", 2, 80, "global", (8, 8), 1)]  # padded head dim, ragged blocks


class Rows:
    """Appends one JSON object per line, flushed at once; stops measurements past the deadline."""

    def __init__(self, path: Path, time_limit: float):
        self.path, self.deadline = path, time.monotonic() + time_limit
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a")

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        print(json.dumps(row), flush=True)


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(first call s, median of `repeats` later calls s); fn must block until its result is ready."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def folded_attention(q, k, v, rel_h, rel_w, k_size, implementation="cudnn"):
    """The decomposed bias folded into one dot product: q' = [q | rel_h | rel_w] against
    k' = [k | one-hot key coordinates], so q' k'^T = q k^T + bias and a stock fused attention
    (cuDNN's takes bfloat16 and equal head dims for q, k, v: v is zero-padded) computes it."""
    import jax.numpy as jnp
    from jax import nn

    from sam_jax.kernels.attention import key_coordinates

    G, N, C = q.shape
    coords = jnp.asarray(key_coordinates(k_size, N, sum(k_size)), q.dtype)
    qf = jnp.concatenate([q, rel_h.astype(q.dtype), rel_w.astype(q.dtype)], -1)
    kf = jnp.concatenate([k, jnp.broadcast_to(coords, (G,) + coords.shape)], -1)
    D = -(-qf.shape[-1] // 8) * 8
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, D - x.shape[-1])))[:, :, None, :]  # (G, N, 1, D)
    out = nn.dot_product_attention(pad(qf), pad(kf), pad(v), scale=1.0, implementation=implementation)
    return out[:, :, 0, :C].astype(jnp.float32)


def kernel_rows(rows: Rows, smoke: bool, repeats: int):
    import jax
    import jax.numpy as jnp

    from sam_jax.kernels.attention import fused_attention
    from sam_jax.modeling.image_encoder import KERNEL_BACKENDS, batched_attention, decomposed_rel_pos

    platform = jax.devices()[0].platform  # "cpu", "gpu" (CUDA or ROCm) or "tpu"
    backend = KERNEL_BACKENDS["tpu" if platform == "tpu" else "cuda"]
    r = np.random.default_rng(0)
    for model, heads, C, grid_name, hw, per_head in SMOKE_KERNEL_CASES if smoke else KERNEL_CASES:
        G, N = heads * per_head, hw[0] * hw[1]
        q, k, v = (jnp.asarray(r.normal(size=(G, N, C)), jnp.float32) for _ in range(3))
        tables = [jnp.asarray(r.normal(size=(2 * s - 1, C)) * 0.5, jnp.float32) for s in hw]
        with jax.default_matmul_precision("highest"):
            rel = jax.jit(lambda q: decomposed_rel_pos(q, *tables, hw, hw))(q)
            ref = jax.jit(functools.partial(batched_attention, k_size=hw))(q * C**-0.5, k, v, *rel)
        impls = {
            "xla": functools.partial(batched_attention, k_size=hw),
            "pallas": functools.partial(fused_attention, k_size=hw, backend=backend, interpret=platform == "cpu"),
        }
        for dtype in ("float32", "bfloat16"):
            if dtype == "bfloat16" and platform == "gpu":
                impls["cudnn_folded"] = functools.partial(folded_attention, k_size=hw)
            args = tuple(x.astype(dtype) for x in (q * C**-0.5, k, v)) + rel
            for impl, fn in impls.items():
                if rows.time_left() < 20:
                    return
                row = dict(stage="kernel", model=model, grid=grid_name, hw=hw, groups=G, head_dim=C, dtype=dtype,
                           impl=impl, platform=platform)
                try:
                    with jax.default_matmul_precision("highest"):
                        f = jax.jit(fn)
                        first, t = _timed(lambda: f(*args).block_until_ready(), repeats)
                        row.update(compile_s=first, ms=1e3 * t, rel_err=rel_err(f(*args), ref))
                    row["exact"] = row["rel_err"] <= (1e-5 if dtype == "float32" else 2e-2)
                except Exception as e:  # a failing variant is a result, not the end of the run
                    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                rows.write(row)


def _setup(model_type: str, image: Path, synthetic_size: tuple[int, int]):
    """The official model and ours on the same weights (`cases.Setup`), with `image`, or a random
    image of `synthetic_size` (h, w) where that file does not exist."""
    from PIL import Image

    from . import cases as C

    if not image.exists():
        image = Path(tempfile.mkdtemp()) / "synthetic.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (*synthetic_size, 3), dtype=np.uint8)).save(image)
    return C.Setup(model_type, image)


def embed_rows(rows: Rows, setup, smoke: bool, repeats: int):
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from sam_jax.functional import embed_images_jit
    from sam_jax.modeling import with_numerics

    off = setup.official
    device = next(off.parameters()).device
    torch.backends.cudnn.allow_tf32 = False  # the official float32 reference in float32 (its convolutions default to TF32)
    S = setup.ours.config.image_size
    r = np.random.default_rng(1)
    for batch in (1,) if smoke else (1, 8):
        images = r.integers(0, 256, (batch, S, S, 3), dtype=np.uint8)
        x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float()
        x = (x - off.pixel_mean) / off.pixel_std
        reference = None
        for dtype in ("float32", "bfloat16"):
            if rows.time_left() < 60:
                return
            row = dict(stage="embed", model=setup.model_type, batch=batch, dtype=dtype, impl="official",
                       device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")

            def official(dtype=dtype):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    out = off.image_encoder(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return out

            if reference is None:
                reference = official().float().cpu().numpy()
            _write_timed(rows, row, official, lambda: official().float().cpu().numpy(), reference, batch, repeats)
            variants = [("xla", "exact")] if smoke else [("xla", "exact"), ("pallas", "exact")]
            if dtype == "float32" and not smoke:
                variants.append(("xla", "fast"))  # TF32 on GPU, one bfloat16 pass on TPU
            for attention, precision in variants:
                if rows.time_left() < 60:
                    return
                model = with_numerics(setup.ours, dtype=dtype, attention=attention, precision=precision)
                graphdef, params = nnx.split(model)
                imgs, sizes = jnp.asarray(images), jnp.full((batch, 2), S, jnp.int32)
                embed = lambda: embed_images_jit(graphdef, params, imgs, sizes)
                row = dict(row, impl=f"sam-jax ({attention} attention, {precision})", device=str(jax.devices()[0].device_kind))
                _write_timed(rows, row, lambda: embed().block_until_ready(), embed, reference, batch, repeats)


def _write_timed(rows: Rows, row: dict, run, output, reference, batch: int, repeats: int) -> None:
    """Times `run` into `row` (plus images/s and the error of `output()` against `reference`) and
    writes it; an exception (out of memory, a kernel that does not compile) is the row's error."""
    try:
        first, t = _timed(run, repeats)
        row.update(compile_s=first, ms=1e3 * t, images_per_s=batch / t, rel_err=rel_err(output(), reference))
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    rows.write(row)


def click_rows(rows: Rows, setup, smoke: bool, repeats: int):
    import jax
    import torch
    from segment_anything import SamPredictor as Official

    import sam_jax

    image = setup.image
    h, w = image.shape[:2]
    point, label = np.array([[w * 0.4, h * 0.6]]), np.array([1])
    cuda = torch.cuda.is_available()
    ours = sam_jax.SamPredictor(setup.ours)
    off = Official(setup.official)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for name, predictor, device in (("official", off, "cuda" if cuda else "cpu"),
                                    ("sam-jax", ours, str(jax.devices()[0].device_kind))):
        if rows.time_left() < 30:
            return

        def click():
            predictor.set_image(image)
            masks, _, _ = predictor.predict(point, label)
            sync()
            return masks

        def predict_only():
            predictor.predict(point, label)
            sync()

        first, t = _timed(click, repeats)
        _, t_predict = _timed(predict_only, repeats)
        rows.write(dict(stage="click", model=setup.model_type, impl=name, device=device, image=list(image.shape[:2]),
                        compile_s=first, ms=1e3 * t, predict_ms=1e3 * t_predict))


def amg_rows(rows: Rows, setup, smoke: bool, repeats: int):
    """One model's AMG rows (see stage 4 in the module docstring)."""
    import jax
    import torch
    from segment_anything import SamAutomaticMaskGenerator as Official

    from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator

    from .cases import min_matched_iou

    kwargs = dict(points_per_side=4) if smoke else {}
    cuda = torch.cuda.is_available()
    out = {}
    for name, make, device in (("official", Official, torch.cuda.get_device_name() if cuda else "cpu"),
                               ("sam-jax", SamAutomaticMaskGenerator, str(jax.devices()[0].device_kind))):
        if rows.time_left() < 120:
            return
        model = setup.official if name == "official" else setup.ours
        generator = make(model, **kwargs)
        row = dict(stage="amg", model=setup.model_type, impl=name, device=device, image=list(setup.image.shape[:2]),
                   settings=kwargs or "official defaults")

        def generate():
            out[name] = generator.generate(setup.image)
            if cuda:
                torch.cuda.synchronize()

        try:
            first, t = _timed(generate, repeats)
            row.update(compile_s=first, s=t, masks=len(out[name]))
            if name == "sam-jax" and "official" in out:
                row["min_mask_iou"] = min_matched_iou(out["sam-jax"], out["official"])
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.write(row)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", required=True, help="JSON Lines file the rows are appended to")
    ap.add_argument("--time-limit", type=float, default=480.0, help="seconds: no measurement starts after this")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, CPU-friendly (the kernel in interpret mode)")
    ap.add_argument("--stages", default="kernel,embed,click,amg")
    ap.add_argument("--model", default="vit_b", help="encoder of the embed and click stages")
    ap.add_argument("--amg-models", default="vit_b,vit_l,vit_h", help="encoders of the amg stage (smoke: the tiny one)")
    ap.add_argument("--image", default=str(ROOT.parent / "shared" / "images" / "truck.jpg"),
                    help="photo for the click stage (if missing, a random 1800x1200 image; 600x400 with --smoke)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 10, smoke 1; amg at most 3)")
    args = ap.parse_args(argv)

    # JAX would take 75% of the GPU at start, leaving the official model too little.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import torch

    rows = Rows(Path(args.output), args.time_limit)
    repeats = args.repeats or (1 if args.smoke else 10)
    stages = args.stages.split(",")
    rows.write(dict(stage="env", jax=jax.__version__, devices=[str(d) for d in jax.devices()],
                    torch=torch.__version__, torch_cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    smoke=args.smoke))
    if "kernel" in stages:
        kernel_rows(rows, args.smoke, repeats)
    from . import cases as C

    synthetic = (400, 600) if args.smoke else (1200, 1800)
    setup = None
    if {"embed", "click"} & set(stages) and rows.time_left() > 60:
        setup = _setup(C.TINY if args.smoke else args.model, Path(args.image), synthetic)
        if "embed" in stages:
            embed_rows(rows, setup, args.smoke, repeats)
        if "click" in stages:
            click_rows(rows, setup, args.smoke, repeats)
    for model in [C.TINY] if args.smoke else args.amg_models.split(","):
        if "amg" not in stages or rows.time_left() < 180:  # a vit_h setup and one AMG run each way
            break
        if setup is None or setup.model_type != model:
            setup = None  # the previous model's weights go before the next one's are built
            setup = _setup(model, Path(args.image), synthetic)
        amg_rows(rows, setup, args.smoke, min(repeats, 3))
    rows.write(dict(stage="done", time_left_s=rows.time_left()))


if __name__ == "__main__":
    main()
