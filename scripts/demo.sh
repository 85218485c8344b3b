#!/usr/bin/env bash
# The demo: synthetic studies, demo weights (trained on synthetic phantoms), and the MONAI Label server
# on 127.0.0.1:8000. Creates and installs .venv first when needed. Extra arguments go to scripts/demo.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
export PATH="$root/.venv/bin:$PATH"
cd "$root"
exec "$root/.venv/bin/python" "$root/scripts/demo.py" "$@"
