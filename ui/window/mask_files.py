"""Masks to and from files for the main window: load a label map (or a reference), save it as NIfTI with the
study's geometry, export DICOM-SEG, save a screenshot. Reading and exporting run in worker threads.

A label map loaded without names ("Label 1"...) opens the naming dialog (common structures or free text).
DICOM-SEG goes to the export folder the person chose once (remembered in the settings; never a study's
DICOM folder by default), and a finished export says where, with a button that opens the folder."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis import __version__
from sd_fsmis.core.errors import GeometryMismatchError, UserError
from sd_fsmis.core.io.labelmap import Label, is_supervoxel_file
from sd_fsmis.core.session.layers import LabelLayer
from sd_fsmis.core.session.study import Study
from sd_fsmis.ui.workers.job_worker import JobWorker

if TYPE_CHECKING:
    from sd_fsmis.ui.window.main_window import MainWindow

NIFTI_FILTER = "NIfTI (*.nii.gz *.nii)"


class MaskFiles(QtCore.QObject):
    """File ▸ Load label map / Load reference mask / Save label map / Export DICOM-SEG / Screenshot."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        #: the open naming dialog of a mask loaded without label names (tests fill it in)
        self.names_dialog: QtWidgets.QDialog | None = None
        #: the confirmation of the last DICOM-SEG export (non-modal; tests read it)
        self.export_box: QtWidgets.QMessageBox | None = None
        #: opens a folder in the desktop's file manager (tests replace it)
        self.open_folder = open_folder

    def load_dialog(self, reference: bool = False) -> None:
        """File ▸ Load label map… (or Load reference mask… with ``reference``)."""
        if self.window.active_study is None:
            return
        title = "Load a reference mask" if reference else "Load a label map"
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self.window, title, self.window.settings.last_folder, f"{NIFTI_FILTER};;All files (*)"
        )
        if path:
            self.load(path, reference=reference)

    def load(
        self, path: str | os.PathLike[str], *, reference: bool = False, resample: bool = False
    ) -> JobWorker | None:
        """Open a mask on the active study in the background (as the reference when ``reference``).

        A mask on another voxel grid is offered a resampling onto the study's grid (nearest neighbour).
        """
        study = self.window.active_study
        if study is None:
            return None
        from sd_fsmis.core.io.labelmap import LabelMap, refuse_image_as_mask

        def job(progress, cancel):
            refuse_image_as_mask(path, [study.path], "the mask")  # the study's own file is no mask
            try:
                label_map = LabelMap.load(path, like=study.geometry, resample=resample, like_name="study")
            except GeometryMismatchError as exc:
                return _GridMismatch(str(exc))
            refuse_image_as_mask(label_map, [study.volume], "the mask")
            return label_map

        def loaded(result) -> None:
            if not isinstance(result, _GridMismatch):
                self._add_loaded(study, path, result, reference)
            elif self.window.confirm(
                "Different grid", f"{result.message}\n\nResample the mask onto the study's grid?"
            ):
                self.load(path, reference=reference, resample=True)

        return self.window.runner.start(
            job,
            f"Loading {Path(path).name}",
            on_done=loaded,
            on_error=lambda message: self.window.show_error("Cannot load the mask", message),
        )

    def _add_loaded(self, study: Study, path: str | os.PathLike[str], label_map, reference: bool):
        if study not in self.window.session.studies:
            return None
        name = Path(path).name.removesuffix(".gz").removesuffix(".nii")
        layer = LabelLayer(
            label_map,
            study.unique_layer_name(name),
            kind="reference" if reference else "manual",
            opacity=0.3 if reference else 0.5,
            source_path=str(path),
        )
        study.add_layer(layer=layer, activate=not reference)
        if reference:
            self.window.session.set_reference(layer)
        self.ask_label_names(layer)
        return layer

    def ask_label_names(self, layer: LabelLayer) -> QtWidgets.QDialog | None:
        """Offer to name the labels of ``layer`` still called "Label N" (non-modal; None when all have
        names, or the mask is supervoxels). Accepting renames them on the layer."""
        from sd_fsmis.ui.dialogs.label_names import LabelNamesDialog, unnamed

        if layer.source_path and is_supervoxel_file(layer.source_path):
            return None  # supervoxels: numbered regions, not structures to name
        values = unnamed(layer.labels, layer.label_map.present_labels())
        if not values:
            return None
        dialog = LabelNamesDialog(layer.labels, values, layer.name, self.window)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def accepted() -> None:
            for value, name in dialog.names().items():
                label = layer.labels.get(value) or Label.default(value)
                if name != label.name:
                    layer.set_label(replace(label, name=name))

        dialog.accepted.connect(accepted)
        self.names_dialog = dialog
        dialog.open()
        return dialog

    def save_dialog(self) -> None:
        layer, study = self.window.active_layer, self.window.active_study
        if layer is None or study is None:
            return
        suggested = layer.source_path if layer.kind == "manual" and layer.source_path else ""
        if not suggested:
            folder = self.window.settings.last_folder or str(Path.home())
            suggested = str(Path(folder) / f"{_file_stem(study.name)}_{_file_stem(layer.name)}.nii.gz")
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self.window, "Save the mask", suggested, NIFTI_FILTER)
        if path:
            self.save(path)

    def save(self, path: str | os.PathLike[str], layer: LabelLayer | None = None) -> Path | None:
        """Save a mask (the active one) as NIfTI with the study's geometry (+ the label table sidecar)."""
        layer = layer or self.window.active_layer
        if layer is None:
            return None
        text = str(path)
        if not text.lower().endswith((".nii", ".nii.gz")):
            text += ".nii.gz"
        from sd_fsmis.core.io.destinations import check_destination
        from sd_fsmis.core.io.labelmap import labels_sidecar_path

        try:
            with wait_cursor():
                inputs = self.window.session.input_files(keep=layer)
                check_destination(text, inputs, also=[labels_sidecar_path(text)])
                out = layer.save(text)
        except (UserError, OSError) as exc:
            self.window.show_error("Cannot save the mask", str(exc))
            return None
        self.window.status.showMessage(f"Saved {layer.name} to {out}", 8000)
        return out

    def export_dicom_seg_dialog(self) -> None:
        layer, study = self.window.active_layer, self.window.active_study
        if layer is None or study is None:
            return
        folder = self.export_folder()
        if folder is None:
            return
        suggested = str(folder / f"{_file_stem(study.name)}_{_file_stem(layer.name)}_seg.dcm")
        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self.window, "Export DICOM-SEG", suggested, "DICOM (*.dcm)"
        )
        if path:
            self.export_dicom_seg(path)

    def source_folders(self) -> list[Path]:
        """The folders the open studies were read from (exports never go there by default)."""
        folders: set[Path] = set()
        for study in self.window.session.studies:
            meta = study.volume.metadata
            for f in meta.files:
                folders.add(Path(f).resolve().parent)
            path = Path(study.path)
            if path.is_dir():
                folders.add(path.resolve())
        return sorted(folders)

    def _in_source_folder(self, folder: str | os.PathLike[str]) -> bool:
        target = Path(folder).resolve()
        return any(target == f or f in target.parents for f in self.source_folders())

    def export_folder(self) -> Path | None:
        """The folder exports go to: the one chosen before (settings), else asked once now.

        A study's own DICOM folder is never taken as the default (a SEG there would join the series the
        next time the folder is opened); None when the person cancels.
        """
        settings = self.window.settings
        remembered = settings.export_folder
        if remembered and Path(remembered).is_dir() and not self._in_source_folder(remembered):
            return Path(remembered)
        chosen = QtWidgets.QFileDialog.getExistingDirectory(
            self.window, "Choose a folder for DICOM-SEG exports (asked once, remembered)", str(Path.home())
        )
        if not chosen:
            return None
        if self._in_source_folder(chosen):
            self.window.show_error(
                "Export folder",
                f"{chosen} holds an open study's images: choose a folder of its own for the exports",
            )
            return None
        self.remember_export_folder(chosen)
        return Path(chosen)

    def remember_export_folder(self, folder: str | os.PathLike[str]) -> None:
        """Make ``folder`` the default for the next exports (not a study's folder) and save the settings."""
        if self._in_source_folder(folder) or not Path(folder).is_dir():
            return
        self.window.settings.export_folder = str(Path(folder))
        self.window._store_settings()

    def export_dicom_seg(self, path: str | os.PathLike[str]):
        """Export the active mask as DICOM-SEG, in the background (predictions as AUTOMATIC)."""
        layer, study = self.window.active_layer, self.window.active_study
        if layer is None or study is None:
            return None
        from sd_fsmis.core.io.destinations import check_destination
        from sd_fsmis.core.io.dicom.seg import export_dicom_seg, export_notes, export_problem, uncoded_names

        try:  # before the work: never onto a study's own file, never into a folder that cannot take it
            problem = export_problem(study.volume)
            if problem:
                raise UserError(problem)
            check_destination(path, self.window.session.input_files())
        except UserError as exc:
            self.window.show_error("DICOM-SEG export failed", str(exc))
            return None
        algorithm = None
        if layer.kind == "prediction":
            run = next((r for r in self.window.session.runs if r.result_layer_id == layer.id), None)
            model = (run.model or run.engine) if run is not None else "SD-FSMIS"
            algorithm = (f"SD-FSMIS {model}".strip(), __version__)
        label_map, volume = layer.copy_label_map(), study.volume

        def job(progress, cancel):
            out = export_dicom_seg(
                label_map, volume, path, algorithm=algorithm, series_description=layer.name
            )
            notes = export_notes(label_map, volume)
            for name in uncoded_names(label_map):
                notes.append(
                    f"“{name}” has no standard code and is exported as Tissue: name the label after a common "
                    "structure (double-click it in Masks and labels) to code it"
                )
            return out, notes, len(label_map.present_labels())

        def done(result) -> None:
            out, notes, segments = result
            self.window.status.showMessage(" ".join([f"Exported DICOM-SEG to {out}.", *notes]), 15_000)
            self.remember_export_folder(Path(out).parent)
            self.confirm_export(Path(out), segments, notes)

        return self.window.runner.start(
            job,
            "Exporting DICOM-SEG",
            on_done=done,
            on_error=lambda message: self.window.show_error("DICOM-SEG export failed", message),
        )

    def confirm_export(self, out: Path, segments: int, notes: list[str]) -> QtWidgets.QMessageBox:
        """Say where the export went (non-modal), with a button that opens its folder."""
        box = QtWidgets.QMessageBox(self.window)
        box.setIcon(QtWidgets.QMessageBox.Icon.Information)
        box.setWindowTitle("DICOM-SEG exported")
        box.setText(f"Exported {segments} segment{'s' if segments != 1 else ''} as DICOM-SEG to:\n{out}")
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        if notes:
            box.setInformativeText("\n\n".join(notes))
        open_button = box.addButton("Open folder", QtWidgets.QMessageBox.ButtonRole.ActionRole)
        open_button.clicked.connect(lambda: self.open_folder(out.parent))
        box.addButton(QtWidgets.QMessageBox.StandardButton.Ok)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.export_box = box
        box.open()
        return box

    def screenshot_dialog(self) -> None:
        study = self.window.active_study
        name = _file_stem(study.name) if study is not None else "sd-fsmis"
        folder = self.window.settings.last_folder or str(Path.home())
        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self.window, "Save a screenshot", str(Path(folder) / f"{name}.png"), "PNG (*.png)"
        )
        if path:
            from sd_fsmis.core.io.destinations import check_destination

            target = path if path.lower().endswith(".png") else path + ".png"
            try:
                check_destination(target, self.window.session.input_files())
                out = self.window.viewer.screenshot(target)
            except (UserError, OSError) as exc:
                self.window.show_error("Cannot save the screenshot", str(exc))
                return
            self.window.status.showMessage(f"Screenshot saved to {out}", 8000)


def open_folder(folder: Path) -> bool:
    """Show ``folder`` in the desktop's file manager."""
    return QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(str(folder)))


class _GridMismatch:
    """A mask on another grid than the study's (the message says how): the user may resample it."""

    def __init__(self, message: str) -> None:
        self.message = message


def _file_stem(name: str) -> str:
    """A name usable in a file name."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip())
    return keep.strip("._") or "mask"


class wait_cursor:
    """The busy cursor for a short operation on the GUI thread."""

    def __enter__(self) -> None:
        QtWidgets.QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)

    def __exit__(self, *exc: object) -> None:
        QtWidgets.QApplication.restoreOverrideCursor()
