"""The code is formatted and linted as the MONAI model zoo checks a bundle (``setup.cfg``, ``pyproject.toml``).

black and isort apply to every Python file of the repository; flake8 with the zoo's plugins (bugbear,
comprehensions, pep8-naming) to the bundle, which is what a zoo submission carries, and to the server app and the
scripts. The 3D Slicer extension follows Slicer's camelCase names and the tests pytest's fixture idioms, which
pep8-naming and pyflakes read as faults, so flake8 leaves them out.
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
        ["flake8", "monai_bundle", "apps", "scripts"],
    ],
    ids=["black", "isort", "flake8"],
)
def test_code_passes_the_model_zoo_style_checks(command):
    result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
    fix = "run black / isort on the files named (python -m black <file>; python -m isort <file>)"
    assert result.returncode == 0, f"{fix}\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
