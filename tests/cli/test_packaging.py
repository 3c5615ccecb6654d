"""`pip install .` (not only editable) gives a working library and CLI, and installs nothing but
`sam_jax` at the top level of site-packages (no bare `convert` or `configs`)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contents_and_installed_cli(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("sam_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert all(t == "sam_jax" or t.endswith(".dist-info") for t in top), top
    assert "sam_jax/convert/keys.py" in names and "sam_jax/cli/common.py" in names
    assert "sam_jax/configs/vit_h.json" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)  # the Apache-2.0 text ships
    assert "sam_jax/assets/shapes_tiny/config.json" in names and "sam_jax/train/trainer.py" in names
    assert "sam_jax/evaluation/run.py" in names and "sam_jax/io/coco.py" in names
    assert any(n.startswith("sam_jax/assets/shapes_tiny/params/") for n in names)

    assert "sam_jax/demo/web/index.html" in names and "sam_jax/demo/web/package-lock.json" in names
    assert not any("node_modules" in n for n in names)

    # Install the wheel into a fresh venv, then let it see this environment's dependencies through
    # a .pth file (not --system-site-packages: when the tests run inside a venv, that would expose
    # the base interpreter's packages, not this one's). A .pth line adds a path but runs none of
    # the .pth files there, so the editable sam_jax of this environment stays invisible.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    inner = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    outer = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    Path(inner, "outer_env.pth").write_text("\n".join(sorted(outer)) + "\n")
    code = ("import sam_jax, sam_jax.convert.keys, sam_jax.cli, sam_jax.assets; print(sam_jax.__file__); "
            "print(sorted(sam_jax.config.available_configs())); print(sam_jax.load(sam_jax.assets.SHAPES_TINY).config.image_size)")
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert str(venv) in r.stdout.splitlines()[0], r.stdout  # the installed copy, not the source tree
    assert "vit_b" in r.stdout and "test_tiny" in r.stdout
    assert r.stdout.splitlines()[-1] == "64"  # the shipped trained model loads from the installed copy
    r = subprocess.run([venv / "bin" / "sam-jax", "convert", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "--model-type" in r.stdout
    for command, flag in (("export-onnx", "--return-single-mask"), ("embed", "--image"), ("demo", "--port"), ("amg", "--points-per-side"), ("train", "--train-data"),
                          ("export-pth", "--layout")):
        r = subprocess.run([venv / "bin" / "sam-jax", command, "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0 and flag in r.stdout, (command, r.stderr)
