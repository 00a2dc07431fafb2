"""The main window's menus, toolbar and keyboard shortcuts (the keys are those of the help window).

:func:`build_actions` creates every QAction, connects it to a method of the main window and puts it in
the menus; the window keeps the returned :class:`WindowActions` to enable/disable and check them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from PySide6 import QtGui, QtWidgets

from sd_fsmis.ui.viewer.ortho_viewer import MAIN, ROW, SINGLE
from sd_fsmis.ui.viewer.paint_controller import BRUSH, ERASER, FILL
from sd_fsmis.ui.viewer.slice_view import NAVIGATE

if TYPE_CHECKING:
    from sd_fsmis.ui.window.main_window import MainWindow

Key = QtGui.QKeySequence
LAYOUT_NAMES = {MAIN: "One large + two small", ROW: "Three in a row", SINGLE: "Single view"}
TOOL_KEYS = {NAVIGATE: ("Navigate", "N"), BRUSH: ("Brush", "B"), ERASER: ("Eraser", "E"), FILL: ("Fill", "F")}
OPACITIES = (0.25, 0.5, 0.75, 1.0)


@dataclass
class WindowActions:
    """The actions the window enables, disables or checks."""

    file: dict[str, QtGui.QAction] = field(default_factory=dict)
    edit: dict[str, QtGui.QAction] = field(default_factory=dict)
    view: dict[str, QtGui.QAction] = field(default_factory=dict)
    tools: dict[str, QtGui.QAction] = field(default_factory=dict)
    layouts: dict[str, QtGui.QAction] = field(default_factory=dict)
    models: dict[str, QtGui.QAction] = field(default_factory=dict)
    recent_menu: QtWidgets.QMenu | None = None
    presets_menu: QtWidgets.QMenu | None = None


def _action(
    parent: QtWidgets.QWidget,
    text: str,
    slot,
    keys: tuple[str | Key | QtGui.QKeySequence.StandardKey, ...] = (),
    tip: str = "",
    checkable: bool = False,
) -> QtGui.QAction:
    action = QtGui.QAction(text, parent)
    if keys:
        # one sequence once: a platform's standard key equal to the explicit one (Quit is Ctrl+Q on Linux)
        # would make Qt see an ambiguous shortcut and trigger nothing
        sequences: dict[str, Key] = {}
        for k in keys:
            sequence = k if isinstance(k, Key) else Key(k)
            sequences.setdefault(sequence.toString(), sequence)
        action.setShortcuts(list(sequences.values()))
    if tip:
        action.setToolTip(tip)
        action.setStatusTip(tip)
    action.setCheckable(checkable)
    action.triggered.connect(lambda *_: slot())
    parent.addAction(action)  # the shortcut works whatever has the focus in the window
    return action


def build_actions(w: MainWindow) -> WindowActions:
    """Create the menus and the toolbar of ``w``."""
    a = WindowActions()
    menu = w.menuBar()

    # ---------------------------------------------------------------------------------------------- File
    m = menu.addMenu("&File")
    m.setToolTipsVisible(True)  # e.g. why "Export DICOM-SEG" is disabled
    a.file["open"] = _action(
        w,
        "&Open file…",
        w.open_file_dialog,
        (Key.StandardKey.Open,),
        "Open an image file: NIfTI (.nii, .nii.gz), a DICOM file, NRRD, MetaImage",
    )
    a.file["open_folder"] = _action(
        w,
        "Open DICOM &folder…",
        w.open_folder_dialog,
        ("Ctrl+Shift+O",),
        "Open a folder of DICOM files or a DICOMDIR",
    )
    a.file["demo"] = _action(
        w,
        "Open the &demo study",
        w.open_demo,
        (),
        "A generated abdominal MR study with liver, kidneys and spleen as reference",
    )
    a.recent_menu = m.addMenu("&Recent files")
    for name in ("open", "open_folder"):
        m.insertAction(a.recent_menu.menuAction(), a.file[name])
    m.addAction(a.file["demo"])
    m.addSeparator()
    a.file["load_mask"] = _action(
        w,
        "&Load label map…",
        w.files.load_dialog,
        (),
        "Open a mask (NIfTI…) on the active study as a new, editable mask",
    )
    a.file["load_reference"] = _action(
        w,
        "Load &reference mask…",
        lambda: w.files.load_dialog(True),
        (),
        "Open a ground-truth mask to compare the segmentations with (Dice)",
    )
    a.file["save_mask"] = _action(
        w,
        "&Save label map…",
        w.files.save_dialog,
        (Key.StandardKey.Save,),
        "Save the active mask as NIfTI, with the study's geometry",
    )
    a.file["export_seg"] = _action(
        w,
        "Export DICOM-&SEG…",
        w.files.export_dicom_seg_dialog,
        (),
        "Export the active mask as DICOM-SEG for a PACS",
    )
    a.file["screenshot"] = _action(
        w, "Screens&hot…", w.files.screenshot_dialog, (), "Save the views as a PNG image"
    )
    for name in ("load_mask", "load_reference", "save_mask", "export_seg"):
        m.addAction(a.file[name])
    m.addSeparator()
    m.addAction(a.file["screenshot"])
    m.addSeparator()
    a.file["quit"] = _action(w, "&Quit", w.close, (Key.StandardKey.Quit, "Ctrl+Q"))
    m.addAction(a.file["quit"])

    # ---------------------------------------------------------------------------------------------- Edit
    m = menu.addMenu("&Edit")
    a.edit["undo"] = _action(w, "&Undo", w.undo, ("Ctrl+Z",))
    a.edit["redo"] = _action(w, "&Redo", w.redo, ("Ctrl+Shift+Z", "Ctrl+Y"))
    a.edit["clear_slice"] = _action(
        w,
        "&Clear label on this slice",
        w.clear_label_on_slice,
        ("Shift+Del",),
        "Erase the active label on the slice shown in the large view",
    )
    a.edit["clear_label"] = _action(
        w, "Clear label &everywhere", w.clear_label_everywhere, (), "Erase the active label on every slice"
    )
    a.edit["cancel_stroke"] = _action(w, "Cancel stroke", w.paint.cancel_stroke, ("Esc",))
    for name in ("undo", "redo"):
        m.addAction(a.edit[name])
    m.addSeparator()
    m.addAction(a.edit["clear_slice"])
    m.addAction(a.edit["clear_label"])

    # --------------------------------------------------------------------------------------------- Tools
    m = menu.addMenu("&Tools")
    group = QtGui.QActionGroup(w)
    for tool, (text, key) in TOOL_KEYS.items():
        action = _action(w, text, partial(w.paint.set_tool, tool), (key,), checkable=True)
        group.addAction(action)
        m.addAction(action)
        a.tools[tool] = action
    m.addSeparator()
    a.edit["smaller"] = _action(w, "Smaller brush", partial(w.paint.grow, -1), ("[",))
    a.edit["larger"] = _action(w, "Larger brush", partial(w.paint.grow, 1), ("]",))
    m.addAction(a.edit["smaller"])
    m.addAction(a.edit["larger"])
    labels = m.addMenu("Select label")
    for n in range(1, 10):
        labels.addAction(_action(w, f"Label {n}", partial(w.labels_panel.select_label_number, n), (str(n),)))

    # ------------------------------------------------------------------------------------------- Segment
    m = menu.addMenu("&Segment")
    a.edit["add_support"] = _action(
        w,
        "Use this slice as &support",
        w.add_support_slice,
        ("S",),
        "Add the axial slice shown, with the active label painted, as a support example",
    )
    a.edit["segment"] = _action(
        w, "&Segment", w.segment, ("Ctrl+Return",), "Segment the structure on the whole active study"
    )
    a.edit["cancel_segment"] = _action(w, "&Cancel segmentation", w.cancel_segmentation, ())
    for name in ("add_support", "segment", "cancel_segment"):
        m.addAction(a.edit[name])
    m.addSeparator()
    a.edit["segment_all"] = _action(
        w, "Segment &all open studies…", w.segment_all_open_studies, (), "The support set on every open study"
    )
    a.edit["segment_folder"] = _action(
        w, "Segment a &folder of studies…", w.segment_folder_of_studies, (), "Masks of a folder of studies"
    )
    m.addAction(a.edit["segment_all"])
    m.addAction(a.edit["segment_folder"])

    # -------------------------------------------------------------------------------------------- Models
    m = menu.addMenu("&Models")
    a.models["fine_tune"] = _action(
        w,
        "&Fine-tune on my data…",
        w.open_fine_tune,
        (),
        "Train a model on your own annotated volumes (and the studies open with painted masks)",
    )
    a.models["manager"] = _action(
        w,
        "&Model manager…",
        w.open_model_manager,
        (),
        "The models installed: create, import, rename, remove, choose the default",
    )
    m.addAction(a.models["fine_tune"])
    m.addAction(a.models["manager"])

    # ---------------------------------------------------------------------------------------------- View
    m = menu.addMenu("&View")
    layouts = m.addMenu("&Layout")
    group = QtGui.QActionGroup(w)
    for mode, text in LAYOUT_NAMES.items():
        action = _action(w, text, partial(w.viewer.set_layout, mode), checkable=True)
        group.addAction(action)
        layouts.addAction(action)
        a.layouts[mode] = action
    layouts.addSeparator()
    for i, name in enumerate(("axial", "coronal", "sagittal"), start=1):
        # the viewer itself owns Alt+1..3 (a second shortcut on the same keys would be ambiguous)
        layouts.addAction(
            _action(w, f"{name.capitalize()} large\tAlt+{i}", partial(w.viewer.set_main_view, name))
        )
    a.presets_menu = m.addMenu("&Window/level preset")
    m.addSeparator()
    a.view["labels"] = _action(w, "Show &masks", w.toggle_labels, ("H",), checkable=True)
    a.view["contours"] = _action(w, "Other masks as &contours", w.toggle_contours, (), checkable=True)
    a.view["crosshair"] = _action(w, "Show &crosshair", w.toggle_crosshair, ("X",), checkable=True)
    for name in ("labels", "contours", "crosshair"):
        m.addAction(a.view[name])
    opacity = m.addMenu("Mask &opacity")
    for value in OPACITIES:
        opacity.addAction(_action(w, f"{round(100 * value)}%", partial(w.set_mask_opacity, value)))
    m.addSeparator()
    a.view["reset"] = _action(w, "&Reset zoom", w.viewer.reset_views, ("Ctrl+0",))
    m.addAction(a.view["reset"])
    a.view["docks"] = m.addMenu("&Panels")

    # ---------------------------------------------------------------------------------------------- Help
    m = menu.addMenu("&Help")
    m.addAction(_action(w, "&Keyboard shortcuts", w.show_help, ("F1",)))
    m.addAction(_action(w, "&About SD-FSMIS", w.show_about))
    return a


def build_toolbar(w: MainWindow, a: WindowActions) -> QtWidgets.QToolBar:
    """The main toolbar: open, save, undo/redo, support and segment (the tools are in their panel)."""
    bar = w.addToolBar("Main")
    bar.setObjectName("main toolbar")
    bar.setMovable(False)
    bar.setToolButtonStyle(QtGui.Qt.ToolButtonStyle.ToolButtonTextOnly)
    for action in (a.file["open"], a.file["open_folder"], a.file["save_mask"]):
        bar.addAction(action)
    bar.addSeparator()
    bar.addAction(a.edit["undo"])
    bar.addAction(a.edit["redo"])
    bar.addSeparator()
    bar.addAction(a.edit["add_support"])
    bar.addAction(a.edit["segment"])
    return bar
