"""The fine-tuning wizard's live curves: training loss per step (raw and smoothed) and validation Dice.

Points arrive one optimiser step at a time from the training worker; the curves are redrawn at most a few
times per second (a timer), so a fast run does not flood the event loop. After a resume the trainer
continues from its checkpoint: points after that step are dropped first (:meth:`LossPlot.add_loss`).
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from sd_fsmis.ui.plots import dice_axis, themed_plot

#: Weight of the exponential moving average of the smoothed loss line (TensorBoard's default smoothing).
SMOOTHING = 0.9
#: Milliseconds between two redraws at most.
REDRAW_MS = 200

LOSS_RAW = (150, 150, 150)
LOSS_SMOOTH = (0, 114, 178)
DICE = (213, 94, 0)
HELDOUT = (0, 158, 115)
LEGEND = (
    f'<span style="color: rgb{LOSS_RAW}">━</span> loss per step &nbsp; '
    f'<span style="color: rgb{LOSS_SMOOTH}">━</span> smoothed &nbsp; '
    f'<span style="color: rgb{DICE}">●</span> validation Dice (held-out volumes)'
)
#: the held-out episode loss, shown when measured (a self-supervised run without a labelled held-out volume
#: has it as its only validation)
HELDOUT_LEGEND = f' &nbsp; <span style="color: rgb{HELDOUT}">■</span> held-out episode loss'


def smoothed(values: np.ndarray, weight: float = SMOOTHING) -> np.ndarray:
    """Debiased exponential moving average of ``values`` (the first point is not pulled towards 0)."""
    out = np.empty(len(values), dtype=float)
    average, norm = 0.0, 0.0
    for i, value in enumerate(values):
        average = weight * average + (1.0 - weight) * float(value)
        norm = weight * norm + (1.0 - weight)
        out[i] = average / norm
    return out


def _styled_plot(palette: QtGui.QPalette, left: str, bottom: str) -> pg.PlotWidget:
    plot = themed_plot(palette, left, bottom)
    item = plot.getPlotItem()
    for axis_name in ("left", "bottom"):
        item.getAxis(axis_name).enableAutoSIPrefix(False)  # losses of 0.001 stay 0.001, not "x0.001"
    item.getAxis("left").setWidth(56)  # the two plots' axes line up
    return plot


class LossPlot(QtWidgets.QWidget):
    """Loss per optimiser step (grey, with a smoothed blue line) above validation Dice per step (orange)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._steps: list[int] = []
        self._losses: list[float] = []
        self._validation: dict[int, float] = {}
        self._heldout: dict[int, float] = {}
        self._dice_visible = True
        self._total = 0
        self._dirty = False

        palette = self.palette()
        self.loss_plot = _styled_plot(palette, "loss", "step")
        self.loss_plot.setMinimumHeight(150)
        self.raw_curve = pg.PlotDataItem(pen=pg.mkPen(LOSS_RAW, width=1), name="loss")
        self.smooth_curve = pg.PlotDataItem(pen=pg.mkPen(LOSS_SMOOTH, width=2), name="smoothed")
        item = self.loss_plot.getPlotItem()
        self.heldout_curve = pg.PlotDataItem(
            pen=pg.mkPen(HELDOUT, width=1),
            symbol="s",
            symbolSize=7,
            symbolBrush=pg.mkBrush(*HELDOUT),
            symbolPen=pg.mkPen(None),
            name="held-out",
        )
        item.addItem(self.raw_curve)
        item.addItem(self.smooth_curve)
        item.addItem(self.heldout_curve)

        self.dice_plot = _styled_plot(palette, "Dice", "step")
        self.dice_plot.setMinimumHeight(90)
        self.dice_plot.setMaximumHeight(150)
        dice_item = self.dice_plot.getPlotItem()
        dice_axis(dice_item)
        dice_item.setXLink(item)
        self.dice_curve = pg.PlotDataItem(
            pen=pg.mkPen(DICE, width=1),
            symbol="o",
            symbolSize=7,
            symbolBrush=pg.mkBrush(*DICE),
            symbolPen=pg.mkPen(None),
        )
        dice_item.addItem(self.dice_curve)

        self.legend = legend = QtWidgets.QLabel(LEGEND)
        legend.setTextFormat(QtCore.Qt.TextFormat.RichText)

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.loss_plot, 3)
        layout.addWidget(self.dice_plot, 1)
        layout.addWidget(legend)

        self._timer = QtCore.QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self.redraw)

    # ------------------------------------------------------------------------------------------ data
    def clear(self) -> None:
        """Forget every point."""
        self._steps, self._losses, self._validation, self._heldout = [], [], {}, {}
        self._update_legend()
        self._schedule()

    def set_total(self, steps: int) -> None:
        """The run's number of steps: the x axis spans 0..steps."""
        self._total = max(0, int(steps))
        self._schedule()

    def truncate(self, step: int) -> None:
        """Drop the points after ``step`` (a resumed run continues from its checkpoint at ``step``)."""
        keep = sum(1 for s in self._steps if s <= step)
        self._steps, self._losses = self._steps[:keep], self._losses[:keep]
        self._validation = {s: d for s, d in self._validation.items() if s <= step}
        self._heldout = {s: v for s, v in self._heldout.items() if s <= step}
        self._schedule()

    def add_loss(self, step: int, loss: float) -> None:
        """The loss of optimiser step ``step`` (1-based); a step not after the last one restarts there."""
        step = int(step)
        if self._steps and step <= self._steps[-1]:
            self.truncate(step - 1)
        self._steps.append(step)
        self._losses.append(float(loss))
        self._schedule()

    def set_losses(self, losses: list[float], first_step: int = 1) -> None:
        """Replace the loss curve by a whole history (step ``first_step`` first)."""
        self._steps = list(range(first_step, first_step + len(losses)))
        self._losses = [float(v) for v in losses]
        self._schedule()

    def add_validation(self, step: int, dice: float | None) -> None:
        """A validation mean Dice at ``step`` (None or NaN: nothing to plot)."""
        if dice is None or not math.isfinite(float(dice)):
            return
        self._validation[int(step)] = float(dice)
        self._schedule()

    def add_heldout(self, step: int, loss: float | None) -> None:
        """The mean loss of the fixed held-out episodes at ``step`` (None or NaN: nothing to plot)."""
        if loss is None or not math.isfinite(float(loss)):
            return
        self._heldout[int(step)] = float(loss)
        self._update_legend()
        self._schedule()

    def set_dice_visible(self, visible: bool) -> None:
        """Show the validation Dice plot (hidden for a run without a labelled held-out volume)."""
        self._dice_visible = bool(visible)
        self.dice_plot.setVisible(visible)
        self._update_legend()

    def _update_legend(self) -> None:
        text = LEGEND if self._dice_visible else LEGEND.rsplit("&nbsp;", 1)[0]
        self.legend.setText(text + (HELDOUT_LEGEND if self._heldout else ""))

    def set_validation(self, validation: dict[int, float]) -> None:
        self._validation = {}
        for step, dice in validation.items():
            self.add_validation(step, dice)
        self._schedule()

    @property
    def loss_points(self) -> list[tuple[int, float]]:
        """The (step, loss) points shown."""
        return list(zip(self._steps, self._losses, strict=True))

    @property
    def heldout_points(self) -> dict[int, float]:
        """step -> held-out episode loss shown."""
        return dict(sorted(self._heldout.items()))

    @property
    def validation_points(self) -> dict[int, float]:
        """step -> validation Dice shown."""
        return dict(sorted(self._validation.items()))

    # ------------------------------------------------------------------------------------------ drawing
    def _schedule(self) -> None:
        self._dirty = True
        if not self._timer.isActive():
            self._timer.start()

    def redraw(self) -> None:
        """Draw the curves now (the timer calls it; tests and screenshots may too)."""
        self._timer.stop()
        self._dirty = False
        steps = np.asarray(self._steps, dtype=float)
        losses = np.asarray(self._losses, dtype=float)
        finite = np.isfinite(losses)
        self.raw_curve.setData(steps[finite], losses[finite])
        self.smooth_curve.setData(steps[finite], smoothed(losses[finite]) if finite.any() else losses[:0])
        points = self.validation_points
        self.dice_curve.setData(list(points), list(points.values()))
        heldout = self.heldout_points
        self.heldout_curve.setData(list(heldout), list(heldout.values()))
        right = max(self._total, int(steps[-1]) if len(steps) else 0, max(points, default=0), 1)
        self.loss_plot.getPlotItem().setXRange(0, right, padding=0.02)
        # steps are whole numbers: no 0.5-step ticks on a short run
        spacing = [(1.0, 0.0)] if right <= 10 else None
        for plot in (self.loss_plot, self.dice_plot):
            plot.getPlotItem().getAxis("bottom").setTickSpacing(levels=spacing)
