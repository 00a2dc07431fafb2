"""Where the application keeps its files (platformdirs), overridable for tests and portable installs.

``SD_FSMIS_HOME``, when set, puts every folder under that one directory (data/, cache/, logs/, config/).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "sd-fsmis"


def _home_override() -> Path | None:
    value = os.environ.get("SD_FSMIS_HOME")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """User data: the model store, the session autosave, the Hugging Face cache."""
    home = _home_override()
    return home / "data" if home else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def config_dir() -> Path:
    """Settings."""
    home = _home_override()
    return home / "config" if home else Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    """Things that can be rebuilt: the generated demo study, supervoxel caches."""
    home = _home_override()
    return home / "cache" if home else Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def log_dir() -> Path:
    """Rotating log files."""
    home = _home_override()
    return home / "logs" if home else Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


def models_dir() -> Path:
    """The model store: one folder per model, addressed by its name. ``SD_FSMIS_MODELS`` overrides it."""
    value = os.environ.get("SD_FSMIS_MODELS")
    return Path(value).expanduser() if value else data_dir() / "models"


def huggingface_home() -> Path:
    return data_dir() / "huggingface"


def configure_huggingface_environment() -> None:
    """Point ``HF_HOME`` into our data folder (unless the user set it) and turn telemetry off.

    Must run before diffusers, transformers or huggingface_hub are imported: they read these variables once.
    Nothing is downloaded unless the user asks for a download explicitly.
    """
    os.environ.setdefault("HF_HOME", str(huggingface_home()))
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DISABLE_TELEMETRY", "1")
