#!/usr/bin/env bash
# Build the one-folder bundle with PyInstaller, run its checks, and (Linux) pack the tarball.
#
#   packaging/build.sh            (what `make bundle` runs, after installing the `package` extra)
#
# Outputs: dist/sd-fsmis/ (the bundle), dist/sd-fsmis-VERSION-linux-ARCH.tar.gz (Linux), the build log in
# build/pyinstaller.log. A bundle whose frozen self-test fails is not packed: the script exits non-zero.
# Windows and macOS: see README ("Building the installers"); this script builds the bundle there too
# (bash from Git for Windows / macOS), then packaging/windows/sd-fsmis.iss or packaging/macos/make-dmg.sh.
#
# Environment: PYTHON (default .venv/bin/python or .venv/Scripts/python.exe, with the `package` extra installed), SD_FSMIS_CLEAN_BUILD=1
# (throw away PyInstaller's cache in build/pyinstaller first), SD_FSMIS_CHECK_DATA=DIR (a CHAOS-layout
# folder: the frozen check also trains 2 steps, exercising accelerate and the training code).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
    PYTHON="$ROOT/.venv/bin/python"
    [ -x "$PYTHON" ] || PYTHON="$ROOT/.venv/Scripts/python.exe"  # a Windows venv
fi
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' app/__init__.py)"
[ -n "$VERSION" ] || { echo "build.sh: no __version__ in app/__init__.py" >&2; exit 1; }
case "$(uname -s)" in
    Linux) PLATFORM=linux ;;
    Darwin) PLATFORM=macos ;;
    MINGW*|MSYS*|CYGWIN*) PLATFORM=windows ;;
    *) PLATFORM="$(uname -s | tr '[:upper:]' '[:lower:]')" ;;
esac
ARCH="$(uname -m)"
EXE=dist/sd-fsmis/sd-fsmis
[ "$PLATFORM" = windows ] && EXE=dist/sd-fsmis/sd-fsmis.exe

"$PYTHON" -c "import PyInstaller" 2>/dev/null \
    || { echo "build.sh: PyInstaller is not installed in $PYTHON (pip install -e '.[package]', or: make bundle)" >&2; exit 1; }
for f in resources/sd-fsmis.svg resources/sd-fsmis-256.png resources/sd-fsmis.ico resources/sd-fsmis.icns; do
    [ -f "$f" ] || { echo "build.sh: $f is missing (run $PYTHON packaging/make_icons.py)" >&2; exit 1; }
done

mkdir -p build dist
LOG=build/pyinstaller.log
CLEAN=()
[ "${SD_FSMIS_CLEAN_BUILD:-0}" = 1 ] && CLEAN=(--clean)
echo "==> building the bundle with PyInstaller ($("$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda or "none")')); log: $LOG"
start=$(date +%s)
rm -rf dist/sd-fsmis
if ! "$PYTHON" -m PyInstaller --noconfirm ${CLEAN[@]+"${CLEAN[@]}"} --distpath dist --workpath build/pyinstaller \
        packaging/sd-fsmis.spec > "$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "build.sh: PyInstaller failed (full log: $LOG)" >&2
    exit 1
fi
build_s=$(( $(date +%s) - start ))
echo "    built in ${build_s} s: $(du -sh dist/sd-fsmis | cut -f1) in dist/sd-fsmis"

echo "==> checking the frozen bundle"
packaging/check-bundle.sh "$EXE"

if [ "$PLATFORM" = linux ]; then
    NAME="sd-fsmis-$VERSION-linux-$ARCH"
    TARBALL="dist/$NAME.tar.gz"
    echo "==> packing $TARBALL"
    SHARE=build/linux-share
    rm -rf "$SHARE"
    mkdir -p "$SHARE/share/icons"
    cp packaging/linux/install.sh packaging/linux/uninstall.sh "$SHARE/"
    chmod 755 "$SHARE/install.sh" "$SHARE/uninstall.sh"
    cp packaging/linux/sd-fsmis.desktop.in packaging/linux/sd-fsmis-nifti.xml "$SHARE/share/"
    cp resources/sd-fsmis-*.png resources/sd-fsmis.svg "$SHARE/share/icons/"
    echo "$VERSION" > "$SHARE/VERSION"
    cp packaging/linux/README.txt "$SHARE/README.txt"
    COMPRESS=(-z)
    command -v pigz >/dev/null 2>&1 && COMPRESS=(-I pigz)
    rm -f "$TARBALL" "$TARBALL.tmp"
    # one top folder NAME/ holding the scripts, share/ and the bundle sd-fsmis/ (no copy of the bundle)
    tar "${COMPRESS[@]}" -cf "$TARBALL.tmp" --owner=0 --group=0 --numeric-owner \
        --transform "s,^\./,$NAME/,rhS" \
        -C "$SHARE" ./install.sh ./uninstall.sh ./README.txt ./VERSION ./share \
        -C "$ROOT/dist" ./sd-fsmis
    mv -f "$TARBALL.tmp" "$TARBALL"
    echo "    $TARBALL: $(du -h "$TARBALL" | cut -f1)"
fi
echo "==> done: bundle dist/sd-fsmis ($(du -sh dist/sd-fsmis | cut -f1)), built in ${build_s} s"
