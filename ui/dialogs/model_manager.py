"""The model manager: the models of the store in a table, and what can be done with them.

Columns: name, base (Stable Diffusion and DINOv2 it was built from), classes trained on, date, validation
Dice, size on disk, and a mark on the default model; a broken model is greyed with its problem as tooltip.
Below the table, the selected model's details (description, folder, referenced components, training).

Actions: create a model (tiny test model, base model from local folders or a Hub download) and import a
reference checkpoint in :class:`~sd_fsmis.ui.dialogs.create_model.CreateModelDialog`; import a model folder
(copied in a :class:`~sd_fsmis.ui.workers.job_worker.JobWorker`, with progress and Cancel); rename; delete
(after a confirmation); set the default model for segmentation. Listing reads only the models'
``config.json`` files
(no torch), so it runs on the GUI thread. Everything but a download works offline.

Over 500 lines: one dialog whose actions (create, import, rename, delete, default) are its slots on one table;
its jobs are :mod:`~sd_fsmis.ui.dialogs.model_jobs`.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from PySide6 import QtGui, QtWidgets
from PySide6.QtCore import Qt, Signal

from sd_fsmis.core.errors import ModelError
from sd_fsmis.core.jobs import Progress, human_bytes
from sd_fsmis.core.model.store import (
    ModelInfo,
    list_models,
    model_info,
    model_path,
    remove_model,
    rename_model,
    set_default_model,
)
from sd_fsmis.ui.dialogs.create_model import CreateModelDialog
from sd_fsmis.ui.dialogs.model_jobs import (
    NONE,
    SOURCE_LABELS,
    import_folder_job,
    local_date,
    new_model_name_problem,
    short_base,
)
from sd_fsmis.ui.workers.job_worker import JobWorker, error_box, format_seconds, qt_alive

COLUMNS = ("Name", "Base", "Trained classes", "Date", "Validation Dice", "Size", "Default")
NAME, BASE, CLASSES, DATE, DICE, SIZE, DEFAULT = range(len(COLUMNS))
_SORT_ROLE = Qt.ItemDataRole.UserRole + 1
DEFAULT_MARK = "✓"


class _Item(QtWidgets.QTableWidgetItem):
    """A read-only cell that sorts by its sort key (numbers as numbers, names case-insensitively)."""

    def __init__(self, text: str, sort_key: Any = None) -> None:
        super().__init__(text)
        self.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
        self.setData(_SORT_ROLE, text.lower() if sort_key is None else sort_key)

    def __lt__(self, other: QtWidgets.QTableWidgetItem) -> bool:
        mine, theirs = self.data(_SORT_ROLE), other.data(_SORT_ROLE)
        try:
            return bool(mine < theirs)
        except TypeError:
            return str(mine) < str(theirs)


class ModelManagerDialog(QtWidgets.QDialog):
    """The models of the store, with create / import / rename / delete / set-default actions.

    Signals: ``modelsChanged()`` after any change to the store, ``modelCreated(name)`` for a model created
    or imported here, ``modelRenamed(old, new)``, ``defaultChanged(name)``. ``confirm(title, text) -> bool``,
    ``ask_text(title, label, text) -> str | None`` and ``choose_folder(caption) -> str`` ask the user;
    tests replace them.
    """

    modelsChanged = Signal()
    modelCreated = Signal(str)
    modelRenamed = Signal(str, str)
    defaultChanged = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.setModal(False)
        self.models: list[ModelInfo] = []
        self.worker: JobWorker | None = None
        self.create_dialog: CreateModelDialog | None = None
        #: the last message shown as an error (for tests and the status line)
        self.last_error = ""
        self.confirm: Callable[[str, str], bool] = self._confirm_dialog
        self.ask_text: Callable[[str, str, str], str | None] = self._ask_text_dialog
        self.choose_folder: Callable[[str], str] = self._choose_folder_dialog
        self._importing = ""
        self._build()
        self.refresh()
        self.resize(940, 600)

    # ------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.summary_label = QtWidgets.QLabel()
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextFormat(Qt.TextFormat.RichText)

        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setStretchLastSection(False)
        for column in range(len(COLUMNS)):
            header.setSectionResizeMode(column, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(BASE, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(NAME, Qt.SortOrder.AscendingOrder)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.itemDoubleClicked.connect(lambda _item: self.set_selected_default())

        self.details = QtWidgets.QTextBrowser()
        self.details.setOpenLinks(False)
        self.details.setPlaceholderText("Select a model to see its details.")

        split = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.details)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setChildrenCollapsible(False)
        split.setSizes([260, 240])

        def button(text: str, slot: Callable[[], Any], tip: str) -> QtWidgets.QPushButton:
            b = QtWidgets.QPushButton(text)
            b.setAutoDefault(False)
            b.setToolTip(tip)
            b.clicked.connect(lambda _checked=False: slot())
            return b

        self.create_button = button(
            "Create base model…",
            lambda: self.create_model("base"),
            "A base model from Stable Diffusion 1.5 + DINOv2 (local folders or a download), or a tiny "
            "test model",
        )
        self.import_folder_button = button(
            "Import model folder…", self.import_folder, "Copy a model folder (from a colleague, a cluster) in"
        )
        self.import_reference_button = button(
            "Import reference checkpoint…",
            self.import_reference,
            "A checkpoint-N folder of the SD-FSMIS reference implementation",
        )
        self.rename_button = button("Rename…", self.rename_selected, "Give the selected model another name")
        self.delete_button = button(
            "Delete…", self.delete_selected, "Remove the selected model from the disk"
        )
        self.default_button = button(
            "Set as default",
            self.set_selected_default,
            "Segment with the selected model unless another one is chosen",
        )
        self.refresh_button = button("Refresh", self.refresh, "Read the model store again")
        side = QtWidgets.QVBoxLayout()
        for b in (self.create_button, self.import_folder_button, self.import_reference_button):
            side.addWidget(b)
        side.addSpacing(16)
        for b in (self.rename_button, self.delete_button, self.default_button):
            side.addWidget(b)
        side.addStretch(1)
        side.addWidget(self.refresh_button)

        body = QtWidgets.QHBoxLayout()
        body.addWidget(split, 1)
        body.addLayout(side)

        self.progress_bar = QtWidgets.QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setVisible(False)
        self.status_label = QtWidgets.QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setAutoDefault(False)
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button = QtWidgets.QPushButton("Close")
        self.close_button.setAutoDefault(False)
        self.close_button.clicked.connect(self.close)
        bottom = QtWidgets.QHBoxLayout()
        bottom.addWidget(self.status_label, 1)
        bottom.addWidget(self.progress_bar, 1)
        bottom.addWidget(self.cancel_button)
        bottom.addWidget(self.close_button)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.summary_label)
        layout.addLayout(body, 1)
        layout.addLayout(bottom)

    # ----------------------------------------------------------------------------------------- listing
    def refresh(self) -> None:
        """Read the store again and refill the table (the selection is kept when the model still exists)."""
        keep = self.selected_name()
        try:
            self.models = list_models()
        except (ModelError, OSError) as exc:
            self.models = []
            self._error(f"Cannot read the model store: {exc}")
        self.table.setSortingEnabled(False)
        self.table.clearContents()
        self.table.setRowCount(len(self.models))
        for row, info in enumerate(self.models):
            for column, item in enumerate(self._row_items(info)):
                self.table.setItem(row, column, item)
        self.table.setSortingEnabled(True)
        self._update_summary()
        if not (keep and self.select(keep)):
            self._selection_changed()

    def _row_items(self, info: ModelInfo) -> list[_Item]:
        trained = list(info.trained_classes or [])
        dice = info.validation_dice
        date_iso = info.created or info.modified
        size = human_bytes(info.size_bytes) + (" + refs" if info.references else "")
        is_default = bool(info.is_default)
        if trained:
            classes_text = ", ".join(trained)
        else:
            classes_text = "not trained" if info.kind in ("base", "preset") else NONE
        items = [
            _Item(info.name if info.valid else f"{info.name} (broken)", info.name.lower()),
            _Item(short_base(info) if info.base else NONE),
            _Item(classes_text),
            _Item(local_date(date_iso) or NONE, date_iso),
            _Item(f"{dice:.3f}" if dice is not None else NONE, -1.0 if dice is None else float(dice)),
            _Item(size, info.size_bytes),
            _Item(DEFAULT_MARK if is_default else "", 0 if is_default else 1),
        ]
        items[NAME].setData(Qt.ItemDataRole.UserRole, info.name)
        items[BASE].setToolTip(info.base)
        items[CLASSES].setToolTip(", ".join(trained or info.classes))
        items[DATE].setToolTip(self._date_tip(info))
        items[SIZE].setToolTip(
            "Size of the model folder"
            + (" (the VAE and DINOv2 are referenced, not counted)" if info.references else "")
        )
        items[DEFAULT].setTextAlignment(Qt.AlignmentFlag.AlignCenter)
        items[DICE].setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        items[SIZE].setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if is_default:
            items[DEFAULT].setToolTip("The default model for segmentation")
            font = items[NAME].font()
            font.setBold(True)
            items[NAME].setFont(font)
        if not info.valid:
            grey = self.palette().color(QtGui.QPalette.ColorGroup.Disabled, QtGui.QPalette.ColorRole.Text)
            for item in items:
                item.setForeground(grey)
                item.setToolTip(f"This model cannot be used: {info.problem}")
        return items

    @staticmethod
    def _date_tip(info: ModelInfo) -> str:
        lines = [f"Created {local_date(info.created)}"] if info.created else []
        modified = info.modified
        if modified and modified != info.created:
            lines.append(f"Changed {local_date(modified)}")
        return "\n".join(lines)

    def _update_summary(self) -> None:
        if not self.models:
            self.summary_label.setText(
                "<b>No models yet.</b> Create a base model from Stable Diffusion 1.5 + DINOv2 (then "
                "fine-tune it), import a trained one, or create a tiny test model to try the application. "
                "Without a model, the built-in <i>Propagation</i> engine segments out of the box."
            )
            return
        n = len(self.models)
        broken = sum(1 for m in self.models if not m.valid)
        default = next((m.name for m in self.models if m.is_default), "")
        text = f"{n} model{'s' if n != 1 else ''} in the store"
        if broken:
            text += f" ({broken} cannot be used)"
        if default:
            text += f"; the default for segmentation is <b>{html.escape(default)}</b>"
        self.summary_label.setText(text + ".")

    # --------------------------------------------------------------------------------------- selection
    def model_names(self) -> list[str]:
        """The names in the table, in the order shown."""
        return [
            str(self.table.item(r, NAME).data(Qt.ItemDataRole.UserRole)) for r in range(self.table.rowCount())
        ]

    def selected_name(self) -> str | None:
        """The selected model's name (None when nothing is selected)."""
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows:
            return None
        item = self.table.item(rows[0].row(), NAME)
        return str(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    def selected_info(self) -> ModelInfo | None:
        name = self.selected_name()
        return next((m for m in self.models if m.name == name), None)

    def select(self, name: str) -> bool:
        """Select the model ``name``; False when it is not in the table."""
        for row in range(self.table.rowCount()):
            if self.table.item(row, NAME).data(Qt.ItemDataRole.UserRole) == name:
                self.table.selectRow(row)
                self.table.scrollToItem(self.table.item(row, NAME))
                self._selection_changed()
                return True
        return False

    def _selection_changed(self) -> None:
        info = self.selected_info()
        busy = self.is_running()
        self.rename_button.setEnabled(info is not None and not busy)
        self.delete_button.setEnabled(info is not None and not busy)
        is_default = info is not None and bool(info.is_default)
        self.default_button.setEnabled(info is not None and info.valid and not is_default and not busy)
        self.default_button.setText("Default model" if is_default else "Set as default")
        self.import_folder_button.setEnabled(not busy)
        self.details.setHtml(self.details_html(self._with_config(info)) if info is not None else "")

    def _with_config(self, info: ModelInfo) -> ModelInfo:
        """``info`` with its config (for the training details), read once when first shown."""
        if info.config is None:
            try:
                info.config = model_info(info.path, with_config=True).config or {}
            except (ModelError, OSError):
                info.config = {}
        return info

    @staticmethod
    def details_html(info: ModelInfo) -> str:
        """The details pane for one model: description, folder, components, classes, provenance."""
        esc = html.escape
        rows: list[tuple[str, str]] = []
        if not info.valid:
            rows.append(("Problem", f"<span style='color:#b00020'>{esc(info.problem)}</span>"))
        if info.description:
            rows.append(("Description", esc(info.description)))
        rows.append(("Folder", esc(info.path)))
        if info.base:
            rows.append(("Base", esc(info.base)))
        sources = info.base_models or {}
        for key, label in SOURCE_LABELS.items():
            if sources.get(key):
                rows.append((label, esc(str(sources[key]))))
        if info.kind:
            kinds = {
                "base": "base model (weight preprocessing only, not trained)",
                "preset": "random weights (for tests and demos, not trained)",
                "reference-import": "imported reference checkpoint",
                "fine-tuned": "fine-tuned",
            }
            rows.append(("Kind", esc(kinds.get(info.kind, info.kind))))
        trained = list(info.trained_classes or [])
        if trained:
            rows.append(("Trained on", esc(", ".join(trained))))
        if info.classes and info.classes != trained:
            rows.append(("Classes", esc(", ".join(info.classes))))
        dice = info.validation_dice
        if dice is not None:
            rows.append(("Validation Dice", f"{dice:.3f}"))
        config = info.config or {}
        training = config.get("training", {}) if isinstance(config, dict) else {}
        if training.get("steps"):
            rows.append(("Training steps", str(training["steps"])))
        if training.get("datasets"):
            rows.append(("Data", esc(", ".join(map(str, training["datasets"])))))
        if training.get("held_out_classes"):
            rows.append(("Held out", esc(", ".join(map(str, training["held_out_classes"])))))
        if training.get("notes"):
            rows.append(("Notes", esc(str(training["notes"]))))
        for key, value in info.references.items():
            rows.append((f"{esc(key)} (referenced)", esc(value)))
        if info.created:
            rows.append(("Created", esc(local_date(info.created))))
        modified = info.modified
        if modified and modified != info.created:
            rows.append(("Changed", esc(local_date(modified))))
        rows.append(("Size", esc(human_bytes(info.size_bytes))))
        body = "".join(
            f"<tr><td style='padding-right:12px'><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows
        )
        title = esc(info.name) + (" <i>(default)</i>" if info.is_default else "")
        return f"<h3 style='margin:0'>{title}</h3><table cellspacing='2'>{body}</table>"

    # ----------------------------------------------------------------------------------------- actions
    def create_model(self, page: str = "base") -> CreateModelDialog:
        """Show the "New model" dialog on ``page`` ("tiny", "base", "reference")."""
        if self.create_dialog is None or not qt_alive(self.create_dialog):
            self.create_dialog = CreateModelDialog(self, page=page)
            self.create_dialog.modelCreated.connect(self._model_added)
        elif not self.create_dialog.is_running():
            self.create_dialog.set_page(page)
        self.create_dialog.show()
        self.create_dialog.raise_()
        self.create_dialog.activateWindow()
        return self.create_dialog

    def import_reference(self) -> CreateModelDialog:
        """Show the "New model" dialog on its reference-checkpoint page."""
        return self.create_model("reference")

    def import_folder(self, folder: str | None = None, name: str | None = None) -> bool:
        """Copy a model folder into the store in the background (asks for the folder and name when not
        given); False when nothing was started."""
        if self.is_running():
            return False
        folder = folder if folder is not None else self.choose_folder("Import a model folder")
        if not folder:
            return False
        path = Path(folder).expanduser()
        if not path.is_dir():
            self._error(f"The folder does not exist: {folder}")
            return False
        if not (path / "config.json").is_file():
            self._error(f"{folder} is not an SD-FSMIS model folder: it has no config.json.")
            return False
        if name is None:
            name = self.ask_text("Import model", "Name in the model store:", self._free_name(path.name))
            if not name:
                return False
        name = name.strip()
        if not self._check_new_name(name):
            return False
        worker = JobWorker(partial(import_folder_job, str(path), name), name=f"import {name}", parent=self)
        worker.progress.connect(self._import_progress)
        worker.finished.connect(self._import_finished)
        worker.failed.connect(self._import_failed)
        worker.cancelled.connect(self._import_cancelled)
        if self.worker is not None:
            self.worker.deleteLater()
        self.worker = worker
        self._importing = name
        self.last_error = ""
        worker.start()
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)
        self.cancel_button.setVisible(True)
        self.cancel_button.setEnabled(True)
        self.status_label.setText(f"Importing “{name}”…")
        self._selection_changed()
        return True

    def rename_selected(self, new_name: str | None = None) -> bool:
        """Rename the selected model (asks for the name when not given); False when nothing changed."""
        old = self.selected_name()
        if old is None or self.is_running():
            return False
        if new_name is None:
            new_name = self.ask_text("Rename model", f"New name for “{old}”:", old)
        new_name = (new_name or "").strip()
        if not new_name or new_name == old or not self._check_new_name(new_name):
            return False
        try:
            rename_model(old, new_name)
        except (ModelError, OSError) as exc:
            self._error(f"Cannot rename “{old}”: {exc}")
            return False
        self.refresh()
        self.select(new_name)
        self.status_label.setText(f"Renamed “{old}” to “{new_name}”.")
        self.modelRenamed.emit(old, new_name)
        self.modelsChanged.emit()
        return True

    def delete_selected(self) -> bool:
        """Delete the selected model after a confirmation; False when it was kept."""
        info = self.selected_info()
        if info is None or self.is_running():
            return False
        question = (
            f"Delete the model “{info.name}” ({human_bytes(info.size_bytes)})? Its folder {info.path} is "
            "removed from the disk; this cannot be undone."
        )
        if not self.confirm("Delete model", question):
            return False
        try:
            remove_model(info.name)
        except (ModelError, OSError) as exc:
            self._error(f"Cannot delete “{info.name}”: {exc}")
            return False
        self.refresh()
        self.status_label.setText(f"Deleted “{info.name}”.")
        self.modelsChanged.emit()
        return True

    def set_selected_default(self) -> bool:
        """Make the selected (usable) model the default for segmentation."""
        info = self.selected_info()
        if info is None or not info.valid or info.is_default:
            return False
        try:
            set_default_model(info.name)
        except (ModelError, OSError) as exc:
            self._error(f"Cannot make “{info.name}” the default: {exc}")
            return False
        self.refresh()
        self.status_label.setText(f"“{info.name}” is now the default model for segmentation.")
        self.defaultChanged.emit(info.name)
        self.modelsChanged.emit()
        return True

    def _free_name(self, base: str) -> str:
        """``base`` (made a valid store name) or ``base-2``, ``base-3``… when taken."""
        cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).strip(".-_") or "model"
        cleaned = cleaned[:90]
        candidate, n = cleaned, 2
        while model_path(candidate).exists():
            candidate, n = f"{cleaned}-{n}", n + 1
        return candidate

    def _check_new_name(self, name: str) -> bool:
        problem = new_model_name_problem(name)
        if problem:
            self._error(problem)
        return not problem

    def _model_added(self, name: str) -> None:
        self.refresh()
        self.select(name)
        self.status_label.setText(f"Model “{name}” was added to the store.")
        self.modelCreated.emit(name)
        self.modelsChanged.emit()

    # -------------------------------------------------------------------------------------------- jobs
    def is_running(self) -> bool:
        """True while a model folder is being imported."""
        return self.worker is not None and self.worker.is_running()

    def cancel(self) -> None:
        """Stop the import (nothing is left in the store)."""
        if self.is_running():
            self.worker.cancel()
            self.cancel_button.setEnabled(False)
            self.status_label.setText("Cancelling…")

    def _import_progress(self, progress: Progress) -> None:
        if progress.total <= 0:
            if progress.message:
                self.status_label.setText(f"Importing “{self._importing}”: {progress.message}…")
            return
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(int(1000 * progress.fraction))
        text = f"Importing “{self._importing}”: {human_bytes(progress.done)} of {human_bytes(progress.total)}"
        eta = progress.eta_s
        if eta is not None and progress.done < progress.total:
            text += f", {format_seconds(eta)} left"
        self.status_label.setText(text)

    def _import_ended(self) -> None:
        self.progress_bar.setVisible(False)
        self.cancel_button.setVisible(False)
        self._selection_changed()

    def _import_finished(self, name: str) -> None:
        self._import_ended()
        self._model_added(str(name))

    def _import_failed(self, message: str, _is_user_error: bool) -> None:
        self._import_ended()
        self.status_label.setText(f"Import failed: {message}")
        self._error(message)

    def _import_cancelled(self) -> None:
        self._import_ended()
        self.refresh()
        self.status_label.setText("Import cancelled: nothing was added to the store.")

    # ----------------------------------------------------------------------------------------- helpers
    def _error(self, message: str) -> None:
        self.last_error = message
        error_box(self, "Models", message)

    def _confirm_dialog(self, title: str, text: str) -> bool:
        answer = QtWidgets.QMessageBox.question(self, title, text)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    def _ask_text_dialog(self, title: str, label: str, text: str) -> str | None:
        value, ok = QtWidgets.QInputDialog.getText(
            self, title, label, QtWidgets.QLineEdit.EchoMode.Normal, text
        )
        return value if ok else None

    def _choose_folder_dialog(self, caption: str) -> str:
        return QtWidgets.QFileDialog.getExistingDirectory(self, caption, str(Path.home()))

    # ----------------------------------------------------------------------------------------- closing
    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        """An import in progress is cancelled (after asking); nothing half-copied stays in the store."""
        if self.is_running():
            if not self.confirm("Stop the import", f"Stop importing “{self._importing}”?"):
                event.ignore()
                return
            self.cancel()
        event.accept()

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Cancel and join this dialog's jobs and the "New model" dialog's (application exit)."""
        ok = self.worker.shutdown(timeout_ms) if self.worker is not None else True
        if self.create_dialog is not None and qt_alive(self.create_dialog):
            ok = self.create_dialog.shutdown(timeout_ms) and ok
        return ok
