"""The open studies: switch the active one, close one, and read what the loader warned about."""

from __future__ import annotations

from collections.abc import Callable

from PySide6 import QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.ui.workers.job_worker import qt_alive

_WARNING = "⚠ "


def study_summary(study: Study) -> str:
    """One line under the name: modality, size and spacing (``MR · 256×256×48 · 1.5×1.5×6.0 mm``)."""
    meta = study.volume.metadata
    x, y, z = study.geometry.size
    sx, sy, sz = study.geometry.spacing
    parts = [meta.modality or meta.source_format.upper()]
    parts.append(f"{x}×{y}×{z}")
    parts.append(f"{sx:.3g}×{sy:.3g}×{sz:.3g} mm")
    return " · ".join(p for p in parts if p)


class StudiesPanel(QtWidgets.QWidget):
    """List of the session's studies; the active one is selected. Warnings of the selected one below."""

    def __init__(self, session: Session, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self._filling = False
        #: asks a yes/no question (a test replaces it): ``(title, text) -> bool``
        self.confirm: Callable[[str, str], bool] = self._confirm_dialog
        self.list = QtWidgets.QListWidget()
        self.list.setToolTip("Open studies: select one to show it (a support study and a query study…)")
        self.list.setMinimumHeight(48)
        self.list.setWordWrap(True)
        self.list.currentRowChanged.connect(self._selected)
        self.close_button = QtWidgets.QPushButton("Close study")
        self.close_button.setToolTip("Close the selected study (its unsaved masks are lost)")
        self.close_button.clicked.connect(self.close_current)
        self.warnings = QtWidgets.QLabel()
        self.warnings.setWordWrap(True)
        self.warnings.setStyleSheet("color: #b36b00;")
        self.warnings.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.warnings)
        row = QtWidgets.QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.close_button)
        layout.addLayout(row)
        for signal in (session.events.study_added, session.events.study_removed, session.events.active_study):
            signal.connect(self._refresh)
        self._refresh()

    def _refresh(self, *_: object) -> None:
        if not qt_alive(self):
            return
        self._filling = True
        try:
            self.list.clear()
            for study in self.session.studies:
                mark = _WARNING if study.volume.warnings else ""
                item = QtWidgets.QListWidgetItem(f"{mark}{study.name}\n{study_summary(study)}")
                tip = study.path
                if study.volume.warnings:
                    tip += "\n" + "\n".join(f"⚠ {w}" for w in study.volume.warnings)
                item.setToolTip(tip)
                self.list.addItem(item)
                if study is self.session.active_study:
                    self.list.setCurrentItem(item)
            active = self.session.active_study
            warnings = active.volume.warnings if active is not None else []
            self.warnings.setText("\n".join(f"⚠ {w}" for w in warnings))
            self.warnings.setVisible(bool(warnings))
            self.close_button.setEnabled(active is not None)
        finally:
            self._filling = False

    def _selected(self, row: int) -> None:
        studies = self.session.studies
        if not self._filling and 0 <= row < len(studies):
            self.session.set_active_study(studies[row])

    def close_current(self) -> None:
        """Close the active study, after a confirmation when one of its masks has unsaved changes."""
        study = self.session.active_study
        if study is None:
            return
        unsaved = [layer.name for layer in study.layers if layer.kind != "reference" and layer.modified]
        if unsaved:
            text = f"Close {study.name}? Its masks {', '.join(unsaved)} have changes not saved to a file."
            if not self.confirm("Close study", text):
                return
        self.session.remove_study(study)

    def _confirm_dialog(self, title: str, text: str) -> bool:
        answer = QtWidgets.QMessageBox.question(self, title, text)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes
