"""Start-up of the desktop application.

Until the full viewer lands (GUI issue), the window shows what the application is and which commands work.
"""

from __future__ import annotations

import sys

from sd_fsmis import __version__


def run_application(paths: list[str] | None = None, demo: bool = False, self_test: bool = False) -> int:
    """Create the QApplication and the main window; return the exit code."""
    from PySide6 import QtWidgets

    from sd_fsmis.ui.pyside_fixes import protect_singletons

    protect_singletons()
    import pyqtgraph as pg

    pg.setConfigOptions(imageAxisOrder="row-major")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("SD-FSMIS")
    app.setApplicationVersion(__version__)
    window = QtWidgets.QMainWindow()
    window.setWindowTitle(f"SD-FSMIS {__version__}")
    label = QtWidgets.QLabel(
        "<h2>SD-FSMIS desktop</h2>"
        "<p>The viewer and painting tools are not built yet.</p>"
        "<p>Headless commands work now: <code>sd-fsmis info</code>, <code>sd-fsmis dice</code>, "
        "<code>sd-fsmis segment</code>, <code>sd-fsmis models</code>.</p>"
    )
    label.setMargin(24)
    window.setCentralWidget(label)
    window.resize(720, 420)
    window.show()
    if self_test:
        app.processEvents()
        window.close()
        return 0
    return app.exec()
