"""The support panel: "Add this slice as support", and the list of support examples (K-shot) with thumbnails.

The main window tells the panel where the user is (:meth:`SupportPanel.set_context`: the active study and
layer, the current axial slice, the label being painted). Each support example is a
:class:`~sd_fsmis.core.session.support_set.SupportEntry` of the session's support set; the list follows the
set's events. Double-clicking an example emits ``goToSupport(study_id, slice_index)``.
"""

from __future__ import annotations

import contextlib

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt, Signal

from sd_fsmis.core.errors import UserError
from sd_fsmis.core.session.layers import LabelLayer
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.session.support_set import SupportEntry
from sd_fsmis.ui.colors import label_color
from sd_fsmis.ui.workers.job_worker import error_box, qt_alive

ICON_SIZE = 64
ENTRY_ROLE = Qt.ItemDataRole.UserRole
MASK_ALPHA = 0.35  # fill opacity of the structure inside its outline


def thumbnail_rgb(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """``[H, W, 3]`` uint8: the grey thumbnail with the mask tinted and its outline in full colour."""
    grey = np.asarray(image, dtype=np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        tint = np.asarray(colour, dtype=np.float32)
        rgb[mask] = rgb[mask] * (1.0 - MASK_ALPHA) + tint * MASK_ALPHA
        inner = mask.copy()  # 4-neighbour erosion; the border counts as outside
        inner[1:, :] &= mask[:-1, :]
        inner[:-1, :] &= mask[1:, :]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        inner[0, :] = inner[-1, :] = False
        inner[:, 0] = inner[:, -1] = False
        rgb[mask & ~inner] = tint
    return np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8))


def rgb_to_pixmap(rgb: np.ndarray) -> QtGui.QPixmap:
    """A QPixmap of an ``[H, W, 3]`` uint8 array (copied)."""
    h, w, _ = rgb.shape
    image = QtGui.QImage(rgb.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888)
    return QtGui.QPixmap.fromImage(image.copy())


class SupportPanel(QtWidgets.QWidget):
    """The support examples of the session, and the button that adds the current slice.

    Signals: ``goToSupport(study_id, slice_index)`` (double-click), ``supportAdded(SupportEntry)``.
    """

    goToSupport = Signal(str, int)
    supportAdded = Signal(object)

    def __init__(self, session: Session, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self._study: Study | None = None
        self._layer: LabelLayer | None = None
        self._slice: int | None = None
        self._label_value: int | None = None
        self.last_error = ""
        self._build()
        session.support_set.events.any.connect(self._on_support_event)
        session.events.study_removed.connect(self._on_study_removed)
        self.refresh()

    # ------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.add_button = QtWidgets.QPushButton("Add this slice as support")
        self.add_button.clicked.connect(self.add_current_slice)
        self.context_label = QtWidgets.QLabel()
        self.context_label.setWordWrap(True)
        self.context_label.setStyleSheet("color: palette(mid);")

        self.k_label = QtWidgets.QLabel()
        font = self.k_label.font()
        font.setBold(True)
        self.k_label.setFont(font)

        self.list = QtWidgets.QListWidget()
        self.list.setViewMode(QtWidgets.QListView.ViewMode.ListMode)
        self.list.setIconSize(QtCore.QSize(ICON_SIZE, ICON_SIZE))
        self.list.setSpacing(2)
        self.list.setUniformItemSizes(True)
        self.list.setWordWrap(True)
        self.list.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.ExtendedSelection)
        self.list.itemDoubleClicked.connect(self._double_clicked)
        self.list.itemSelectionChanged.connect(self._update_buttons)
        self.list.setToolTip("Double-click an example to show its slice")
        remove_shortcut = QtGui.QShortcut(QtGui.QKeySequence.StandardKey.Delete, self.list)
        remove_shortcut.setContext(Qt.ShortcutContext.WidgetShortcut)
        remove_shortcut.activated.connect(self.remove_selected)

        self.empty_label = QtWidgets.QLabel(
            "No support example yet. Paint the structure on a slice, then press “Add this slice as support”. "
            "One slice works; three (top, middle, bottom of the organ) work better."
        )
        self.empty_label.setWordWrap(True)
        self.empty_label.setStyleSheet("color: palette(mid);")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.stack = QtWidgets.QStackedWidget()  # the hint while there is no example, then the list
        self.stack.addWidget(self.empty_label)
        self.stack.addWidget(self.list)

        self.remove_button = QtWidgets.QPushButton("Remove")
        self.remove_button.setToolTip("Remove the selected support examples (Delete)")
        self.remove_button.clicked.connect(self.remove_selected)
        self.clear_button = QtWidgets.QPushButton("Clear all")
        self.clear_button.setToolTip("Remove every support example")
        self.clear_button.clicked.connect(self.clear)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.remove_button)
        buttons.addWidget(self.clear_button)
        buttons.addStretch(1)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.add_button)
        layout.addWidget(self.context_label)
        layout.addWidget(self.k_label)
        layout.addWidget(self.stack, 1)
        layout.addLayout(buttons)

    # ------------------------------------------------------------------------------------------ context
    def set_context(
        self,
        study: Study | None,
        layer: LabelLayer | None,
        slice_index: int | None,
        label_value: int | None = None,
    ) -> None:
        """Where the user is: the active study and layer, the axial slice shown, the label painted.

        ``label_value`` None follows the layer's selected label. The main window calls this whenever one
        of them changes; painting on the slice is followed by the panel itself.
        """
        if layer is not self._layer:
            if self._layer is not None:
                self._layer.events.any.disconnect(self._on_layer_event)
            if layer is not None:
                layer.events.any.connect(self._on_layer_event)
        self._study, self._layer = study, layer
        self._slice = None if slice_index is None else int(slice_index)
        self._label_value = label_value
        self._update_add_button()

    @property
    def label_value(self) -> int | None:
        if self._layer is None:
            return None
        return int(self._label_value if self._label_value is not None else self._layer.selected_label)

    def add_disabled_reason(self) -> str:
        """Why "Add this slice as support" cannot be used now ("" when it can)."""
        study, layer, z, value = self._study, self._layer, self._slice, self.label_value
        if study is None:
            return "Open a study first"
        if layer is None or value is None:
            return "Create or select a mask layer, then paint the structure"
        if z is None or not 0 <= z < layer.array.shape[0]:
            return "Show an axial slice of the study"
        name = layer.label_map.label_name(value)
        number = study.volume.slice_numbering().number(z)
        if not (layer.array[z] == value).any():
            return f"Paint {name} on slice {number} first"
        if self.session.support_set.find(study.id, layer.id, z, value) is not None:
            return f"Slice {number} is already a support example for {name}"
        return ""

    def _update_add_button(self) -> None:
        reason = self.add_disabled_reason()
        self.add_button.setEnabled(reason == "")
        if reason:
            self.add_button.setToolTip(reason)
            self.context_label.setText(reason)
        else:
            study, layer, z = self._study, self._layer, self._slice
            assert study is not None and layer is not None and z is not None and self.label_value is not None
            name = layer.label_map.label_name(self.label_value)
            numbering = study.volume.slice_numbering()
            number, where = numbering.number(z), numbering.position_text(z)
            self.add_button.setToolTip(f"Use {name} on slice {number} of “{layer.name}” as a support example")
            self.context_label.setText(f"Slice {number} ({where}): {name} in “{layer.name}”")

    def _on_layer_event(self, name: str, *args: object) -> None:
        if not qt_alive(self):
            return
        if name == "data":
            region = args[0] if args else None
            if region is not None and self._slice is not None:
                zs = region[0]
                if isinstance(zs, slice) and not (zs.start or 0) <= self._slice < (zs.stop or 1 << 30):
                    return
        if name in ("data", "selected_label", "labels", "name"):
            self._update_add_button()

    # ------------------------------------------------------------------------------------------ actions
    def add_current_slice(self) -> SupportEntry | None:
        """Add the current slice of the active layer, for its label, as a support example."""
        study, layer, z = self._study, self._layer, self._slice
        if study is None or layer is None or z is None:
            self._error(self.add_disabled_reason() or "Open a study first")
            return None
        try:
            entry = self.session.add_support(study, layer, z, self.label_value)
        except UserError as exc:
            self._error(str(exc))
            return None
        self.supportAdded.emit(entry)
        self.select_entry(entry.id)
        return entry

    def remove_selected(self) -> int:
        """Remove the selected examples; returns how many."""
        ids = [item.data(ENTRY_ROLE) for item in self.list.selectedItems()]
        for entry_id in ids:
            with contextlib.suppress(KeyError):
                self.session.support_set.remove(entry_id)
        return len(ids)

    def clear(self) -> None:
        self.session.support_set.clear()

    def select_entry(self, entry_id: str) -> None:
        for row in range(self.list.count()):
            item = self.list.item(row)
            item.setSelected(item.data(ENTRY_ROLE) == entry_id)
            if item.isSelected():
                self.list.scrollToItem(item)

    def _double_clicked(self, item: QtWidgets.QListWidgetItem) -> None:
        try:
            entry = self.session.support_set.get(item.data(ENTRY_ROLE))
        except KeyError:
            return
        self.goToSupport.emit(entry.study_id, entry.slice_index)

    # --------------------------------------------------------------------------------------------- list
    @property
    def k(self) -> int:
        """The number of support examples listed."""
        return self.list.count()

    def refresh(self) -> None:
        """Rebuild the list from the support set (keeps the selection)."""
        selected = {item.data(ENTRY_ROLE) for item in self.list.selectedItems()}
        self.list.clear()
        studies = self.session.studies_by_id()
        for entry in self.session.support_set:
            item = QtWidgets.QListWidgetItem(self._icon(entry, studies), self._text(entry, studies))
            item.setData(ENTRY_ROLE, entry.id)
            item.setToolTip(self._tooltip(entry, studies))
            self.list.addItem(item)
            item.setSelected(entry.id in selected)
        self._update_k()
        self._update_buttons()
        self._update_add_button()

    def _update_k(self) -> None:
        entries = list(self.session.support_set)
        k = len(entries)
        if k == 0:
            self.k_label.setText("K = 0")
        else:
            names = self.session.support_set.label_names()
            counts = ", ".join(f"{name} {sum(1 for e in entries if e.label_name == name)}" for name in names)
            label = f" ({counts})" if len(names) > 1 else f" · {names[0]}"
            self.k_label.setText(f"K = {k} ({k}-shot){label}")
        self.stack.setCurrentWidget(self.list if k else self.empty_label)

    def _update_buttons(self) -> None:
        self.remove_button.setEnabled(bool(self.list.selectedItems()))
        self.clear_button.setEnabled(self.list.count() > 0)

    def _icon(self, entry: SupportEntry, studies: dict[str, Study]) -> QtGui.QIcon:
        colour = label_color(entry.label_value)
        study = studies.get(entry.study_id)
        if study is not None:
            with contextlib.suppress(KeyError):
                colour = study.layer(entry.layer_id).label_map.label(entry.label_value).colour
        rgb = thumbnail_rgb(entry.thumbnail, entry.thumbnail_mask, tuple(colour)[:3])  # type: ignore[arg-type]
        pixmap = rgb_to_pixmap(rgb)
        icon = QtGui.QIcon(pixmap)
        icon.addPixmap(pixmap, QtGui.QIcon.Mode.Selected)  # not tinted by the selection colour
        return icon

    @staticmethod
    def _text(entry: SupportEntry, studies: dict[str, Study]) -> str:
        study = studies.get(entry.study_id)
        if study is None:
            return f"{entry.label_name}, slice index {entry.slice_index}\n(closed study)"
        number = study.volume.slice_numbering().number(entry.slice_index)
        return f"{entry.label_name}, slice {number}\n{study.name}"

    @staticmethod
    def _tooltip(entry: SupportEntry, studies: dict[str, Study]) -> str:
        study = studies.get(entry.study_id)
        if study is None:
            return entry.label_name
        try:
            layer_name = study.layer(entry.layer_id).name
        except KeyError:
            layer_name = "?"
        return (
            f"{entry.label_name} (label {entry.label_value}) on slice "
            f"{study.volume.slice_numbering().number(entry.slice_index)} of "
            f"{study.volume.shape[0]}\nstudy: {study.name}\nmask: {layer_name}\nDouble-click to show it"
        )

    # ------------------------------------------------------------------------------------------- events
    def _on_support_event(self, *_args: object) -> None:
        if qt_alive(self):
            self.refresh()

    def _on_study_removed(self, study: Study) -> None:
        if not qt_alive(self):
            return
        if study is self._study:
            self.set_context(None, None, None)

    def _error(self, message: str) -> None:
        self.last_error = message
        error_box(self, "Support example", message)
