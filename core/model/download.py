"""Downloading Stable Diffusion 1.5 and DINOv2 from the Hugging Face Hub, as a job with a disk-space check.

Files go into the Hugging Face cache (``HF_HOME``, which :mod:`sd_fsmis` points into the app's data folder),
so a model created later, or by another program, finds them there. :func:`plan_download` asks the Hub what
the repo holds (file sizes, without downloading) and the cache what is already there;
:func:`download_repo` checks the free disk space for what is missing before the first byte is fetched, then
downloads file by file with ``hf_hub_download`` and reports progress in bytes.

Cancelling: the job's token is checked on every chunk the download reports (the HTTP path; the Xet path may
only notice at the end of the file) and between files. Files that were completed stay in the cache, so a
later call fetches only what is still missing; the file being downloaded when cancelled starts over (the
installed ``huggingface_hub`` deletes its partial download on failure).

Offline (or the Hub unreachable), a repo that is complete in the cache is used from there.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.std import tqdm as _std_tqdm

from sd_fsmis.core.errors import JobCancelled, ModelError
from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback, human_bytes

log = logging.getLogger(__name__)

DEFAULT_SD_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_DINOV2_REPO = "facebook/dinov2-base"
#: what to fetch of a Stable Diffusion repo: the U-Net and VAE configs and (non-variant) safetensors
SD_ALLOW_PATTERNS = [
    f"{sub}/{name}"
    for sub in ("unet", "vae")
    for name in (
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model-*-of-*.safetensors",
    )
]
#: only the VAE of a Stable Diffusion repo (importing a reference checkpoint: its U-Net replaces SD's)
SD_VAE_ALLOW_PATTERNS = [p for p in SD_ALLOW_PATTERNS if p.startswith("vae/")]
DINOV2_ALLOW_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
]
#: free space kept beyond the bytes to download: 5 % of them, at least this many bytes
MIN_SPACE_MARGIN = 256 * 1024**2
#: at most this many progress reports per second while bytes arrive
REPORTS_PER_SECOND = 10


def space_margin(needed_bytes: int) -> int:
    """Bytes to keep free beyond ``needed_bytes`` (0 when nothing is needed)."""
    return 0 if needed_bytes <= 0 else max(MIN_SPACE_MARGIN, needed_bytes // 20)


@dataclass
class DownloadPlan:
    """What downloading ``repo_id`` means on this machine now."""

    repo_id: str
    #: the commit the Hub resolved the revision to (None: unknown)
    revision: str | None
    #: (path in the repo, size in bytes) of every file to fetch
    files: list[tuple[str, int]]
    total_bytes: int
    #: bytes already complete in the cache
    cached_bytes: int
    needed_bytes: int
    #: free bytes on the disk of the cache
    free_bytes: int
    #: the Hugging Face cache folder
    cache_dir: str = ""
    #: paths of ``files`` already complete in the cache
    cached_files: list[str] = field(default_factory=list)
    #: the revision asked for (None: the default branch)
    requested_revision: str | None = None

    @property
    def fits(self) -> bool:
        """True when the missing files fit on the disk with the safety margin."""
        return self.free_bytes >= self.needed_bytes + space_margin(self.needed_bytes)

    def summary(self) -> str:
        """``facebook/dinov2-base: 4 files, 346.4 MB (0 B in the cache), 12.1 GB free``."""
        return (
            f"{self.repo_id}: {len(self.files)} files, {human_bytes(self.total_bytes)} "
            f"({human_bytes(self.cached_bytes)} in the cache), {human_bytes(self.free_bytes)} free"
        )


# -- helpers ------------------------------------------------------------------------------------------------
def _hub_cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes on the disk holding ``path`` (or its nearest existing parent)."""
    folder = Path(path).expanduser().absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return int(shutil.disk_usage(folder).free)


def matches(path: str, allow_patterns: list[str]) -> bool:
    """True when ``path`` matches one of the patterns (``fnmatch``, as ``huggingface_hub`` filters)."""
    patterns = [p + "*" if p.endswith("/") else p for p in allow_patterns]
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text.split(". ")[0] or type(exc).__name__)[:200]


def _cached_path(repo_id: str, filename: str, revision: str | None, cache: Path, size: int) -> Path | None:
    """The cached file when it is complete (its size matches), else None."""
    import huggingface_hub

    found = huggingface_hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision)
    if not isinstance(found, str):
        return None
    path = Path(found)
    try:
        return path if path.is_file() and (size <= 0 or path.stat().st_size == size) else None
    except OSError:
        return None


def _snapshot_root(file_path: str | os.PathLike[str], filename: str) -> Path:
    """The snapshot folder holding ``file_path`` (the repo file ``filename``)."""
    root = Path(file_path)
    for _ in Path(filename).parts:
        root = root.parent
    return root


def cached_snapshot(
    repo_id: str,
    allow_patterns: list[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The repo's folder in the cache when it is there without the Hub (offline), else None."""
    import huggingface_hub

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            allow_patterns=allow_patterns,
            revision=revision,
            cache_dir=_hub_cache(cache_dir),
            local_files_only=True,
        )
    except Exception as exc:  # not in the cache: LocalEntryNotFoundError and friends
        log.debug("%s is not in the cache: %s", repo_id, exc)
        return None
    folder = Path(folder)
    return folder if folder.is_dir() and any(folder.iterdir()) else None


# -- plan ---------------------------------------------------------------------------------------------------
def plan_download(
    repo_id: str,
    allow_patterns: list[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    what: str = "",
) -> DownloadPlan:
    """Ask the Hub which files of ``repo_id`` match ``allow_patterns`` and how big they are (nothing is
    downloaded); ModelError in one line when the Hub cannot be reached or has no such repo."""
    import huggingface_hub

    label = f"{what} '{repo_id}'" if what else f"'{repo_id}'"
    try:
        info = huggingface_hub.HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:  # offline, network, authentication, missing repo: one line for the user
        raise ModelError(
            f"could not download {label} from the Hugging Face Hub: {_first_line(exc)}"
        ) from None
    files = sorted(
        (s.rfilename, int(getattr(s, "size", None) or 0))
        for s in (getattr(info, "siblings", None) or [])
        if matches(s.rfilename, allow_patterns)
    )
    if not files:
        raise ModelError(
            f"{label} on the Hugging Face Hub has none of the needed files ({', '.join(allow_patterns)})"
        )
    cache = _hub_cache(cache_dir)
    commit = getattr(info, "sha", None) or revision
    cached = [path for path, size in files if _cached_path(repo_id, path, commit, cache, size) is not None]
    total = sum(size for _, size in files)
    cached_bytes = sum(size for path, size in files if path in cached)
    return DownloadPlan(
        repo_id=repo_id,
        revision=commit,
        files=files,
        total_bytes=total,
        cached_bytes=cached_bytes,
        needed_bytes=total - cached_bytes,
        free_bytes=free_bytes(cache),
        cache_dir=str(cache),
        cached_files=cached,
        requested_revision=revision,
    )


def check_space(plans: list[DownloadPlan]) -> None:
    """ModelError ``needs 5.2 GB, 3.1 GB free on /path`` when the missing files of ``plans`` do not fit."""
    needed = sum(p.needed_bytes for p in plans)
    if not plans or needed <= 0:
        return
    free = min(p.free_bytes for p in plans)
    if free < needed + space_margin(needed):
        names = " and ".join(p.repo_id for p in plans)
        raise ModelError(
            f"downloading {names} needs {human_bytes(needed)} (+{human_bytes(space_margin(needed))} margin), "
            f"{human_bytes(free)} free on {plans[0].cache_dir}: free some space or set HF_HOME to another "
            "disk"
        )


# -- download -----------------------------------------------------------------------------------------------
class _ByteCounter:
    """Progress of several files' bytes, reported at most ``REPORTS_PER_SECOND`` times a second."""

    def __init__(self, total: int, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        self.total = total
        self.done = 0
        self.file = ""
        self.file_done = 0
        self.file_size = 0
        self._progress = progress
        self._cancel = cancel
        self._start = time.perf_counter()
        self._last = 0.0

    def check(self) -> None:
        if self._cancel is not None:
            self._cancel.raise_if_cancelled()

    def start_file(self, name: str, size: int) -> None:
        self.file, self.file_done, self.file_size = name, 0, size
        self.report(force=True)

    def add(self, n: int) -> None:
        self.done += n
        self.file_done += n
        self.report()
        self.check()

    def finish_file(self) -> None:
        """Count the rest of the file (a file whose bytes were not reported, e.g. an unknown size)."""
        rest = max(0, self.file_size - self.file_done)
        self.done += rest
        self.file_done += rest
        self.report(force=True)

    def report(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self._progress is None or (not force and now - self._last < 1.0 / REPORTS_PER_SECOND):
            return
        self._last = now
        self._progress(
            Progress(
                done=min(self.done, self.total),
                total=self.total,
                message=f"{self.file} {_fraction(self.file_done, self.file_size)}",
                elapsed_s=now - self._start,
                extra={"file": self.file, "file_done": self.file_done, "file_size": self.file_size},
            )
        )


def _fraction(done: int, size: int) -> str:
    """``1.2/3.4 GB`` in the unit of ``size``."""
    if size <= 0:
        return human_bytes(done)
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            return f"{done / scale:.1f}/{size / scale:.1f} {unit}"
    return f"{done}/{size} B"


def _tqdm_class_for(counter: _ByteCounter) -> type:
    """A silent tqdm class whose byte updates feed ``counter`` (and raise JobCancelled when cancelled)."""

    class _CountingTqdm(_std_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            for key in ("name", "position", "bar_format", "leave"):
                kwargs.pop(key, None)
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if n:
                counter.add(int(n))
            return super().update(n)

        def update_transfer(self, n: float | None = 1) -> None:
            """Network bytes (may differ from file bytes): only a cancellation point, not counted."""
            counter.check()

        def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            pass

    return _CountingTqdm


def _fetch(
    plans: list[DownloadPlan],
    *,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    cache_dir: str | os.PathLike[str] | None,
    what: dict[str, str] | None = None,
) -> list[Path]:
    """Download the missing files of every plan; return each repo's snapshot folder."""
    import huggingface_hub

    cache = _hub_cache(cache_dir)
    counter = _ByteCounter(sum(p.needed_bytes for p in plans), progress, cancel)
    tqdm_class = _tqdm_class_for(counter)
    roots: list[Path] = []
    for plan in plans:
        root: Path | None = None
        for filename, size in plan.files:
            counter.check()
            cached = _cached_path(plan.repo_id, filename, plan.revision, cache, size)
            if cached is not None:
                root = root or _snapshot_root(cached, filename)
                continue
            counter.start_file(filename, size)
            before = counter.done
            try:
                path = huggingface_hub.hf_hub_download(
                    plan.repo_id,
                    filename,
                    revision=plan.requested_revision,  # None: the default branch, recorded in refs/
                    cache_dir=cache,
                    tqdm_class=tqdm_class,
                )
            except JobCancelled:
                raise
            except Exception as exc:
                label = (what or {}).get(plan.repo_id, "")
                label = f"{label} '{plan.repo_id}'" if label else f"'{plan.repo_id}'"
                raise ModelError(
                    f"could not download {filename} of {label} from the Hugging Face Hub: "
                    f"{_first_line(exc)} (finished files stay in the cache; run again to continue)"
                ) from None
            counter.file_done = counter.done - before
            counter.finish_file()
            root = root or _snapshot_root(path, filename)
        counter.check()
        if root is None:  # a plan without files cannot be made; keep the type checker and readers calm
            raise ModelError(f"nothing to download for '{plan.repo_id}'")
        roots.append(root)
    return roots


def _plan_or_cache(
    repo_id: str,
    allow_patterns: list[str],
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    what: str,
) -> DownloadPlan | Path:
    """The plan, or the cached folder when the Hub cannot be asked but the cache has the repo."""
    try:
        return plan_download(repo_id, allow_patterns, revision=revision, cache_dir=cache_dir, what=what)
    except ModelError as exc:
        folder = cached_snapshot(repo_id, allow_patterns, revision=revision, cache_dir=cache_dir)
        if folder is None:
            raise ModelError(f"{exc}; it is not in the cache {_hub_cache(cache_dir)} either") from None
        log.warning("Hugging Face Hub not reachable (%s); using %s from the cache", exc, repo_id)
        return folder


def download_repo(
    repo_id: str,
    allow_patterns: list[str],
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    what: str = "",
) -> Path:
    """Download (or find in the cache) the files of ``repo_id`` matching ``allow_patterns``; return the
    snapshot folder. Free disk space is checked before anything is fetched; progress is in bytes."""
    [folder] = download_repos(
        [(repo_id, allow_patterns, what)],
        progress=progress,
        cancel=cancel,
        revision=revision,
        cache_dir=cache_dir,
    )
    return folder


def download_repos(
    repos: list[tuple[str, list[str], str]],
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Several ``(repo_id, allow_patterns, what)`` at once: the disk space for all of them is checked before
    the first byte is fetched, and progress counts the bytes of all of them."""
    planned = [_plan_or_cache(repo, patterns, revision, cache_dir, what) for repo, patterns, what in repos]
    if cancel is not None:
        cancel.raise_if_cancelled()
    plans = [p for p in planned if isinstance(p, DownloadPlan)]
    check_space(plans)
    fetched = iter(
        _fetch(
            plans,
            progress=progress,
            cancel=cancel,
            cache_dir=cache_dir,
            what={repo: what for repo, _, what in repos},
        )
    )
    return [next(fetched) if isinstance(p, DownloadPlan) else p for p in planned]


def download_base_sources(
    sd_repo: str = DEFAULT_SD_REPO,
    dinov2_repo: str = DEFAULT_DINOV2_REPO,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """Download Stable Diffusion (U-Net and VAE) and DINOv2 into the Hugging Face cache; return both
    folders. The disk space for both is checked before any byte is fetched."""
    sd_dir, dinov2_dir = download_repos(
        [(sd_repo, SD_ALLOW_PATTERNS, "Stable Diffusion"), (dinov2_repo, DINOV2_ALLOW_PATTERNS, "DINOv2")],
        progress=progress,
        cancel=cancel,
        cache_dir=cache_dir,
    )
    return sd_dir, dinov2_dir
