"""Logging to a rotating file in the platformdirs log folder (and warnings to stderr for the CLI)."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from sd_fsmis.paths import log_dir

LOG_FILE_NAME = "sd-fsmis.log"
_configured = False


def log_file() -> Path:
    return log_dir() / LOG_FILE_NAME


def setup_logging(verbose: bool = False) -> Path | None:
    """Send the ``sd_fsmis`` loggers to a rotating file (5 x 2 MB); return its path, or None if unwritable."""
    global _configured
    root = logging.getLogger("sd_fsmis")
    if _configured:
        return log_file()
    root.setLevel(logging.DEBUG)
    path: Path | None = log_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=2_000_000, backupCount=5, encoding="utf-8"
        )
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s")
        )
        handler.setLevel(logging.DEBUG)
        root.addHandler(handler)
    except OSError:
        path = None  # a read-only home must not stop the application
    console = logging.StreamHandler()
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("sd-fsmis: %(levelname)s: %(message)s"))
    root.addHandler(console)
    _configured = True
    return path
