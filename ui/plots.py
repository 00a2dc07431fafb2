"""pyqtgraph plots in the application's look: the palette's colours, a light grid, no context menu."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6 import QtGui


def themed_plot(palette: QtGui.QPalette, left: str, bottom: str) -> pg.PlotWidget:
    """A plot on the palette's base colour with text-coloured axes titled ``left`` and ``bottom``."""
    foreground = palette.color(QtGui.QPalette.ColorRole.Text)
    plot = pg.PlotWidget(background=palette.color(QtGui.QPalette.ColorRole.Base))
    item = plot.getPlotItem()
    item.setMenuEnabled(False)
    item.hideButtons()
    item.showGrid(x=True, y=True, alpha=0.25)
    for axis_name in ("left", "bottom"):
        axis = item.getAxis(axis_name)
        axis.setPen(pg.mkPen(foreground))
        axis.setTextPen(pg.mkPen(foreground))
    item.setLabel("left", left)
    item.setLabel("bottom", bottom)
    return plot


def dice_axis(item: pg.PlotItem) -> None:
    """Dice on the y axis: 0 to 1 fixed, with a margin below 0 so that a Dice-0 point (a slice predicted
    beyond the organ's end, or missed) lies inside the plot and can be clicked; the mouse pans and zooms
    along x only."""
    item.setYRange(-0.06, 1.06, padding=0)
    item.getViewBox().setMouseEnabled(x=True, y=False)
