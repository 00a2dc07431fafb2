"""Help ▸ Keyboard shortcuts (F1): every key and mouse gesture of the application in one table (Cellpose),
and how slices are numbered."""

from __future__ import annotations

from PySide6 import QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.slice_numbering import CONVENTION

#: (section, [(keys, what it does)]): the one list the help window shows; the actions use the same keys.
SHORTCUTS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Files",
        (
            ("Ctrl+O", "Open an image file (NIfTI, DICOM file, NRRD…)"),
            ("Ctrl+Shift+O", "Open a DICOM folder or DICOMDIR"),
            ("Drag and drop", "Open the files or folders dropped on the window"),
            ("Ctrl+S", "Save the active mask as NIfTI (with the study's geometry)"),
            ("Ctrl+Q", "Quit"),
        ),
    ),
    (
        "Painting",
        (
            ("N", "Navigate tool: click or drag moves the crosshair"),
            ("B", "Brush tool: paint the active label"),
            ("E", "Eraser tool"),
            ("F", "Fill tool: fill the enclosed region under the click"),
            ("Shift+drag", "Erase with the brush tool"),
            ("[  /  ]", "Smaller / larger brush"),
            ("1 … 9", "Select the n-th label of the active mask"),
            ("Esc", "Cancel the stroke being painted"),
            ("Ctrl+Z", "Undo (per mask, at least 50 steps)"),
            ("Ctrl+Shift+Z, Ctrl+Y", "Redo"),
            ("Shift+Del", "Clear the active label on the slice shown in the main view"),
            ("S", "Use the axial slice shown as a support example"),
            ("Ctrl+Return", "Segment the active study"),
        ),
    ),
    (
        "Viewing",
        (
            ("Mouse wheel", "Next / previous slice of the view under the mouse"),
            ("Up / Down", "Next / previous slice (view focused)"),
            ("Page Up / Page Down", "10 slices forward / back"),
            ("Home / End", "First / last slice"),
            ("Ctrl+wheel, Ctrl+right-drag", "Zoom"),
            ("Middle-drag", "Pan"),
            ("Right-drag", "Window/level (horizontal: width, vertical: level)"),
            ("Alt+1 / Alt+2 / Alt+3", "Axial / coronal / sagittal as the large view"),
            ("Alt+L", "Next layout (one large + two small, 1 × 3, single)"),
            ("Ctrl+0", "Reset zoom and pan"),
            ("H", "Hide / show all masks"),
            ("X", "Hide / show the crosshair"),
        ),
    ),
    ("Help", (("F1", "This list"),)),
)


class HelpDialog(QtWidgets.QDialog):
    """A non-modal window listing :data:`SHORTCUTS`."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        rows = sum(1 + len(items) for _, items in SHORTCUTS)
        self.table = QtWidgets.QTableWidget(rows, 2)
        self.table.setHorizontalHeaderLabels(["Keys", "Action"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        self.table.setShowGrid(False)
        bold = QtGui.QFont(self.font())
        bold.setBold(True)
        row = 0
        for section, items in SHORTCUTS:
            title = QtWidgets.QTableWidgetItem(section)
            title.setFont(bold)
            self.table.setItem(row, 0, title)
            self.table.setSpan(row, 0, 1, 2)
            row += 1
            for keys, what in items:
                key_item = QtWidgets.QTableWidgetItem(keys)
                key_item.setTextAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, 0, key_item)
                self.table.setItem(row, 1, QtWidgets.QTableWidgetItem(what))
                row += 1
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.resizeRowsToContents()
        close = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.close)
        #: the slice numbering convention (the same for DICOM and NIfTI: core.slice_numbering)
        self.numbering_label = QtWidgets.QLabel(f"<b>Slice numbers.</b> {CONVENTION}")
        self.numbering_label.setWordWrap(True)
        self.numbering_label.setTextFormat(Qt.TextFormat.RichText)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(self.numbering_label)
        layout.addWidget(close)
        self.resize(620, 720)

    def keys(self) -> list[str]:
        """Every key listed (for tests)."""
        return [keys for _, items in SHORTCUTS for keys, _ in items]
