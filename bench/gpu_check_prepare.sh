#!/usr/bin/env bash
# Prepare what bench/gpu_check.sh needs on a GPU machine that has torch, transformers and accelerate but no
# network and none of the project's other packages (this workplace's lent H200: Python 3.12):
#
#   bash bench/gpu_check_prepare.sh     # here, with network: .whl/ and .gpu-data/ (both git-ignored)
#   then, on the GPU machine, carrying .whl and .gpu-data:   bash bench/gpu_check.sh
#   afterwards:  rm -rf .gpu-data       (a copy of one CHAOS volume: never commit it)
#
# .whl/: the pure-Python wheels (diffusers, pydicom, platformdirs) at the versions of
# requirements/constraints.txt, and SimpleITK's manylinux wheel repacked as .whl/simpleitk-VERSION-site.tar.xz
# (its contents, xz-compressed: 28 MB instead of 52, to keep the carried tree under 64 MiB).
# .gpu-data/chaos-t2/: CHAOS patient 38 (image and label, 40 slices) for the end-to-end segment and train.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TARGET_PY=${TARGET_PYTHON_VERSION:-3.12}
pin() {  # the version requirements/constraints.txt pins for Python >= 3.11
    grep -i "^$1==" requirements/constraints.txt | grep -v "< '3.11'" | head -n 1 | sed 's/ ;.*//' | cut -d= -f3
}
mkdir -p .whl
grep -qx "/.gpu-data/" .git/info/exclude 2>/dev/null || echo "/.gpu-data/" >> .git/info/exclude
for name in diffusers pydicom platformdirs; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET_PY" --implementation cp \
        -d .whl "$name==$(pin "$name")"
done
version=$(pin simpleitk)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET_PY" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp" "simpleitk==$version"
(cd "$tmp" && mkdir site && "$PY" -m zipfile -e ./*.whl site && tar -C site -cJf "simpleitk-$version-site.tar.xz" .)
mv "$tmp/simpleitk-$version-site.tar.xz" .whl/
data=../shared/data/chaos-t2
mkdir -p .gpu-data/chaos-t2/images .gpu-data/chaos-t2/labels
cp "$data/images/image_38.nii.gz" .gpu-data/chaos-t2/images/
cp "$data/labels/label_38.nii.gz" .gpu-data/chaos-t2/labels/
du -sh .whl .gpu-data
