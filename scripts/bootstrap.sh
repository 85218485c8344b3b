#!/usr/bin/env bash
# Creates .venv when missing and installs MammoXAI with its pinned dependencies; a second run reuses it.
#
# PyTorch goes in first (torch 2.14.1 / torchvision 0.29.1), then the package with
# requirements/constraints.txt as pip constraints, so every machine resolves the same versions.
# The install is redone only when setup.py or the constraints change.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.mammoxai-install"

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
  done
fi
[ -n "$python_bin" ] || { echo "bootstrap: no python3 found; install Python 3.10-3.12" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv with $python_bin" >&2
  "$python_bin" -m venv "$venv"
fi
"$venv/bin/python" - <<'PY' || { echo "bootstrap: .venv must be Python 3.10-3.12; delete .venv and set PYTHON" >&2; exit 1; }
import sys
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)
PY

wanted="$(cat "$root/setup.py" "$root/requirements/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
  echo "bootstrap: installing dependencies into .venv (first run takes a few minutes)" >&2
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" --upgrade pip
  "${pip[@]}" torch==2.14.1 torchvision==0.29.1
  "${pip[@]}" -c "$root/requirements/constraints.txt" -e "$root[app,dev]"
  echo "$wanted" > "$stamp"
fi
