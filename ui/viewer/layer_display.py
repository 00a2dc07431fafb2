"""Shows the active study's label layers in the OrthoViewer, and keeps them in step with their events.

The active layer (the one the tools paint on) is the viewer's label overlay, redrawn region by region from
``layer.events.data``. The other visible layers of the study are drawn beneath it in every view. Each kind
of layer has its own look (:data:`~sd_fsmis.ui.colors.LAYER_LOOKS`), active or not, so that the three read
apart whatever their colours: what the person paints is filled at its opacity, a prediction is a solid
contour, a reference a dashed contour (3D Slicer and ITK-SNAP show a reference as a contour too).
"Contours" off (``set_others_as_contours(False)``) fills the other predictions as well.
"""

from __future__ import annotations

from PySide6 import QtCore

from sd_fsmis.core.session.layers import LabelLayer
from sd_fsmis.core.session.study import Study
from sd_fsmis.ui.colors import LAYER_LOOKS
from sd_fsmis.ui.viewer.ortho_viewer import OrthoViewer
from sd_fsmis.ui.viewer.overlays import FILL, LabelOverlay
from sd_fsmis.ui.workers.job_worker import qt_alive

_EXTRA_Z = 9  # beneath the active layer's overlay (10)


def layer_look(layer: LabelLayer, contours: bool = True) -> str:
    """The overlay mode a layer is drawn with: its kind's look; a prediction filled when contours are off."""
    look = LAYER_LOOKS.get(layer.kind, FILL)
    return FILL if (look != "dashed" and not contours and layer.kind == "prediction") else look


def label_style(layer: LabelLayer) -> tuple[dict[int, tuple[int, int, int]], dict[int, bool]]:
    """``(colours, visibility)`` per label value of a layer, for an overlay."""
    colours = {v: label.colour for v, label in layer.labels.items()}
    visible = {v: label.visible for v, label in layer.labels.items()}
    return colours, visible


class LayerDisplay(QtCore.QObject):
    """The label overlays of the active study; ``set_study`` after the viewer got the study's volume."""

    def __init__(self, viewer: OrthoViewer, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._study: Study | None = None
        self._active: LabelLayer | None = None
        self._shown_array = None
        self._extra: dict[str, dict[str, LabelOverlay]] = {}  # layer id -> view name -> overlay
        self._labels_visible = True
        self._others_as_contours = True
        viewer.sliceChanged.connect(self._slice_changed)

    # ------------------------------------------------------------------------------------------ state
    @property
    def study(self) -> Study | None:
        return self._study

    @property
    def labels_visible(self) -> bool:
        return self._labels_visible

    def set_labels_visible(self, visible: bool) -> None:
        """Show or hide every label overlay (the H key)."""
        self._labels_visible = bool(visible)
        self._restyle_all()

    @property
    def others_as_contours(self) -> bool:
        return self._others_as_contours

    def set_others_as_contours(self, contours: bool) -> None:
        """Draw the layers other than the active one as contours (True) or filled at their opacity."""
        self._others_as_contours = bool(contours)
        self._restyle_all()

    def extra_overlays(self, layer: LabelLayer) -> dict[str, LabelOverlay]:
        """The overlays of a non-active layer, by view name (empty when it is not drawn)."""
        return dict(self._extra.get(layer.id, {}))

    # ------------------------------------------------------------------------------------------ study
    def set_study(self, study: Study | None) -> None:
        """Show ``study``'s layers (the viewer already shows its volume), or none."""
        if self._study is not None:
            events = self._study.events
            for signal, slot in (
                (events.layer_added, self._layers_changed),
                (events.layer_removed, self._layers_changed),
                (events.active_layer, self._layers_changed),
                (events.layer_changed, self._layer_event),
            ):
                signal.disconnect(slot)
        self._study = study
        if study is not None:
            study.events.layer_added.connect(self._layers_changed)
            study.events.layer_removed.connect(self._layers_changed)
            study.events.active_layer.connect(self._layers_changed)
            study.events.layer_changed.connect(self._layer_event)
        self._rebuild()

    def _layers_changed(self, *_: object) -> None:
        if qt_alive(self):
            self._rebuild()

    def _rebuild(self) -> None:
        """Re-create every overlay from the study's layers."""
        for layer_id in list(self._extra):
            self._drop_extra(layer_id)
        study = self._study
        self._active = study.active_layer if study is not None else None
        if self._active is None:
            self._shown_array = None
            self.viewer.set_labels(None)
        else:
            self._bind_active()
        if study is not None:
            for layer in study.layers:
                if layer is not self._active:
                    self._add_extra(layer)
        self._restyle_all()

    def _bind_active(self) -> None:
        layer = self._active
        assert layer is not None
        colours, visible = label_style(layer)
        self._shown_array = layer.array
        self.viewer.set_labels(layer.array, colours, layer.opacity, visible)

    # --------------------------------------------------------------------------------- extra layers
    def _add_extra(self, layer: LabelLayer) -> None:
        overlays = {}
        for name, view in self.viewer.views.items():
            overlay = LabelOverlay(z_value=_EXTRA_Z)
            overlay.item.setTransform(view.image_item.transform())
            view.view_box.addItem(overlay.item, ignoreBounds=True)
            overlays[name] = overlay
        self._extra[layer.id] = overlays
        self._show_planes(layer)

    def _drop_extra(self, layer_id: str) -> None:
        for name, overlay in self._extra.pop(layer_id, {}).items():
            self.viewer.views[name].view_box.removeItem(overlay.item)

    def _show_planes(self, layer: LabelLayer, view_name: str | None = None) -> None:
        for name, overlay in self._extra.get(layer.id, {}).items():
            if view_name is not None and name != view_name:
                continue
            view = self.viewer.views[name]
            overlay.set_plane(view.plane_of(layer.array) if view.slice_count > 0 else None)

    def _slice_changed(self, view_name: str, _index: int) -> None:
        if self._study is None:
            return
        for layer in self._study.layers:
            if layer.id in self._extra:
                self._show_planes(layer, view_name)

    # ----------------------------------------------------------------------------------------- events
    def _layer_event(self, layer: LabelLayer, event_name: str, *args: object) -> None:
        if not qt_alive(self):
            return
        if event_name == "data":
            region = args[0] if args else None
            if layer is self._active:
                if layer.array is not self._shown_array:  # widened to uint16: a new array
                    self._bind_active()
                    self._restyle(layer)
                else:
                    self.viewer.refresh_overlay(region)  # type: ignore[arg-type]
            elif layer.id in self._extra:
                self._show_planes(layer)
        elif event_name in ("labels", "opacity", "visible", "name"):
            self._restyle(layer)

    def _restyle_all(self) -> None:
        if self._study is None:
            self.viewer.set_labels_visible(self._labels_visible)
            return
        for layer in self._study.layers:
            self._restyle(layer)

    def _restyle(self, layer: LabelLayer) -> None:
        colours, visible = label_style(layer)
        shown = self._labels_visible and layer.visible
        if layer is self._active:
            self.viewer.set_label_style(
                colors=colours, opacity=layer.opacity, visible=visible, mode=layer_look(layer)
            )
            self.viewer.set_labels_visible(shown)
            return
        mode = layer_look(layer, self._others_as_contours)
        for overlay in self._extra.get(layer.id, {}).values():
            overlay.set_style(colors=colours, opacity=layer.opacity, visible=visible, mode=mode)
            # a contour is drawn opaque by the overlay: the layer's opacity fades it instead
            overlay.item.setOpacity(min(1.0, 2.5 * layer.opacity) if mode != FILL else 1.0)
            overlay.item.setVisible(shown)
