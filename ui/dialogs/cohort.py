"""Segment many studies with one support set: "Segment all open studies" and "Segment a folder of studies".

The work is the core cohort job (:mod:`sd_fsmis.core.cohort.run`) in a
:class:`~sd_fsmis.ui.workers.job_worker.JobWorker`, with the engine, device and structure chosen in the
Segment panel and the support set of the Support panel:

- **open studies**: each open study is segmented in turn (the support set encoded once for a model); every
  result becomes a prediction layer of its study and a run of the runs table as soon as it is done;
- **a folder of studies** (or a manifest): the studies are read from disk one by one, each mask is written
  to the output folder named by the study's id, with the run record (``run-record.jsonl``), and becomes a
  run of the runs table (under "All studies"; a double-click opens the study with its mask); a rerun skips
  the studies done before with the same settings.

A table shows each study's state (waiting, its slices, done, failed with the reason); Cancel stops at the
next slice and leaves what was finished.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import QObject, Qt, Signal

from sd_fsmis.core.cohort.run import CohortSettings, MemoryStudy, run_cohort, segment_studies
from sd_fsmis.core.cohort.studies import open_cohort
from sd_fsmis.core.engines.registry import is_builtin
from sd_fsmis.core.engines.segmentation import SupportSource
from sd_fsmis.core.errors import MaskError, UserError
from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback
from sd_fsmis.core.session.runs import Run
from sd_fsmis.core.session.state import SegmentationInputs, Session
from sd_fsmis.core.session.support_set import support_groups
from sd_fsmis.ui.workers.job_worker import JobWorker, error_box, format_seconds, qt_alive

log = logging.getLogger(__name__)

OPEN, FOLDER = "open", "folder"
COLUMNS = ("Study", "State", "Volume (ml)", "Time", "Note")


class _Relay(QObject):
    """Carries each finished study from the job's thread to the GUI thread (a queued signal)."""

    studyDone = Signal(object, object)


@dataclass
class CohortChoice:
    """What the Segment panel says to use: engine, device, batch, structure."""

    engine: str
    device: str = "auto"
    batch_size: int | None = None
    label_name: str | None = None


@dataclass
class _Plan:
    """The studies of an "open studies" run, with their inputs and runs (GUI thread only)."""

    inputs: dict[str, SegmentationInputs] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    #: a folder run: study id -> (image, series) as listed, the output folder, the supports' count
    files: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    out_dir: str = ""
    k: int = 0


def segment_open_studies(
    items: list[MemoryStudy],
    settings: CohortSettings,
    relay: _Relay,
    *,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> int:
    """The job of "Segment all open studies" (worker thread): the studies one after another."""
    segment_studies(items, settings, on_study=relay.studyDone.emit, progress=progress, cancel=cancel)
    return len(items)


def segment_folder(
    queries: str,
    out_dir: str,
    settings: CohortSettings,
    sources: list[SupportSource],
    relay: _Relay,
    listed: QtCore.SignalInstance,
    *,
    progress: ProgressCallback,
    cancel: CancelToken,
):
    """The job of "Segment a folder of studies" (worker thread): the core cohort job into ``out_dir``."""
    cohort = open_cohort(queries, exclude=[out_dir])
    listed.emit([(s.id, s.image, s.series) for s in cohort.studies])
    return run_cohort(
        cohort,
        out_dir,
        settings,
        cohort_sources=sources,
        on_study=relay.studyDone.emit,
        progress=progress,
        cancel=cancel,
    )


class CohortDialog(QtWidgets.QDialog):
    """Segment the open studies, or a folder of studies, with the support set; per-study progress."""

    studiesListed = Signal(object)

    def __init__(
        self,
        session: Session,
        choice: CohortChoice,
        mode: str = OPEN,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.session = session
        self.choice = choice
        self.mode = mode
        self.worker: JobWorker | None = None
        self._relay = _Relay(self)
        self._relay.studyDone.connect(self._study_done)
        self.studiesListed.connect(self._folder_listed)
        self._plan = _Plan()
        self._rows: dict[str, int] = {}
        self.last_error = ""
        self.setWindowTitle("Segment all open studies" if mode == OPEN else "Segment a folder of studies")
        self._build()
        self._refresh()

    # ------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.summary = QtWidgets.QLabel()
        self.summary.setWordWrap(True)
        form = QtWidgets.QFormLayout()
        self.queries_edit = QtWidgets.QLineEdit()
        self.queries_edit.setPlaceholderText(
            "a folder of NIfTI files or DICOM sub-folders, or a .json/.csv list"
        )
        self.out_edit = QtWidgets.QLineEdit()
        self.out_edit.setPlaceholderText("where the masks (<study>.nii.gz) and run-record.jsonl go")
        if self.mode == FOLDER:
            for label, edit, pick in (
                ("Studies:", self.queries_edit, self._pick_queries),
                ("Output folder:", self.out_edit, self._pick_out),
            ):
                row = QtWidgets.QHBoxLayout()
                row.addWidget(edit, 1)
                button = QtWidgets.QPushButton("Browse…")
                button.clicked.connect(pick)
                row.addWidget(button)
                form.addRow(label, row)
                edit.textChanged.connect(lambda _t: self._refresh())
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.progress_bar = QtWidgets.QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")
        self.status_label = QtWidgets.QLabel()
        self.status_label.setWordWrap(True)
        self.start_button = QtWidgets.QPushButton("Segment")
        self.start_button.setDefault(True)
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop at the next slice; the studies finished so far are kept")
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button = QtWidgets.QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.start_button, self.cancel_button, self.close_button):
            buttons.addWidget(button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addLayout(form)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addLayout(buttons)
        self.resize(720, 420)

    def _pick_queries(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Folder of studies")
        if folder:
            self.queries_edit.setText(folder)
            if not self.out_edit.text().strip():
                self.out_edit.setText(default_output(folder))

    def _pick_out(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Output folder")
        if folder:
            self.out_edit.setText(folder)

    # ------------------------------------------------------------------------------------------- state
    def is_running(self) -> bool:
        return self.worker is not None and self.worker.is_running()

    def _engine_text(self) -> str:
        engine = self.choice.engine
        return engine if is_builtin(engine) else f"{engine} on {self.choice.device}"

    def _refresh(self) -> None:
        k = len(self.session.support_set)
        slices = f"{k} slice{'s' if k != 1 else ''}"
        structure = self.choice.label_name or "the structure"
        if self.mode == OPEN:
            studies = self.session.studies
            self.summary.setText(
                f"Segment <b>{structure}</b> on each of the <b>{len(studies)}</b> open studies with "
                f"{self._engine_text()}, from the support set ({slices}). Each result "
                "is added to its study as a prediction and listed in the runs table."
            )
            if not self.is_running() and not self._rows:
                self._set_rows([s.name for s in studies], [s.id for s in studies])
        else:
            self.summary.setText(
                f"Segment <b>{structure}</b> on every study of a folder with {self._engine_text()}, from the "
                f"support set ({slices}). The masks are written to the output folder and listed in the runs "
                "table (All studies; double-click one to open it with its mask); studies done before with "
                "the same settings are skipped."
            )
        reason = self.start_disabled_reason()
        self.start_button.setEnabled(not reason)
        self.start_button.setToolTip(reason)
        if not self.is_running():
            self.status_label.setText(reason)

    def start_disabled_reason(self) -> str:
        if self.is_running():
            return "Running: wait for it or cancel it"
        if len(self.session.support_set) == 0:
            return "Paint the structure on a slice and add it as a support example first"
        if self.mode == OPEN and not self.session.studies:
            return "Open the studies first"
        if self.mode == FOLDER and not (self.queries_edit.text().strip() and self.out_edit.text().strip()):
            return "Choose the folder of studies and the output folder"
        return ""

    def _set_rows(self, names: list[str], keys: list[str] | None = None) -> None:
        keys = list(keys or names)
        self.table.setRowCount(len(names))
        self._rows = {}
        for row, (name, key) in enumerate(zip(names, keys, strict=True)):
            self._rows[key] = row
            self._set(row, 0, name)
            self._set(row, 1, "waiting")
            for column in range(2, len(COLUMNS)):
                self._set(row, column, "")

    def _folder_listed(self, studies: list[tuple[str, str, str | None]]) -> None:
        """The studies of the folder (worker thread, once read): a row each, their files kept for the runs."""
        self._plan.files = {sid: (image, series) for sid, image, series in studies}
        self._set_rows([sid for sid, _image, _series in studies])

    def _set(self, row: int, column: int, text: str) -> None:
        item = self.table.item(row, column)
        if item is None:
            item = QtWidgets.QTableWidgetItem()
            self.table.setItem(row, column, item)
        item.setText(text)

    def row_texts(self) -> list[list[str]]:
        """The table as text (for tests and the log)."""
        return [
            [self.table.item(r, c).text() if self.table.item(r, c) else "" for c in range(len(COLUMNS))]
            for r in range(self.table.rowCount())
        ]

    # --------------------------------------------------------------------------------------------- run
    def _settings(self, label: int) -> CohortSettings:
        return CohortSettings(
            engine=self.choice.engine,
            label=label,
            label_name=self.choice.label_name,
            device="cpu" if is_builtin(self.choice.engine) else self.choice.device,
            batch_size=self.choice.batch_size,
            start_method="spawn",  # never fork a process that runs Qt's threads
        )

    def start(self) -> bool:
        """Start segmenting; False (with a message) when it cannot start."""
        reason = self.start_disabled_reason()
        if reason:
            self._error(reason)
            return False
        try:
            job = self._open_studies_job() if self.mode == OPEN else self._folder_job()
        except UserError as exc:
            self._error(str(exc))
            return False
        worker = JobWorker(job, name="cohort segmentation", parent=self)
        worker.progress.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        self.worker = worker
        worker.start()
        self._running(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat("Starting…")
        self.status_label.setText("Segmenting…")
        return True

    def _open_studies_job(self):
        plan = _Plan()
        items = []
        engine = self.choice.engine
        for study in self.session.studies:
            inputs = self.session.segmentation_inputs(study, self.choice.label_name)
            plan.inputs[study.id] = inputs
            items.append(
                MemoryStudy(
                    study.id,
                    inputs.query,
                    inputs.sources,
                    label=inputs.label_value,
                    label_name=inputs.label_name,
                    label_colour=inputs.label_colour,
                    name=study.name,
                )
            )
        for study_id, inputs in plan.inputs.items():
            plan.runs[study_id] = self.session.begin_run(
                inputs,
                engine=engine if is_builtin(engine) else "sd-fsmis",
                model="" if is_builtin(engine) else engine,
                device="cpu" if is_builtin(engine) else self.choice.device,
                settings={"cohort": len(items)},
            )
        self._plan = plan
        self._set_rows([s.name for s in self.session.studies], [s.id for s in self.session.studies])
        label = next(iter(plan.inputs.values())).label_value
        return partial(segment_open_studies, items, self._settings(label), self._relay)

    def _folder_job(self):
        entries = tuple(self.session.support_set)
        names = self.session.support_set.label_names()
        name = self.choice.label_name or (names[0] if len(names) == 1 else None)
        if name is None:
            raise MaskError(f"the support examples show several structures ({', '.join(names)}): choose one")
        chosen = tuple(e for e in entries if e.label_name.lower() == name.lower())
        if not chosen:
            raise MaskError(f"no support example shows {name}")
        groups = support_groups(chosen, self.session.studies_by_id())
        sources = [
            SupportSource(volume=g.volume, mask=g.mask, slices=list(g.slices), is_query=False, name=g.source)
            for g in groups
        ]
        self.table.setRowCount(0)
        self._rows = {}
        queries, out = self.queries_edit.text().strip(), self.out_edit.text().strip()
        self._plan = _Plan(out_dir=out, k=len(chosen))
        return partial(
            segment_folder,
            queries,
            out,
            self._settings(chosen[0].label_value),
            sources,
            self._relay,
            self.studiesListed,
        )

    def cancel(self) -> None:
        if self.is_running():
            self.worker.cancel()
            self.cancel_button.setEnabled(False)
            self.progress_bar.setFormat("Cancelling…")

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        return self.worker.shutdown(timeout_ms) if self.worker is not None else True

    def closeEvent(self, event) -> None:
        if self.is_running():
            self.cancel()
        super().closeEvent(event)

    def _running(self, running: bool) -> None:
        self.cancel_button.setEnabled(running)
        self.queries_edit.setEnabled(not running)
        self.out_edit.setEnabled(not running)
        self._refresh()

    # --------------------------------------------------------------------------------------- progress
    def _on_progress(self, progress: Progress) -> None:
        if self.worker is None or self.worker.cancel_requested:
            return
        if progress.total > 0:
            self.progress_bar.setRange(0, progress.total)
            self.progress_bar.setValue(progress.done)
            self.progress_bar.setFormat(f"{progress.done}/{progress.total} studies")
        extra = progress.extra or {}
        row = self._rows.get(str(extra.get("study", "")))
        if row is not None and extra.get("state") == "running":
            total = extra.get("slices_total")
            text = f"slice {extra.get('slices_done')}/{total}" if total else "segmenting"
            if self.table.item(row, 1).text() not in ("done", "failed"):
                self._set(row, 1, text)

    def _study_done(self, record: dict, outcome) -> None:
        """One study finished (GUI thread): its row; for an open study its layer and run."""
        sid = str(record.get("study"))
        row = self._rows.get(sid)
        failed = record.get("status") != "done"
        if sid in self._plan.inputs:
            run = self._plan.runs.pop(sid, None)
            if failed or outcome is None:
                if run is not None:
                    self.session.fail_run(run, message=str(record.get("error") or "failed"))
            else:
                try:
                    self.session.add_result(
                        self._plan.inputs[sid], outcome, run=run, device=str(record.get("device") or "")
                    )
                except (KeyError, ValueError):  # the study was closed meanwhile
                    if run is not None:
                        self.session.fail_run(run, message="the study was closed before it was segmented")
        elif sid in self._plan.files:
            self._record_file_run(sid, record, failed)
        if row is None:
            return
        self._set(row, 1, "failed" if failed else "done")
        self._set(row, 2, "" if record.get("ml") is None else f"{float(record['ml']):.1f}")
        self._set(row, 3, "" if record.get("seconds") is None else format_seconds(float(record["seconds"])))
        note = record.get("error") or "; ".join(record.get("warnings") or [])
        self._set(row, 4, str(note))
        item = self.table.item(row, 1)
        if failed:
            item.setForeground(Qt.GlobalColor.red)
            item.setToolTip(str(record.get("error") or ""))

    def _record_file_run(self, sid: str, record: dict, failed: bool) -> None:
        """A folder study's result in the runs table ("All studies"; double-click opens it with its mask)."""
        image, series = self._plan.files[sid]
        engine = self.choice.engine
        out = record.get("out")
        self.session.record_file_run(
            study_name=sid,
            image=image,
            series=series,
            mask=None if failed or not out else str(Path(self._plan.out_dir) / str(out)),
            engine=engine if is_builtin(engine) else "sd-fsmis",
            model="" if is_builtin(engine) else engine,
            label_name=self.choice.label_name,
            k=self._plan.k,
            device=str(record.get("device") or ""),
            seconds=record.get("seconds"),
            status="failed" if failed else "done",
            message=str(record.get("error") or "; ".join(record.get("warnings") or [])),
            settings={"cohort_folder": self._plan.out_dir},
        )

    def _finish(self, text: str) -> None:
        for sid, run in list(self._plan.runs.items()):  # not reached: cancelled or stopped by an error
            self.session.fail_run(run, cancelled=True, message="cancelled before this study")
            row = self._rows.get(sid)
            if row is not None:
                self._set(row, 1, "cancelled")
        self._plan.runs.clear()
        for row in range(self.table.rowCount()):
            state = self.table.item(row, 1)
            if state is not None and state.text() not in (
                "done",
                "failed",
                "cancelled",
                "skipped (done before)",
            ):
                state.setText("not done")
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        self.status_label.setText(text)
        self._running(False)
        self.status_label.setText(text)

    def _counts(self) -> tuple[int, int]:
        states = [r[1] for r in self.row_texts()]
        return states.count("done"), states.count("failed")

    def _on_finished(self, result) -> None:
        skipped = list(getattr(result, "skipped", []) or [])
        for sid in skipped:
            row = self._rows.get(sid)
            if row is not None:
                self._set(row, 1, "skipped (done before)")
        done, failed = self._counts()
        where = (
            f" Masks and run-record.jsonl in {self.out_edit.text().strip()}." if self.mode == FOLDER else ""
        )
        extra = f", {len(skipped)} done before" if skipped else ""
        self.progress_bar.setFormat("Done")
        self._finish(f"{done} segmented, {failed} failed{extra}.{where}")

    def _on_failed(self, message: str, _is_user_error: bool) -> None:
        self.progress_bar.setFormat("Failed")
        self._finish(f"Failed: {message}")
        self._error(message)

    def _on_cancelled(self) -> None:
        done, failed = self._counts()
        self.progress_bar.setFormat("Cancelled")
        self._finish(f"Cancelled: {done} segmented, {failed} failed; the others are unchanged.")

    def _error(self, message: str) -> None:
        self.last_error = message
        if qt_alive(self):
            error_box(self, self.windowTitle(), message)


def choice_from_panel(panel) -> CohortChoice:
    """The Segment panel's engine, device, batch and structure."""
    return CohortChoice(
        engine=panel.engine_name,
        device=panel.device,
        batch_size=panel.batch_spin.value() or None,
        label_name=panel.label_name,
    )


def default_output(queries: str) -> str:
    """A suggested output folder beside a folder of studies: ``<folder>-masks``."""
    p = Path(queries)
    return str(p.with_name(p.name + "-masks")) if p.name else ""
