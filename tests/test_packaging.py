"""`pip install .` (not only editable) gives a working library and CLI, and installs nothing but
`sam_jax` at the top level of site-packages (no bare `convert` or `configs`)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contents_and_installed_cli(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("sam_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert all(t == "sam_jax" or t.endswith(".dist-info") for t in top), top
    assert "sam_jax/convert/state_dict.py" in names
    assert "sam_jax/configs/vit_h.json" in names

    # Install the wheel into a venv that sees this environment's dependencies, run it from elsewhere.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    code = "import sam_jax, sam_jax.convert.convert as c; print(sam_jax.__file__); print(sorted(sam_jax.config.available_configs()))"
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert str(venv) in r.stdout.splitlines()[0], r.stdout  # the installed copy, not the source tree
    assert "vit_b" in r.stdout and "test_tiny" in r.stdout
    r = subprocess.run([venv / "bin" / "sam-jax", "convert", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "--model-type" in r.stdout
