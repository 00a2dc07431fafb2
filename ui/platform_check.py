"""Before Qt opens a window on Linux/X11: are the system libraries of Qt's xcb platform plugin there?

Qt's ``xcb`` plugin (PySide6 ships it) links against X11 libraries that the PySide6 wheel does not bundle
(Qt's "Qt for X11 requirements"). Where one is missing, Qt prints several lines about the plugin that could
not be loaded and aborts. This check loads each of those libraries (``ctypes``) first and, where some are
missing, gives one line naming them with the command that installs them (Debian/Ubuntu and Fedora).
Wayland sessions use Qt's wayland plugin and are not checked; nor are other systems.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SystemLibrary:
    """A shared library Qt's xcb plugin needs, with the package that provides it."""

    soname: str
    debian: str
    fedora: str


#: the X11 libraries of Qt 6's xcb plugin that PySide6 does not bundle (libxcb-cursor since Qt 6.5)
XCB_LIBRARIES = (
    SystemLibrary("libxcb.so.1", "libxcb1", "libxcb"),
    SystemLibrary("libX11-xcb.so.1", "libx11-xcb1", "libX11-xcb"),
    SystemLibrary("libxcb-cursor.so.0", "libxcb-cursor0", "xcb-util-cursor"),
    SystemLibrary("libxcb-icccm.so.4", "libxcb-icccm4", "xcb-util-wm"),
    SystemLibrary("libxcb-keysyms.so.1", "libxcb-keysyms1", "xcb-util-keysyms"),
    SystemLibrary("libxcb-image.so.0", "libxcb-image0", "xcb-util-image"),
    SystemLibrary("libxcb-render-util.so.0", "libxcb-render-util0", "xcb-util-renderutil"),
    SystemLibrary("libxcb-shape.so.0", "libxcb-shape0", "libxcb"),
    SystemLibrary("libxcb-randr.so.0", "libxcb-randr0", "libxcb"),
    SystemLibrary("libxcb-xfixes.so.0", "libxcb-xfixes0", "libxcb"),
    SystemLibrary("libxcb-sync.so.1", "libxcb-sync1", "libxcb"),
    SystemLibrary("libxcb-shm.so.0", "libxcb-shm0", "libxcb"),
    SystemLibrary("libxcb-xkb.so.1", "libxcb-xkb1", "libxcb"),
    SystemLibrary("libxkbcommon.so.0", "libxkbcommon0", "libxkbcommon"),
    SystemLibrary("libxkbcommon-x11.so.0", "libxkbcommon-x11-0", "libxkbcommon-x11"),
    SystemLibrary("libfontconfig.so.1", "libfontconfig1", "fontconfig"),
    SystemLibrary("libEGL.so.1", "libegl1", "libglvnd-egl"),
)


def _loads(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def uses_xcb(environ: dict[str, str] | None = None, platform: str | None = None) -> bool:
    """Whether Qt will use its xcb plugin: Linux/BSD, an X display, no Wayland session (or xcb asked for)."""
    env = os.environ if environ is None else environ
    system = sys.platform if platform is None else platform
    if not system.startswith(("linux", "freebsd")):
        return False
    asked = env.get("QT_QPA_PLATFORM", "")
    if asked:
        return asked.split(":")[0] == "xcb"
    return bool(env.get("DISPLAY")) and not env.get("WAYLAND_DISPLAY")


def missing_xcb_libraries(loads: Callable[[str], bool] | None = None) -> list[SystemLibrary]:
    """The libraries of :data:`XCB_LIBRARIES` that cannot be loaded (``loads``: default, ``ctypes``)."""
    loads = loads or _loads
    return [lib for lib in XCB_LIBRARIES if not loads(lib.soname)]


def install_hint(missing: list[SystemLibrary]) -> str:
    """One line: what is missing and how to install it on Debian/Ubuntu and Fedora."""
    debian = " ".join(dict.fromkeys(lib.debian for lib in missing))
    fedora = " ".join(dict.fromkeys(lib.fedora for lib in missing))
    names = ", ".join(lib.soname for lib in missing)
    return (
        f"the window cannot open: Qt's X11 platform plugin needs {names}; install them with "
        f"'sudo apt install {debian}' (Debian/Ubuntu) or 'sudo dnf install {fedora}' (Fedora)"
    )


def xcb_problem(
    environ: dict[str, str] | None = None,
    platform: str | None = None,
    loads: Callable[[str], bool] | None = None,
) -> str:
    """The one-line message when Qt would fail to load its xcb plugin, else ""."""
    if not uses_xcb(environ, platform):
        return ""
    missing = missing_xcb_libraries(loads)
    return install_hint(missing) if missing else ""
