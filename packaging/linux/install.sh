#!/usr/bin/env bash
# Install SD-FSMIS for the current user (no root needed) from the unpacked tarball:
#
#   ./install.sh [--prefix DIR] [--bindir DIR] [--no-menu]
#
#   --prefix DIR   where the application goes (default: ~/.local/opt/sd-fsmis)
#   --bindir DIR   where the `sd-fsmis` command link goes (default: ~/.local/bin)
#   --no-menu      no applications-menu entry, icons or file types (a server: the command line only)
#
# Adds: the application folder, a link to it in BINDIR, the menu entry
# ($XDG_DATA_HOME/applications/sd-fsmis.desktop, categories Science;MedicalSoftware, opening .nii, .nii.gz
# and .dcm files), the icon in the hicolor theme, and the NIfTI file types ($XDG_DATA_HOME/mime/packages;
# freedesktop has application/dicom but no NIfTI type). Every file and folder it creates is listed in
# PREFIX/.install-manifest; PREFIX/uninstall.sh removes exactly those. Installing again over an existing
# installation uninstalls it first (an upgrade). The user's studies, models and settings (~/.local/share/
# sd-fsmis, ~/.config/sd-fsmis, ...) are not touched by either script.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA_HOME="${XDG_DATA_HOME:-$HOME/.local/share}"
PREFIX="$HOME/.local/opt/sd-fsmis"
BINDIR="$HOME/.local/bin"
MENU=1
ICON_SIZES="16 24 32 48 64 128 256 512"

die() { echo "install.sh: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a folder"; PREFIX="$2"; shift 2 ;;
        --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
        --bindir) [ $# -ge 2 ] || die "--bindir needs a folder"; BINDIR="$2"; shift 2 ;;
        --bindir=*) BINDIR="${1#--bindir=}"; shift ;;
        --no-menu) MENU=0; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }
PREFIX="$(absolute "$PREFIX")"; PREFIX="${PREFIX%/}"
BINDIR="$(absolute "$BINDIR")"; BINDIR="${BINDIR%/}"
DATA_HOME="$(absolute "$DATA_HOME")"; DATA_HOME="${DATA_HOME%/}"

# The desktop entry quotes the path; these characters would need escaping there and in shells.
case "$PREFIX" in *[\"\`\$\\%]*|*$'\n'*) die "the folder '$PREFIX' holds a character (\" \` \$ \\ % or a newline) a menu entry cannot use; choose another --prefix" ;; esac
[ -n "$PREFIX" ] && [ "$PREFIX" != "$HOME" ] && [ "$PREFIX" != "/" ] || die "refusing to install into '$PREFIX'"

[ -x "$HERE/sd-fsmis/sd-fsmis" ] || die "the application folder $HERE/sd-fsmis is missing (run install.sh from the unpacked tarball)"
if [ "$MENU" = 1 ]; then
    for f in share/sd-fsmis.desktop.in share/sd-fsmis-nifti.xml share/icons/sd-fsmis.svg; do
        [ -f "$HERE/$f" ] || die "$HERE/$f is missing (a damaged tarball?)"
    done
fi

# An earlier installation at PREFIX: remove it first (its own uninstaller, which knows what it added).
if [ -e "$PREFIX" ]; then
    if [ -f "$PREFIX/.install-manifest" ] && [ -x "$PREFIX/uninstall.sh" ]; then
        echo "Removing the installation in $PREFIX first…"
        "$PREFIX/uninstall.sh" --quiet
    else
        die "$PREFIX exists and is not an SD-FSMIS installation; remove it or choose another --prefix"
    fi
fi

# ---- the manifest: every created file ("f"), link ("l") and folder ("d"), in creation order
MANIFEST_LINES=()
created() { MANIFEST_LINES+=("$1 $2"); }

make_dir() {  # mkdir -p that records each folder it creates
    local dir="$1" parts=() path
    while [ ! -d "$dir" ]; do parts=("$dir" ${parts[@]+"${parts[@]}"}); dir="$(dirname "$dir")"; done
    for path in ${parts[@]+"${parts[@]}"}; do
        mkdir "$path"
        created d "$path"
    done
}

install_file() {  # install_file SOURCE TARGET [MODE]
    make_dir "$(dirname "$2")"
    [ -e "$2" ] || [ -L "$2" ] || created f "$2"
    cp -f "$1" "$2.sd-fsmis-tmp"
    chmod "${3:-644}" "$2.sd-fsmis-tmp"
    mv -f "$2.sd-fsmis-tmp" "$2"
}

# ---- the application: copied next to PREFIX, then moved into place (no half-installed folder)
make_dir "$(dirname "$PREFIX")"
STAGING="$(mktemp -d "$(dirname "$PREFIX")/.sd-fsmis-install.XXXXXX")"
trap 'rm -rf "$STAGING"' EXIT
echo "Copying the application to $PREFIX…"
cp -a "$HERE/sd-fsmis/." "$STAGING/"
cp -f "$HERE/uninstall.sh" "$STAGING/uninstall.sh"
chmod 755 "$STAGING/uninstall.sh" "$STAGING/sd-fsmis"
[ -f "$HERE/VERSION" ] && cp -f "$HERE/VERSION" "$STAGING/VERSION"
chmod 755 "$STAGING"
mv "$STAGING" "$PREFIX"
trap - EXIT
created d "$PREFIX"

# ---- the command
make_dir "$BINDIR"
if [ -L "$BINDIR/sd-fsmis" ] || [ ! -e "$BINDIR/sd-fsmis" ]; then
    if [ -L "$BINDIR/sd-fsmis" ]; then
        echo "Replacing the link $BINDIR/sd-fsmis (it pointed to $(readlink "$BINDIR/sd-fsmis"))"
    fi
    ln -sfn "$PREFIX/sd-fsmis" "$BINDIR/sd-fsmis"
    created l "$BINDIR/sd-fsmis"
else
    echo "Note: $BINDIR/sd-fsmis exists and is not a link; left as it is. Run $PREFIX/sd-fsmis instead."
fi

# ---- menu entry, icons, file types
if [ "$MENU" = 1 ]; then
    APPS="$DATA_HOME/applications"
    make_dir "$APPS"
    [ -e "$APPS/sd-fsmis.desktop" ] || created f "$APPS/sd-fsmis.desktop"
    sed -e "s|@EXEC@|$PREFIX/sd-fsmis|g" "$HERE/share/sd-fsmis.desktop.in" > "$APPS/sd-fsmis.desktop.sd-fsmis-tmp"
    chmod 644 "$APPS/sd-fsmis.desktop.sd-fsmis-tmp"
    mv -f "$APPS/sd-fsmis.desktop.sd-fsmis-tmp" "$APPS/sd-fsmis.desktop"

    for size in $ICON_SIZES; do
        if [ -f "$HERE/share/icons/sd-fsmis-$size.png" ]; then
            install_file "$HERE/share/icons/sd-fsmis-$size.png" "$DATA_HOME/icons/hicolor/${size}x${size}/apps/sd-fsmis.png"
        fi
    done
    install_file "$HERE/share/icons/sd-fsmis.svg" "$DATA_HOME/icons/hicolor/scalable/apps/sd-fsmis.svg"
    install_file "$HERE/share/sd-fsmis-nifti.xml" "$DATA_HOME/mime/packages/sd-fsmis-nifti.xml"
fi

{
    echo "# SD-FSMIS installation manifest: what install.sh created (f file, l link, d folder), in order"
    printf '%s\n' "${MANIFEST_LINES[@]}"
} > "$PREFIX/.install-manifest"

# ---- the desktop's caches (each tool where installed; none is required)
if [ "$MENU" = 1 ]; then
    if command -v update-mime-database >/dev/null 2>&1; then
        update-mime-database "$DATA_HOME/mime" >/dev/null 2>&1 || echo "Note: update-mime-database failed; the NIfTI file type appears after the next log-in"
    fi
    if command -v update-desktop-database >/dev/null 2>&1; then
        update-desktop-database -q "$DATA_HOME/applications" 2>/dev/null || true
    fi
    if command -v gtk-update-icon-cache >/dev/null 2>&1; then
        gtk-update-icon-cache -q -t -f "$DATA_HOME/icons/hicolor" 2>/dev/null || true
    fi
    if command -v xdg-desktop-menu >/dev/null 2>&1; then
        xdg-desktop-menu forceupdate >/dev/null 2>&1 || true
    fi
fi

echo "SD-FSMIS is installed in $PREFIX."
[ "$MENU" = 1 ] && echo "Start it from the applications menu (Science / Medical Software) or with: sd-fsmis"
case ":$PATH:" in *":$BINDIR:"*) ;; *) echo "Note: $BINDIR is not on your PATH; the command is $PREFIX/sd-fsmis" ;; esac
echo "Uninstall with: $PREFIX/uninstall.sh"
