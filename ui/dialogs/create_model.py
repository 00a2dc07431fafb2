"""Create or import one model: a tiny test model, a base model (local or downloaded), a checkpoint.

Three pages, each also shown as its ``sd-fsmis models`` command:

1. A tiny test model with random weights (seconds on a CPU; for trying the application).
2. A base model from Stable Diffusion 1.5 + DINOv2: local folders chosen with a folder picker, or a download
   from the Hugging Face Hub. A download is planned first (bytes needed, free disk space; refused when it does
   not fit), shows its progress in bytes with the speed and the time left, can be cancelled, and resumes from
   the files already there next time.
3. A checkpoint of the SD-FSMIS reference implementation, imported.

Every step runs a core function in a :class:`~sd_fsmis.ui.workers.job_worker.JobWorker` (the model package,
torch and the network are used there, never in the GUI thread). The fine-tune wizard and the model manager
open this dialog; ``modelCreated(name)`` tells them which model was added to the store.

Over 500 lines: one dialog with its three pages (tiny, base, reference), which share its progress and Cancel;
the jobs it runs are :mod:`~sd_fsmis.ui.dialogs.model_jobs`.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from PySide6 import QtGui, QtWidgets
from PySide6.QtCore import Qt, Signal

from sd_fsmis.core.jobs import Progress, human_bytes
from sd_fsmis.core.model.download import (
    DEFAULT_DINOV2_REPO,
    DEFAULT_SD_REPO,
    DownloadPlan,
    space_margin,
)
from sd_fsmis.ui.dialogs.model_jobs import (
    BYTES,
    RESUME_NOTE,
    create_base,
    create_tiny_model,
    download_base,
    download_text,
    import_reference,
    looks_like_hub_id,
    new_model_name_problem,
    plan_hub_download,
)
from sd_fsmis.ui.workers.job_worker import JobWorker, error_box

#: page keys, in tab order
PAGES = ("tiny", "base", "reference")


def _quote(text: str) -> str:
    return shlex.quote(text) if text else "DIR"


# ---------------------------------------------------------------------------------------------- widgets
class FolderField(QtWidgets.QWidget):
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


def _note(html: str) -> QtWidgets.QLabel:
    label = QtWidgets.QLabel(html)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText)
    return label


class CreateModelDialog(QtWidgets.QDialog):
    """Creates or imports one model in the background. Signal ``modelCreated(name)``; ``created_name``.

    ``page``: "tiny", "base" or "reference" (the tab shown first). ``confirm(title, text) -> bool`` asks
    before a download starts and before a running download is stopped by closing; tests replace it.
    """

    modelCreated = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None, *, page: str = "base") -> None:
        super().__init__(parent)
        self.setWindowTitle("New model")
        self.setModal(False)
        self.worker: JobWorker | None = None
        #: the name of the last model created or imported here ("" before)
        self.created_name = ""
        #: the last message shown as an error (for tests and the status line)
        self.last_error = ""
        #: the last download plan (``DownloadPlan``) computed here
        self.last_plan: Any = None
        self.confirm: Callable[[str, str], bool] = self._confirm_dialog
        self._phase = ""  # "", "plan", "download", "create"
        self._pending: tuple[str, str, str] | None = None  # the download waiting for its plan
        self._rate_start: tuple[float, int] | None = None
        self._build()
        self.set_page(page)
        self._update_commands()
        self.resize(680, 560)

    # ------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        intro = _note(
            "A <b>model</b> is a folder of weights: Stable Diffusion 1.5 adapted to few-shot segmentation, "
            "with DINOv2 features. New models are added to the model store and offered in the "
            "<i>Model</i> chooser of the Segment panel."
        )
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(self._tiny_tab(), "Tiny test model")
        self.tabs.addTab(self._base_tab(), "Base model (SD 1.5 + DINOv2)")
        self.tabs.addTab(self._import_tab(), "Reference checkpoint")
        self.tabs.currentChanged.connect(lambda _i: self._update_commands())

        self.command_view = QtWidgets.QPlainTextEdit()
        self.command_view.setReadOnly(True)
        self.command_view.setMaximumHeight(56)
        self.command_view.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        copy = QtWidgets.QPushButton("Copy command")
        copy.clicked.connect(self.copy_command)
        command_row = QtWidgets.QHBoxLayout()
        command_row.addWidget(QtWidgets.QLabel("The same in a terminal:"))
        command_row.addStretch(1)
        command_row.addWidget(copy)

        self.progress_bar = QtWidgets.QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setVisible(False)
        self.status_label = QtWidgets.QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.create_button = QtWidgets.QPushButton("Create")
        self.create_button.setDefault(True)
        self.create_button.clicked.connect(self.start_current)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop the download (it resumes from the files already there next time)")
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button = QtWidgets.QPushButton("Close")
        self.close_button.setAutoDefault(False)
        self.close_button.clicked.connect(self.close)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.progress_bar, 1)
        buttons.addWidget(self.create_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.close_button)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.tabs, 1)
        layout.addLayout(command_row)
        layout.addWidget(self.command_view)
        layout.addWidget(self.status_label)
        layout.addLayout(buttons)

    def _tiny_tab(self) -> QtWidgets.QWidget:
        page = QtWidgets.QWidget()
        self.tiny_name = QtWidgets.QLineEdit("tiny-test")
        self.tiny_name.textChanged.connect(lambda _t: self._update_commands())
        form = QtWidgets.QFormLayout(page)
        form.addRow(
            _note(
                "A very small model with <b>random weights</b>, created in seconds on any computer. "
                "It runs the whole pipeline (to try the application, test a GPU, follow a tutorial) but does "
                "<b>not</b> segment well: it was never trained."
            )
        )
        form.addRow("Name:", self.tiny_name)
        return page

    def _base_tab(self) -> QtWidgets.QWidget:
        page = QtWidgets.QWidget()
        self.source_local = QtWidgets.QRadioButton("Local folders")
        self.source_hub = QtWidgets.QRadioButton("Download from the Hugging Face Hub")
        self.source_local.setChecked(True)
        source_row = QtWidgets.QHBoxLayout()
        source_row.addWidget(self.source_local)
        source_row.addWidget(self.source_hub)
        source_row.addStretch(1)

        self.sd_field = FolderField("Stable Diffusion 1.5 folder", "folder with unet/ and vae/")
        self.dino_field = FolderField("DINOv2 folder", "folder with config.json and model.safetensors")
        self.base_copy = QtWidgets.QCheckBox("Copy the VAE and DINOv2 weights into the model folder")
        self.base_copy.setChecked(True)
        local = QtWidgets.QWidget()
        local_form = QtWidgets.QFormLayout(local)
        local_form.setContentsMargins(0, 0, 0, 0)
        local_form.addRow("Stable Diffusion:", self.sd_field)
        local_form.addRow("DINOv2:", self.dino_field)
        local_form.addRow("", self.base_copy)

        self.sd_repo = QtWidgets.QLineEdit(DEFAULT_SD_REPO)
        self.dino_repo = QtWidgets.QLineEdit(DEFAULT_DINOV2_REPO)
        hub = QtWidgets.QWidget()
        hub_form = QtWidgets.QFormLayout(hub)
        hub_form.setContentsMargins(0, 0, 0, 0)
        hub_form.addRow("Stable Diffusion:", self.sd_repo)
        hub_form.addRow("DINOv2:", self.dino_repo)
        hub_form.addRow(
            _note(
                "Only the U-Net, VAE and DINOv2 weights are fetched (safetensors, about 4 GB), into the "
                "application's Hugging Face cache. The free disk space is checked first; a cancelled "
                "download resumes next time; once downloaded, everything works offline."
            )
        )
        self.source_stack = QtWidgets.QStackedWidget()
        self.source_stack.addWidget(local)
        self.source_stack.addWidget(hub)
        self.source_hub.toggled.connect(self._source_changed)

        self.base_name = QtWidgets.QLineEdit("sd15-base")
        for signal in (self.sd_field.changed, self.dino_field.changed):
            signal.connect(self._update_commands)
        for edit in (self.base_name, self.sd_repo, self.dino_repo):
            edit.textChanged.connect(lambda _t: self._update_commands())
        self.base_copy.toggled.connect(lambda _b: self._update_commands())

        layout = QtWidgets.QVBoxLayout(page)
        layout.addWidget(
            _note(
                "The method's starting point: Stable Diffusion 1.5 and DINOv2 after the paper's weight "
                "preprocessing. An untrained base model still needs fine-tuning (or an imported "
                "checkpoint) to segment well."
            )
        )
        layout.addLayout(source_row)
        layout.addWidget(self.source_stack)
        name_form = QtWidgets.QFormLayout()
        name_form.addRow("Name:", self.base_name)
        layout.addLayout(name_form)
        layout.addStretch(1)
        return page

    def _import_tab(self) -> QtWidgets.QWidget:
        page = QtWidgets.QWidget()
        self.ckpt_field = FolderField(
            "Reference checkpoint folder", "checkpoint-N/ (with unet/, image_projector/)"
        )
        self.import_sd_field = FolderField("Stable Diffusion 1.5 folder", "folder with vae/ (for the VAE)")
        self.import_dino_field = FolderField("DINOv2 folder", "folder with config.json and model.safetensors")
        self.import_name = QtWidgets.QLineEdit("sd-fsmis-reference")
        for signal in (self.ckpt_field.changed, self.import_sd_field.changed, self.import_dino_field.changed):
            signal.connect(self._update_commands)
        self.import_name.textChanged.connect(lambda _t: self._update_commands())
        form = QtWidgets.QFormLayout(page)
        form.addRow(
            _note(
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

    def set_page(self, page: str) -> None:
        """Show the page "tiny", "base" or "reference"."""
        if page not in PAGES:
            raise ValueError(f"unknown page {page!r} (one of {', '.join(PAGES)})")
        self.tabs.setCurrentIndex(PAGES.index(page))

    @property
    def page(self) -> str:
        return PAGES[self.tabs.currentIndex()]

    def set_hub_source(self, hub: bool) -> None:
        """Base model from the Hub (True) or from local folders (False)."""
        (self.source_hub if hub else self.source_local).setChecked(True)

    def _source_changed(self, hub: bool) -> None:
        self.source_stack.setCurrentIndex(1 if hub else 0)
        self._update_commands()

    # ---------------------------------------------------------------------------------------- commands
    def command(self) -> str:
        """The ``sd-fsmis`` command equivalent to the current page."""
        page = self.page
        if page == "tiny":
            return f"sd-fsmis models create --preset tiny --name {_quote(self.tiny_name.text().strip())}"
        if page == "base":
            name = _quote(self.base_name.text().strip())
            if self.source_hub.isChecked():
                return (
                    f"sd-fsmis models create --sd {_quote(self.sd_repo.text().strip())}"
                    f" --dinov2 {_quote(self.dino_repo.text().strip())} --name {name}"
                )
            weights = "" if self.base_copy.isChecked() else " --reference-weights"
            return (
                f"sd-fsmis models create --sd {_quote(self.sd_field.path)}"
                f" --dinov2 {_quote(self.dino_field.path)} --name {name}{weights}"
            )
        return (
            f"sd-fsmis models import-reference {_quote(self.ckpt_field.path)} --sd "
            f"{_quote(self.import_sd_field.path)} --dinov2 {_quote(self.import_dino_field.path)} "
            f"--name {_quote(self.import_name.text().strip())}"
        )

    def _update_commands(self) -> None:
        self.command_view.setPlainText(self.command())
        page = self.page
        if page == "reference":
            text = "Import"
        elif page == "base" and self.source_hub.isChecked():
            text = "Download and create"
        else:
            text = "Create"
        self.create_button.setText(text)

    def copy_command(self) -> None:
        QtWidgets.QApplication.clipboard().setText(self.command())
        self.status_label.setText("Command copied to the clipboard.")

    # -------------------------------------------------------------------------------------------- jobs
    def is_running(self) -> bool:
        """True while a plan, download or creation runs."""
        return self.worker is not None and self.worker.is_running()

    @property
    def phase(self) -> str:
        """ "plan", "download" or "create" while a job runs; "" when idle."""
        return self._phase if self.is_running() else ""

    def start_current(self) -> bool:
        """Create (or import) the current page's model in the background; False if the form is invalid."""
        if self.is_running():
            return False
        page = self.page
        if page == "tiny":
            return self.create_tiny(self.tiny_name.text().strip())
        if page == "base":
            name = self.base_name.text().strip()
            if self.source_hub.isChecked():
                return self.download_base(self.sd_repo.text().strip(), self.dino_repo.text().strip(), name)
            return self.create_base(
                self.sd_field.path, self.dino_field.path, name, self.base_copy.isChecked()
            )
        return self.import_checkpoint(
            self.ckpt_field.path,
            self.import_sd_field.path,
            self.import_dino_field.path,
            self.import_name.text().strip(),
        )

    def create_tiny(self, name: str) -> bool:
        """Start creating the tiny random model ``name``; False (with a message) if the name is not usable."""
        if self.is_running() or not self._check_name(name):
            return False
        return self._start(partial(create_tiny_model, name), name, "create", f"Creating “{name}”…")

    def create_base(self, sd_dir: str, dinov2_dir: str, name: str, copy_weights: bool = True) -> bool:
        """Start writing a base model from local folders; False (with a message) if the form is not usable."""
        if self.is_running() or not self._check_name(name):
            return False
        if not (self._check_folder(sd_dir, "Stable Diffusion") and self._check_folder(dinov2_dir, "DINOv2")):
            return False
        job = partial(create_base, sd_dir, dinov2_dir, name, copy_weights)
        return self._start(job, name, "create", f"Creating “{name}”… (this may take a minute)")

    def download_base(self, sd_repo: str, dinov2_repo: str, name: str) -> bool:
        """Plan the Hub download in the background; the download starts once the plan fits and is accepted."""
        if self.is_running() or not self._check_name(name):
            return False
        for repo, what in ((sd_repo, "Stable Diffusion"), (dinov2_repo, "DINOv2")):
            if not looks_like_hub_id(repo):
                self._error(f"The {what} repository must be a Hub id like owner/name, not “{repo}”.")
                return False
        self._pending = (sd_repo, dinov2_repo, name)
        job = partial(plan_hub_download, sd_repo, dinov2_repo)
        return self._start(job, name, "plan", "Checking the download size and the free disk space…")

    def import_checkpoint(self, checkpoint: str, sd_dir: str, dinov2_dir: str, name: str) -> bool:
        """Start importing a reference checkpoint; False (with a message) if the form is not usable."""
        if self.is_running() or not self._check_name(name):
            return False
        if not self._check_folder(checkpoint, "checkpoint"):
            return False
        if not (self._check_folder(sd_dir, "Stable Diffusion") and self._check_folder(dinov2_dir, "DINOv2")):
            return False
        job = partial(import_reference, checkpoint, sd_dir, dinov2_dir, name, True)
        return self._start(job, name, "create", f"Importing the checkpoint as “{name}”…")

    def cancel(self) -> None:
        """Stop the plan or the download (the creation itself, once started, finishes)."""
        if self.is_running() and self._phase in ("plan", "download"):
            self.worker.cancel()
            self.cancel_button.setEnabled(False)
            self.status_label.setText("Cancelling…")

    def _check_name(self, name: str) -> bool:
        problem = new_model_name_problem(name)
        if problem:
            self._error(problem)
        return not problem

    def _check_folder(self, path: str, what: str) -> bool:
        if not path:
            self._error(f"Choose the {what} folder.")
            return False
        if not Path(path).expanduser().is_dir():
            self._error(f"The {what} folder does not exist: {path}")
            return False
        return True

    def _start(self, job: Callable[..., Any], name: str, phase: str, status: str) -> bool:
        worker = JobWorker(job, name=f"model {name}", parent=self)
        worker.progress.connect(self._progress)
        worker.finished.connect(self._finished)
        worker.failed.connect(self._failed)
        worker.cancelled.connect(self._cancelled)
        if self.worker is not None:
            self.worker.deleteLater()
        self.worker = worker
        self._phase = phase
        self._rate_start = None
        self.last_error = ""
        worker.start()
        self.create_button.setEnabled(False)
        self.tabs.setEnabled(False)
        self.cancel_button.setEnabled(phase in ("plan", "download"))
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setVisible(True)
        self.status_label.setText(status)
        return True

    def _progress(self, progress: Progress) -> None:
        if progress.extra.get("unit") == BYTES:
            now = time.monotonic()
            if self._rate_start is None:
                self._rate_start = (now, progress.done)
            t0, d0 = self._rate_start
            rate = (progress.done - d0) / (now - t0) if now - t0 >= 0.5 else None
            if progress.total > 0:
                self.progress_bar.setRange(0, 1000)
                self.progress_bar.setValue(int(1000 * progress.fraction))
            if progress.total > 0 and progress.done >= progress.total:
                self.status_label.setText("Downloaded. Writing the model… (this may take a minute)")
                self.progress_bar.setRange(0, 0)
            else:
                self.status_label.setText(
                    f"Downloading: {download_text(progress.done, progress.total, rate)}"
                )
            return
        if self._phase == "create" and progress.message:
            self.status_label.setText(f"{progress.message[:1].upper()}{progress.message[1:]}…")

    def _finished(self, result: Any) -> None:
        phase = self._phase
        self._job_ended()
        if phase == "plan":
            self._plan_ready(result)
            return
        name = str(result)
        self.created_name = name
        self.status_label.setText(
            f"Model “{name}” is ready: choose it in the Model list of the Segment panel."
        )
        self.modelCreated.emit(name)

    def _plan_ready(self, plan: DownloadPlan) -> None:
        """Refuse a download that does not fit, ask before one that does, then start it."""
        self.last_plan = plan
        pending, self._pending = self._pending, None
        if pending is None:
            return
        needed, free = plan.needed_bytes, plan.free_bytes
        if not plan.fits:
            self.status_label.setText("Download not started: not enough disk space.")
            self._error(
                f"Not enough disk space: the download needs {human_bytes(needed)} "
                f"(+{human_bytes(space_margin(needed))} margin) and {human_bytes(free)} are free on "
                f"{plan.cache_dir}. Free some space, or set HF_HOME to another disk."
            )
            return
        if needed > 0:
            cached = f" ({human_bytes(plan.cached_bytes)} are there already)" if plan.cached_bytes else ""
            question = (
                f"Download {human_bytes(needed)} from the Hugging Face Hub{cached}? "
                f"{human_bytes(free)} are free on that disk."
            )
            if not self.confirm("Download", question):
                self.status_label.setText("Download not started.")
                return
            status = f"Downloading {human_bytes(needed)}…"
        else:
            status = "Everything is downloaded already. Writing the model… (this may take a minute)"
        sd_repo, dinov2_repo, name = pending
        self._start(partial(download_base, sd_repo, dinov2_repo, name), name, "download", status)

    def _failed(self, message: str, _is_user_error: bool) -> None:
        self._pending = None
        self._job_ended()
        self.status_label.setText(f"Failed: {message}")
        self._error(message)

    def _cancelled(self) -> None:
        phase, self._pending = self._phase, None
        self._job_ended()
        if phase == "download":
            self.status_label.setText(f"Download cancelled, no model was created. {RESUME_NOTE}")
        else:
            self.status_label.setText("Cancelled, no model was created.")

    def _job_ended(self) -> None:
        self._phase = ""
        self.create_button.setEnabled(True)
        self.tabs.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setVisible(False)

    def _error(self, message: str) -> None:
        self.last_error = message
        error_box(self, "Model", message)

    def _confirm_dialog(self, title: str, text: str) -> bool:
        answer = QtWidgets.QMessageBox.question(self, title, text)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    # ----------------------------------------------------------------------------------------- closing
    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        """A running download is stopped (after asking); a creation finishes in the background."""
        if self.is_running() and self._phase in ("plan", "download"):
            what = "download" if self._phase == "download" else "preparation of the download"
            if not self.confirm("Stop the download", f"Stop the {what}? {RESUME_NOTE}"):
                event.ignore()
                return
            self.cancel()
        event.accept()

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Cancel a download and join the job (a model being written finishes: the core writes atomically)."""
        return self.worker.shutdown(timeout_ms) if self.worker is not None else True
