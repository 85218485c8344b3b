#!/usr/bin/env bash
# Rehearses scripts/device_figures.py here, on the CPU, with the GPU machine's Python stack, before its minutes
# are spent: a virtual environment of Python 3.12 with the PyTorch, torchvision and NumPy versions that machine's
# package list gives (torch 2.11.0, torchvision 0.26.0, NumPy 2.5.2; override with TORCH, TORCHVISION, NUMPY), the
# packages it holds that the carried wheels need, and the wheels of scripts/device_wheels.sh installed as a stage
# installs them (--install: into a folder of their own, no index, no dependencies). The stages named (default: all)
# then run at their tiny size, in one command as on the machine.
#
#   scripts/device_rehearsal.sh                 # every stage
#   scripts/device_rehearsal.sh saliency        # one
#
# The environment goes to .device-rehearsal/ (ignored by git; about 5 GB, most of it PyTorch's CUDA libraries,
# which the CPU does not use) and is reused; the stages' logs and archives go to .device-rehearsal/out/. Set PYTHON
# to a Python 3.12 interpreter when python3.12 is not on PATH.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="$root/.device-rehearsal"
venv="$home/venv"
python_bin="${PYTHON:-python3.12}"
stages=("$@")
[ "${#stages[@]}" -gt 0 ] || stages=(bench faithful pretrain saliency strategies)

[ -d "$root/.whl" ] || "$root/scripts/device_wheels.sh" 3.12
if [ ! -x "$venv/bin/python" ]; then
  "$python_bin" -m venv "$venv"
  "$venv/bin/python" - <<'PY' || { echo "device_rehearsal: $python_bin is not Python 3.12; set PYTHON" >&2; rm -rf "$venv"; exit 1; }
import sys
sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)
PY
  # the GPU machine holds these; its versions of the rest are not known here, so pip picks them
  PIP_CONSTRAINT=/dev/null "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==${TORCH:-2.11.0}" "torchvision==${TORCHVISION:-0.26.0}" "numpy==${NUMPY:-2.5.2}" \
    attrs six setuptools packaging typing_extensions scipy scikit-learn matplotlib pillow opencv-python-headless \
    tqdm tensorboard
fi
"$venv/bin/python" -c "import numpy, torch; print('device_rehearsal: torch', torch.__version__, 'numpy', numpy.__version__)"

# one command for all, as on the machine: the wheels installed once, the stages sharing a (generous) budget
rm -rf "$home/out" "$home/work"
"$venv/bin/python" "$root/scripts/device_figures.py" "${stages[@]}" --tiny --install --budget 60 \
  --out "$home/out" --work "$home/work"
