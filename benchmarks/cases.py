"""Benchmark cases: each returns (official callable, our callable, FLOPs counter, extra info)."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .machine import _flops, _log, _time, environment, matmul_rate  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parents[1]


def make_confident(sam, mask_scale: float = 500.0, iou_bias: float = 1.0):
    """Random weights give mask logits within about +-0.3 and IoU predictions near 0, so the
    official AMG thresholds (IoU 0.88, stability 0.95) would discard every mask and the AMG case
    would time nothing but the decoder. Scaling the hypernetworks' output layers (logits of +-100,
    stability near 1) and raising the IoU head's bias keeps masks alive through every stage, as
    a trained model does. Applied to the official model before conversion: both sides see it."""
    import torch

    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(mask_scale)
            mlp.layers[-1].bias.mul_(mask_scale)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(iou_bias)
    return sam


TINY = "tiny"  # the official structure at image size 1024 with a 2-block, 64-dim encoder: smoke runs


def official_model(model_type: str):
    """An official SAM with random weights: a registry model type, or TINY."""
    from segment_anything import sam_model_registry
    from segment_anything.build_sam import _build_sam

    return _build_sam(64, 2, 2, [1]) if model_type == TINY else sam_model_registry[model_type]()


def official_classes():
    """(SamPredictor, SamAutomaticMaskGenerator) of the reference code: segment-anything's here, a
    family's own copies in benchmarks/families.py."""
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    return SamPredictor, SamAutomaticMaskGenerator


class Setup:
    """The official model and ours with the same weights: official random init -> torch.save ->
    our converter -> sam_jax.load. Built once per model type (a registry name or TINY).

    only="ours" / "official" (the memory subprocesses): reuse the parent's files in setup_dir and
    build the other implementation as a small stand-in (a tiny encoder), so that neither its
    weights nor the conversion count in the peak memory of the one measured."""

    def __init__(self, model_type: str, image_path: Path, only: str | None = None, setup_dir: Path | None = None):
        import torch
        from PIL import Image
        from segment_anything.build_sam import _build_sam

        import sam_jax
        from sam_jax.convert import convert_checkpoint

        torch.set_grad_enabled(False)
        self.official_classes = official_classes()
        self.model_type = model_type
        self.tmp = Path(setup_dir) if only else Path(tempfile.mkdtemp(prefix="sam-jax-bench-"))
        self.pth = self.tmp / f"{model_type}.pth"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if only == "ours":
            self.official = _build_sam(64, 2, 2, [1]).eval().to(device)
        else:
            self.official = make_confident(official_model(model_type).eval()).to(device)
        if only == "official":
            self.official.load_state_dict(torch.load(self.pth, map_location=device, mmap=True))
        elif not only:
            torch.save(self.official.state_dict(), self.pth)
            t0 = time.perf_counter()
            convert_checkpoint(self.pth, self.tmp / "converted", model_type=None if model_type == TINY else model_type)
            self.convert_seconds = time.perf_counter() - t0
        self.ours = sam_jax.build_sam_from_config("test_tiny") if only == "official" else sam_jax.load(self.tmp / "converted")
        self.image = np.asarray(Image.open(image_path).convert("RGB"))
        self.image_name = image_path.name


def case_embed(s: Setup, dtype: str = "float32"):
    import sam_jax

    off = s.official_classes[0](s.official)
    model = s.ours if dtype == "float32" else sam_jax.modeling.with_numerics(s.ours, dtype=dtype)
    ours = sam_jax.SamPredictor(model)

    def run_ours():
        ours.set_image(s.image)
        ours.features.block_until_ready()

    def flops():
        from sam_jax.functional import embed_images

        S = model.config.image_size
        return _flops(embed_images, ours.graphdef, ours.params, np.zeros((1, S, S, 3), np.uint8),
                      np.array([[S, S]], np.int32), static_argnums=(0,))

    extra = {}
    if dtype != "float32":
        ref = sam_jax.SamPredictor(s.ours)
        ref.set_image(s.image)
        run_ours()
        a, b = np.asarray(ours.features, np.float64), np.asarray(ref.features, np.float64)
        extra["rel_err_vs_f32"] = float(np.abs(a - b).max() / np.abs(b).max())
    return (lambda: off.set_image(s.image)), run_ours, flops, extra


def case_embed_at(s: Setup, image_size: int):
    """Embedding with both models at `image_size`: ours from `load(..., image_size=N)`, the
    official built at N with F.interpolate-resized weights; the error of ours is reported."""
    from segment_anything import SamPredictor as Official

    import sam_jax
    from sam_jax.functional import embed_images

    from tests.reference.official import official_at_size

    off = Official(official_at_size(s.official, None, image_size)[0])
    ours = sam_jax.SamPredictor(sam_jax.load(s.tmp / "converted", image_size=image_size))

    def run_ours():
        ours.set_image(s.image)
        ours.features.block_until_ready()

    def flops():
        return _flops(embed_images, ours.graphdef, ours.params, np.zeros((1, image_size, image_size, 3), np.uint8),
                      np.array([[image_size, image_size]], np.int32), static_argnums=(0,))

    run_ours()
    off.set_image(s.image)
    a, b = np.asarray(ours.features, np.float64), off.features.cpu().numpy().astype(np.float64)
    extra = {"rel_err_vs_official": float(np.abs(a - b).max() / np.abs(b).max())}
    return (lambda: off.set_image(s.image)), run_ours, flops, extra


def _predictors(s: Setup):
    import sam_jax

    off, ours = s.official_classes[0](s.official), sam_jax.SamPredictor(s.ours)
    off.set_image(s.image)
    ours.set_image(s.image)
    return off, ours


def case_point(s: Setup):
    off, ours = _predictors(s)
    h, w = s.image.shape[:2]
    pt, lab = np.array([[w * 0.4, h * 0.6]]), np.array([1])
    return (lambda: off.predict(pt, lab)), (lambda: ours.predict(pt, lab)), lambda: _decode_flops(ours, 1, 1, 3), {}


def case_boxes(s: Setup, n: int = 64):
    import torch

    off, ours = _predictors(s)
    h, w = s.image.shape[:2]
    r = np.random.default_rng(0)
    xy = r.uniform(0, 0.7, (n, 2)) * [w, h]
    boxes = np.concatenate([xy, xy + r.uniform(0.05, 0.3, (n, 2)) * [w, h]], 1)
    tb = off.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float, device=off.device), off.original_size)

    def run_off():
        m, _, _ = off.predict_torch(None, None, tb, multimask_output=False)
        return m.cpu().numpy()

    return run_off, (lambda: ours.predict_batch(boxes=boxes, multimask_output=False)), lambda: _decode_flops(ours, n, 1, 1), {}


def _decode_flops(ours, B, N, M):
    from sam_jax.functional import Prompts, bucket, decode_prompts

    Bp, Np = bucket(B), bucket(N)
    prompts = Prompts(np.zeros((Bp, Np, 2), np.float32), np.ones((Bp, Np), np.int32), np.zeros((Bp, 4), np.float32), np.zeros(Bp, bool))
    return _flops(decode_prompts, ours.graphdef, ours.params, ours.features, prompts, M > 1, static_argnums=(0, 4))


def case_amg(s: Setup, **kwargs):
    from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator
    from sam_jax.functional import automatic_mask_generator as device_side

    off, ours = s.official_classes[1](s.official, **kwargs), SamAutomaticMaskGenerator(s.ours, **kwargs)
    extra = {}

    out = {}

    def run_off():
        out["official"] = off.generate(s.image)
        extra["masks_official"] = len(out["official"])

    def run_ours():
        out["ours"] = ours.generate(s.image)
        extra["masks_ours"] = len(out["ours"])
        if "official" in out:
            extra["min_mask_iou"] = min_matched_iou(out["ours"], out["official"])

    def flops():
        # The encoder plus one process_crop call (the whole crop's decoding and filtering).
        total = case_embed(s)[2]()
        gen = ours
        h, w = s.image.shape[:2]
        emb = gen.predictor.embed_images([s.image])
        n = len(gen.point_grids[0])
        P = gen.points_per_batch
        nb = -(-n // P)
        hi, wi = emb.input_sizes[0]
        args = (gen.predictor.graphdef, gen.predictor.params, emb.features, np.int32(0), np.zeros((nb, P, 2), np.float32),
                np.ones((nb, P), bool), *gen._resamplers((hi, wi), (h, w)), np.array([h, w], np.int32),
                np.array([0, 0, w, h], np.float32), np.array([0, 0, w, h], np.float32), gen._settings())
        return total + _flops(device_side.process_crop, *args, static_argnums=(0,))

    return run_off, run_ours, flops, extra


def min_matched_iou(ours: list[dict], ref: list[dict]) -> float:
    """The lowest IoU between records paired in order (both generators emit the same order);
    0 when the counts differ."""
    if len(ours) != len(ref):
        return 0.0
    ious = [1.0]
    for o, r in zip(ours, ref):
        a, b = o["segmentation"], r["segmentation"]
        union = np.logical_or(a, b).sum()
        ious.append(np.logical_and(a, b).sum() / union if union else 1.0)
    return float(min(ious))


def case_convert(s: Setup):
    import torch

    from sam_jax.convert import convert_checkpoint

    def run_ours():
        convert_checkpoint(s.pth, s.tmp / "converted_again", model_type=s.model_type, overwrite=True)

    # The official project has no converter; torch.load of the same file is the reference.
    return (lambda: torch.load(s.pth)), run_ours, lambda: float("nan"), {"note": "official column: torch.load"}


CASE_FNS = {
    "embed": case_embed,
    "embed_bf16": lambda s: case_embed(s, "bfloat16"),
    "embed_512": lambda s: case_embed_at(s, 512),
    "embed_768": lambda s: case_embed_at(s, 768),
    "point": case_point,
    "boxes": case_boxes,
    "amg": case_amg,
    "amg_all": lambda s: case_amg(s, pred_iou_thresh=0.0, stability_score_thresh=0.0),
    # Random-weight masks span the image, so box NMS leaves one and the thresholds few: without
    # them every mask of an 8x8 grid (192) is compared.
    "amg_nonms": lambda s: case_amg(s, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
    "convert": case_convert,
}
SLOW_CASES = ("amg", "amg_all")
CASE_TITLES = {
    "embed": "image embedding (set_image), float32",
    "embed_bf16": "image embedding, ours in bfloat16 vs official float32",
    "embed_512": "image embedding at image size 512 (both models resized), float32",
    "embed_768": "image embedding at image size 768 (both models resized), float32",
    "point": "one point -> masks (predict)",
    "boxes": "64 boxes in one batched call",
    "amg": "automatic masks, official defaults",
    "amg_all": "automatic masks, no IoU/stability filter",
    "amg_nonms": "automatic masks, 8x8 points, no IoU/stability/NMS filter (every mask compared)",
    "convert": "checkpoint conversion (.pth -> Orbax)",
}


def measure(s: Setup, case: str, repeats: int, case_fns: dict | None = None) -> dict:
    run_off, run_ours, flops, extra = (case_fns or CASE_FNS)[case](s)
    first = _time(run_ours)  # compilation included
    _log(f"{case}: ours first call {first:.2f}s")
    if case not in SLOW_CASES:  # torch compiles nothing: one warm-up is enough where a run takes minutes
        _log(f"{case}: official warm-up {_time(run_off):.2f}s")
    t_off, t_ours, cpu_ours = [], [], []
    for _ in range(repeats):  # alternate, so drift affects both alike
        t_off.append(_time(run_off))
        cpu0 = time.process_time()
        t_ours.append(_time(run_ours))
        cpu_ours.append(time.process_time() - cpu0)
        _log(f"{case}: official {t_off[-1]:.2f}s, ours {t_ours[-1]:.2f}s ({cpu_ours[-1]:.2f} CPU s)")
    row = {"case": case, "model": s.model_type, "official": t_off, "ours": t_ours, "ours_cpu": cpu_ours,
           "first_call": first, **extra}
    try:
        row["flops"] = flops()
    except Exception as e:  # a counting failure must not lose the timings
        row["flops"] = float("nan")
        row["flops_error"] = str(e)[:200]
    return row


def run_alone(s: Setup, case: str, impl: str) -> None:
    """Peak resident memory of one implementation running one case, in this process: the other
    implementation's model and predictor are dropped first, and the kernel's high-water mark is
    reset (/proc/self/clear_refs), so setup and conversion do not count. Both runtimes stay
    imported, as in any process that has loaded them."""
    import gc

    run_off, run_ours, _, _ = CASE_FNS[case](s)
    fn = run_ours if impl == "ours" else run_off
    del run_off, run_ours
    if impl == "ours":
        s.official = None
    else:
        s.ours = None
    gc.collect()
    before = _proc_status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    fn()  # ours: compilation included, which is part of what a user's process holds
    if case not in SLOW_CASES:
        fn()
    print("peak_rss_mib", _proc_status("VmHWM"), "before_mib", before)


def _proc_status(key: str) -> float:
    """A /proc/self/status memory field in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def format_row(r: dict) -> str:
    return (f"{r['model']} {r['case']}: official {statistics.median(r['official']):.3f}s, ours "
            f"{statistics.median(r['ours']):.3f}s, ratio {statistics.median(r['ours']) / statistics.median(r['official']):.2f}, "
            f"first call {r['first_call']:.2f}s")


def table(rows: list[dict], env: dict, titles: dict | None = None) -> str:
    titles = titles or CASE_TITLES
    rate, cpu_rate = env["matmul_gflops_jax"] * 1e9, env.get("matmul_gflops_jax_cpu_time", float("nan")) * 1e9
    lines = [
        "| model | case | official s (min-max) | ours s (min-max) | ours/official | ours first call s | GFLOP | ours % of matmul rate (wall; CPU time) | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mo, mu = statistics.median(r["official"]), statistics.median(r["ours"])
        gf = r["flops"] / 1e9
        frac = (f"{100 * r['flops'] / mu / rate:.0f}%; {100 * r['flops'] / statistics.median(r['ours_cpu']) / cpu_rate:.0f}%"
                if np.isfinite(r["flops"]) else "n/a")
        notes = []
        if "masks_ours" in r:
            notes.append(f"masks: ours {r['masks_ours']}, official {r['masks_official']}, lowest IoU of paired masks "
                         f"{r.get('min_mask_iou', float('nan')):.4f}; masks/s: ours {r['masks_ours'] / mu:.1f}, "
                         f"official {r['masks_official'] / mo:.1f}")
        if "rel_err_vs_f32" in r:
            notes.append(f"max rel. error vs float32 {r['rel_err_vs_f32']:.1e}")
        if "rel_err_vs_official" in r:
            notes.append(f"max rel. error of ours vs official {r['rel_err_vs_official']:.1e}")
        if "rss_ours" in r:
            notes.append(f"peak RSS MiB: ours {r['rss_ours']:.0f}, official {r['rss_official']:.0f} "
                         f"(before the case: {r['rss_before_ours']:.0f}, {r['rss_before_official']:.0f}; ratio "
                         f"{r['rss_ours'] / r['rss_official']:.2f})")
        if "note" in r:
            notes.append(r["note"])
        lines.append(
            f"| {r['model']} | {titles[r['case']]} | {mo:.3f} ({min(r['official']):.3f}-{max(r['official']):.3f}) "
            f"| {mu:.3f} ({min(r['ours']):.3f}-{max(r['ours']):.3f}) | {mu / mo:.2f} | {r['first_call']:.2f} "
            f"| {gf:.1f} | {frac} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def write_results(path: Path, table_md: str, env: dict) -> None:
    header = (f"\n## {env['date']}: {env['cpu']}, {env['cores']} cores, {env['memory_gib']} GiB "
              f"(jax {env['jax']} on {env['jax_device']}, torch {env['torch']} on {env['torch_device']}; "
              f"measured float32 matmul rate {env['matmul_gflops_jax']} GFLOP/s, "
              f"{env['matmul_gflops_jax_cpu_time']} GFLOP per CPU second; 1-minute load average "
              f"{env.get('load_average_start', float('nan')):.2f} at the start, {os.getloadavg()[0]:.2f} at the end)\n\n")
    text = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by `python -m benchmarks.bench`.\n"
    path.write_text(text + header + table_md + "\n")
