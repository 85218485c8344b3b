"""The code is formatted and linted as the MONAI model zoo checks a bundle (``setup.cfg``, ``pyproject.toml``).

black, isort and flake8 with the zoo's plugins (bugbear, comprehensions, pep8-naming) apply to every Python file
of the repository: the bundle, which is what a zoo submission carries, the server app, the scripts, the 3D Slicer
extension and the tests. ``setup.cfg`` names the few files that keep another convention, and why: the camelCase
names Slicer's API gives the Slicer module and the tests' stand-in for Slicer, ``zip`` without ``strict=`` in the
extension (Slicer's Python 3.9 lacks it), and the pretrained-bundle fixture ``test_ablation`` imports.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON_FOLDERS = ["monai_bundle", "apps", "scripts", "tests", "slicer_extension", "setup.py"]


@pytest.mark.parametrize(
    "command",
    [
        ["black", "--check", "--quiet", *PYTHON_FOLDERS],
        ["isort", "--check-only", "--quiet", *PYTHON_FOLDERS],
        ["flake8", *PYTHON_FOLDERS],
    ],
    ids=["black", "isort", "flake8"],
)
def test_code_passes_the_model_zoo_style_checks(command):
    result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
    fix = "run black / isort on the files named (python -m black <file>; python -m isort <file>)"
    assert result.returncode == 0, f"{fix}\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
