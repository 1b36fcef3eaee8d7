"""pyproject.toml is a real package definition: its dependencies are the pinned ones, and `pip install .` works."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME_REQUIREMENTS = ("base.txt", "worker.txt", "playground.txt")  # dev.txt: tests and lint, not installed
NOT_SHIPPED = {"tests", "bench", "tools"}  # the checkout's own tools: run from the checkout


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pinned() -> set[str]:
    names = set()
    for file in RUNTIME_REQUIREMENTS:
        for line in (ROOT / "requirements" / file).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r"):
                names.add(_name(line))
    return names


def test_dependencies_are_the_pinned_runtime_requirements():
    """Every runtime package pinned in requirements/ is a dependency of the project, and nothing else is."""
    assert {_name(d) for d in PROJECT["project"]["dependencies"]} == pinned()


def test_every_package_of_the_checkout_is_installed():
    """The packages setuptools finds are every top-level package of the checkout, but the tests and tools."""
    include = PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    top = {p.parent.name for p in ROOT.glob("*/__init__.py")} - NOT_SHIPPED
    assert {name for name in include if "." not in name} == top
    assert all(f"{name}.*" in include for name in top)


def test_console_scripts_name_functions():
    """inference-worker, inference-adapters and inference-playground point at importable main functions."""
    scripts = PROJECT["project"]["scripts"]
    assert set(scripts) == {"inference-worker", "inference-adapters", "inference-playground"}
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.slow
def test_pip_install_in_a_fresh_venv_gives_working_commands(tmp_path):
    """`pip install .` of a copy of the checkout into a new venv installs commands that run outside the checkout."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    for package in PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        if "." not in package:
            shutil.copytree(ROOT / package, source / package,
                            ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
    # No network: this environment's setuptools builds the wheel, and its packages are the venv's dependencies
    # (a .pth file), so only the project itself is installed.
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(source)], check=True, timeout=300, capture_output=True)
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = [str(w) for w in wheels.glob("*.whl")]
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", *wheel], check=True,
                   timeout=300, capture_output=True)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command, expected in (("inference-worker", "--model-name"), ("inference-adapters", "push"),
                              ("inference-playground", "Usage")):
        result = subprocess.run([str(venv / "bin" / command), "--help"], cwd=elsewhere, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert expected in result.stdout, (command, result.stdout[-2000:])
    where = subprocess.run([python, "-c", "import wire, playground; print(wire.__file__, "
                            "playground.__file__)"], cwd=elsewhere, capture_output=True, text=True, check=True)
    assert str(ROOT) not in where.stdout and site in where.stdout
