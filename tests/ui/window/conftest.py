"""The main-window tests' shared fixture: a real window that never asks questions."""

from __future__ import annotations

import pytest

from sd_fsmis.core.session.state import Session
from sd_fsmis.ui.application import make_application
from sd_fsmis.ui.settings import AppSettings
from sd_fsmis.ui.window.main_window import MainWindow


@pytest.fixture
def make_window(qtbot, tmp_path):
    """``make_window(session=None, **options)``: a shown 1400 x 900 window that never asks questions."""
    make_application()

    def make(session: Session | None = None, **options) -> MainWindow:
        options.setdefault("settings", AppSettings())
        options.setdefault("probe_device", False)
        options.setdefault("save_settings", False)
        options.setdefault("autosave_folder", tmp_path / "autosave")
        window = MainWindow(session, **options)
        window.confirm = lambda *_: True
        window.labels_panel.confirm = lambda *_: True
        window.studies_panel.confirm = lambda *_: True
        qtbot.addWidget(window)
        window.resize(1400, 900)
        window.show()
        qtbot.waitExposed(window)
        return window

    return make
