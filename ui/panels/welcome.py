"""The page shown while no study is open: how to start (open, drop, the demo) and the recent files."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6 import QtWidgets
from PySide6.QtCore import Qt

if TYPE_CHECKING:
    from sd_fsmis.ui.window.main_window import MainWindow

MAX_SHOWN = 6


class WelcomePage(QtWidgets.QWidget):
    """Buttons to open a file, a DICOM folder or the demo; the recent files as links."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__()
        self.window_ = window
        title = QtWidgets.QLabel("<h1>SD-FSMIS</h1>")
        text = QtWidgets.QLabel(
            "Open a CT or MR study, paint the structure on one to three slices, add them as support "
            "examples, and press <b>Segment</b>: the whole volume is segmented in the background.<br>"
            "Drop DICOM folders or NIfTI files anywhere on this window."
        )
        text.setWordWrap(True)
        text.setMaximumWidth(560)
        buttons = QtWidgets.QHBoxLayout()
        for caption, slot in (
            ("Open file…", window.open_file_dialog),
            ("Open DICOM folder…", window.open_folder_dialog),
            ("Try the demo study", window.open_demo),
        ):
            button = QtWidgets.QPushButton(caption)
            button.setMinimumHeight(34)
            button.clicked.connect(lambda _=False, s=slot: s())
            buttons.addWidget(button)
        self.recent_title = QtWidgets.QLabel("<b>Recent</b>")
        self.recent = QtWidgets.QLabel()
        self.recent.setTextFormat(Qt.TextFormat.RichText)
        self.recent.linkActivated.connect(lambda path: window.open_paths([path]))
        column = QtWidgets.QVBoxLayout()
        column.addStretch(2)
        for widget in (title, text):
            column.addWidget(widget)
        column.addSpacing(12)
        column.addLayout(buttons)
        column.addSpacing(18)
        column.addWidget(self.recent_title)
        column.addWidget(self.recent)
        column.addStretch(3)
        row = QtWidgets.QHBoxLayout(self)
        row.addStretch(1)
        row.addLayout(column)
        row.addStretch(1)

    def set_recent(self, paths: list[str]) -> None:
        """Show the recent files (those still present) as links."""
        present = [p for p in paths if Path(p).exists()][:MAX_SHOWN]
        links = "<br>".join(
            f'<a href="{html.escape(p, quote=True)}">{html.escape(Path(p).name or p)}</a> '
            f"<small>{html.escape(p)}</small>"
            for p in present
        )
        self.recent.setText(links)
        self.recent_title.setVisible(bool(present))
        self.recent.setVisible(bool(present))
