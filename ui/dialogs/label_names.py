"""Name the labels of a mask: one row per label value, a combo of common structures or free text.

Shown when a label map is loaded without names ("Label 1", "Label 2"...): a name such as "right kidney"
is what the Segment panel, the comparison and a DICOM-SEG export (SNOMED CT codes,
:mod:`sd_fsmis.core.structures`) use. Each row says whether its name has a standard code.
"""

from __future__ import annotations

from collections.abc import Mapping

from PySide6 import QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.io.labelmap import Label, default_name
from sd_fsmis.core.structures import common_names, find_structure


def unnamed(labels: Mapping[int, Label], present: list[int]) -> list[int]:
    """The present label values still called by their default name ("Label 3")."""
    return [v for v in present if v in labels and labels[v].name == default_name(v)] + [
        v for v in present if v not in labels
    ]


class LabelNamesDialog(QtWidgets.QDialog):
    """Name the labels ``values`` of a mask; :meth:`names` gives ``{value: name}`` for the rows filled in."""

    def __init__(
        self,
        labels: Mapping[int, Label],
        values: list[int],
        mask_name: str = "",
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Name the labels")
        self.values = [int(v) for v in values]
        intro = QtWidgets.QLabel(
            f"The mask {('“' + mask_name + '” ') if mask_name else ''}has labels without names. Name them to "
            "segment and compare them by name, and to export them with standard codes (DICOM-SEG). Choose a "
            "common structure or type a name; leave a row empty to keep its number."
        )
        intro.setWordWrap(True)
        self.table = QtWidgets.QTableWidget(len(self.values), 3)
        self.table.setHorizontalHeaderLabels(["Label", "Name", "Standard code"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        self.combos: dict[int, QtWidgets.QComboBox] = {}
        self._codes: dict[int, QtWidgets.QTableWidgetItem] = {}
        for row, value in enumerate(self.values):
            label = labels.get(value)
            item = QtWidgets.QTableWidgetItem(str(value))
            if label is not None:
                pixmap = QtGui.QPixmap(14, 14)
                pixmap.fill(QtGui.QColor(*label.colour))
                item.setIcon(QtGui.QIcon(pixmap))
            item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.table.setItem(row, 0, item)
            combo = QtWidgets.QComboBox()
            combo.setEditable(True)
            combo.setInsertPolicy(QtWidgets.QComboBox.InsertPolicy.NoInsert)
            combo.addItems(common_names())
            combo.setCurrentIndex(-1)
            combo.lineEdit().setPlaceholderText(default_name(value))
            current = label.name if label is not None else ""
            if current and current != default_name(value):
                combo.setCurrentText(current)
            combo.currentTextChanged.connect(lambda _text, v=value: self._update_code(v))
            self.table.setCellWidget(row, 1, combo)
            self.combos[value] = combo
            code = QtWidgets.QTableWidgetItem()
            code.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.table.setItem(row, 2, code)
            self._codes[value] = code
            self._update_code(value)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QtWidgets.QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok).setText("Name them")
        buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Cancel).setText("Keep the numbers")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.table, 1)
        layout.addWidget(buttons)
        self.resize(560, min(520, 180 + 34 * len(self.values)))

    def _update_code(self, value: int) -> None:
        name = self.combos[value].currentText().strip()
        structure = find_structure(name) if name else None
        item = self._codes[value]
        if structure is None:
            item.setText("—" if not name else "none (exported as Tissue)")
            item.setToolTip("")
        else:
            side = f" + {structure.laterality}" if structure.laterality else ""
            item.setText(f"SNOMED CT {structure.type.value}{side}")
            item.setToolTip(f"{structure.type.meaning}{side} ({structure.category.meaning})")

    def set_name(self, value: int, name: str) -> None:
        """Fill in a row (what the person would choose or type)."""
        self.combos[int(value)].setCurrentText(name)

    def names(self) -> dict[int, str]:
        """``{value: name}`` of the rows given a name."""
        out = {}
        for value, combo in self.combos.items():
            text = combo.currentText().strip()
            if text:
                out[value] = text
        return out
