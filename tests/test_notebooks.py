"""The notebooks in notebooks/: executed top to bottom with nbclient on CPU, and checked as files.

Execution uses a small official-structure checkpoint through SAM_JAX_CHECKPOINT (test_tiny with
confident mask logits, so that automatic mask generation keeps masks through the official
thresholds) and the 8 simulated CPU devices of conftest.py, which the TPU notebook splits its batch
over. Any error in any cell fails. As files: outputs stripped, the Colab links and install lines
derived from the repository URL in pyproject.toml, pip run only on Colab, the checkpoint taken from
SAM_JAX_CHECKPOINT with vit_b as default, and no absolute path of the machine that wrote them."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from flax import nnx
from nbclient import NotebookClient

from sam_jax import checkpoint, load

ROOT = Path(__file__).resolve().parents[1]
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
        "01_prompted_segmentation.ipynb", "02_automatic_mask_generation.ipynb", "03_onnx.ipynb", "05_tpu_quickstart.ipynb",
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


@pytest.fixture(scope="module")
def confident_checkpoint(cases, tmp_path_factory) -> Path:
    """test_tiny with mask logits scaled (stable masks) and the IoU head raised, as a trained model's."""
    model = load(cases("test_tiny").model_dir)
    for mlp in model.mask_decoder.output_hypernetworks_mlps:
        mlp.layers[-1].kernel[...] = mlp.layers[-1].kernel[...] * 1e4
        mlp.layers[-1].bias[...] = mlp.layers[-1].bias[...] * 1e4
    head = model.mask_decoder.iou_prediction_head.layers[-1]
    head.bias[...] = head.bias[...] + 1.0
    params = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}
    return checkpoint.save(tmp_path_factory.mktemp("confident") / "model", model.config, params)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, confident_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("SAM_JAX_CHECKPOINT", str(confident_checkpoint))
    monkeypatch.setenv("SAM_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SAM_JAX_WEIGHTS_URL", "http://127.0.0.1:9")  # nothing may be downloaded
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert str(confident_checkpoint) in printed  # the notebook ran on the checkpoint it was given
