"""Atomic file writes: write to a temporary file beside the target, then rename it into place.

A crash, a cancelled job or a full disk leaves either the old file or the new one, never half of one, and
no folder that the failed write created. A failure is one line naming the target (never the temporary
file): an :class:`~sd_fsmis.core.io.destinations.OutputError`, which is also an ``OSError``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once at import (changing the umask is process-wide and not thread-safe).
_UMASK = _current_umask()


def _suffixes(path: Path) -> str:
    """The file's extension including double ones such as ``.nii.gz`` (writers choose by extension)."""
    name = path.name
    for double in (".nii.gz", ".tar.gz"):
        if name.lower().endswith(double):
            return name[-len(double) :]
    return path.suffix


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` if the block succeeds.

    The temporary file keeps the target's extension so that writers that pick a format by extension
    (SimpleITK, nibabel) write the right one. On any exception the temporary file is removed and the
    target is untouched.
    """
    from sd_fsmis.core.io.destinations import output_error

    target = Path(target)
    created = _missing_folders(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=f".tmp{_suffixes(target)}", dir=target.parent
        )
    except OSError as exc:
        _remove_empty(created)
        raise output_error(target, exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the file the mode a plain open() would (or the replaced file's mode).
    try:
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_UMASK
        os.chmod(tmp, mode)
    except OSError:
        pass
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _remove_empty(created)
        if isinstance(exc, OSError):
            raise output_error(target, exc) from exc
        raise


def _missing_folders(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed write created (deepest first), where they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``target`` atomically."""
    atomic_write_bytes(target, text.encode(encoding))
