"""The series chooser: a folder (or DICOMDIR) holds several series; the user picks the one(s) to open."""

from __future__ import annotations

from PySide6 import QtWidgets
from PySide6.QtCore import Qt

COLUMNS = ("Series", "Description", "Modality", "Size", "Spacing (mm)", "Files", "Warnings")


def _row(info: object) -> list[str]:
    """The table cells of one :class:`~sd_fsmis.core.io.listing.SeriesInfo`."""
    size = "×".join(str(s) for s in info.size)  # type: ignore[attr-defined]
    if getattr(info, "n_volumes", 1) > 1:
        size += f" ×{info.n_volumes} vol"  # type: ignore[attr-defined]
    spacing = "×".join(f"{s:.3g}" for s in info.spacing)  # type: ignore[attr-defined]
    notes = list(info.warnings)  # type: ignore[attr-defined]
    if info.error:  # type: ignore[attr-defined]
        notes.insert(0, f"cannot be loaded: {info.error}")  # type: ignore[attr-defined]
    number = info.series_number  # type: ignore[attr-defined]
    return [
        str(number) if number is not None else "",
        info.description or "(no description)",  # type: ignore[attr-defined]
        info.modality,  # type: ignore[attr-defined]
        size,
        spacing,
        str(info.n_files),  # type: ignore[attr-defined]
        "; ".join(notes),
    ]


def _voxels(info: object) -> int:
    x, y, z = info.size  # type: ignore[attr-defined]
    return int(x) * int(y) * int(z)


class SeriesDialog(QtWidgets.QDialog):
    """A table of the series found under a path; several may be selected (each opens as a study)."""

    def __init__(self, series: list, path: str = "", parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.series = list(series)
        self.setWindowTitle("Choose the series to open")
        intro = QtWidgets.QLabel(
            f"<b>{path}</b> holds {len(self.series)} series. Select the one(s) to open "
            "(double-click opens one)."
        )
        intro.setWordWrap(True)
        self.table = QtWidgets.QTableWidget(len(self.series), len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        for r, info in enumerate(self.series):
            for c, text in enumerate(_row(info)):
                item = QtWidgets.QTableWidgetItem(text)
                item.setToolTip(text if c != 1 else f"{text}\nuid {info.uid}\n{info.path}")
                if info.error:
                    item.setFlags(item.flags() & ~(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled))
                self.table.setItem(r, c, item)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QtWidgets.QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(False)
        self.table.doubleClicked.connect(self.accept)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Open | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.buttons)
        usable = [i for i, s in enumerate(self.series) if not s.error]
        if usable:  # preselect the largest loadable series (usually the one to segment)
            self.select_rows([max(usable, key=lambda i: _voxels(self.series[i]))])
        self._selection_changed()
        self.resize(900, 120 + 30 * min(len(self.series), 10))

    def select_rows(self, rows: list[int]) -> None:
        self.table.clearSelection()
        mode = QtWidgets.QAbstractItemView.SelectionMode
        self.table.setSelectionMode(mode.MultiSelection)
        for row in rows:
            self.table.selectRow(row)
        self.table.setSelectionMode(mode.ExtendedSelection)

    def selected_series(self) -> list:
        """The chosen series, in the table's order (those that cannot be loaded excluded)."""
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [self.series[r] for r in rows if not self.series[r].error]

    def _selection_changed(self) -> None:
        button = self.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Open)
        button.setEnabled(bool(self.selected_series()))


def choose_series(series: list, path: str, parent: QtWidgets.QWidget | None = None) -> list:
    """Show the chooser (modal); the chosen series, or an empty list when cancelled."""
    dialog = SeriesDialog(series, path, parent)
    if dialog.exec() != QtWidgets.QDialog.DialogCode.Accepted:
        return []
    return dialog.selected_series()
