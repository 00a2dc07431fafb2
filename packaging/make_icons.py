"""Render the application icon (resources/sd-fsmis.svg) into the files the installers and the window use.

    .venv/bin/python packaging/make_icons.py

writes resources/sd-fsmis-<N>.png (N = 16 ... 512; the window icon and the Linux hicolor theme),
resources/sd-fsmis.ico (Windows: 16 ... 256) and resources/sd-fsmis.icns (macOS). The SVG is drawn with
Qt's QSvgRenderer (antialiased, on a transparent background); Pillow writes the ICO and ICNS containers.
The generated files are committed: run this again after changing the SVG.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
SVG = RESOURCES / "sd-fsmis.svg"
PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)


def render(svg: Path, size: int):
    """The SVG as a ``size`` x ``size`` RGBA PIL image."""
    from PIL import Image
    from PySide6 import QtCore, QtGui, QtSvg

    renderer = QtSvg.QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"make_icons: {svg} is not a valid SVG")
    image = QtGui.QImage(size, size, QtGui.QImage.Format.Format_RGBA8888)
    image.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(image)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QtGui.QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter, QtCore.QRectF(0, 0, size, size))
    painter.end()
    data = bytes(image.constBits())[: size * image.bytesPerLine()]
    return Image.frombuffer("RGBA", (size, size), data, "raw", "RGBA", image.bytesPerLine(), 1).copy()


def main(out: Path = RESOURCES) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtGui

    _app = QtGui.QGuiApplication.instance() or QtGui.QGuiApplication(sys.argv[:1])
    out.mkdir(parents=True, exist_ok=True)
    images = {size: render(SVG, size) for size in sorted({*PNG_SIZES, *ICO_SIZES, 1024})}
    for size in PNG_SIZES:
        images[size].save(out / f"sd-fsmis-{size}.png", optimize=True)
    largest = images[max(ICO_SIZES)]
    largest.save(
        out / "sd-fsmis.ico",
        sizes=[(s, s) for s in ICO_SIZES],
        append_images=[images[s] for s in ICO_SIZES if s != max(ICO_SIZES)],
    )
    images[1024].save(out / "sd-fsmis.icns", append_images=[images[s] for s in (16, 32, 64, 128, 256, 512)])
    print(f"make_icons: wrote {len(PNG_SIZES)} PNG sizes, sd-fsmis.ico and sd-fsmis.icns into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESOURCES))
