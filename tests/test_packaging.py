"""A wheel of compass carries the shipped weights, their manifest and the recipes: a non-editable install codes
offline like a checkout does."""
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wheel_holds_every_registered_weights_file_and_recipe(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a copy: the build writes build/ and egg-info beside its sources, and reuses them
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    pretrained = REPO / "src" / "compass" / "pretrained"
    manifest = json.loads((pretrained / "manifest.json").read_text())
    assert manifest["models"] and "compass/pretrained/manifest.json" in names
    for entry in manifest["models"].values():
        assert f"compass/pretrained/{entry['file']}" in names, entry["file"]
    recipes = {f"compass/configs/{p.name}" for p in (REPO / "src" / "compass" / "configs").glob("*.toml")}
    assert recipes and recipes <= names
