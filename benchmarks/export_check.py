"""The exported image encoder at full size, against the official encoder on the same weights
(official random init with every tensor perturbed, converted by sam-jax):

- ONNX (`export_encoder_onnx`) run by onnxruntime on the CPU; vit_h's 2.5 GB of weights take the
  external-data path (`encoder.onnx.data`);
- the `jax.export` artifact, lowered in a CPU-only subprocess for the CPU and, where this machine
  has one, its accelerator, then deserialized and run here on the default backend.

    python -m benchmarks.export_check --models vit_b                  # minutes on a CPU
    python -m benchmarks.export_check --models vit_h --image-size 768

Prints one line per model: export times, file sizes, run times, relative errors (max abs error
over the reference's max magnitude). Not run by CI: the test suite checks the same on small
configs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _perturbed_official(model_type: str, image_size: int):
    """The official model with every tensor perturbed (its init leaves pos_embed and the rel-pos
    tables at zero), and the same rebuilt at image_size with torch-resized weights."""
    from segment_anything import sam_model_registry

    from tests.reference.official import official_at_size, perturb

    torch.manual_seed(0)
    sam = perturb(sam_model_registry[model_type]().eval(), seed=0)
    return sam, (sam if image_size == 1024 else official_at_size(sam, None, image_size)[0])


def _err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _best(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _mib(*paths: Path) -> float:
    return sum(p.stat().st_size for p in paths if p.exists()) / 2**20


def check(model_type: str, image_size: int, out: Path) -> str:
    import jax
    import onnxruntime as ort

    import sam_jax
    from sam_jax.convert import convert_checkpoint
    from sam_jax.export.onnx import export_encoder_onnx
    from sam_jax.export.stablehlo import run_encoder_stablehlo

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a float32 reference
    sam, official = _perturbed_official(model_type, image_size)
    torch.save(sam.state_dict(), out / "official.pth")
    del sam
    convert_checkpoint(out / "official.pth", out / "converted", model_type=model_type, overwrite=True)
    model = sam_jax.load(out / "converted", image_size=image_size)
    x = np.random.default_rng(0).normal(size=(1, 3, image_size, image_size)).astype(np.float32)
    encoder = official.image_encoder.to(device)
    ref = encoder(torch.from_numpy(x).to(device)).cpu().numpy()
    t_ref = _best(lambda: encoder(torch.from_numpy(x).to(device)).cpu())
    del official, encoder
    torch.cuda.empty_cache() if device == "cuda" else None
    row = [f"{model_type} at {image_size}: official encoder ({device}) {t_ref:.2f} s"]

    t0 = time.perf_counter()
    onnx_path = export_encoder_onnx(model, out / "encoder.onnx")
    t_export = time.perf_counter() - t0
    data = onnx_path.with_name(onnx_path.name + ".data")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (emb,) = session.run(None, {"image": x})
    t_run = _best(lambda: session.run(None, {"image": x}))
    row.append(f"ONNX: export {t_export:.1f} s, {_mib(onnx_path):.1f} MiB graph + {_mib(data):.1f} MiB external data, "
               f"onnxruntime (cpu) {t_run:.2f} s, error {_err(emb, ref):.1e}")
    del session, model

    accelerator = {"gpu": "cuda", "tpu": "tpu"}.get(jax.default_backend())
    platforms = "cpu" + (f",{accelerator}" if accelerator else "")
    t0 = time.perf_counter()
    # ROOT goes last on the path, so that an installed sam_jax wins over the source folder.
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
    subprocess.run([sys.executable, "-m", "benchmarks.export_check", "--export-stablehlo", str(out), str(image_size), platforms],
                   check=True, cwd=out, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path))
    t_export = time.perf_counter() - t0
    run = run_encoder_stablehlo(out / "encoder_stablehlo")
    t0 = time.perf_counter()
    emb = np.asarray(run(x))
    t_first = time.perf_counter() - t0
    t_run = _best(lambda: run(x).block_until_ready())
    row.append(f"jax.export ({platforms}, exported on cpu): export {t_export:.1f} s (a process loading the model), "
               f"run on {jax.default_backend()} {t_run:.2f} s (first call {t_first:.1f} s), error {_err(emb, ref):.1e}")
    return "; ".join(row)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_b")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--out", default=None, help="working folder (default: a new temporary one)")
    ap.add_argument("--export-stablehlo", nargs=3, metavar=("FOLDER", "SIZE", "PLATFORMS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.export_stablehlo:  # the CPU-only subprocess
        import sam_jax
        from sam_jax.export.stablehlo import export_encoder_stablehlo

        folder, size, platforms = args.export_stablehlo
        model = sam_jax.load(Path(folder) / "converted", image_size=int(size))
        export_encoder_stablehlo(model, Path(folder) / "encoder_stablehlo", platforms=platforms.split(","), overwrite=True)
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="sam-jax-export-"))
    out.mkdir(parents=True, exist_ok=True)
    for model_type in args.models.split(","):
        print(check(model_type, args.image_size, out), flush=True)


if __name__ == "__main__":
    main()
