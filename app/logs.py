"""Logging to a rotating file in the platformdirs log folder (and warnings to stderr for the CLI)."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from sd_fsmis.paths import log_dir

LOG_FILE_NAME = "sd-fsmis.log"
_handlers: list[logging.Handler] = []


def log_file() -> Path:
    return log_dir() / LOG_FILE_NAME


def setup_logging(verbose: bool = False) -> Path | None:
    """Send the ``sd_fsmis`` loggers to a rotating file (5 x 2 MB); return its path, or None if unwritable.

    Calling it again replaces the handlers it added before (the log folder may have changed).
    """
    root = logging.getLogger("sd_fsmis")
    for old in _handlers:
        root.removeHandler(old)
        old.close()
    _handlers.clear()
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
        _handlers.append(handler)
    except OSError:
        path = None  # a read-only home must not stop the application
    console = logging.StreamHandler()
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("sd-fsmis: %(levelname)s: %(message)s"))
    if not verbose:
        # Tracebacks go to the log file only; the CLI prints its own one-line message.
        console.addFilter(lambda record: not record.exc_info)
    root.addHandler(console)
    _handlers.append(console)
    return path
