"""The runs side by side: model, K, structure, Dice, HD95, time, device, date (1 vs 3-shot, model A vs B).

Rows follow the session's :class:`~sd_fsmis.core.session.runs.RunList` events; Dice is the run's (the session
keeps it up to date against the reference); HD95 is computed here, in a worker, for the finished runs whose
prediction lies on the reference's study (cached per run, prediction and reference version). Selecting a run
makes its prediction layer the active layer of its study and emits ``runSelected(run_id)``. Runs of studies
segmented from their files ("Segment a folder of studies") are listed under "All studies"; a double-click on
one emits ``openRequested(run_id)``: the window opens the study with its mask.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime

import numpy as np
from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Qt, Signal

from sd_fsmis.core.evaluation.metrics import surface_distances
from sd_fsmis.core.jobs import CancelToken, ProgressCallback
from sd_fsmis.core.session.layers import LabelLayer
from sd_fsmis.core.session.runs import Run
from sd_fsmis.core.session.state import Session
from sd_fsmis.ui.workers.job_worker import JobWorker, format_seconds, qt_alive

log = logging.getLogger(__name__)

COLUMNS = ("Model", "K", "Structure", "Dice", "HD95 (mm)", "Time", "Device", "Date", "Status", "Study")
STUDY_COLUMN = COLUMNS.index("Study")
RUN_ROLE = Qt.ItemDataRole.UserRole
SORT_ROLE = Qt.ItemDataRole.UserRole + 1


class _SortItem(QtWidgets.QTableWidgetItem):
    """A cell sorted by its sort key (numbers as numbers; missing values last)."""

    def __lt__(self, other: QtWidgets.QTableWidgetItem) -> bool:
        a, b = self.data(SORT_ROLE), other.data(SORT_ROLE)
        if a is None or b is None:
            return a is not None and b is None
        try:
            return a < b
        except TypeError:
            return str(a) < str(b)


def _matching_value(layer: LabelLayer, name: str) -> int | None:
    """``layer``'s value for the structure ``name``; its only present label when it has one."""
    value = layer.label_value(name) if name else None
    if value is not None:
        return value
    present = layer.label_map.present_labels()
    return present[0] if len(present) == 1 else None


def _hd95_job(
    tasks: list[tuple[str, tuple, np.ndarray, np.ndarray, tuple[float, float, float]]],
    *,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> dict[str, tuple[tuple, float]]:
    """HD95 (mm) of each ``(run_id, key, prediction, reference, spacing)``; a core metric per run."""
    out = {}
    for run_id, key, pred, ref, spacing in tasks:
        cancel.raise_if_cancelled()
        hd95, _assd = surface_distances(pred, ref, spacing)
        out[run_id] = (key, hd95)
    return out


def run_model_text(run: Run) -> str:
    return run.model or run.engine


def run_date_text(run: Run) -> str:
    try:
        return datetime.fromisoformat(run.started_at).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return run.started_at


class RunsTable(QtWidgets.QWidget):
    """A sortable table of the runs of the active study (all studies' runs, with a Study column, when "All
    studies" is ticked). Signal ``runSelected(run_id)``."""

    runSelected = Signal(str)
    openRequested = Signal(str)

    def __init__(self, session: Session, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        #: run id -> (key, hd95 mm)
        self._hd95: dict[str, tuple[tuple, float]] = {}
        self._worker: JobWorker | None = None
        self._hd95_again = False
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(COLUMNS.index("Date"), Qt.SortOrder.AscendingOrder)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.itemDoubleClicked.connect(self._double_clicked)
        self.all_studies_check = QtWidgets.QCheckBox("All studies")
        self.all_studies_check.setToolTip("Also list the runs of the other open studies")
        self.all_studies_check.toggled.connect(lambda _on: self.refresh())
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addWidget(self.all_studies_check)
        self._hd95_timer = QtCore.QTimer(self)
        self._hd95_timer.setSingleShot(True)
        self._hd95_timer.setInterval(300)
        self._hd95_timer.timeout.connect(self._compute_hd95)
        session.runs.events.any.connect(self._on_runs_event)
        session.events.reference.connect(self._on_reference)
        session.events.active_study.connect(self._on_active_study)
        self.refresh()

    def _on_active_study(self, *_: object) -> None:
        if qt_alive(self):
            self.refresh()

    def shown_runs(self) -> list[Run]:
        """The runs listed: the active study's, or every study's with "All studies"."""
        runs = list(self.session.runs)
        if self.all_studies_check.isChecked():
            return runs
        study = self.session.active_study
        return [r for r in runs if study is not None and r.query_study_id == study.id]

    # ---------------------------------------------------------------------------------------------- rows
    def refresh(self) -> None:
        """Rebuild the rows from the session's runs (keeps the selection)."""
        selected = self.selected_run_id()
        self.table.setSortingEnabled(False)
        self.table.blockSignals(True)
        runs = self.shown_runs()
        self.table.setColumnHidden(STUDY_COLUMN, not self.all_studies_check.isChecked())
        self.table.setRowCount(len(runs))
        for row, run in enumerate(runs):
            for column, (text, key) in enumerate(self._cells(run)):
                item = _SortItem(text)
                item.setData(SORT_ROLE, key)
                item.setData(RUN_ROLE, run.id)
                if column in (1, 3, 4, 5):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if run.message:
                    item.setToolTip(run.message)
                elif run.awaits_its_study:
                    item.setToolTip(f"{run.settings.get('mask')}: double-click to open the study with it")
                self.table.setItem(row, column, item)
        self.table.setSortingEnabled(True)
        if selected is not None:
            self.select_run(selected, emit=False)
        self.table.blockSignals(False)
        self._hd95_timer.start()

    def _cells(self, run: Run) -> list[tuple[str, object]]:
        hd = self.hd95(run.id)
        return [
            (run_model_text(run), run_model_text(run).lower()),
            (str(run.k), run.k),
            (run.label_name, run.label_name.lower()),
            ("—" if run.dice is None else f"{run.dice:.3f}", run.dice),
            ("—" if hd is None else ("∞" if math.isinf(hd) else f"{hd:.1f}"), hd),
            ("" if run.duration_s is None else format_seconds(run.duration_s), run.duration_s),
            (run.device, run.device.lower()),
            (run_date_text(run), run.started_at),
            (run.status, run.status),
            (self._study_name(run), self._study_name(run).lower()),
        ]

    def _study_name(self, run: Run) -> str:
        if not run.query_study_id and run.settings.get("study_name"):
            return f"{run.settings['study_name']} (not open)"
        try:
            return self.session.study(run.query_study_id).name
        except (KeyError, LookupError, ValueError):
            return "(closed)"

    def hd95(self, run_id: str) -> float | None:
        """The HD95 (mm) of a run against the current reference, when computed and still valid."""
        cached = self._hd95.get(run_id)
        if cached is None:
            return None
        key = self._key(run_id)
        return cached[1] if key is not None and key == cached[0] and not math.isnan(cached[1]) else None

    def row_values(self, row: int) -> list[str]:
        """The texts of a row as shown (for tests and copy)."""
        return [self.table.item(row, c).text() for c in range(self.table.columnCount())]

    # ------------------------------------------------------------------------------------------- select
    def selected_run_id(self) -> str | None:
        items = self.table.selectedItems()
        return items[0].data(RUN_ROLE) if items else None

    def select_run(self, run_id: str, *, emit: bool = True) -> bool:
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            if item is not None and item.data(RUN_ROLE) == run_id:
                if not emit:
                    self.table.blockSignals(True)
                self.table.selectRow(row)
                if not emit:
                    self.table.blockSignals(False)
                return True
        return False

    def _selection_changed(self) -> None:
        run_id = self.selected_run_id()
        if run_id is None:
            return
        try:
            run = self.session.runs.get(run_id)
        except KeyError:
            return
        if run.result_layer_id:
            try:
                study, layer = self.session.find_layer(run.result_layer_id)
            except KeyError:
                pass
            else:
                self.session.set_active_study(study)
                study.set_active_layer(layer)
        self.runSelected.emit(run_id)

    def _double_clicked(self, item: QtWidgets.QTableWidgetItem) -> None:
        try:
            run = self.session.runs.get(item.data(RUN_ROLE))
        except KeyError:
            return
        if run.awaits_its_study:
            self.openRequested.emit(run.id)

    # ---------------------------------------------------------------------------------------------- HD95
    def _key(self, run_id: str) -> tuple | None:
        """What the HD95 of a run depends on (prediction and reference layers and versions)."""
        try:
            run = self.session.runs.get(run_id)
        except KeyError:
            return None
        reference, ref_study = self.session.reference, self.session.reference_study
        if run.status != "done" or not run.result_layer_id or reference is None:
            return None
        try:
            study, layer = self.session.find_layer(run.result_layer_id)
        except KeyError:
            return None
        if study is not ref_study:
            return None
        return (layer.id, layer.data_version, reference.id, reference.data_version, run.label_name)

    def _compute_hd95(self) -> None:
        if not qt_alive(self):
            return
        if self._worker is not None and self._worker.is_running():
            self._hd95_again = True
            return
        tasks = []
        reference = self.session.reference
        for run in self.session.runs:
            key = self._key(run.id)
            if key is None or reference is None or (run.id in self._hd95 and self._hd95[run.id][0] == key):
                continue
            _study, layer = self.session.find_layer(run.result_layer_id or "")
            pred_value = _matching_value(layer, run.label_name)
            ref_value = _matching_value(reference, run.label_name)
            if pred_value is None or ref_value is None:
                continue
            pred = layer.array == pred_value  # fresh arrays: painting meanwhile does not reach the job
            ref = reference.array == ref_value
            tasks.append((run.id, key, pred, ref, tuple(layer.geometry.spacing)))
        if not tasks:
            return
        worker = JobWorker(
            lambda progress, cancel: _hd95_job(tasks, progress=progress, cancel=cancel), name="HD95"
        )
        worker.finished.connect(self._hd95_done)
        worker.done.connect(self._hd95_ended)
        if self._worker is not None:
            self._worker.deleteLater()
        self._worker = worker
        worker.setParent(self)
        worker.start()

    def _hd95_done(self, results: dict[str, tuple[tuple, float]]) -> None:
        self._hd95.update(results)
        self.refresh()

    def _hd95_ended(self) -> None:
        if self._hd95_again:
            self._hd95_again = False
            self._hd95_timer.start()

    def computing(self) -> bool:
        """True while HD95 values are being computed (or about to be)."""
        return self._hd95_timer.isActive() or (self._worker is not None and self._worker.is_running())

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        self._hd95_timer.stop()
        return self._worker.shutdown(timeout_ms) if self._worker is not None else True

    # -------------------------------------------------------------------------------------------- events
    def _on_runs_event(self, *_args: object) -> None:
        if qt_alive(self):
            self.refresh()

    def _on_reference(self, *_args: object) -> None:
        if qt_alive(self):
            self.refresh()
