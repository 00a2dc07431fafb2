"""Import every module the application loads lazily and name what is missing (``sd-fsmis --check-imports``).

A frozen bundle (PyInstaller) follows static imports only, so a module imported by name, a data file read
at import time or package metadata checked at import can be left out without the build noticing. This
check imports them all, as the application would, and for a failure walks the exception's chain down to
its root to say *what* is missing: a module (``ModuleNotFoundError.name``), a data file
(``FileNotFoundError.filename``, shown relative to the bundle) or a package's metadata
(``PackageNotFoundError``), and which import needed it. ``packaging/check-bundle.sh`` runs it first.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pkgutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: third-party modules the application imports lazily (inside functions, or through lazy packages)
LIBRARY_MODULES = (
    "torch",
    "safetensors.torch",
    "diffusers.models.autoencoders.autoencoder_kl",
    "diffusers.models.unets.unet_2d_condition",
    "transformers.models.dinov2.modeling_dinov2",
    "accelerate",
    "peft",
    "huggingface_hub",
    "SimpleITK",
    "pydicom",
    "pydicom.pixels",
    "highdicom",
    "highdicom.seg",
    "scipy.ndimage",
    "skimage.segmentation",
    "skimage.morphology",
    "skimage.measure",
    "skimage.filters",
    "skimage.transform",
    "platformdirs",
    "PySide6.QtWidgets",
    "PySide6.QtSvg",
    "pyqtgraph",
)

#: names resolved through a lazy package's ``__getattr__`` (the import happens on attribute access)
LAZY_ATTRIBUTES = {
    "diffusers": ("AutoencoderKL", "UNet2DConditionModel"),
    "transformers": ("AutoConfig", "Dinov2Model"),
}


@dataclass(frozen=True)
class ImportFailure:
    """One import that failed: what was imported, and the missing thing at the root of the error."""

    imported: str
    missing: str
    error: str

    def line(self) -> str:
        return f"missing {self.missing} (needed by {self.imported}; {self.error})"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _relative(path: str) -> str:
    """A path inside the bundle (or site-packages) shown from the package folder on."""
    roots = [getattr(sys, "_MEIPASS", None), *sys.path]
    for root in sorted((r for r in roots if r), key=len, reverse=True):
        try:
            if os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root):
                return os.path.relpath(path, root)
        except ValueError:  # another drive (Windows)
            continue
    return path


def root_cause(exc: BaseException) -> str:
    """What is missing, from the deepest exception of the chain that names it."""
    for link in reversed(_chain(exc)):
        if isinstance(link, ModuleNotFoundError) and link.name:
            return f"module {link.name!r}"
        if isinstance(link, importlib.metadata.PackageNotFoundError):
            return f"package metadata of {link.args[0] if link.args else link}"
        if isinstance(link, OSError) and link.filename:
            return f"data file {_relative(str(link.filename))!r}"
    deepest = _chain(exc)[-1]
    return f"something ({type(deepest).__name__}: {str(deepest).splitlines()[0] if str(deepest) else ''})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def check_imports(
    modules: Iterable[str], attributes: dict[str, Sequence[str]] | None = None
) -> tuple[int, list[ImportFailure]]:
    """Import ``modules`` and resolve ``attributes``; return (how many were checked, the failures)."""
    failures: list[ImportFailure] = []
    count = 0
    for name in modules:
        count += 1
        try:
            importlib.import_module(name)
        except Exception as exc:  # any import-time error is what this check reports
            failures.append(ImportFailure(name, root_cause(exc), _first_line(exc)))
    for package, names in (attributes or {}).items():
        for attribute in names:
            count += 1
            try:
                getattr(importlib.import_module(package), attribute)
            except Exception as exc:
                failures.append(ImportFailure(f"{package}.{attribute}", root_cause(exc), _first_line(exc)))
    return count, failures


def application_modules() -> list[str]:
    """Every module of the ``sd_fsmis`` package (the sub-commands and panels are imported by name).

    ``sd_fsmis.core`` and ``sd_fsmis.ui`` are walked on their own: in a development install they live in
    other folders than ``sd_fsmis`` (pyproject's package-dir), which ``pkgutil`` does not follow.
    """
    names: list[str] = []
    for top in ("sd_fsmis", "sd_fsmis.core", "sd_fsmis.ui"):
        names.append(top)
        try:
            package = importlib.import_module(top)
        except Exception:  # reported by check_imports
            continue
        # a sub-package that fails to import is listed too (onerror), so that check_imports reports it
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{top}.", onerror=names.append):
            if info.name.rsplit(".", 1)[-1] != "__main__":
                names.append(info.name)
    return list(dict.fromkeys(names))


def main() -> int:
    """Run the whole check; print one line per failure and a summary. Returns the exit code."""
    count, failures = check_imports(LIBRARY_MODULES, LAZY_ATTRIBUTES)
    own_count, own_failures = check_imports(application_modules())
    failures += own_failures
    for failure in failures:
        print(failure.line(), file=sys.stderr)
    total = count + own_count
    if failures:
        print(f"imports: {len(failures)} of {total} failed", file=sys.stderr)
        return 1
    print(f"imports: all {total} modules and names import")
    return 0
