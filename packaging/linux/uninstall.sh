#!/usr/bin/env bash
# Remove an SD-FSMIS installation made by install.sh: exactly the files, links and folders listed in its
# .install-manifest (folders only when empty), then the application folder. The user's studies, models
# and settings are not touched.
#
#   PREFIX/uninstall.sh            (the copy install.sh put into the application folder)
#   ./uninstall.sh --prefix DIR    (from the unpacked tarball; default ~/.local/opt/sd-fsmis)
#   --quiet                        print nothing but errors
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA_HOME="${XDG_DATA_HOME:-$HOME/.local/share}"
QUIET=0
if [ -f "$HERE/.install-manifest" ]; then PREFIX="$HERE"; else PREFIX="$HOME/.local/opt/sd-fsmis"; fi

die() { echo "uninstall.sh: error: $*" >&2; exit 1; }
say() { [ "$QUIET" = 1 ] || echo "$@"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a folder"; PREFIX="$2"; shift 2 ;;
        --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
        --quiet|-q) QUIET=1; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
case "$PREFIX" in /*) ;; *) PREFIX="$PWD/$PREFIX" ;; esac
PREFIX="${PREFIX%/}"
MANIFEST="$PREFIX/.install-manifest"
[ -f "$MANIFEST" ] || die "no SD-FSMIS installation in $PREFIX ($MANIFEST not found)"
[ -e "$PREFIX/sd-fsmis" ] || die "$PREFIX does not look like an SD-FSMIS installation (no sd-fsmis in it)"

# the manifest, newest first
ENTRIES=()
while IFS= read -r line; do
    case "$line" in "#"*|"") continue ;; esac
    ENTRIES=("$line" ${ENTRIES[@]+"${ENTRIES[@]}"})
done < "$MANIFEST"

MENU=0
for entry in ${ENTRIES[@]+"${ENTRIES[@]}"}; do
    kind="${entry%% *}"; path="${entry#* }"
    case "$path" in */applications/sd-fsmis.desktop) MENU=1 ;; esac
    case "$kind" in
        f) if [ -f "$path" ] && [ ! -L "$path" ]; then rm -f "$path"; fi ;;
        l) # only our link (pointing into PREFIX): a link the user changed since stays
           if [ -L "$path" ] && [ "$(readlink "$path")" = "$PREFIX/sd-fsmis" ]; then rm -f "$path"; fi ;;
        d) if [ "$path" = "$PREFIX" ]; then
               rm -rf "$PREFIX"
           elif [ -d "$path" ]; then
               # caches the desktop tools generated in a folder that install.sh created for our files
               case "$path" in
                   "$DATA_HOME/applications") rm -f "$path/mimeinfo.cache" ;;
                   "$DATA_HOME/icons/hicolor") rm -f "$path/icon-theme.cache" ;;
                   "$DATA_HOME/mime")  # the database generated from packages/: ours was the only package
                       if [ ! -d "$path/packages" ]; then
                           find "$path" -mindepth 1 -delete 2>/dev/null || true
                       fi ;;
               esac
               rmdir "$path" 2>/dev/null || true
           fi ;;
        *) say "uninstall.sh: skipping an unknown manifest line: $entry" ;;
    esac
done
[ ! -e "$PREFIX" ] || rm -rf "$PREFIX"

# refresh the caches of what remains (each tool where installed)
if [ "$MENU" = 1 ]; then
    if [ -d "$DATA_HOME/mime" ] && command -v update-mime-database >/dev/null 2>&1; then
        update-mime-database "$DATA_HOME/mime" >/dev/null 2>&1 || true
    fi
    if [ -d "$DATA_HOME/applications" ] && command -v update-desktop-database >/dev/null 2>&1; then
        update-desktop-database -q "$DATA_HOME/applications" 2>/dev/null || true
    fi
    if [ -d "$DATA_HOME/icons/hicolor" ] && command -v gtk-update-icon-cache >/dev/null 2>&1; then
        gtk-update-icon-cache -q -t -f "$DATA_HOME/icons/hicolor" 2>/dev/null || true
    fi
fi
say "SD-FSMIS was removed from $PREFIX."
