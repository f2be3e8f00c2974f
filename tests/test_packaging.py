"""The package installs from a wheel (no ``-e``) and works outside the checkout: recipes ship as package data.

The wheel is built offline from a copy of the source tree (``pip wheel --no-build-isolation --no-index``, with
the setuptools/wheel of the dev extras), installed with ``--no-deps`` into a fresh venv that sees this
interpreter's third-party packages (torch, ...) through a ``.pth`` file, and the installed ``surgeon`` script
runs a recipe and a conversion from a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folders and the package each one is installed as (pyproject's package-dir).
SOURCES = {"surgeon": "surgeon", "cli": "surgeon/cli", "kernels": "surgeon/kernels", "recipes": "surgeon/recipe_files"}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout


def _source_packages() -> set[str]:
    """Installed package paths of every source folder holding an __init__.py."""
    found = set()
    for folder, installed in SOURCES.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).as_posix()
            found.add(installed if relative == "." else f"{installed}/{relative}")
    return found


def _third_party_paths() -> list[str]:
    """This interpreter's site-packages folders (never the checkout, whose editable install is not wanted)."""
    paths = [p for p in sys.path if "site-packages" in p and os.path.isdir(p)]
    return [p for p in dict.fromkeys(paths) if not Path(p).resolve().is_relative_to(ROOT)]


@pytest.mark.skipif(sys.platform == "win32", reason="venv layout of POSIX systems")
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "surgeon_launcher.py"):  # the console script's module
        shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(wheels), str(source)], cwd=tmp_path)
    (wheel,) = wheels.glob("surgeon-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.rpartition("/")[0] for n in names if n.endswith("/__init__.py")} >= _source_packages()
    recipes = {Path(n).name for n in names if n.startswith("surgeon/recipe_files/")}
    assert {p.name for p in (ROOT / "recipes").glob("*.yaml")} <= recipes

    env_dir = tmp_path / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=tmp_path)
    python = env_dir / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp_path).strip())
    (purelib / "third_party.pth").write_text("\n".join(_third_party_paths()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = _run([str(python), "-c", "import surgeon, surgeon.recipes.runner as r; print(surgeon.__file__); "
                                     "print(r.RECIPES_DIR)"], cwd=elsewhere, env=env).split()
    assert all(Path(p).resolve().is_relative_to(purelib.resolve()) for p in where), where
    surgeon_script = str(env_dir / "bin" / "surgeon")
    metrics = json.loads(_run([surgeon_script, "train", "acdc_regression", "--quick", "-o", "run", "--json", "-q"],
                              cwd=elsewhere, env=env))
    assert (elsewhere / "run" / "metrics.json").is_file() and metrics
    _run([surgeon_script, "convert", "example:mlp", "-o", "mlp.safetensors", "-q"], cwd=elsewhere, env=env)
    assert (elsewhere / "mlp.safetensors").stat().st_size > 0
    assert sysconfig.get_paths()["purelib"] != str(purelib)
