"""The Dice comparison view: a prediction against a reference, per structure, per slice, and on the image.

Choose the reference (a layer of the study, or a mask file loaded with :meth:`Session.load_reference`) and
the prediction (a layer, or a run in the runs table). The panel shows 3-D Dice, HD95 and ASSD in mm and the
volumes in ml per structure (:func:`~sd_fsmis.core.evaluation.metrics.compare_label_maps`, in a worker:
surface distances take a while on big volumes), a plot of Dice per slice (click a point: ``goToSlice(z)``)
and, with "Show disagreement", the true positive / false positive / false negative map for the viewer
(``confusionChanged(array | None)``, :func:`~sd_fsmis.core.evaluation.metrics.confusion_overlay`). The plot
shades the reference's slice range and marks in the false-positive colour every slice predicted beyond its
ends (a structure carried past where it stops); click one to see the extra voxels in the disagreement map.

Structures are matched by name: a prediction's "liver" (value 1) is compared with the reference's "liver"
whatever its value; a prediction with one structure and a reference with one compare those two.

Over 500 lines: one panel (metrics, per-slice plot, overlay, runs table) whose parts follow the same
prediction/reference choice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Qt, Signal

from sd_fsmis.core.errors import UserError
from sd_fsmis.core.evaluation.metrics import LabelComparison, compare_label_maps, confusion_overlay
from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.jobs import CancelToken, ProgressCallback
from sd_fsmis.core.session.layers import LabelLayer
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.ui.colors import FALSE_NEGATIVE, FALSE_POSITIVE, TRUE_POSITIVE
from sd_fsmis.ui.panels.runs_table import RunsTable
from sd_fsmis.ui.plots import dice_axis, themed_plot
from sd_fsmis.ui.workers.job_worker import JobWorker, error_box, qt_alive

log = logging.getLogger(__name__)

#: short titles so that every column fits the docked panel's width (full names in the header tooltips)
METRIC_COLUMNS = ("Structure", "Dice", "HD95 mm", "ASSD mm", "Pred. ml", "Ref. ml")
METRIC_TIPS = (
    "The structure (label of the reference)",
    "Dice of the whole volume",
    "95th percentile Hausdorff distance (mm)",
    "average symmetric surface distance (mm)",
    "volume of the prediction (ml)",
    "volume of the reference (ml)",
)
MASK_FILTER = "Masks (*.nii *.nii.gz *.nrrd *.mha *.mhd);;All files (*)"
#: (colour, short name, explanation) of the disagreement legend
LEGEND = (
    (TRUE_POSITIVE, "agree (TP)", "true positive: in both"),
    (FALSE_POSITIVE, "extra (FP)", "false positive: in the prediction only"),
    (FALSE_NEGATIVE, "missed (FN)", "false negative: in the reference only"),
)
EDIT_DELAY_MS = 800  # recompute this long after the last edit of the prediction or reference


def beyond_reference(pred: np.ndarray, ref: np.ndarray) -> tuple[tuple[int, int] | None, list[int]]:
    """``((first, last) slice of the reference or None, [slices predicted beyond those ends])``, 0-based.

    With an empty reference every predicted slice is "beyond".
    """
    pred_z = np.flatnonzero(pred.reshape(pred.shape[0], -1).any(axis=1))
    ref_z = np.flatnonzero(ref.reshape(ref.shape[0], -1).any(axis=1))
    if ref_z.size == 0:
        return None, [int(z) for z in pred_z]
    first, last = int(ref_z[0]), int(ref_z[-1])
    return (first, last), [int(z) for z in pred_z if z < first or z > last]


def label_pairs(pred: LabelMap, ref: LabelMap) -> list[tuple[int, int]]:
    """``(prediction value, reference value)`` of each structure of the prediction, matched by name.

    A prediction with a single structure and a reference with a single structure are paired whatever
    their names; a name the reference does not have keeps its value.
    """
    pred_values = pred.present_labels() or sorted(pred.labels)
    ref_present = ref.present_labels()
    by_name = {label.name.lower(): value for value, label in ref.labels.items()}
    pairs = []
    for value in pred_values:
        ref_value = by_name.get(pred.label_name(value).lower())
        if ref_value is None and len(pred_values) == 1 and len(ref_present) == 1:
            ref_value = ref_present[0]
        pairs.append((int(value), int(ref_value if ref_value is not None else value)))
    return pairs


def compare_job(
    pred: LabelMap, ref: LabelMap, *, progress: ProgressCallback, cancel: CancelToken
) -> tuple[list[tuple[int, int]], dict[int, LabelComparison]]:
    """The comparison job: pair the structures, then :func:`compare_label_maps` on the reference's values."""
    pairs = label_pairs(pred, ref)
    if not pairs:
        return [], compare_label_maps(pred, ref, progress=progress, cancel=cancel)
    if any(p != r for p, r in pairs):  # renumber the prediction onto the reference's values
        lut = np.zeros(max(int(pred.array.max(initial=0)), *(p for p, _ in pairs)) + 1, dtype=ref.array.dtype)
        for p, r in pairs:
            lut[p] = r
        labels = {r: ref.labels[r] for _, r in pairs if r in ref.labels}
        pred = LabelMap(lut[pred.array], pred.geometry, labels)
    comparisons = compare_label_maps(pred, ref, [r for _, r in pairs], progress=progress, cancel=cancel)
    return pairs, comparisons


def format_mm(value: float) -> str:
    if math.isnan(value):
        return "—"
    return "∞" if math.isinf(value) else f"{value:.1f}"


def format_dice(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def format_ml(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


class ComparePanel(QtWidgets.QWidget):
    """Reference vs prediction: metrics per structure, Dice per slice, the disagreement map, the runs.

    Signals: ``goToSlice(z)`` (a point of the plot was clicked), ``confusionChanged(array | None)`` (for
    ``OrthoViewer.set_confusion``), ``comparisonChanged(dict | None)`` (new numbers, or none).
    """

    goToSlice = Signal(int)
    confusionChanged = Signal(object)
    comparisonChanged = Signal(object)

    def __init__(self, session: Session, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self._study: Study | None = None
        self._prediction_id: str | None = None
        self._pairs: list[tuple[int, int]] = []
        self._comparisons: dict[int, LabelComparison] | None = None
        self._worker: JobWorker | None = None
        self._again = False
        self._confusion_shown = False
        self.last_error = ""
        self._build()
        self._timer = QtCore.QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.refresh)
        session.events.active_study.connect(self._on_active_study)
        session.events.reference.connect(self._on_reference)
        session.support_set.events.any.connect(self._on_support_event)
        self._on_active_study(session.active_study)

    # ------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.reference_combo = QtWidgets.QComboBox()
        self.reference_combo.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.reference_combo.setMinimumContentsLength(16)
        self.reference_combo.setToolTip("The ground truth (or a colleague's mask) to compare with")
        self.reference_combo.activated.connect(self._reference_chosen)
        self.load_button = QtWidgets.QPushButton("Load reference mask…")
        self.load_button.clicked.connect(self.choose_reference_file)
        self.prediction_combo = QtWidgets.QComboBox()
        self.prediction_combo.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.prediction_combo.setMinimumContentsLength(16)
        self.prediction_combo.setToolTip("The mask to evaluate (a model's prediction, or any other layer)")
        self.prediction_combo.activated.connect(self._prediction_chosen)
        reference_row = QtWidgets.QHBoxLayout()
        reference_row.setContentsMargins(0, 0, 0, 0)
        reference_row.addWidget(self.reference_combo, 1)
        reference_row.addWidget(self.load_button)
        form = QtWidgets.QFormLayout()
        form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Reference:", reference_row)
        form.addRow("Prediction:", self.prediction_combo)

        self.status_label = QtWidgets.QLabel()
        self.status_label.setWordWrap(True)

        self.metrics = QtWidgets.QTableWidget(0, len(METRIC_COLUMNS))
        self.metrics.setHorizontalHeaderLabels(list(METRIC_COLUMNS))
        for column, tip in enumerate(METRIC_TIPS):
            self.metrics.horizontalHeaderItem(column).setToolTip(tip)
        self.metrics.verticalHeader().setVisible(False)
        self.metrics.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.metrics.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.metrics.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        header = self.metrics.horizontalHeader()
        # every column in view: the panel's width is shared out (never a scroll bar hiding "Ref. ml")
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setMinimumSectionSize(44)
        self.metrics.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.metrics.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self._fit_metrics_height()
        self.metrics.itemSelectionChanged.connect(self._label_selection_changed)

        self.plot = themed_plot(self.palette(), "Dice", "slice")
        self.plot.setMinimumHeight(160)
        item = self.plot.getPlotItem()
        dice_axis(item)
        self.plot_title = QtWidgets.QLabel("Dice per slice (click a point to show that slice)")
        self.curve = pg.PlotDataItem(pen=pg.mkPen((80, 80, 80), width=1), connect="finite")
        self.scatter = pg.ScatterPlotItem(
            size=8,
            pen=pg.mkPen(None),
            brush=pg.mkBrush(0, 114, 178),
            hoverable=True,
            hoverSize=12,
            tip=lambda x, y, data: f"slice {int(x)}: Dice {y:.3f}",
        )
        self.scatter.sigClicked.connect(self._points_clicked)
        self.beyond_scatter = pg.ScatterPlotItem(
            size=13,
            symbol="t",
            pen=pg.mkPen(None),
            brush=pg.mkBrush(*FALSE_POSITIVE),
            hoverable=True,
            hoverSize=13,
            tip=lambda x, y, data: f"slice {int(x)}: predicted beyond the reference's ends (false positive)",
        )
        self.beyond_scatter.sigClicked.connect(self._points_clicked)
        self.beyond_scatter.setZValue(5)  # above the Dice points (0 there)
        self.reference_span = pg.LinearRegionItem(
            movable=False, brush=pg.mkBrush(0, 158, 115, 28), pen=pg.mkPen(None)
        )
        self.reference_span.setToolTip("the reference's slices")
        self.reference_span.setVisible(False)
        self.reference_span.setZValue(-10)
        item.addItem(self.reference_span)
        item.addItem(self.curve)
        item.addItem(self.scatter)
        item.addItem(self.beyond_scatter)
        self._support_lines: list[pg.InfiniteLine] = []
        #: 0-based slices predicted beyond the reference's ends (selected structure)
        self.beyond_slices: list[int] = []

        self.confusion_check = QtWidgets.QCheckBox("Show disagreement")
        self.confusion_check.setToolTip(
            "Colour the image where the prediction and the reference agree or disagree (selected structure)"
        )
        self.confusion_check.toggled.connect(self._confusion_toggled)
        legend = QtWidgets.QHBoxLayout()
        legend.setContentsMargins(0, 0, 0, 0)
        legend.addWidget(self.confusion_check)
        legend.addStretch(1)
        for colour, name, tip in LEGEND:
            swatch = QtWidgets.QLabel()
            swatch.setFixedSize(14, 14)
            swatch.setStyleSheet(f"background-color: rgb{colour}; border: 1px solid palette(mid);")
            swatch.setToolTip(tip)
            text = QtWidgets.QLabel(name)
            text.setToolTip(tip)
            legend.addWidget(swatch)
            legend.addWidget(text)
            legend.addSpacing(6)

        top = QtWidgets.QWidget()
        top_layout = QtWidgets.QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addLayout(form)
        top_layout.addWidget(self.status_label)
        top_layout.addWidget(self.metrics)
        top_layout.addWidget(self.plot_title)
        top_layout.addWidget(self.plot, 1)
        top_layout.addLayout(legend)

        self.runs_table = RunsTable(self.session)
        self.runs_table.runSelected.connect(self._run_selected)
        bottom = QtWidgets.QWidget()
        bottom_layout = QtWidgets.QVBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        bottom_layout.addWidget(QtWidgets.QLabel("Runs (select one to compare its prediction)"))
        bottom_layout.addWidget(self.runs_table)

        splitter = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(bottom)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)
        self.runs_table.setMinimumHeight(110)
        splitter.setSizes([520, 200])
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(splitter)

    # ------------------------------------------------------------------------------------------ choices
    @property
    def study(self) -> Study | None:
        """The study whose layers are compared (the active one)."""
        return self._study

    @property
    def reference(self) -> LabelLayer | None:
        """The session's reference, when it is a layer of this panel's study."""
        reference = self.session.reference
        if reference is None or self._study is None or reference not in self._study.layers:
            return None
        return reference

    @property
    def prediction(self) -> LabelLayer | None:
        if self._study is None or self._prediction_id is None:
            return None
        try:
            layer = self._study.layer(self._prediction_id)
        except KeyError:
            return None
        return None if layer is self.reference else layer

    @property
    def comparisons(self) -> dict[int, LabelComparison] | None:
        """The last numbers shown, ``{reference label value: LabelComparison}``."""
        return self._comparisons

    def set_prediction(self, layer: LabelLayer | str | None) -> None:
        """Compare ``layer`` (or the layer with that id) with the reference."""
        layer_id = layer.id if isinstance(layer, LabelLayer) else layer
        if layer_id is not None and self._study is not None:
            try:
                self._study.layer(layer_id)
            except KeyError:
                try:
                    study, _layer = self.session.find_layer(layer_id)
                except KeyError:
                    return
                self.session.set_active_study(study)
        if layer_id != self._prediction_id:
            self._prediction_id = layer_id
            self._fill_combos()
            self.schedule(0)

    def set_reference_layer(self, layer: LabelLayer | None) -> None:
        """Make ``layer`` the session's reference (None: no reference)."""
        self.session.set_reference(layer)

    def choose_reference_file(self) -> None:
        """Ask for a mask file and load it as the reference of the study."""
        if self._study is None:
            self._error("Open a study first")
            return
        path, _filter = QtWidgets.QFileDialog.getOpenFileName(self, "Load reference mask", "", MASK_FILTER)
        if path:
            self.load_reference_file(path)

    def load_reference_file(self, path: str | Path) -> LabelLayer | None:
        """Load a mask file on the study's grid as the reference (a dialog says why when it cannot)."""
        if self._study is None:
            self._error("Open a study first")
            return None
        try:
            return self.session.load_reference(self._study, path)
        except UserError as exc:
            self._error(str(exc))
            return None

    def _reference_chosen(self, index: int) -> None:
        layer_id = self.reference_combo.itemData(index)
        layer = None
        if layer_id and self._study is not None:
            try:
                layer = self._study.layer(layer_id)
            except KeyError:
                layer = None
        if layer is not None and layer.id == self._prediction_id:
            self._prediction_id = None
        self.session.set_reference(layer)

    def _prediction_chosen(self, index: int) -> None:
        self.set_prediction(self.prediction_combo.itemData(index))

    def _run_selected(self, run_id: str) -> None:
        try:
            run = self.session.runs.get(run_id)
        except KeyError:
            return
        if run.result_layer_id:
            self.set_prediction(run.result_layer_id)

    def _default_prediction(self) -> str | None:
        if self._study is None:
            return None
        reference = self.reference
        layers = [layer for layer in self._study.layers if layer is not reference]
        predictions = [layer for layer in layers if layer.kind == "prediction"]
        if predictions:
            return predictions[-1].id
        return None

    def _fill_combos(self) -> None:
        study, reference = self._study, self.reference
        layers = list(study.layers) if study is not None else []
        self.reference_combo.blockSignals(True)
        self.reference_combo.clear()
        self.reference_combo.addItem("— none —", None)
        for layer in layers:
            self.reference_combo.addItem(self._layer_text(layer), layer.id)
        self.reference_combo.setCurrentIndex(
            max(0, self.reference_combo.findData(reference.id if reference else None))
        )
        self.reference_combo.blockSignals(False)
        if self.prediction is None:
            self._prediction_id = self._default_prediction()
        self.prediction_combo.blockSignals(True)
        self.prediction_combo.clear()
        self.prediction_combo.addItem("— none —", None)
        for layer in layers:
            if layer is not reference:
                self.prediction_combo.addItem(self._layer_text(layer), layer.id)
        self.prediction_combo.setCurrentIndex(max(0, self.prediction_combo.findData(self._prediction_id)))
        self.prediction_combo.blockSignals(False)
        for widget in (self.reference_combo, self.prediction_combo, self.load_button):
            widget.setEnabled(study is not None)

    @staticmethod
    def _layer_text(layer: LabelLayer) -> str:
        return layer.name if layer.kind == "manual" else f"{layer.name} ({layer.kind})"

    # ----------------------------------------------------------------------------------------- compute
    def schedule(self, delay_ms: int = EDIT_DELAY_MS) -> None:
        """Recompute after ``delay_ms`` (edits in a row restart the delay)."""
        self._timer.start(max(0, int(delay_ms)))

    def computing(self) -> bool:
        """True while numbers are being (or about to be) computed."""
        return self._timer.isActive() or (self._worker is not None and self._worker.is_running())

    def refresh(self) -> None:
        """Compare the prediction with the reference now (in a worker)."""
        if not qt_alive(self):
            return
        self._timer.stop()
        if self._worker is not None and self._worker.is_running():
            self._again = True
            self._worker.cancel()
            return
        pred, reference = self.prediction, self.reference
        if pred is None or reference is None:
            what = "a reference" if reference is None else "a prediction"
            self._show_nothing(f"Choose {what} to compare." if self._study is not None else "Open a study.")
            return
        pred_map, ref_map = pred.copy_label_map(), reference.copy_label_map()  # painting meanwhile is safe
        worker = JobWorker(
            lambda progress, cancel: compare_job(pred_map, ref_map, progress=progress, cancel=cancel),
            name="comparison",
            parent=self,
        )
        worker.finished.connect(lambda result, p=pred.id, r=reference.id: self._compared(result, p, r))
        worker.failed.connect(self._compare_failed)
        worker.done.connect(self._compare_ended)
        if self._worker is not None:
            self._worker.deleteLater()
        self._worker = worker
        self.status_label.setText(f"Comparing “{pred.name}” with “{reference.name}”…")
        worker.start()

    def _compared(
        self, result: tuple[list[tuple[int, int]], dict[int, LabelComparison]], pred_id: str, ref_id: str
    ) -> None:
        pred, reference = self.prediction, self.reference
        if pred is None or reference is None or pred.id != pred_id or reference.id != ref_id:
            return  # the choice changed meanwhile; a new comparison follows
        pairs, comparisons = result
        self._pairs = pairs if pairs else [(v, v) for v in comparisons]
        self._comparisons = comparisons
        self.status_label.setText(f"“{pred.name}” compared with the reference “{reference.name}”.")
        self._fill_metrics()
        self.comparisonChanged.emit(comparisons)

    def _compare_failed(self, message: str, _is_user_error: bool) -> None:
        self._show_nothing(f"Cannot compare: {message}")

    def _compare_ended(self) -> None:
        if self._again:
            self._again = False
            self.schedule(0)

    def _show_nothing(self, status: str) -> None:
        self._comparisons = None
        self._pairs = []
        self.status_label.setText(status)
        self.metrics.setRowCount(0)
        self._plot(None)
        self._emit_confusion()
        self.comparisonChanged.emit(None)

    def _fill_metrics(self) -> None:
        comparisons = self._comparisons or {}
        selected = self.selected_label()
        self.metrics.blockSignals(True)
        self.metrics.setRowCount(len(comparisons))
        for row, (value, c) in enumerate(comparisons.items()):
            cells = (
                c.name,
                format_dice(c.dice),
                format_mm(c.hd95_mm),
                format_mm(c.assd_mm),
                format_ml(c.volume_pred_ml),
                format_ml(c.volume_ref_ml),
            )
            for column, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, value)
                if column:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                item.setToolTip(
                    f"{c.name}: {c.voxels_pred} predicted and {c.voxels_ref} reference voxels; "
                    f"{c.true_positives} agree, {c.false_positives} extra, {c.false_negatives} missed"
                )
                self.metrics.setItem(row, column, item)
        self.metrics.blockSignals(False)
        self._fit_metrics_height()
        values = list(comparisons)
        row = values.index(selected) if selected in values else 0
        if values:
            self.metrics.selectRow(row)
        self._label_selection_changed()

    def _fit_metrics_height(self, max_rows: int = 4) -> None:
        """As high as its rows (one at least, ``max_rows`` at most: then it scrolls)."""
        rows = min(max(self.metrics.rowCount(), 1), max_rows)
        row_height = self.metrics.verticalHeader().defaultSectionSize()
        header = self.metrics.horizontalHeader().sizeHint().height()
        frame = 2 * self.metrics.frameWidth()
        # room for the horizontal scroll bar too: in a narrow dock it would otherwise cover the last row
        scroll = self.metrics.horizontalScrollBar().sizeHint().height()
        self.metrics.setFixedHeight(header + rows * row_height + frame + scroll)

    def metric_texts(self) -> list[list[str]]:
        """The metrics table as shown, row by row (for tests and copy)."""
        return [
            [self.metrics.item(r, c).text() for c in range(self.metrics.columnCount())]
            for r in range(self.metrics.rowCount())
        ]

    def selected_label(self) -> int | None:
        """The reference label value of the selected row (the plot and the disagreement map show it)."""
        items = self.metrics.selectedItems()
        return int(items[0].data(Qt.ItemDataRole.UserRole)) if items else None

    def select_label(self, value: int) -> None:
        for row in range(self.metrics.rowCount()):
            if self.metrics.item(row, 0).data(Qt.ItemDataRole.UserRole) == value:
                self.metrics.selectRow(row)

    def _label_selection_changed(self) -> None:
        value = self.selected_label()
        comparison = (self._comparisons or {}).get(value) if value is not None else None
        self._plot(comparison)
        self._emit_confusion()

    # --------------------------------------------------------------------------------------------- plot
    def _plot(self, comparison: LabelComparison | None) -> None:
        for line in self._support_lines:
            self.plot.removeItem(line)
        self._support_lines = []
        self.beyond_slices = []
        self.beyond_scatter.setData([], [])
        self.reference_span.setVisible(False)
        if comparison is None:
            self.curve.setData([], [])
            self.scatter.setData([], [])
            self.plot_title.setText("Dice per slice")
            return
        dice = np.asarray(comparison.dice_per_slice, dtype=np.float64)
        number = self._slice_numbers()
        # the slice numbers the viewer shows (one convention for every file: core.slice_numbering)
        slices = np.asarray([number(z) for z in range(dice.size)], dtype=np.float64)
        finite = np.isfinite(dice)
        self.curve.setData(slices, dice)
        self.scatter.setData(x=slices[finite], y=dice[finite], data=[int(z) for z in np.flatnonzero(finite)])
        masks = self._masks(comparison.label)
        beyond_text = ""
        if masks is not None:
            reference_range, self.beyond_slices = beyond_reference(*masks)
            if reference_range is not None:
                self.reference_span.setRegion(
                    sorted((number(reference_range[0]), number(reference_range[1])))
                )
                self.reference_span.setVisible(True)
            if self.beyond_slices:
                xs = [number(z) for z in self.beyond_slices]
                self.beyond_scatter.setData(x=xs, y=[0.0] * len(xs), data=list(self.beyond_slices))
                n = len(self.beyond_slices)
                beyond_text = f"; {n} slice{'s' if n != 1 else ''} predicted beyond the reference's ends"
        self.plot_title.setText(
            f"Dice per slice: {comparison.name} (3-D Dice {format_dice(comparison.dice)}{beyond_text}; "
            "click a point to show that slice)"
        )
        if finite.any():
            first, last = int(slices[finite].min()), int(slices[finite].max())
            self.plot.getPlotItem().setXRange(first - 1, last + 1, padding=0.02)
        if self._study is not None:
            for entry in self.session.support_set:
                if entry.study_id == self._study.id and entry.label_name.lower() == comparison.name.lower():
                    line = pg.InfiniteLine(
                        number(entry.slice_index),
                        angle=90,
                        pen=pg.mkPen((150, 150, 150), style=Qt.PenStyle.DashLine),
                    )
                    line.setToolTip(f"support slice {number(entry.slice_index)}")
                    self.plot.addItem(line)
                    self._support_lines.append(line)

    def _slice_numbers(self) -> Callable[[int], int]:
        """Slice index -> the number the viewer shows, for the study compared."""
        if self._study is None:
            return lambda index: int(index) + 1
        return self._study.volume.slice_numbering().number

    def plot_points(self) -> list[tuple[int, float]]:
        """``(slice index, Dice)`` of the plotted points (0-based slices)."""
        return [(int(p.data()), float(p.pos().y())) for p in self.scatter.points()]

    def _points_clicked(self, _item: pg.ScatterPlotItem, points, _event=None) -> None:
        if len(points):
            self.goToSlice.emit(int(points[0].data()))

    # ---------------------------------------------------------------------------------------- confusion
    def _confusion_toggled(self, _checked: bool) -> None:
        self._emit_confusion()

    def confusion_array(self) -> np.ndarray | None:
        """The disagreement map of the selected structure (``Agreement`` codes), None without one; it covers
        the whole volume, so the slices predicted beyond the reference's ends show as false positive."""
        value = self.selected_label()
        masks = self._masks(value) if value is not None else None
        return None if masks is None else confusion_overlay(*masks)

    def _masks(self, value: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(prediction, reference) bool masks of the reference's structure ``value``, None without them."""
        pred, reference = self.prediction, self.reference
        if pred is None or reference is None or pred.array.shape != reference.array.shape:
            return None
        pred_value = next((p for p, r in self._pairs if r == value), value)
        return pred.array == pred_value, reference.array == value

    def _emit_confusion(self) -> None:
        array = self.confusion_array() if self.confusion_check.isChecked() else None
        if array is None and not self._confusion_shown:
            return
        self._confusion_shown = array is not None
        self.confusionChanged.emit(array)

    # ------------------------------------------------------------------------------------------- events
    def _on_active_study(self, study: Study | None) -> None:
        if not qt_alive(self):
            return
        if self._study is not None:
            self._study.events.any.disconnect(self._on_study_event)
        if study is not self._study and self._confusion_shown:  # never the old study's map on the new one
            self._confusion_shown = False
            self.confusionChanged.emit(None)
        self._study = study
        if study is not None:
            study.events.any.connect(self._on_study_event)
        if self.prediction is None:
            self._prediction_id = None
        self._fill_combos()
        self.schedule(0)

    def _on_reference(self, _layer: LabelLayer | None) -> None:
        if not qt_alive(self):
            return
        self._fill_combos()
        self.schedule(0)

    def _on_study_event(self, name: str, *args: object) -> None:
        if not qt_alive(self):
            return
        if name in ("layer_added", "layer_removed"):
            layer = args[0] if args else None
            follow = name == "layer_added" and isinstance(layer, LabelLayer) and layer.kind == "prediction"
            if follow:  # a new prediction: compare it
                self._prediction_id = layer.id  # type: ignore[union-attr]
            self._fill_combos()
            self.schedule(0)
        elif name == "layer_changed" and len(args) >= 2:
            layer, event = args[0], args[1]
            watched = {self._prediction_id, getattr(self.reference, "id", None)}
            if event == "data" and getattr(layer, "id", None) in watched:
                self.schedule()
            elif event == "name":
                self._fill_combos()

    def _on_support_event(self, *_args: object) -> None:
        if qt_alive(self) and self._comparisons:  # the support slices are marked on the plot
            value = self.selected_label()
            self._plot(self._comparisons.get(value) if value is not None else None)

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Cancel and join the background computations (the main window's close)."""
        self._timer.stop()
        ok = self.runs_table.shutdown(timeout_ms)
        if self._worker is not None:
            ok = self._worker.shutdown(timeout_ms) and ok
        return ok

    def _error(self, message: str) -> None:
        self.last_error = message
        error_box(self, "Compare", message)
