"""Where outputs go: checked before the work starts, and never onto an input.

Every command and GUI action that writes a file checks its destination first (:func:`check_destination`,
:func:`check_destination_folder`): it must not be one of the inputs (the same file by its resolved path, a
link to it, a hard link, or any file of an input folder such as a DICOM series' folder), its folder must
exist and take a new file, and the disk must have room for it. A failure while writing is reported by
:func:`output_error` in one line with the user's own path (never a temporary file's name).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sd_fsmis.core.errors import UserError

#: Free space kept in reserve beyond the estimated size of what is written.
SPACE_MARGIN_BYTES = 16 * 2**20


class OutputError(UserError, OSError):
    """A destination that must not or cannot be written (an input, a missing or read-only folder, a full
    disk). Also an :class:`OSError`, so that code catching write failures catches it too. ``reason`` is
    set for a failure while writing (why, without a file name)."""

    reason: str = ""


def output_error(target: str | os.PathLike[str], exc: BaseException) -> OutputError:
    """A one-line :class:`OutputError` for a failure while writing ``target``, naming it (not a temp file).

    A write failure of a file written together with ``target`` (a mask's label table) is reported as a
    failure of ``target``: the file the user asked for.
    """
    if isinstance(exc, OutputError) and not exc.reason:
        return exc
    reason = exc.reason if isinstance(exc, OutputError) else write_failure_reason(exc)
    error = OutputError(f"{target}: cannot be written ({reason})")
    error.errno = getattr(exc, "errno", None)
    error.reason = reason
    return error


def write_failure_reason(exc: BaseException) -> str:
    """Why a write failed, in a few words (no file names: the caller names the user's path)."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC:
        return "no space left on the disk"
    if code == errno.EROFS:
        return "the disk is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ENOENT:
        return "the folder does not exist"
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(reason).split())


def same_path(a: str | os.PathLike[str] | None, b: str | os.PathLike[str] | None) -> bool:
    """Whether two paths name the same file or folder (links followed; by resolved path when one of them
    cannot be examined); an empty path is nobody's."""
    if not a or not b:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class Inputs:
    """The files an operation reads; :meth:`owner` says whether a destination would overwrite one of them.

    Files are compared by identity (device and inode: links and hard links included) and by resolved path;
    a folder stands for every file under it (a DICOM folder's slices).
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[int, int], str] = {}
        self._paths: dict[str, str] = {}
        self._folders: list[tuple[str, str]] = []

    def add(self, path: str | os.PathLike[str] | None, what: str) -> Inputs:
        """Protect ``path`` (a file, with a mask's label sidecar, or a folder and every file under it)."""
        if path is None or str(path) == "":
            return self
        p = Path(path)
        if p.is_dir():
            real = os.path.realpath(p)
            self._folders.append((real, what))
            for folder, _dirs, files in os.walk(real):
                for name in files:
                    self._add_file(Path(folder) / name, what)
            return self
        self._add_file(p, what)
        from sd_fsmis.core.io.labelmap import labels_sidecar_path

        if str(p).lower().endswith((".nii", ".nii.gz")):
            sidecar = labels_sidecar_path(p)
            if sidecar.exists():
                self._add_file(sidecar, f"the label table of {what}")
        return self

    def add_all(self, paths: Iterable[str | os.PathLike[str]], what: str) -> Inputs:
        for path in paths:
            self.add(path, what)
        return self

    def _add_file(self, p: Path, what: str) -> None:
        identity = _identity(p)
        if identity is not None:
            self._ids.setdefault(identity, what)
        self._paths.setdefault(os.path.realpath(p), what)

    def owner(self, target: str | os.PathLike[str]) -> str | None:
        """What input ``target`` is (its description), or None when writing it overwrites no input."""
        p = Path(target)
        identity = _identity(p)
        if identity is not None and identity in self._ids:
            return self._ids[identity]
        real = os.path.realpath(p)
        if real in self._paths:
            return self._paths[real]
        for folder, what in self._folders:
            if real == folder:
                return what
            if p.exists() and real.startswith(folder.rstrip(os.sep) + os.sep):
                return f"a file of {what}"
        return None

    def refuse(self, target: str | os.PathLike[str], option: str = "") -> None:
        """Raise :class:`OutputError` when writing ``target`` would overwrite an input."""
        what = self.owner(target)
        if what is not None:
            name = f"{option} {target}" if option else str(target)
            raise OutputError(f"{name} is {what}: refusing to write over an input; choose another file")


def check_destination(
    target: str | os.PathLike[str],
    inputs: Inputs | None = None,
    *,
    option: str = "",
    size_hint: int = 0,
    also: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Check, before any work, that ``target`` (and the files ``also`` written beside it) may be written.

    Raises :class:`OutputError` in one line when it is an input, a folder, or its folder is missing,
    not a folder, not writable, or lacks ``size_hint`` bytes of free space. Returns ``target`` as a Path.
    """
    p = Path(target)
    name = f"{option} {p}" if option else str(p)
    for path in (p, *(Path(a) for a in also)):
        if inputs is not None:
            inputs.refuse(path, option)
        if path.is_dir():
            raise OutputError(f"{name}: {path} is a folder; give a file name")
    _check_folder(p.parent if str(p.parent) else Path("."), name, size_hint)
    return p


def check_destination_folder(
    folder: str | os.PathLike[str], inputs: Inputs | None = None, *, option: str = "", size_hint: int = 0
) -> Path:
    """Check an output folder before the work: it exists and is writable, or it can be created in an
    existing, writable folder (it is not created here). It must not be an input file."""
    p = Path(folder)
    name = f"{option} {p}" if option else str(p)
    if inputs is not None and p.exists() and not p.is_dir():
        inputs.refuse(p, option)
    if p.exists():
        if not p.is_dir():
            raise OutputError(f"{name}: not a folder")
        _check_folder(p, name, size_hint)
    else:
        _check_folder(p.parent if str(p.parent) else Path("."), name, size_hint)
    return p


def _check_folder(folder: Path, name: str, size_hint: int) -> None:
    if not folder.exists():
        raise OutputError(f"{name}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"{name}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{name}: the folder {folder} is not writable (permission denied)")
    try:  # what os.access cannot tell: a read-only file system, quotas, ACLs
        fd, probe = tempfile.mkstemp(prefix=".sd-fsmis-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{name}: cannot write into {folder} ({write_failure_reason(exc)})") from None
    if size_hint > 0:
        free = None
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(folder).free
        if free is not None and free < size_hint + SPACE_MARGIN_BYTES:
            raise OutputError(
                f"{name}: not enough free space in {folder} ({_mb(free)} free, "
                f"about {_mb(size_hint + SPACE_MARGIN_BYTES)} needed)"
            )


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"
