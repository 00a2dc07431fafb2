"""The fine-tune wizard's data page: volumes with their label maps (files, folders, manifests, the
session's studies), each checked in a worker; the classes to train on and the held-out volumes.

Over 500 lines: one wizard page (its table, checks in a worker, class choice), whose parts share the page's
state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.ui.fine_tune.common import (
    BAD_COLOUR,
    OK_COLOUR,
    WARN_COLOUR,
    PairEntry,
    WizardPage,
    check_training_pair,
    error_label,
    html_text,
    model_name_from,
    pair_name,
    partial_job,
    plural,
    save_study_pairs,
    standard_icon,
    supervoxel_preview,
)
from sd_fsmis.ui.workers.job_worker import JobWorker, qt_alive

if TYPE_CHECKING:
    from sd_fsmis.core.training.pairs import PairCheck, TrainingPair


# ============================================================================================== 2. data
class AddPairDialog(QtWidgets.QDialog):
    """Choose an image (DICOM folder or file, NIfTI) and its label map (NIfTI, DICOM-SEG)."""

    IMAGE_FILTER = "Images (*.nii.gz *.nii *.dcm *.nrrd *.mha *.mhd DICOMDIR);;All files (*)"
    LABEL_FILTER = "Label maps (*.nii.gz *.nii *.dcm *.nrrd *.mha *.mhd);;All files (*)"

    def __init__(
        self, parent: QtWidgets.QWidget | None = None, folder: str = "", label_optional: bool = False
    ) -> None:
        super().__init__(parent)
        self.label_optional = label_optional
        self.setWindowTitle(
            "Add an image" + (" (and a label map if it has one)" if label_optional else " and its label map")
        )
        self._folder = folder
        self.image_edit = QtWidgets.QLineEdit()
        self.image_edit.setPlaceholderText("DICOM folder, DICOM file or NIfTI file")
        self.label_edit = QtWidgets.QLineEdit()
        self.label_edit.setPlaceholderText(
            "optional: a label map lets this volume measure the Dice (hold it out)"
            if label_optional
            else "NIfTI label map (0 background, 1, 2… the structures)"
        )
        self.name_edit = QtWidgets.QLineEdit()
        self.name_edit.setPlaceholderText("from the image's file name")
        form = QtWidgets.QFormLayout()
        form.addRow("Image:", self._row(self.image_edit, True))
        form.addRow("Label map:", self._row(self.label_edit, False))
        form.addRow("Name:", self.name_edit)
        self.buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        for edit in (self.image_edit, self.label_edit):
            edit.textChanged.connect(self._update)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.buttons)
        self.resize(620, self.sizeHint().height())
        self._update()

    def _row(self, edit: QtWidgets.QLineEdit, image: bool) -> QtWidgets.QWidget:
        widget = QtWidgets.QWidget()
        row = QtWidgets.QHBoxLayout(widget)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit, 1)
        file_button = QtWidgets.QPushButton("File…")
        file_button.clicked.connect(lambda: self._pick_file(edit, image))
        row.addWidget(file_button)
        if image:
            folder_button = QtWidgets.QPushButton("DICOM folder…")
            folder_button.clicked.connect(lambda: self._pick_folder(edit))
            row.addWidget(folder_button)
        return widget

    def _pick_file(self, edit: QtWidgets.QLineEdit, image: bool) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self,
            "Choose the image" if image else "Choose the label map",
            edit.text() or self._folder,
            self.IMAGE_FILTER if image else self.LABEL_FILTER,
        )
        if path:
            edit.setText(path)
            self._folder = str(Path(path).parent)

    def _pick_folder(self, edit: QtWidgets.QLineEdit) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Choose the DICOM folder", self._folder)
        if path:
            edit.setText(path)
            self._folder = path

    def _update(self) -> None:
        ok = bool(self.image_edit.text().strip() and (self.label_optional or self.label_edit.text().strip()))
        self.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok).setEnabled(ok)


class DataPage(WizardPage):
    """Volumes with their label maps, checked one by one in a worker; classes; held-out volumes."""

    COLUMNS = ("Validation", "Name", "Image", "Label map", "Size", "Classes (slices)", "Status")
    TITLE = "Your annotated volumes"
    SUBTITLE = (
        "Add volumes with their label maps (0 = background, 1, 2… = structures). Each pair is checked; "
        "tick “Validation” for the volumes to hold out: they are not trained on and give the Dice "
        "before and after."
    )
    SELF_SUPERVISED_TITLE = "Your volumes (self-supervised)"
    SELF_SUPERVISED_SUBTITLE = (
        "Add volumes; no label map is needed. The model learns from supervoxels (regions of similar "
        "intensity inside the body, computed here and cached). A volume that has a label map can be held "
        "out (“Validation”) to measure the Dice; without one, the held-out episode loss is shown instead."
    )
    COL_VALIDATION, COL_NAME, COL_IMAGE, COL_LABEL, COL_SIZE, COL_CLASSES, COL_STATUS = range(7)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle(self.TITLE)
        self.setSubTitle(self.SUBTITLE)
        self.entries: list[PairEntry] = []
        self._queue: list[PairEntry] = []
        self._check_worker: JobWorker | None = None
        self._checking: PairEntry | None = None
        self._save_worker: JobWorker | None = None
        self._validation_touched = False
        self._class_boxes: dict[int, QtWidgets.QCheckBox] = {}
        self._unchecked_classes: set[int] = set()
        self._filling = False
        self.last_folder = ""
        self._preview_worker: JobWorker | None = None
        self._preview_for: tuple[str, str | None] | None = None

        self.self_supervised_box = QtWidgets.QCheckBox("My volumes have no labels (self-supervised)")
        self.self_supervised_box.setToolTip(
            "Train on supervoxels instead of label maps, as the self-supervised few-shot methods do "
            "(SSL-ALPNet): Felzenszwalb regions of each slice inside the body, linked across slices"
        )
        self.self_supervised_box.toggled.connect(self._mode_changed)

        self.table = QtWidgets.QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        for col in range(len(self.COLUMNS)):
            header.setSectionResizeMode(col, QtWidgets.QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(self.COL_VALIDATION, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(self.COL_STATUS, QtWidgets.QHeaderView.ResizeMode.Stretch)
        for col, width in (
            (self.COL_NAME, 105),
            (self.COL_IMAGE, 110),
            (self.COL_LABEL, 110),
            (self.COL_SIZE, 175),
            (self.COL_CLASSES, 190),
        ):
            self.table.setColumnWidth(col, width)
        self.table.itemChanged.connect(self._item_changed)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.itemSelectionChanged.connect(self._show_details)
        self.details = QtWidgets.QLabel()
        self.details.setWordWrap(True)
        self.details.setTextFormat(Qt.TextFormat.RichText)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.add_pair_button = QtWidgets.QPushButton("Add image + label…")
        self.add_pair_button.setToolTip("An image (DICOM folder or file, NIfTI) and its label map")
        self.add_pair_button.clicked.connect(self.add_pair_dialog)
        self.add_folder_button = QtWidgets.QPushButton("Add folder…")
        self.add_folder_button.setToolTip(
            "A folder laid out like CHAOS (images/image_ID.nii.gz + labels/label_ID.nii.gz), or a manifest "
            "(.json / .csv) listing image and label paths"
        )
        folder_menu = QtWidgets.QMenu(self.add_folder_button)
        folder_menu.addAction("Folder with images/ and labels/…", self.add_folder_dialog)
        folder_menu.addAction("Manifest file (.json, .csv)…", self.add_manifest_dialog)
        self.add_folder_button.setMenu(folder_menu)
        self.add_studies_button = QtWidgets.QPushButton("Add open studies")
        self.add_studies_button.setToolTip(
            "Each open study with a painted mask: the study and its mask are saved into the run folder"
        )
        self.add_studies_button.clicked.connect(self.add_open_studies)
        self.remove_button = QtWidgets.QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        buttons = QtWidgets.QHBoxLayout()
        for button in (self.add_pair_button, self.add_folder_button, self.add_studies_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.remove_button)

        self.preview_box = QtWidgets.QGroupBox("Supervoxels (the classes the model learns from)")
        self.preview_image = QtWidgets.QLabel()
        self.preview_image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview_image.setMinimumSize(180, 180)
        self.preview_caption = QtWidgets.QLabel("Add a volume to see its supervoxels.")
        self.preview_caption.setWordWrap(True)
        preview_layout = QtWidgets.QVBoxLayout(self.preview_box)
        preview_layout.addWidget(self.preview_image, 1)
        preview_layout.addWidget(self.preview_caption)
        self.preview_box.setVisible(False)

        self.classes_box = QtWidgets.QGroupBox("Classes to train on")
        self.classes_layout = QtWidgets.QVBoxLayout(self.classes_box)
        self.no_classes = QtWidgets.QLabel("The label values found in the usable pairs appear here.")
        self.no_classes.setEnabled(False)
        self.classes_layout.addWidget(self.no_classes)
        self.summary = QtWidgets.QLabel()
        self.summary.setWordWrap(True)
        self.error = error_label()

        bottom = QtWidgets.QHBoxLayout()
        bottom.addWidget(self.preview_box, 1)
        bottom.addWidget(self.classes_box, 1)
        right = QtWidgets.QVBoxLayout()
        right.addWidget(self.summary)
        right.addWidget(self.error)
        right.addStretch(1)
        bottom.addLayout(right, 1)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.self_supervised_box)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.details)
        layout.addLayout(buttons)
        layout.addLayout(bottom)
        self._update_buttons()

    # -- adding
    def add_pair(
        self, image: str | Path, label: str | Path, name: str = "", series_uid: str | None = None
    ) -> PairEntry:
        """Add an image + label map pair and check it in the background."""
        from sd_fsmis.core.training.pairs import TrainingPair

        name = name or pair_name(Path(image))
        pair = TrainingPair(str(image), str(label) if label else "", series_uid=series_uid, name=name)
        return self._add(PairEntry(pair))

    def add_dataset(self, path: str | Path) -> list[PairEntry]:
        """Add every case of a CHAOS-like folder or a manifest (.json / .csv)."""
        from sd_fsmis.core.errors import UserError
        from sd_fsmis.core.training.pairs import pairs_from_dataset

        try:
            pairs, names = pairs_from_dataset(path, require_labels=not self.self_supervised())
        except UserError as exc:
            self.error.setText(str(exc))
            return []
        self.error.setText("")
        for value, name in names.items():
            self.fw().class_names.setdefault(int(value), str(name))
        return [self._add(PairEntry(pair, origin="dataset")) for pair in pairs]

    def add_pair_dialog(self) -> None:
        dialog = AddPairDialog(self, self.last_folder, label_optional=self.self_supervised())
        if dialog.exec() != QtWidgets.QDialog.DialogCode.Accepted:
            return
        image, label = dialog.image_edit.text().strip(), dialog.label_edit.text().strip()
        self.last_folder = str(Path(label or image).parent)
        self.add_pair(image, label, dialog.name_edit.text().strip())

    def add_folder_dialog(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(
            self, "Folder with images/ and labels/", self.last_folder
        )
        if path:
            self.last_folder = path
            self.add_dataset(path)

    def add_manifest_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Manifest of images and label maps", self.last_folder, "Manifests (*.json *.csv)"
        )
        if path:
            self.last_folder = str(Path(path).parent)
            self.add_dataset(path)

    def studies_with_masks(self) -> list[tuple[Any, Any]]:
        """(study, layer) of each open study with a non-empty painted mask (its active one if painted)."""
        session = self.fw().session
        if session is None:
            return []
        found = []
        for study in session.studies:
            manual = [layer for layer in study.layers if layer.kind == "manual" and layer.array.any()]
            if not manual:
                continue
            active = study.active_layer
            found.append((study, active if active in manual else manual[0]))
        return found

    def add_open_studies(self) -> bool:
        """Save each open study with a painted mask into the run folder (worker), then add and check it."""
        found = self.studies_with_masks()
        if not found:
            self.error.setText("No open study has a painted mask.")
            return False
        if self._save_worker is not None and self._save_worker.is_running():
            return False
        self.error.setText("")
        taken = {entry.pair.name for entry in self.entries}
        items, names = [], {}
        for study, layer in found:
            name = model_name_from(study.name)
            base, n = name, 2
            while name in taken:
                name, n = f"{base}-{n}", n + 1
            taken.add(name)
            label_map = layer.copy_label_map()
            items.append((study.volume, label_map, name))
            for value, label in label_map.labels.items():
                names.setdefault(int(value), label.name)
        folder = self.fw().data_folder()
        worker = JobWorker(partial_job(save_study_pairs, items, folder), name="save studies")
        worker.finished.connect(lambda pairs: self._studies_saved(pairs, names))
        worker.failed.connect(lambda message, _user: self.error.setText(message))
        worker.done.connect(self._update_buttons)
        self._save_worker = self._start(worker)
        self.summary.setText(f"Saving {plural(len(items), 'study')} into {folder}…")
        self._update_buttons()
        return True

    def _studies_saved(self, pairs: list[TrainingPair], names: dict[int, str]) -> None:
        if not qt_alive(self):
            return
        for value, name in names.items():
            self.fw().class_names.setdefault(value, name)
        for pair in pairs:
            self._add(PairEntry(pair, origin="study"))

    def _add(self, entry: PairEntry) -> PairEntry:
        entry.needs_label = not self.self_supervised()
        self.entries.append(entry)
        self._queue.append(entry)
        self._refill()
        self._check_next()
        return entry

    def remove_selected(self) -> None:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()}, reverse=True)
        for row in rows:
            self.remove_entry(self.entries[row])

    def remove_entry(self, entry: PairEntry) -> None:
        if entry in self.entries:
            self.entries.remove(entry)
        if entry in self._queue:
            self._queue.remove(entry)
        self._refill()

    # -- checking
    def _check_next(self) -> None:
        if self._check_worker is not None and self._check_worker.is_running():
            return
        if not self._queue:
            self._checking = None
            self._refill()
            return
        entry = self._queue.pop(0)
        self._checking = entry
        shots = self.fw().settings_page.shots_spin.value()
        worker = JobWorker(partial_job(check_training_pair, entry.pair, shots), name="check pair")
        worker.finished.connect(lambda result, e=entry: self._checked(e, result))
        worker.failed.connect(lambda message, _user, e=entry: self._check_failed(e, message))
        worker.done.connect(self._check_done)
        self._check_worker = self._start(worker)

    def _checked(self, entry: PairEntry, result: tuple[PairCheck, dict[int, str]]) -> None:
        entry.check, entry.names = result
        for value, name in entry.names.items():
            self.fw().class_names.setdefault(value, name)

    def _check_failed(self, entry: PairEntry, message: str) -> None:
        entry.error = message

    def _check_done(self) -> None:
        if not qt_alive(self):
            return
        self._checking = None
        if not self._validation_touched:
            self._default_validation()
        self._refill()
        QtCore.QTimer.singleShot(0, self._check_next)

    def checks_pending(self) -> bool:
        """True while pairs wait for (or are in) their check, or studies are being saved."""
        saving = self._save_worker is not None and self._save_worker.is_running()
        return bool(self._queue) or self._checking is not None or saving

    def shutdown(self) -> None:
        """Stop the checks (the wizard closes)."""
        self._queue.clear()
        for worker in (self._check_worker, self._save_worker, self._preview_worker):
            if worker is not None and worker.is_running():
                worker.shutdown()

    def _default_validation(self) -> None:
        """Hold out the last usable pair when there are at least three usable ones, else none."""
        usable = [e for e in self.entries if e.usable]
        for entry in self.entries:
            entry.validation = False
        if len(usable) >= 3:
            labelled = [e for e in usable if e.pair.label]  # self-supervised: one that can give a Dice
            (labelled or usable)[-1].validation = True

    # -- the table
    def restore_pairs(self, saved: list[dict]) -> int:
        """Add the pairs of a data list remembered earlier (:meth:`remembered_pairs`) whose files still
        exist, with their held-out choice; returns how many."""
        from sd_fsmis.core.training.pairs import TrainingPair

        restored = 0
        for item in saved:
            image, label = item.get("image"), item.get("label") or ""
            if not image or not Path(image).exists() or (label and not Path(label).exists()):
                continue
            pair = TrainingPair(image, label, series_uid=item.get("series_uid"), name=item.get("name") or "")
            entry = PairEntry(
                pair, origin=item.get("origin") or "files", validation=bool(item.get("validation"))
            )
            self._validation_touched = self._validation_touched or entry.validation
            self._add(entry)
            restored += 1
        return restored

    def remembered_pairs(self) -> list[dict]:
        """The data list as the settings keep it."""
        return [
            {
                "image": e.pair.image,
                "label": e.pair.label,
                "series_uid": e.pair.series_uid,
                "name": e.pair.name,
                "origin": e.origin,
                "validation": e.validation,
            }
            for e in self.entries
        ]

    def _remember(self) -> None:
        remember = getattr(self.wizard(), "remember_pairs", None)
        if remember is not None:
            remember(self.remembered_pairs())

    def _refill(self) -> None:
        self._remember()
        self._filling = True
        try:
            self.table.setRowCount(len(self.entries))
            for row, entry in enumerate(self.entries):
                self._fill_row(row, entry)
        finally:
            self._filling = False
        self._refill_classes()
        self._update_summary()
        self._update_buttons()
        self._show_details()
        self._update_preview()
        self.completeChanged.emit()

    def details_entry(self) -> PairEntry | None:
        """The pair whose problems and warnings are spelled out under the table: the selected one, else the
        first with problems, else the first with warnings."""
        rows = self.table.selectionModel().selectedRows()
        if rows and 0 <= rows[0].row() < len(self.entries):
            return self.entries[rows[0].row()]
        return next((e for e in self.entries if e.problems), None) or next(
            (e for e in self.entries if e.warnings), None
        )

    def _show_details(self) -> None:
        entry = self.details_entry()
        if entry is None or not (entry.problems or entry.warnings):
            self.details.setText("")
            self.details.setVisible(False)
            return
        lines = [f'<span style="color: {BAD_COLOUR.name()};">✖ {html_text(p)}</span>' for p in entry.problems]
        lines += [
            f'<span style="color: {WARN_COLOUR.name()};">⚠ {html_text(w)}</span>' for w in entry.warnings
        ]
        self.details.setText(f"<b>{html_text(entry.pair.name)}</b>: " + "<br>".join(lines))
        self.details.setVisible(True)

    def _fill_row(self, row: int, entry: PairEntry) -> None:
        pair, check = entry.pair, entry.check
        hold = QtWidgets.QTableWidgetItem()
        flags = Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled
        if entry.usable:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        hold.setFlags(flags)
        hold.setCheckState(Qt.CheckState.Checked if entry.validation else Qt.CheckState.Unchecked)
        hold.setToolTip(
            "Hold this volume out: not trained on, used for the Dice before and after"
            if pair.label
            else "Hold this volume out: not trained on; without a label map it gives the held-out episode "
            "loss (on its supervoxels), not a Dice"
        )
        self.table.setItem(row, self.COL_VALIDATION, hold)
        items = {
            self.COL_NAME: (pair.name, f"{pair.image}\n{pair.label}"),
            self.COL_IMAGE: (Path(pair.image).name, str(pair.image)),
            self.COL_LABEL: (Path(pair.label).name, str(pair.label)) if pair.label else ("—", "no label map"),
        }
        size = ""
        classes = ""
        if check is not None and check.shape:
            size = "×".join(str(n) for n in reversed(tuple(check.shape)))
            if check.spacing and any(check.spacing):
                size += ", " + "×".join(f"{s:.3g}" for s in reversed(tuple(check.spacing))) + " mm"
            if getattr(check, "modality", ""):
                size = f"{check.modality}  {size}"
        if check is not None and check.classes:
            classes = ", ".join(f"{self.class_name(v)} ({int(n)})" for v, n in sorted(check.classes.items()))
        items[self.COL_SIZE] = (size, size)
        items[self.COL_CLASSES] = (classes, classes)
        if entry.checking:
            status, tip, icon, colour = "checking…", "", "SP_BrowserReload", None
        elif entry.problems:
            status = entry.problems[0] + (
                f" (+{len(entry.problems) - 1} more)" if len(entry.problems) > 1 else ""
            )
            tip = "\n".join(entry.problems + entry.warnings)
            icon, colour = "SP_MessageBoxCritical", BAD_COLOUR
        elif entry.warnings:
            status = "usable — " + entry.warnings[0]
            tip = "\n".join(entry.warnings)
            icon, colour = "SP_MessageBoxWarning", WARN_COLOUR
        else:
            status, tip, icon, colour = "usable", "", "SP_DialogApplyButton", OK_COLOUR
        items[self.COL_STATUS] = (status, tip or status)
        for col, (text, tooltip) in items.items():
            item = QtWidgets.QTableWidgetItem(text)
            item.setToolTip(tooltip)
            item.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
            if col == self.COL_STATUS:
                item.setIcon(standard_icon(icon))
                if colour is not None:
                    item.setForeground(colour)
            elif entry.problems:
                item.setForeground(BAD_COLOUR)
            self.table.setItem(row, col, item)

    def _item_changed(self, item: QtWidgets.QTableWidgetItem) -> None:
        if self._filling or item.column() != self.COL_VALIDATION:
            return
        row = item.row()
        if 0 <= row < len(self.entries):
            self.entries[row].validation = item.checkState() == Qt.CheckState.Checked
            self._validation_touched = True
            self._remember()
            self._refill_classes()
            self._update_summary()
            self.completeChanged.emit()

    def set_validation(self, entry: PairEntry, held_out: bool) -> None:
        """Hold ``entry`` out (or not), as a click in its Validation box does."""
        row = self.entries.index(entry)
        self.table.item(row, self.COL_VALIDATION).setCheckState(
            Qt.CheckState.Checked if held_out else Qt.CheckState.Unchecked
        )

    def class_name(self, value: int) -> str:
        return self.fw().class_names.get(int(value), f"Label {int(value)}")

    def found_classes(self) -> dict[int, tuple[int, int]]:
        """label -> (training volumes holding it, validation volumes holding it), over the usable pairs."""
        found: dict[int, list[int]] = {}
        for entry in self.entries:
            if not entry.usable:
                continue
            for value in entry.check.classes:
                counts = found.setdefault(int(value), [0, 0])
                counts[1 if entry.validation else 0] += 1
        return {v: (c[0], c[1]) for v, c in sorted(found.items())}

    def _refill_classes(self) -> None:
        found = self.found_classes()
        for value, box in list(self._class_boxes.items()):
            if value not in found:
                self.classes_layout.removeWidget(box)
                box.deleteLater()
                del self._class_boxes[value]
        for value, (train, held) in found.items():
            box = self._class_boxes.get(value)
            if box is None:
                box = QtWidgets.QCheckBox()
                box.setChecked(value not in self._unchecked_classes)
                box.toggled.connect(lambda on, v=value: self._class_toggled(v, on))
                self._class_boxes[value] = box
                self.classes_layout.addWidget(box)
            if self.self_supervised():  # labels serve the validation Dice only
                text = f"{self.class_name(value)} (value {value}): {plural(held, 'held-out volume')}"
                box.setText(text)
                box.setEnabled(held > 0)
                box.setToolTip("" if held else "No held-out volume holds this class: it cannot be scored")
                continue
            text = f"{self.class_name(value)} (value {value}): {plural(train, 'training volume')}"
            if held:
                text += f", {held} for validation"
            box.setText(text)
            box.setEnabled(train > 0)
            if train == 0:
                box.setToolTip("No training volume holds this class")
        self.no_classes.setVisible(not found)

    def _class_toggled(self, value: int, on: bool) -> None:
        (self._unchecked_classes.discard if on else self._unchecked_classes.add)(value)
        self._update_summary()
        self.completeChanged.emit()

    def set_class_checked(self, value: int, on: bool) -> None:
        """Train on class ``value`` (or not)."""
        (self._unchecked_classes.discard if on else self._unchecked_classes.add)(int(value))
        box = self._class_boxes.get(int(value))
        if box is not None:
            box.setChecked(on)
        self._update_summary()
        self.completeChanged.emit()

    # -- the result of the page
    def chosen_classes(self) -> list[int]:
        """The classes ticked that at least one training volume holds (self-supervised: that a held-out
        volume holds, to be scored)."""
        column = 1 if self.self_supervised() else 0
        return [v for v, n in self.found_classes().items() if n[column] and v not in self._unchecked_classes]

    def usable_entries(self) -> list[PairEntry]:
        return [e for e in self.entries if e.usable]

    def training_entries(self) -> list[PairEntry]:
        return [e for e in self.usable_entries() if not e.validation]

    def validation_entries(self) -> list[PairEntry]:
        return [e for e in self.usable_entries() if e.validation]

    def not_ready_reason(self) -> str:
        """Why Next is disabled ("" when it is not)."""
        if self.checks_pending():
            return "Checking the volumes…"
        if not self.usable_entries():
            if self.self_supervised():
                return "Add at least one volume."
            return "Add at least one volume with its label map."
        if not self.training_entries():
            return "Keep at least one usable volume for training (untick “Validation” on one)."
        if self.self_supervised():
            return ""
        if not self.chosen_classes():
            return "Choose at least one class to train on."
        return ""

    def _update_summary(self) -> None:
        usable = self.usable_entries()
        bad = [e for e in self.entries if e.problems]
        parts = [
            f"{plural(len(self.training_entries()), 'volume')} for training",
            f"{len(self.validation_entries())} held out for validation",
        ]
        if bad:
            parts.append(f"{len(bad)} with problems (not used)")
        text = ", ".join(parts) + "."
        if usable and not self.validation_entries():
            text += " Without a held-out volume there is no Dice before/after to compare."
        elif self.self_supervised() and self.validation_entries():
            scored = [e for e in self.validation_entries() if e.pair.label]
            text += (
                f" The Dice is measured on the {plural(len(scored), 'held-out volume')} with a label map."
                if scored
                else " No held-out volume has a label map: no Dice can be measured; the held-out episode "
                "loss (on their supervoxels) is shown instead."
            )
        reason = self.not_ready_reason()
        self.summary.setText(text if not reason else f"{text}<br><i>{reason}</i>")

    def _update_buttons(self) -> None:
        saving = self._save_worker is not None and self._save_worker.is_running()
        has_studies = bool(self.studies_with_masks()) if self.wizard() is not None else False
        self.add_studies_button.setEnabled(has_studies and not saving)
        self.add_studies_button.setToolTip(
            "Each open study with a painted mask: the study and its mask are saved into the run folder"
            if has_studies
            else "No open study has a painted mask"
        )
        self.remove_button.setEnabled(bool(self.table.selectionModel().selectedRows()))

    # -- self-supervised mode
    def self_supervised(self) -> bool:
        """“My volumes have no labels”: train on supervoxels."""
        return self.self_supervised_box.isChecked()

    def set_self_supervised(self, on: bool) -> None:
        self.self_supervised_box.setChecked(bool(on))

    def _mode_changed(self, on: bool) -> None:
        self.setTitle(self.SELF_SUPERVISED_TITLE if on else self.TITLE)
        self.setSubTitle(self.SELF_SUPERVISED_SUBTITLE if on else self.SUBTITLE)
        self.classes_box.setTitle("Classes to score on the held-out volumes" if on else "Classes to train on")
        self.add_pair_button.setText("Add image…" if on else "Add image + label…")
        self.preview_box.setVisible(on)
        for entry in self.entries:
            entry.needs_label = not on
        self._preview_for = None
        self._refill()

    def _update_preview(self) -> None:
        """Show the supervoxels of the first usable volume (computed in a worker, kept in the cache)."""
        if not self.self_supervised() or self.wizard() is None:
            return
        first = next((e for e in self.entries if e.usable), None)
        if first is None:
            self._preview_for = None
            self.preview_image.clear()
            self.preview_caption.setText("Add a volume to see its supervoxels.")
            return
        key = (first.pair.image, first.pair.series_uid)
        if key == self._preview_for or (
            self._preview_worker is not None and self._preview_worker.is_running()
        ):
            return
        self._preview_for = key
        self.preview_caption.setText(f"Computing the supervoxels of {first.pair.name}…")
        worker = JobWorker(partial_job(supervoxel_preview, *key), name="supervoxel preview")
        worker.finished.connect(lambda result, name=first.pair.name: self._preview_ready(name, result))
        worker.failed.connect(lambda message, _user: self.preview_caption.setText(message))
        worker.done.connect(lambda: qt_alive(self) and QtCore.QTimer.singleShot(0, self._update_preview))
        self._preview_worker = self._start(worker)

    def _preview_ready(self, name: str, result: tuple[Any, str]) -> None:
        if not qt_alive(self):
            return
        rgb, caption = result
        height, width = rgb.shape[:2]
        image = QtGui.QImage(rgb.tobytes(), width, height, 3 * width, QtGui.QImage.Format.Format_RGB888)
        pixmap = QtGui.QPixmap.fromImage(image.copy())
        side = max(180, min(self.preview_image.width(), self.preview_image.height()))
        self.preview_image.setPixmap(
            pixmap.scaled(
                side, side, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
        )
        self.preview_caption.setText(f"{html_text(name)} — {caption}")

    def preview_running(self) -> bool:
        return self._preview_worker is not None and self._preview_worker.is_running()

    # -- QWizardPage
    def initializePage(self) -> None:
        self._update_buttons()
        self._update_summary()

    def isComplete(self) -> bool:
        return not self.not_ready_reason()
