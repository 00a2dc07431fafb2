#!/usr/bin/env bash
# Check the Linux tarball as a user would use it (make bundle-check runs this after the build):
#
#   packaging/check-install.sh dist/sd-fsmis-VERSION-linux-ARCH.tar.gz
#
# Unpacks it, runs install.sh into a throw-away HOME (XDG_DATA_HOME, prefix and bin folder all inside it),
# checks the menu entry, icon and NIfTI type are there and the installed command starts, runs the installed
# uninstall.sh and checks that nothing it added is left. The real home is not touched.
set -euo pipefail

TARBALL="${1:?usage: check-install.sh dist/sd-fsmis-VERSION-linux-ARCH.tar.gz}"
[ -f "$TARBALL" ] || { echo "check-install.sh: $TARBALL not found" >&2; exit 1; }
TARBALL="$(cd "$(dirname "$TARBALL")" && pwd)/$(basename "$TARBALL")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sd-fsmis-install-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
fail() { echo "check-install.sh: FAILED: $*" >&2; exit 1; }

echo "==> unpacking $(basename "$TARBALL")"
mkdir "$WORK/unpacked"
tar -xzf "$TARBALL" -C "$WORK/unpacked"
TOP="$(find "$WORK/unpacked" -mindepth 1 -maxdepth 1 -type d)"
[ "$(echo "$TOP" | wc -l)" = 1 ] && [ -x "$TOP/install.sh" ] || fail "the tarball has no single top folder with install.sh"

export HOME="$WORK/home"
export XDG_DATA_HOME="$HOME/.local/share"
export SD_FSMIS_HOME="$WORK/sd-fsmis-home"
mkdir -p "$HOME"
before="$(cd "$HOME" && find . | sort)"

echo "==> install.sh"
"$TOP/install.sh" > "$WORK/install.txt" 2>&1 || { cat "$WORK/install.txt" >&2; fail "install.sh"; }
PREFIX="$HOME/.local/opt/sd-fsmis"
DESKTOP="$XDG_DATA_HOME/applications/sd-fsmis.desktop"
[ -x "$PREFIX/sd-fsmis" ] || fail "no $PREFIX/sd-fsmis"
[ -L "$HOME/.local/bin/sd-fsmis" ] || fail "no command link in ~/.local/bin"
[ -f "$DESKTOP" ] || fail "no menu entry $DESKTOP"
grep -qx "Exec=\"$PREFIX/sd-fsmis\" gui %F" "$DESKTOP" || fail "the menu entry does not run $PREFIX/sd-fsmis"
grep -qx "Categories=Science;MedicalSoftware;" "$DESKTOP" || fail "the menu entry's categories"
[ -f "$XDG_DATA_HOME/icons/hicolor/256x256/apps/sd-fsmis.png" ] || fail "no icon in the hicolor theme"
[ -f "$XDG_DATA_HOME/mime/packages/sd-fsmis-nifti.xml" ] || fail "no NIfTI MIME type"
if command -v desktop-file-validate >/dev/null 2>&1; then
    desktop-file-validate "$DESKTOP" || fail "desktop-file-validate"
fi
version="$("$HOME/.local/bin/sd-fsmis" --version)" || fail "the installed command does not start"
echo "    installed: $version; menu entry, icon and file types in place"

echo "==> uninstall.sh"
"$PREFIX/uninstall.sh" > "$WORK/uninstall.txt" 2>&1 || { cat "$WORK/uninstall.txt" >&2; fail "uninstall.sh"; }
after="$(cd "$HOME" && find . | sort)"
if [ "$before" != "$after" ]; then
    diff <(echo "$before") <(echo "$after") >&2 || true
    fail "uninstall.sh left files behind"
fi
echo "    uninstalled: nothing left behind"
