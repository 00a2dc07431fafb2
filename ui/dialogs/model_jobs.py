"""What the model dialogs run in worker threads (each a core job: progress callback, cancel token) and the
small texts and checks they share: a new model's name, a Hub id, a download's progress line."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from sd_fsmis.core.errors import ModelError
from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback, human_bytes
from sd_fsmis.core.model.download import (
    DownloadPlan,
)
from sd_fsmis.core.model.store import (
    ModelInfo,
    check_model_name,
    model_path,
)
from sd_fsmis.ui.workers.job_worker import format_seconds

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


#: ``Progress.extra["unit"]`` of a download's reports (bytes)
BYTES = "bytes"


RESUME_NOTE = (
    "The files already downloaded are kept: next time only the missing ones are fetched "
    "(the file that was in progress starts again)."
)


def download_text(done: int, total: int, rate: float | None) -> str:
    """``"1.2 GB of 4.1 GB, 35.2 MB/s, 1 min 25 s left"`` (speed and time once a rate is known)."""
    text = f"{human_bytes(done)} of {human_bytes(total)}" if total > 0 else human_bytes(done)
    if rate is not None and rate > 0:
        text += f", {human_bytes(rate)}/s"
        if total > done:
            text += f", {format_seconds((total - done) / rate)} left"
    return text


def new_model_name_problem(name: str) -> str:
    """Why ``name`` cannot be given to a new model in the store ("" when it can)."""
    if not name:
        return "Give the model a name."
    try:
        check_model_name(name)
    except ModelError:
        return "Use a name of letters, digits, '.', '_' and '-' (no spaces), up to 100 characters."
    if model_path(name).exists():
        return f"A model named “{name}” already exists: choose another name."
    return ""


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` as the Hub spells repositories (no path, no ``..``)."""
    return bool(_HUB_ID_RE.match(text)) and ".." not in text


# ------------------------------------------------------------------------------------------------- jobs
def create_tiny_model(name: str, *, progress: ProgressCallback, cancel: CancelToken) -> str:
    """Job: a tiny random model in the store (``sd-fsmis models create --preset tiny --name NAME``)."""
    from sd_fsmis.core.model.create import create_preset_model

    progress(Progress(0, 0, "creating the model"))
    return Path(create_preset_model("tiny", name=name)).name


def create_base(
    sd_dir: str,
    dinov2_dir: str,
    name: str,
    copy_weights: bool,
    *,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> str:
    """Job: a base model from local SD 1.5 + DINOv2 folders (``sd-fsmis models create --sd --dinov2``)."""
    from sd_fsmis.core.model.create import create_base_model

    progress(Progress(0, 0, "creating the model"))
    return Path(create_base_model(sd_dir, dinov2_dir, name=name, copy_weights=copy_weights)).name


def plan_hub_download(
    sd_repo: str, dinov2_repo: str, *, progress: ProgressCallback, cancel: CancelToken
) -> DownloadPlan:
    """Job: what downloading both repositories takes, as one plan (needed bytes, free space, ``fits``).

    Asks the Hub for the file sizes (nothing is downloaded). Offline, a repository complete in the cache
    counts as nothing to download; one that is not raises the Hub's one-line ModelError.
    """
    from sd_fsmis.core.model import download

    progress(Progress(0, 0, "asking the Hugging Face Hub for the file sizes"))
    plans = []
    for repo, patterns, what in (
        (sd_repo, download.SD_ALLOW_PATTERNS, "Stable Diffusion"),
        (dinov2_repo, download.DINOV2_ALLOW_PATTERNS, "DINOv2"),
    ):
        try:
            plans.append(download.plan_download(repo, patterns, what=what))
        except ModelError:
            folder = download.cached_snapshot(repo, patterns)
            if folder is None:
                raise
            free = download.free_bytes(folder)
            plans.append(download.DownloadPlan(repo, None, [], 0, 0, 0, free, str(folder)))
        cancel.raise_if_cancelled()
    return download.DownloadPlan(
        repo_id=" and ".join(p.repo_id for p in plans),
        revision=None,
        files=[f for p in plans for f in p.files],
        total_bytes=sum(p.total_bytes for p in plans),
        cached_bytes=sum(p.cached_bytes for p in plans),
        needed_bytes=sum(p.needed_bytes for p in plans),
        free_bytes=min(p.free_bytes for p in plans),
        cache_dir=plans[0].cache_dir,
    )


def download_base(
    sd_repo: str, dinov2_repo: str, name: str, *, progress: ProgressCallback, cancel: CancelToken
) -> str:
    """Job: download (or resume, or find in the cache) SD 1.5 + DINOv2, then write the base model ``name``.

    Progress reports in bytes are marked ``extra["unit"] == "bytes"``; Cancel stops the download (finished
    files stay in the cache) or the model before it is written.
    """
    from sd_fsmis.core.model.create import create_base_model

    def bytes_progress(p: Progress) -> None:
        progress(Progress(p.done, p.total, p.message, p.elapsed_s, {**p.extra, "unit": BYTES}))

    folder = create_base_model(
        sd_repo, dinov2_repo, name=name, copy_weights=True, progress=bytes_progress, cancel=cancel
    )
    return Path(folder).name


def import_reference(
    checkpoint: str,
    sd_dir: str,
    dinov2_dir: str,
    name: str,
    copy_weights: bool,
    *,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> str:
    """Job: import a reference checkpoint (``sd-fsmis models import-reference``)."""
    from sd_fsmis.core.model.reference_import import import_reference_checkpoint

    progress(Progress(0, 0, "importing the checkpoint"))
    folder = import_reference_checkpoint(checkpoint, sd_dir, dinov2_dir, name=name, copy_weights=copy_weights)
    return Path(folder).name


#: what a model was built from (``ModelInfo.base_models`` keys), as the details pane names them
SOURCE_LABELS = {
    "stable_diffusion": "Stable Diffusion",
    "dinov2": "DINOv2",
    "checkpoint": "Checkpoint",
    "parent": "Fine-tuned from",
}


NONE = "—"


def import_folder_job(folder: str, name: str, *, progress: ProgressCallback, cancel: CancelToken) -> str:
    """Job: validate the model folder and copy it into the store as ``name``; return the name."""
    from sd_fsmis.core.model.store import import_model_folder

    progress(Progress(0, 0, "checking the model folder"))
    return Path(import_model_folder(folder, name=name, progress=progress, cancel=cancel)).name


def short_base(info: ModelInfo) -> str:
    """``"stable-diffusion-v1-5 + dinov2-base"``: what the model was built from, Hub owners dropped."""
    sources = info.base_models or {}
    parts = [sources[k] for k in ("stable_diffusion", "dinov2") if sources.get(k)]
    if not parts:
        parts = [p for p in info.base.split(" + ") if p]
    return " + ".join(str(p).rstrip("/").rsplit("/", 1)[-1] for p in parts) or NONE


def local_date(iso: str) -> str:
    """``"2026-01-31 13:00"`` in local time from an ISO time (``...Z``); the text itself if not one."""
    if not iso:
        return ""
    try:
        when = _dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if when.tzinfo is not None:
        when = when.astimezone()
    return when.strftime("%Y-%m-%d %H:%M")
