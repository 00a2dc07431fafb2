"""The masks of the active study and the labels of the active mask.

Top: the study's label layers ("masks": the painted one, predictions, the reference), each with a visibility
check box; selecting one makes it the layer the tools paint on; its opacity slider below. Bottom: the labels
of that layer (visibility, name, colour swatch, value); selecting one makes it the label the brush paints;
double-click the name to rename it, click the swatch to change the colour. "Add" takes a name typed or
chosen from the common structures.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6 import QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.errors import UserError
from sd_fsmis.core.io.labelmap import Label
from sd_fsmis.core.session.layers import LabelLayer
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.ui.workers.job_worker import qt_alive

#: Names offered for a new label (the abdominal organs of the few-shot benchmarks first).
COMMON_STRUCTURES = (
    "liver",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "stomach",
    "pancreas",
    "aorta",
    "inferior vena cava",
    "esophagus",
    "duodenum",
    "bladder",
    "prostate",
    "rectum",
    "heart",
    "right lung",
    "left lung",
    "brain",
    "vertebra",
    "tumour",
    "lesion",
    "cyst",
)
_KIND_NOTE = {"manual": "", "prediction": "  · prediction", "reference": "  · reference"}
_VALUE_ROLE = Qt.ItemDataRole.UserRole


def swatch(colour: tuple[int, int, int], size: int = 14) -> QtGui.QIcon:
    """A square icon of ``colour``."""
    pixmap = QtGui.QPixmap(size, size)
    pixmap.fill(QtGui.QColor(*colour))
    painter = QtGui.QPainter(pixmap)
    painter.setPen(QtGui.QColor(40, 40, 40))
    painter.drawRect(0, 0, size - 1, size - 1)
    painter.end()
    return QtGui.QIcon(pixmap)


class LabelsPanel(QtWidgets.QWidget):
    """Masks (layers) of the active study and labels of the active mask."""

    def __init__(self, session: Session, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.study: Study | None = None
        self._filling = False
        #: asks a yes/no question (a test replaces it): ``(title, text) -> bool``
        self.confirm: Callable[[str, str], bool] = self._confirm_dialog

        self.layer_list = QtWidgets.QListWidget()
        self.layer_list.setToolTip("Masks of this study: tick to show; select the one to paint on")
        self.layer_list.setMinimumHeight(56)
        self.layer_list.currentRowChanged.connect(self._layer_selected)
        self.layer_list.itemChanged.connect(self._layer_item_changed)
        self.opacity = QtWidgets.QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setToolTip("Opacity of the selected mask")
        self.opacity.valueChanged.connect(self._opacity_changed)
        self.opacity_label = QtWidgets.QLabel("50%")
        self.opacity_label.setMinimumWidth(36)
        self.new_layer_button = _button("New mask")
        self.new_layer_button.setToolTip("A new empty mask on this study, with one label")
        self.new_layer_button.clicked.connect(self.new_layer)
        self.remove_layer_button = _button("Remove")
        self.remove_layer_button.setToolTip("Close the selected mask (saved files are not touched)")
        self.remove_layer_button.clicked.connect(self.remove_layer)

        self.label_list = QtWidgets.QTreeWidget()
        self.label_list.setHeaderLabels(["Label", "Colour", "Value"])
        self.label_list.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.label_list.setRootIsDecorated(False)
        self.label_list.setIndentation(0)
        self.label_list.setToolTip(
            "Labels of the selected mask: select the one to paint (keys 1-9); tick to show; "
            "double-click the name to rename, click the colour to change it"
        )
        self.label_list.header().setStretchLastSection(False)
        self.label_list.header().setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.Stretch)
        for column in (1, 2):
            self.label_list.header().setSectionResizeMode(
                column, QtWidgets.QHeaderView.ResizeMode.ResizeToContents
            )
        self.label_list.currentItemChanged.connect(self._label_selected)
        self.label_list.itemChanged.connect(self._label_item_changed)
        self.label_list.itemClicked.connect(self._label_clicked)
        self.label_list.itemDoubleClicked.connect(self._label_double_clicked)
        self.name_box = QtWidgets.QComboBox()
        self.name_box.setEditable(True)
        self.name_box.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.name_box.setMinimumContentsLength(8)
        self.name_box.addItems(COMMON_STRUCTURES)
        self.name_box.setCurrentText("")
        self.name_box.lineEdit().setPlaceholderText("label name")
        self.name_box.setToolTip("Name of a new label: choose a common structure or type one")
        self.name_box.lineEdit().returnPressed.connect(self.add_label)
        self.add_button = _button("Add")
        self.add_button.setToolTip("Add a label with this name to the selected mask and paint with it")
        self.add_button.clicked.connect(self.add_label)
        self.remove_label_button = _button("Remove")
        self.remove_label_button.setToolTip("Remove the selected label (and erase its voxels: undoable)")
        self.remove_label_button.clicked.connect(self.remove_label)

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(_caption("Masks"))
        layout.addWidget(self.layer_list, 2)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Opacity"))
        row.addWidget(self.opacity, 1)
        row.addWidget(self.opacity_label)
        layout.addLayout(row)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.new_layer_button)
        row.addWidget(self.remove_layer_button)
        layout.addLayout(row)
        layout.addWidget(_caption("Labels"))
        layout.addWidget(self.label_list, 3)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.name_box, 1)
        row.addWidget(self.add_button)
        row.addWidget(self.remove_label_button)
        layout.addLayout(row)

        session.events.active_study.connect(self.set_study)
        self.set_study(session.active_study)

    # ------------------------------------------------------------------------------------------ model
    @property
    def layer(self) -> LabelLayer | None:
        """The active layer of the shown study."""
        return self.study.active_layer if self.study is not None else None

    def set_study(self, study: Study | None) -> None:
        """Show the masks of ``study`` (the session's active study)."""
        if not qt_alive(self):
            return
        if self.study is not None:
            for signal in (self.study.events.layer_added, self.study.events.layer_removed):
                signal.disconnect(self._refresh)
            self.study.events.active_layer.disconnect(self._refresh)
            self.study.events.layer_changed.disconnect(self._layer_changed)
        self.study = study
        if study is not None:
            study.events.layer_added.connect(self._refresh)
            study.events.layer_removed.connect(self._refresh)
            study.events.active_layer.connect(self._refresh)
            study.events.layer_changed.connect(self._layer_changed)
        self._refresh()

    def _layer_changed(self, layer: LabelLayer, event_name: str, *args: object) -> None:
        if qt_alive(self) and event_name in ("name", "visible", "opacity", "labels", "selected_label"):
            self._refresh()

    def _refresh(self, *_: object) -> None:
        """Rebuild both lists from the study (a few items: cheap)."""
        if not qt_alive(self):
            return
        self._filling = True
        try:
            self.layer_list.clear()
            layers = self.study.layers if self.study is not None else ()
            for layer in layers:
                item = QtWidgets.QListWidgetItem(layer.name + _KIND_NOTE.get(layer.kind, ""))
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if layer.visible else Qt.CheckState.Unchecked)
                item.setToolTip(f"{layer.name} ({layer.kind}); tick to show")
                self.layer_list.addItem(item)
                if layer is self.layer:
                    self.layer_list.setCurrentItem(item)
            layer = self.layer
            self.opacity.setEnabled(layer is not None)
            self.opacity.setValue(round(100 * layer.opacity) if layer is not None else 50)
            self.opacity_label.setText(f"{self.opacity.value()}%")
            self.new_layer_button.setEnabled(self.study is not None)
            self.remove_layer_button.setEnabled(layer is not None)
            self.label_list.clear()
            if layer is not None:
                for value, label in sorted(layer.labels.items()):
                    item = QtWidgets.QTreeWidgetItem([label.name, "", str(value)])
                    item.setData(0, _VALUE_ROLE, value)
                    item.setIcon(1, swatch(label.colour))
                    item.setToolTip(1, f"RGB {label.colour}: click to change")
                    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable | Qt.ItemFlag.ItemIsUserCheckable)
                    item.setCheckState(0, Qt.CheckState.Checked if label.visible else Qt.CheckState.Unchecked)
                    self.label_list.addTopLevelItem(item)
                    if value == layer.selected_label:
                        self.label_list.setCurrentItem(item)
            for widget in (self.name_box, self.add_button, self.remove_label_button):
                widget.setEnabled(layer is not None)
        finally:
            self._filling = False

    # ----------------------------------------------------------------------------------------- layers
    def _layer_selected(self, row: int) -> None:
        if self._filling or self.study is None or not 0 <= row < len(self.study.layers):
            return
        self.study.set_active_layer(self.study.layers[row])

    def _layer_item_changed(self, item: QtWidgets.QListWidgetItem) -> None:
        if self._filling or self.study is None:
            return
        row = self.layer_list.row(item)
        if 0 <= row < len(self.study.layers):
            self.study.layers[row].visible = item.checkState() == Qt.CheckState.Checked

    def _opacity_changed(self, value: int) -> None:
        self.opacity_label.setText(f"{value}%")
        if not self._filling and self.layer is not None:
            self.layer.opacity = value / 100.0

    def new_layer(self) -> LabelLayer | None:
        """A new empty mask with one label (named from the name box, else "Label 1")."""
        if self.study is None:
            return None
        layer = self.study.add_layer("Segmentation")
        layer.add_label(self.name_box.currentText().strip() or "Label 1")
        return layer

    def remove_layer(self) -> None:
        layer = self.layer
        if self.study is None or layer is None:
            return
        if layer.modified and layer.array.any():
            text = f"The mask “{layer.name}” has changes not saved to a file. Remove it anyway?"
            if not self.confirm("Remove mask", text):
                return
        self.study.remove_layer(layer)

    # ----------------------------------------------------------------------------------------- labels
    def _label_value(self, item: QtWidgets.QTreeWidgetItem | None) -> int | None:
        return None if item is None else int(item.data(0, _VALUE_ROLE))

    def _label_selected(self, item: QtWidgets.QTreeWidgetItem | None, _previous: object = None) -> None:
        value = self._label_value(item)
        if not self._filling and value is not None and self.layer is not None:
            self.layer.selected_label = value

    def _label_item_changed(self, item: QtWidgets.QTreeWidgetItem, column: int) -> None:
        layer, value = self.layer, self._label_value(item)
        if self._filling or layer is None or value is None or value not in layer.labels:
            return
        old = layer.labels[value]
        name = item.text(0).strip() or old.name
        visible = item.checkState(0) == Qt.CheckState.Checked
        if (name, visible) != (old.name, old.visible):
            layer.set_label(Label(value, name, old.colour, visible))

    def _label_clicked(self, item: QtWidgets.QTreeWidgetItem, column: int) -> None:
        """A click on the colour swatch opens the colour chooser."""
        if column == 1:
            self.choose_colour(self._label_value(item))

    def _label_double_clicked(self, item: QtWidgets.QTreeWidgetItem, column: int) -> None:
        """Double-click the name to rename the label."""
        if column == 0:
            self.label_list.editItem(item, 0)

    def choose_colour(self, value: int | None = None, colour: QtGui.QColor | None = None) -> None:
        """Change a label's colour (QColorDialog unless ``colour`` is given)."""
        layer = self.layer
        value = layer.selected_label if (value is None and layer is not None) else value
        if layer is None or value not in layer.labels:
            return
        old = layer.labels[value]
        if colour is None:
            colour = QtWidgets.QColorDialog.getColor(QtGui.QColor(*old.colour), self, f"Colour of {old.name}")
        if colour.isValid():
            layer.set_label(
                Label(value, old.name, (colour.red(), colour.green(), colour.blue()), old.visible)
            )

    def add_label(self) -> Label | None:
        """Add the name in the name box as a new label of the active mask, and select it for painting."""
        layer = self.layer
        name = self.name_box.currentText().strip()
        if layer is None:
            return None
        if not name:
            self.name_box.setFocus()
            return None
        existing = layer.label_value(name)
        if existing is not None:
            layer.selected_label = existing
            return layer.labels[existing]
        label = layer.add_label(name)
        self.name_box.setCurrentText("")
        return label

    def rename_label(self, value: int, name: str) -> None:
        layer = self.layer
        if layer is None or value not in layer.labels or not name.strip():
            raise UserError("a label needs a name")
        old = layer.labels[value]
        layer.set_label(Label(value, name.strip(), old.colour, old.visible))

    def remove_label(self) -> None:
        layer = self.layer
        value = self._label_value(self.label_list.currentItem())
        if layer is None or value is None:
            return
        if layer.binary(value).any():
            text = (
                f"Erase every voxel of “{layer.labels[value].name}” and remove the label? (Ctrl+Z undoes it)"
            )
            if not self.confirm("Remove label", text):
                return
            layer.clear_label(value, name="remove label")
        layer.remove_label(value)
        if layer.selected_label == value and layer.labels:
            layer.selected_label = min(layer.labels)

    def select_label_number(self, n: int) -> None:
        """Keys 1-9: select the n-th label of the active mask (in the list's order)."""
        layer = self.layer
        if layer is None:
            return
        values = sorted(layer.labels)
        if 1 <= n <= len(values):
            layer.selected_label = values[n - 1]

    def _confirm_dialog(self, title: str, text: str) -> bool:
        answer = QtWidgets.QMessageBox.question(self, title, text)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes


def _caption(text: str) -> QtWidgets.QLabel:
    label = QtWidgets.QLabel(text)
    label.setStyleSheet("font-weight: bold;")
    return label


def _button(text: str) -> QtWidgets.QToolButton:
    """A compact text button (a dock column is narrow)."""
    button = QtWidgets.QToolButton()
    button.setText(text)
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    button.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
    return button
