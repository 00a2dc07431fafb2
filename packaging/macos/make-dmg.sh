#!/usr/bin/env bash
# macOS: sign SD-FSMIS.app and put it into a compressed disk image with an Applications link.
#
#   bash packaging/build.sh             # on a Mac: builds dist/SD-FSMIS.app and runs the frozen checks
#   packaging/macos/make-dmg.sh         # -> dist/sd-fsmis-VERSION-macos-ARCH.dmg
#
# Signing: CODESIGN_IDENTITY="Developer ID Application: ..." signs with the hardened runtime and
# entitlements.plist (torch needs to map executable memory); without it the app is signed ad hoc, which
# runs on the building Mac, while other Macs need right-click > Open the first time.
# Notarisation (optional, needs CODESIGN_IDENTITY): NOTARY_PROFILE=<profile stored with
# `xcrun notarytool store-credentials`> submits the image and staples the ticket.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
die() { echo "make-dmg.sh: error: $*" >&2; exit 1; }
[ "$(uname -s)" = Darwin ] || die "runs on macOS only (hdiutil, codesign)"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' app/__init__.py)"
APP="dist/SD-FSMIS.app"
[ -d "$APP" ] || die "$APP not found: run packaging/build.sh first"
DMG="dist/sd-fsmis-$VERSION-macos-$(uname -m).dmg"

if [ -n "${CODESIGN_IDENTITY:-}" ]; then
    echo "==> signing $APP as $CODESIGN_IDENTITY (hardened runtime)"
    codesign --force --deep --timestamp --options runtime \
        --entitlements packaging/macos/entitlements.plist --sign "$CODESIGN_IDENTITY" "$APP"
else
    echo "==> signing $APP ad hoc (set CODESIGN_IDENTITY to sign for distribution)"
    codesign --force --deep --sign - "$APP"
fi
codesign --verify --deep --strict "$APP"

echo "==> checking the signed app"
"$APP/Contents/MacOS/sd-fsmis" --self-test

echo "==> creating $DMG"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
ditto "$APP" "$STAGE/SD-FSMIS.app"
ln -s /Applications "$STAGE/Applications"
rm -f "$DMG"
hdiutil create -volname "SD-FSMIS $VERSION" -srcfolder "$STAGE" -fs HFS+ -format UDZO -imagekey zlib-level=9 \
    -ov "$DMG"

if [ -n "${CODESIGN_IDENTITY:-}" ]; then
    codesign --force --timestamp --sign "$CODESIGN_IDENTITY" "$DMG"
    if [ -n "${NOTARY_PROFILE:-}" ]; then
        echo "==> notarising $DMG"
        xcrun notarytool submit "$DMG" --keychain-profile "$NOTARY_PROFILE" --wait
        xcrun stapler staple "$DMG"
    fi
fi
echo "==> $DMG ($(du -h "$DMG" | cut -f1))"
