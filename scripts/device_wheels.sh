#!/usr/bin/env bash
# Fills .whl/ with the wheels a GPU machine without a package index needs to run scripts/device_figures.py.
#
# Such a machine already holds PyTorch, NumPy, SciPy, scikit-learn, Matplotlib, OpenCV, Pillow, tqdm and
# TensorBoard, but not MONAI, pydicom and the rest named below. They travel as wheels at the versions of
# requirements/constraints.txt, for the machine's Python (3.12 unless given: scripts/device_wheels.sh 3.11),
# without their dependencies, so nothing the machine holds is replaced. A source-only package (grad-cam) is
# built into a wheel here; it is pure Python. .whl/ is ignored by git: name it in the run's carry list.
# The wheels are gathered in a temporary folder that becomes .whl/ only once all of them are there: an
# interrupted or failed run leaves the earlier .whl/ (or none), never a partial one that would then be carried.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python_version="${1:-3.12}"
whl="$root/.whl"
# pip only downloads (and builds one pure-Python wheel) here: the project's .venv, or any python3 before it exists
python_here="$root/.venv/bin/python"
[ -x "$python_here" ] || python_here="python3"
pip=("$python_here" -m pip --disable-pip-version-check)

# what the bundle, the synthesizer and the benchmarks import that such a machine lacks
packages=(
  monai fire termcolor pydicom pynrrd pytorch-ignite jsonschema pyrsistent
  pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg pylibjpeg-rle captum grad-cam ttach
)

pinned() {  # the constraints file's line for a package, e.g. monai==1.6.1
  local line
  line="$(grep -i "^$1==" "$root/requirements/constraints.txt")" || {
    echo "device_wheels: $1 is not pinned in requirements/constraints.txt" >&2
    exit 1
  }
  echo "$line"
}

out="$(mktemp -d "$root/.whl.partial-XXXXXX")"
trap 'rm -rf "$out"' EXIT
abi="cp${python_version/./}"
for package in "${packages[@]}"; do
  requirement="$(pinned "$package")"
  if ! "${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest "$out" \
    --python-version "$python_version" --implementation cp --abi "$abi" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any "$requirement" 2>/dev/null; then
    # no wheel published: build one, which is only right for pure-Python packages
    "${pip[@]}" wheel --quiet --no-deps --wheel-dir "$out" "$requirement"
    if ls "$out" | grep -i "^${package//-/_}-" | grep -qv -- "-none-any.whl$"; then
      echo "device_wheels: $requirement has no wheel for Python $python_version and is not pure Python" >&2
      exit 1
    fi
  fi
done
rm -rf "$whl"
mv "$out" "$whl"
du -sh "$whl" | sed 's/^/device_wheels: /'
ls "$whl"
