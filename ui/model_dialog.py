""" "How do I get a model?": what a model is, and three ways to get one, each also shown as its command.

1. A tiny test model with random weights (seconds on a CPU; for trying the application).
2. A base model from local Stable Diffusion 1.5 and DINOv2 folders (chosen with a folder picker).
3. A checkpoint of the SD-FSMIS reference implementation, imported.

Each runs the core function behind ``sd-fsmis models create`` / ``import-reference`` in a
:class:`~sd_fsmis.ui.workers.JobWorker` (the model package, and torch, are imported there, not in the GUI
thread). Nothing is downloaded from here: only local folders are accepted.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from PySide6 import QtGui, QtWidgets
from PySide6.QtCore import Qt, Signal

from sd_fsmis.core.jobs import CancelToken, ProgressCallback
from sd_fsmis.ui.workers import JobWorker, error_box

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

INTRO = (
    "<p>SD-FSMIS segments with a <b>model</b>: a folder of weights (Stable Diffusion 1.5 adapted to few-shot "
    "segmentation, with DINOv2 features). Models live in the application's model store and are listed in "
    "the <i>Model</i> chooser.</p>"
    "<p>Without a model, the <b>Classical (registration)</b> engine works out of the box: it registers your "
    "support slices onto the other slices.</p>"
    "<p>Ways to get a model (each is also a command for a terminal or a cluster):</p>"
)


def create_tiny_model(name: str, *, progress: ProgressCallback, cancel: CancelToken) -> str:
    """Job: a tiny random model in the store (``sd-fsmis models create --preset tiny --name NAME``)."""
    from sd_fsmis.core.model.create import create_preset_model

    return Path(create_preset_model("tiny", name=name)).name


def create_base(
    sd_dir: str,
    dinov2_dir: str,
    name: str,
    copy_weights: bool,
    *,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> str:
    """Job: a base model from local SD 1.5 + DINOv2 folders (``sd-fsmis models create --sd --dinov2``)."""
    from sd_fsmis.core.model.create import create_base_model

    return Path(create_base_model(sd_dir, dinov2_dir, name=name, copy_weights=copy_weights)).name


def import_reference(
    checkpoint: str,
    sd_dir: str,
    dinov2_dir: str,
    name: str,
    copy_weights: bool,
    *,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> str:
    """Job: import a reference checkpoint (``sd-fsmis models import-reference``)."""
    from sd_fsmis.core.model.reference_import import import_reference_checkpoint

    folder = import_reference_checkpoint(checkpoint, sd_dir, dinov2_dir, name=name, copy_weights=copy_weights)
    return Path(folder).name


def _quote(text: str) -> str:
    return shlex.quote(text) if text else "DIR"


class _FolderField(QtWidgets.QWidget):
    """A line edit with a Browse… button that opens a folder picker."""

    changed = Signal()

    def __init__(self, caption: str, placeholder: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.caption = caption
        self.edit = QtWidgets.QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.textChanged.connect(lambda _t: self.changed.emit())
        browse = QtWidgets.QPushButton("Browse…")
        browse.clicked.connect(self.browse)
        row = QtWidgets.QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(browse)

    def browse(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(
            self, self.caption, self.edit.text() or str(Path.home())
        )
        if folder:
            self.edit.setText(folder)

    @property
    def path(self) -> str:
        return self.edit.text().strip()


class ModelDialog(QtWidgets.QDialog):
    """Explains models and creates or imports one in the background. Signal ``modelCreated(name)``."""

    modelCreated = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("How do I get a model?")
        self.setModal(False)
        self.worker: JobWorker | None = None
        self.last_error = ""
        self._build()
        self._update_commands()
        self.resize(640, 500)

    # ------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        intro = QtWidgets.QLabel(INTRO)
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.RichText)

        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(self._tiny_tab(), "Tiny test model")
        self.tabs.addTab(self._base_tab(), "Base model (SD 1.5 + DINOv2)")
        self.tabs.addTab(self._import_tab(), "Import a checkpoint")

        self.command_view = QtWidgets.QPlainTextEdit()
        self.command_view.setReadOnly(True)
        self.command_view.setMaximumHeight(64)
        self.command_view.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        copy = QtWidgets.QPushButton("Copy command")
        copy.clicked.connect(self.copy_command)
        command_row = QtWidgets.QHBoxLayout()
        command_row.addWidget(QtWidgets.QLabel("The same in a terminal:"))
        command_row.addStretch(1)
        command_row.addWidget(copy)
        self.tabs.currentChanged.connect(lambda _i: self._update_commands())

        self.progress_bar = QtWidgets.QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setVisible(False)
        self.status_label = QtWidgets.QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.create_button = QtWidgets.QPushButton("Create")
        self.create_button.setDefault(True)
        self.create_button.clicked.connect(self.start_current)
        close = QtWidgets.QPushButton("Close")
        close.clicked.connect(self.close)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.progress_bar, 1)
        buttons.addStretch(0)
        buttons.addWidget(self.create_button)
        buttons.addWidget(close)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.tabs, 1)
        layout.addLayout(command_row)
        layout.addWidget(self.command_view)
        layout.addWidget(self.status_label)
        layout.addLayout(buttons)

    def _note(self, html: str) -> QtWidgets.QLabel:
        label = QtWidgets.QLabel(html)
        label.setWordWrap(True)
        label.setTextFormat(Qt.TextFormat.RichText)
        return label

    def _tiny_tab(self) -> QtWidgets.QWidget:
        page = QtWidgets.QWidget()
        self.tiny_name = QtWidgets.QLineEdit("tiny-test")
        self.tiny_name.textChanged.connect(lambda _t: self._update_commands())
        form = QtWidgets.QFormLayout(page)
        form.addRow(
            self._note(
                "A very small model with <b>random weights</b>, created in seconds on any computer. "
                "It runs the whole pipeline (to try the application, test a GPU, follow a tutorial) but does "
                "<b>not</b> segment well: it was never trained."
            )
        )
        form.addRow("Name:", self.tiny_name)
        return page

    def _base_tab(self) -> QtWidgets.QWidget:
        page = QtWidgets.QWidget()
        self.sd_field = _FolderField("Stable Diffusion 1.5 folder", "folder with unet/ and vae/")
        self.dino_field = _FolderField("DINOv2 folder", "folder with config.json and model.safetensors")
        self.base_name = QtWidgets.QLineEdit("sd15-base")
        self.base_copy = QtWidgets.QCheckBox("Copy the VAE and DINOv2 weights into the model folder")
        self.base_copy.setChecked(True)
        for signal in (self.sd_field.changed, self.dino_field.changed):
            signal.connect(self._update_commands)
        self.base_name.textChanged.connect(lambda _t: self._update_commands())
        self.base_copy.toggled.connect(lambda _b: self._update_commands())
        form = QtWidgets.QFormLayout(page)
        form.addRow(
            self._note(
                "The method's starting point: Stable Diffusion 1.5 and DINOv2 after the paper's weight "
                "preprocessing (about 4 GB). Choose the two folders you downloaded (for example from "
                "Hugging Face: <i>stable-diffusion-v1-5/stable-diffusion-v1-5</i> and "
                "<i>facebook/dinov2-base</i>). An untrained base model still needs fine-tuning "
                "(or an imported checkpoint) to segment well."
            )
        )
        form.addRow("Stable Diffusion:", self.sd_field)
        form.addRow("DINOv2:", self.dino_field)
        form.addRow("Name:", self.base_name)
        form.addRow("", self.base_copy)
        return page

    def _import_tab(self) -> QtWidgets.QWidget:
        page = QtWidgets.QWidget()
        self.ckpt_field = _FolderField(
            "Reference checkpoint folder", "checkpoint-N/ (with unet/, image_projector/)"
        )
        self.import_sd_field = _FolderField("Stable Diffusion 1.5 folder", "folder with vae/ (for the VAE)")
        self.import_dino_field = _FolderField(
            "DINOv2 folder", "folder with config.json and model.safetensors"
        )
        self.import_name = QtWidgets.QLineEdit("sd-fsmis-reference")
        for signal in (self.ckpt_field.changed, self.import_sd_field.changed, self.import_dino_field.changed):
            signal.connect(self._update_commands)
        self.import_name.textChanged.connect(lambda _t: self._update_commands())
        form = QtWidgets.QFormLayout(page)
        form.addRow(
            self._note(
                "A trained checkpoint of the SD-FSMIS reference implementation (a <i>checkpoint-N</i> folder "
                "saved in safetensors) becomes a model of the store, with the VAE of Stable Diffusion 1.5 "
                "and DINOv2. Pickle files (.bin, .ckpt) are refused: nothing is unpickled."
            )
        )
        form.addRow("Checkpoint:", self.ckpt_field)
        form.addRow("Stable Diffusion:", self.import_sd_field)
        form.addRow("DINOv2:", self.import_dino_field)
        form.addRow("Name:", self.import_name)
        return page

    # ---------------------------------------------------------------------------------------- commands
    def command(self) -> str:
        """The ``sd-fsmis`` command equivalent to the current tab."""
        index = self.tabs.currentIndex()
        if index == 0:
            return f"sd-fsmis models create --preset tiny --name {_quote(self.tiny_name.text().strip())}"
        if index == 1:
            weights = "" if self.base_copy.isChecked() else " --reference-weights"
            return (
                f"sd-fsmis models create --sd {_quote(self.sd_field.path)}"
                f" --dinov2 {_quote(self.dino_field.path)}"
                f" --name {_quote(self.base_name.text().strip())}{weights}"
            )
        return (
            f"sd-fsmis models import-reference {_quote(self.ckpt_field.path)} --sd "
            f"{_quote(self.import_sd_field.path)} --dinov2 {_quote(self.import_dino_field.path)} "
            f"--name {_quote(self.import_name.text().strip())}"
        )

    def _update_commands(self) -> None:
        self.command_view.setPlainText(self.command())
        self.create_button.setText("Import" if self.tabs.currentIndex() == 2 else "Create")

    def copy_command(self) -> None:
        QtWidgets.QApplication.clipboard().setText(self.command())
        self.status_label.setText("Command copied to the clipboard.")

    # -------------------------------------------------------------------------------------------- jobs
    def is_running(self) -> bool:
        return self.worker is not None and self.worker.is_running()

    def start_current(self) -> bool:
        """Create (or import) the model of the current tab in the background; False if the form is invalid."""
        if self.is_running():
            return False
        index = self.tabs.currentIndex()
        if index == 0:
            return self.create_tiny(self.tiny_name.text().strip())
        if index == 1:
            return self.create_base(
                self.sd_field.path,
                self.dino_field.path,
                self.base_name.text().strip(),
                self.base_copy.isChecked(),
            )
        return self.import_checkpoint(
            self.ckpt_field.path,
            self.import_sd_field.path,
            self.import_dino_field.path,
            self.import_name.text().strip(),
        )

    def create_tiny(self, name: str) -> bool:
        if not self._check_name(name):
            return False
        return self._start(
            lambda progress, cancel: create_tiny_model(name, progress=progress, cancel=cancel), name
        )

    def create_base(self, sd_dir: str, dinov2_dir: str, name: str, copy_weights: bool = True) -> bool:
        if not (self._check_name(name) and self._check_folder(sd_dir, "Stable Diffusion")):
            return False
        if not self._check_folder(dinov2_dir, "DINOv2"):
            return False

        def job(progress: ProgressCallback, cancel: CancelToken) -> str:
            return create_base(sd_dir, dinov2_dir, name, copy_weights, progress=progress, cancel=cancel)

        return self._start(job, name)

    def import_checkpoint(self, checkpoint: str, sd_dir: str, dinov2_dir: str, name: str) -> bool:
        if not (self._check_name(name) and self._check_folder(checkpoint, "checkpoint")):
            return False
        if not (self._check_folder(sd_dir, "Stable Diffusion") and self._check_folder(dinov2_dir, "DINOv2")):
            return False

        def job(progress: ProgressCallback, cancel: CancelToken) -> str:
            return import_reference(
                checkpoint, sd_dir, dinov2_dir, name, True, progress=progress, cancel=cancel
            )

        return self._start(job, name)

    def _check_name(self, name: str) -> bool:
        if not _NAME_RE.match(name or ""):
            self._error("Use a name of letters, digits, '.', '_' and '-' (no spaces), up to 100 characters.")
            return False
        return True

    def _check_folder(self, path: str, what: str) -> bool:
        if not path:
            self._error(f"Choose the {what} folder.")
            return False
        if not Path(path).expanduser().is_dir():
            self._error(f"The {what} folder does not exist: {path}")
            return False
        return True

    def _start(self, job, name: str) -> bool:
        worker = JobWorker(job, name=f"model {name}", parent=self)
        worker.finished.connect(self._finished)
        worker.failed.connect(self._failed)
        worker.cancelled.connect(self._job_ended)
        if self.worker is not None:
            self.worker.deleteLater()
        self.worker = worker
        worker.start()
        self.create_button.setEnabled(False)
        self.tabs.setEnabled(False)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)
        self.status_label.setText(
            f"Creating “{name}”… (this may take a while; you can close this window and keep working)"
        )
        return True

    def _finished(self, name: str) -> None:
        self._job_ended()
        self.status_label.setText(
            f"Model “{name}” is ready: choose it in the Model list of the Segment panel."
        )
        self.modelCreated.emit(str(name))

    def _failed(self, message: str, _is_user_error: bool) -> None:
        self._job_ended()
        self.status_label.setText(f"Failed: {message}")
        self._error(message)

    def _job_ended(self) -> None:
        self.create_button.setEnabled(True)
        self.tabs.setEnabled(True)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setVisible(False)

    def _error(self, message: str) -> None:
        self.last_error = message
        error_box(self, "Model", message)

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Join a running creation (it cannot be interrupted half-way; the core writes atomically)."""
        return self.worker.shutdown(timeout_ms) if self.worker is not None else True
