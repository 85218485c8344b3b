#!/usr/bin/env bash
# Runs the test suite (creating and installing .venv first when needed). Extra arguments go to pytest.
#
# The DICOMweb tests need a real PACS: unless MAMMOXAI_ORTHANC_URL names one, scripts/orthanc.sh installs
# (Debian packages, as root) and starts Orthanc on 127.0.0.1 for the run and stops it afterwards; an Orthanc
# that already ran (another run's, a developer's) is used and left running.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
cd "$root"
if [ -z "${MAMMOXAI_ORTHANC_URL:-}" ]; then
  if ! "$root/scripts/orthanc.sh" running; then
    trap '"$root/scripts/orthanc.sh" stop >/dev/null 2>&1 || true' EXIT
  fi
  MAMMOXAI_ORTHANC_URL="$("$root/scripts/orthanc.sh" start | tail -n 1)"
  export MAMMOXAI_ORTHANC_URL
fi
"$root/.venv/bin/python" -m pytest tests "$@"
