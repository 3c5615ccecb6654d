"""The prepared device run: one script, under five minutes on a GPU (or TPU) machine, whose rows
decide where attention="auto" takes the Pallas kernel (`sam_jax.kernels.selection`) and give the
accelerator table. Rows are appended to a JSON Lines file as they are measured, so a run cut
short keeps what it measured; a time guard (--time-limit) starts nothing that would end past it.

    python -m benchmarks.accelerator --output accelerator.jsonl              # ~280 s
    python -m benchmarks.accelerator --smoke --output /tmp/smoke.jsonl        # CPU, tiny sizes, interpret mode

Needs jax with its CUDA plugin (or libtpu), torch with CUDA for the official side, and
segment-anything. Stages, in priority order (times are medians after a warm-up call, whose time
including compilation is `compile_s`):
1. kernel: attention alone, the kernel (attention="pallas") against the XLA path (attention=
   "xla"), vit_b and vit_h head counts and dims, 25 windows of 14x14 and the 64x64 global grid
   of one image, in bfloat16 and float32 at exact precision. rel_err: max |out - ref| / max |ref|
   against the XLA path in float32 at Precision.HIGHEST. "exact": float32 within 1e-5; bfloat16
   no further than the XLA bfloat16 path on the same inputs.
2. cudnn: `jax.nn.dot_product_attention(implementation="cudnn")`, bfloat16 q, k, v and the
   materialised float32 bias (its construction included in the time), after each stage-1 case
   on its inputs. GPU only; unverified: a float32 bias gave NaN on an H100 with some jax
   versions, which rel_err shows.
3. decision: per (platform, window or global, dtype), from stage 1: "kernel" when the kernel was
   faster than XLA and exact for every model, else "xla", with the speedup and error that an
   entry of `selection.AUTO_KERNEL` records. Nothing reads these rows automatically.
4. embed: vit_b and vit_h image embedding at batch 1 and 8 (images/s), the official model in
   float32 (the reference) and in bfloat16 under autocast, ours in bfloat16 with the XLA path
   and with the kernel; error against the official float32 embedding.
5. amg: automatic mask generation with vit_b, ours and official on the same "confident" weights
   (`cases.make_confident`), official defaults; mask counts and the lowest IoU of paired masks.
6. click: one click end to end (image -> set_image -> predict(one point) -> masks on the host),
   ours and official, and predict alone.
7. profile: where the time of our bfloat16 vit_b embedding goes (the kernel and the XLA path),
   from a profiler trace of three calls: the heaviest device operations per call.
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
from .trace import trace_summary

ROOT = Path(__file__).resolve().parents[1]
KERNEL_MODELS = [("vit_b", 12, 64), ("vit_h", 16, 80)]  # (model, heads, head dim)
GRIDS = [("window", (14, 14), 25), ("global", (64, 64), 1)]  # (kind, key grid, groups per head)
SMOKE_MODELS = [("vit_h", 2, 80)]
SMOKE_GRIDS = [("window", (14, 14), 1), ("global", (16, 24), 1)]  # global: rows of 24 keys, masked
DTYPES = ("bfloat16", "float32")


class Rows:
    """Appends one JSON object per line, flushed at once; knows the time left before the deadline."""

    def __init__(self, path: Path, time_limit: float):
        self.path, self.deadline = path, time.monotonic() + time_limit
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a")

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self, row: dict) -> dict:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        print(json.dumps(row), flush=True)
        return row


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


def _measure(rows: Rows, row: dict, run, output, reference, repeats: int, batch: int | None = None,
             exact_below: float | None = None) -> dict:
    """Times `run` (blocks until done) into `row`, with the error of `output()` against
    `reference` (images/s for a batch; "exact" if the error is at most exact_below), and writes
    it; an exception (out of memory, a kernel that does not build) is the row's error."""
    try:
        first, t = _timed(run, repeats)
        row.update(compile_s=first, ms=1e3 * t, rel_err=rel_err(output(), reference))
        if batch:
            row["images_per_s"] = batch / t
        if exact_below is not None:
            row["exact"] = row["rel_err"] <= exact_below
    except Exception as e:  # a failing variant is a result, not the end of the run
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    return rows.write(row)


def _jax_measure(rows: Rows, row: dict, fn, reference, repeats: int, **kwargs) -> dict:
    """`_measure` of a jax function of no arguments."""
    return _measure(rows, row, lambda: fn().block_until_ready(), fn, reference, repeats, **kwargs)


def _platform(jax) -> str:
    platform = jax.devices()[0].platform
    return "cuda" if platform == "gpu" else platform  # the lowering platform names of selection.AUTO_KERNEL


def kernel_rows(rows: Rows, smoke: bool, repeats: int, cudnn: bool) -> list[dict]:
    """Stages 1 and 2; returns the stage-1 rows."""
    import jax
    import jax.numpy as jnp

    from sam_jax.modeling.image_encoder import attention, batched_attention, decomposed_rel_pos

    platform = _platform(jax)
    kernel = "interpret" if platform == "cpu" else "pallas"  # Pallas has no CPU lowering
    r = np.random.default_rng(0)
    written, xla_err = [], {}
    for model, heads, C in SMOKE_MODELS if smoke else KERNEL_MODELS:
        for kind, hw, per_head in SMOKE_GRIDS if smoke else GRIDS:
            G, N = heads * per_head, hw[0] * hw[1]
            q, k, v = (jnp.asarray(r.normal(size=(G, N, C)), jnp.float32) for _ in range(3))
            tables = [jnp.asarray(r.normal(size=(2 * s - 1, C)) * 0.5, jnp.float32) for s in hw]
            with jax.default_matmul_precision("highest"):
                rel = jax.jit(lambda q: decomposed_rel_pos(q, *tables, hw, hw))(q)
                ref = jax.jit(functools.partial(batched_attention, k_size=hw))(q * C**-0.5, k, v, *rel)
            for dtype in DTYPES:
                args = tuple(x.astype(dtype) for x in (q * C**-0.5, k, v)) + rel
                for impl in ("xla", "pallas"):
                    if rows.time_left() < 20:
                        return written
                    # float32: within 1e-5; bfloat16: no further than the XLA bfloat16 path
                    bound = 1e-5 if dtype == "float32" or impl == "xla" else xla_err.get((model, kind, dtype), 0.0)
                    with jax.default_matmul_precision("highest"):  # the model's "exact" setting
                        f = jax.jit(functools.partial(attention, k_size=hw, kernel=impl if impl == "xla" else kernel))
                        row = dict(stage="kernel", platform=platform, device=jax.devices()[0].device_kind, model=model,
                                   grid=kind, hw=hw, groups=G, head_dim=C, dtype=dtype, impl=impl)
                        row = _jax_measure(rows, row, lambda: f(*args), ref, repeats, exact_below=bound if impl == "pallas" else None)
                    if impl == "xla" and "error" not in row:
                        xla_err[model, kind, dtype] = row["rel_err"]
                    written.append(row)
            if cudnn and platform == "cuda" and rows.time_left() > 20:
                row = dict(stage="cudnn", platform=platform, device=jax.devices()[0].device_kind, model=model, grid=kind,
                           hw=hw, groups=G, head_dim=C, dtype="bfloat16", impl="cudnn, float32 bias")
                f = jax.jit(functools.partial(cudnn_attention, k_size=hw))
                args = tuple(x.astype("bfloat16") for x in (q * C**-0.5, k, v)) + rel
                _jax_measure(rows, row, lambda: f(*args), ref, repeats, exact_below=xla_err.get((model, kind, "bfloat16"), 0.0))
    return written


def cudnn_attention(q, k, v, rel_h, rel_w, k_size):
    """cuDNN's fused attention with the decomposed bias materialised in float32: (G, 1, N, N)."""
    import jax.numpy as jnp
    from jax import nn

    G, N, _ = q.shape
    bias = (rel_h.reshape(G, N, k_size[0], 1) + rel_w.reshape(G, N, 1, k_size[1])).reshape(G, 1, N, N)
    out = nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None], bias=bias, scale=1.0,
                                   implementation="cudnn")
    return out[:, :, 0].astype(jnp.float32)


def decision_rows(rows: Rows, kernel: list[dict]) -> None:
    """Stage 3 (see the module docstring)."""
    from sam_jax.kernels.selection import attention_kind

    by_case: dict[tuple, dict] = {}
    for row in kernel:
        by_case.setdefault((row["platform"], attention_kind(tuple(row["hw"])), row["dtype"], row["model"]), {})[row["impl"]] = row
    keys = sorted({key[:3] for key in by_case})
    for platform, kind, dtype in keys:
        cases = {m: impls for (p, k, d, m), impls in by_case.items() if (p, k, d) == (platform, kind, dtype)}
        complete = {m: i for m, i in cases.items() if {"xla", "pallas"} <= set(i) and not any("error" in r for r in i.values())}
        speedups = [i["xla"]["ms"] / i["pallas"]["ms"] for i in complete.values()]
        exact = all(i["pallas"]["exact"] for i in complete.values())
        # On a CPU the kernel ran in interpret mode, which the CPU path never takes.
        choose = platform != "cpu" and len(complete) == len(cases) > 0 and exact and min(speedups) > 1.0
        rows.write(dict(stage="decision", platform=platform, device=next(iter(cases.values()))["xla"]["device"],
                        kind=kind, dtype=dtype, models=sorted(cases), measured=sorted(complete),
                        speedup=min(speedups, default=None), rel_err=max((i["pallas"]["rel_err"] for i in complete.values()), default=None),
                        exact=exact, choice="kernel" if choose else "xla"))


def _setup(model_type: str, image: Path, synthetic_size: tuple[int, int]):
    """The official model and ours on the same weights (`cases.Setup`), with `image`, or a random
    image of `synthetic_size` (h, w) where that file does not exist."""
    from PIL import Image

    from . import cases as C

    if not image.exists():
        image = Path(tempfile.mkdtemp()) / "synthetic.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (*synthetic_size, 3), dtype=np.uint8)).save(image)
    return C.Setup(model_type, image)


def embed_rows(rows: Rows, setup, smoke: bool, repeats: int, need_s: float):
    """Stage 4 for one model; need_s: the time one of its rows takes, compilation included."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from sam_jax.functional import embed_images_jit
    from sam_jax.modeling import with_numerics

    off = setup.official
    device = next(off.parameters()).device
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # the float32 reference in float32
    S = setup.ours.config.image_size
    attentions = ("xla",) if smoke else ("xla", "pallas")  # on CPU "pallas" is the same blocked XLA loop
    for batch in (1,) if smoke else (1, 8):
        images = np.random.default_rng(batch).integers(0, 256, (batch, S, S, 3), dtype=np.uint8)
        x = (torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float() - off.pixel_mean) / off.pixel_std

        def official(autocast: bool):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = off.image_encoder(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        if rows.time_left() < need_s:
            return
        reference = official(False).float().cpu().numpy()
        base = dict(stage="embed", model=setup.model_type, batch=batch)
        for dtype, autocast in (("float32", False), ("bfloat16", True)):
            row = dict(base, dtype=dtype, impl="official" + (" (autocast)" if autocast else ""),
                       device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
            run = functools.partial(official, autocast)
            _measure(rows, row, run, lambda: run().float().cpu().numpy(), reference, repeats, batch)
        imgs, sizes = jnp.asarray(images), jnp.full((batch, 2), S, jnp.int32)
        for attention in attentions:
            if rows.time_left() < need_s:
                return
            graphdef, params = nnx.split(with_numerics(setup.ours, dtype="bfloat16", attention=attention))
            row = dict(base, dtype="bfloat16", impl=f"sam-jax ({attention} attention)", device=jax.devices()[0].device_kind)
            _jax_measure(rows, row, lambda: embed_images_jit(graphdef, params, imgs, sizes), reference, repeats, batch=batch)


def amg_rows(rows: Rows, setup, smoke: bool, repeats: int):
    """Stage 5 for one model."""
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
        if rows.time_left() < 60:
            return
        generator = make(setup.official if name == "official" else setup.ours, **kwargs)
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


def click_rows(rows: Rows, setup, repeats: int):
    """Stage 6."""
    import jax
    import torch
    from segment_anything import SamPredictor as Official

    import sam_jax

    image = setup.image
    h, w = image.shape[:2]
    point, label = np.array([[w * 0.4, h * 0.6]]), np.array([1])
    cuda = torch.cuda.is_available()
    for name, predictor, device in (("official", Official(setup.official), "cuda" if cuda else "cpu"),
                                    ("sam-jax", sam_jax.SamPredictor(setup.ours), str(jax.devices()[0].device_kind))):
        if rows.time_left() < 20:
            return

        def click():
            predictor.set_image(image)
            masks, _, _ = predictor.predict(point, label)
            if cuda:
                torch.cuda.synchronize()
            return masks

        def predict_only():
            predictor.predict(point, label)
            if cuda:
                torch.cuda.synchronize()

        first, t = _timed(click, repeats)
        _, t_predict = _timed(predict_only, repeats)
        rows.write(dict(stage="click", model=setup.model_type, impl=name, device=device, image=list(image.shape[:2]),
                        compile_s=first, ms=1e3 * t, predict_ms=1e3 * t_predict))


def profile_rows(rows: Rows, setup, smoke: bool, calls: int = 3, top: int = 12):
    """Stage 7: the heaviest operations of our bfloat16 embedding, per call."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sam_jax.functional import embed_images_jit
    from sam_jax.modeling import with_numerics

    S = setup.ours.config.image_size
    imgs, sizes = jnp.zeros((1, S, S, 3), jnp.uint8), jnp.full((1, 2), S, jnp.int32)
    for attention in ("xla",) if smoke else ("xla", "pallas"):
        if rows.time_left() < 30:
            return
        graphdef, params = nnx.split(with_numerics(setup.ours, dtype="bfloat16", attention=attention))
        embed = lambda: embed_images_jit(graphdef, params, imgs, sizes).block_until_ready()
        embed()  # compiled outside the trace
        trace_dir = tempfile.mkdtemp(prefix="sam-jax-profile-")
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(calls):
                embed()
        ops, where = trace_summary(trace_dir)
        total = sum(ops.values())
        rows.write(dict(stage="profile", model=setup.model_type, batch=1, dtype="bfloat16",
                        impl=f"sam-jax ({attention} attention)", events=where, ms_per_call=total / calls / 1e3,
                        top=[dict(op=name, ms_per_call=us / calls / 1e3, share=us / total)
                             for name, us in sorted(ops.items(), key=lambda kv: -kv[1])[:top]]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", required=True, help="JSON Lines file the rows are appended to")
    ap.add_argument("--time-limit", type=float, default=280.0, help="seconds: no measurement starts that would end later")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, CPU-friendly (the kernel in interpret mode)")
    ap.add_argument("--stages", default="kernel,cudnn,embed,amg,click,profile")
    ap.add_argument("--embed-models", default="vit_b,vit_h", help="encoders of the embed stage (smoke: the tiny one)")
    ap.add_argument("--image", default=str(ROOT.parent / "shared" / "images" / "truck.jpg"),
                    help="photo for the amg and click stages (if missing, a random 1800x1200 image; 600x400 with --smoke)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 10, smoke 1; amg at most 2)")
    args = ap.parse_args(argv)

    # JAX would take 75% of the GPU at start, leaving the official model too little.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import torch

    from . import cases as C

    rows = Rows(Path(args.output), args.time_limit)
    repeats = args.repeats or (1 if args.smoke else 10)
    stages = set(args.stages.split(","))
    rows.write(dict(stage="env", jax=jax.__version__, devices=[str(d) for d in jax.devices()],
                    device=jax.devices()[0].device_kind, torch=torch.__version__,
                    torch_cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    load_average=os.getloadavg(), smoke=args.smoke))

    def run(stage: str, fn, *fn_args):
        """One stage; its failure (a missing profiler plugin, an out-of-memory model) is a row."""
        if stage in stages:
            try:
                return fn(*fn_args)
            except Exception as e:
                rows.write(dict(stage=stage, error=f"{type(e).__name__}: {str(e)[:300]}"))

    kernel = run("kernel", kernel_rows, rows, args.smoke, repeats, "cudnn" in stages)
    if kernel:
        decision_rows(rows, kernel)
    synthetic = (400, 600) if args.smoke else (1200, 1800)
    setups = {}  # vit_b is kept for the amg, click and profile stages

    def on_model(model: str, need_s: float, stage_rows, *stage_args):
        """stage_rows(rows, the model's Setup, *stage_args), if the Setup exists or `need_s`
        seconds are left to build it (and measure one row)."""
        if model not in setups and rows.time_left() > need_s:
            setups[model] = _setup(model, Path(args.image), synthetic)
        if model in setups:
            stage_rows(rows, setups[model], *stage_args)

    base = C.TINY if args.smoke else "vit_b"
    for model in [C.TINY] if args.smoke else args.embed_models.split(","):
        large = model in ("vit_l", "vit_h")  # minutes to build and convert; a row compiles for ~40 s
        run("embed", on_model, model, 150 if large else 45, embed_rows, args.smoke,
            min(repeats, 5) if large else repeats, 60 if large else 30)
    run("amg", on_model, base, 120, amg_rows, args.smoke, min(repeats, 2))
    run("click", on_model, base, 45, click_rows, repeats)
    run("profile", on_model, base, 45, profile_rows, args.smoke)
    rows.write(dict(stage="done", time_left_s=rows.time_left(), load_average=os.getloadavg()))


if __name__ == "__main__":
    main()
