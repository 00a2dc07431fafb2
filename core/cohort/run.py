"""Segment a cohort: many studies, one support set (or each study its own), a mask and a record line each.

One implementation behind ``sd-fsmis segment --queries`` and the GUI's "Segment all open studies" /
"Segment a folder of studies":

- :func:`run_cohort` (studies on disk): the studies of this process's :class:`Shard`, resume (a study whose
  mask exists with the same settings is skipped), one mask per study in the output folder named by the
  study's id, written atomically on the study's grid, and a line of the run record per study. A study that
  cannot be read or segmented is recorded with its error and skipped; the cohort goes on.
- :func:`segment_studies` (the loop both use): the engine is loaded once and, for an SD-FSMIS model, the
  support set is encoded once for the whole cohort (:meth:`SDFSMISEngine.reuse_supports`). With a model the
  next studies are read by a torch ``DataLoader`` with worker processes while the device works; with a
  built-in engine (CPU) several studies are segmented at once in worker processes.

Several processes (``accelerate launch -m sd_fsmis segment --queries ...``, on one machine or several
nodes sharing the output folder) each take every n-th study (:func:`shard_from_environment`: Accelerate's
process index and count) and write their own record file; nothing is segmented twice.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sd_fsmis.core.cohort.record import (
    RecordWriter,
    fingerprint,
    now_iso,
    read_records,
    record_path,
    settings_hash,
)
from sd_fsmis.core.cohort.studies import Cohort, CohortStudy, SupportSpec
from sd_fsmis.core.engines.registry import is_builtin, load_engine
from sd_fsmis.core.engines.segmentation import SegmentationOutcome, SupportSource, segment_volume
from sd_fsmis.core.errors import JobCancelled, MaskError, UserError
from sd_fsmis.core.io.destinations import Inputs, OutputError, check_destination_folder, same_path
from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback
from sd_fsmis.core.volume import Volume

log = logging.getLogger(__name__)

MASK_SUFFIX = ".nii.gz"
#: studies read ahead per DataLoader worker while the device segments
PREFETCH_PER_WORKER = 2


@dataclass(frozen=True)
class Shard:
    """This process's part of the cohort: every ``count``-th study from the ``index``-th (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UserError(f"shard {self.index + 1} of {self.count} does not exist")

    def take(self, items: Sequence) -> list:
        return list(items[self.index :: self.count])

    @property
    def is_main(self) -> bool:
        return self.index == 0


@dataclass
class CohortSettings:
    """What every study of the cohort is segmented with (the options of ``segment``)."""

    engine: str
    label: int = 1
    label_name: str | None = None
    #: the cohort's support (a study on disk and its label map); studies of a manifest may have their own
    support: SupportSpec | None = None
    #: "all" (K-shot) or "nearest"
    assignment: str = "all"
    device: str = "auto"
    batch_size: int | None = None
    precision: str | None = None
    #: DataLoader workers (model) or worker processes (built-in engine); None: automatic, 0: none
    workers: int | None = None
    #: how worker processes start: None for the platform's default (fork on Linux: no start-up cost),
    #: "spawn" where the parent runs threads that a fork would copy mid-work (the GUI)
    start_method: str | None = None

    def identity(self) -> dict:
        """What decides the masks (the settings hash): engine or model, label, assignment, precision."""
        return {
            "engine": _engine_identity(self.engine),
            "label": self.label,
            "assignment": self.assignment,
            "precision": None if is_builtin(self.engine) else (self.precision or "auto"),
        }


@dataclass
class MemoryStudy:
    """A study already open (the GUI): its volume and the support sources made for it."""

    id: str
    volume: Volume
    sources: list[SupportSource]
    label: int = 1
    label_name: str | None = None
    label_colour: tuple[int, int, int] | None = None
    name: str = ""


@dataclass
class CohortReport:
    """What :func:`run_cohort` did: this process's records and the studies it skipped as done before."""

    records: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    studies: int = 0
    started_at: str = ""

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r.get("status") == "failed"]


#: called on the job's thread for each study when it is finished: (record, outcome or None)
StudyCallback = Callable[[dict, SegmentationOutcome | None], None]


# ----------------------------------------------------------------------------------------- environment
def launched_processes() -> int:
    """How many processes a launcher (``accelerate launch``, torchrun, mpirun) started; 1 without one."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        try:
            value = int(os.environ.get(name, "") or 0)
        except ValueError:
            continue
        if value > 1:
            return value
    return 1


def _state(device: str = "auto"):
    """Accelerate's process state; on a machine without CUDA (or with ``--device cpu``) the processes work
    on the CPU and talk over gloo."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def shard_from_environment(device: str = "auto") -> Shard:
    """This process's shard under ``accelerate launch`` (or torchrun): Accelerate's process index and
    count; one shard without a launcher (torch and accelerate are then not imported)."""
    if launched_processes() <= 1:
        return Shard()
    state = _state(device)
    return Shard(state.process_index, state.num_processes)


def gather_records(records: list[dict], shard: Shard) -> list[dict]:
    """Every process's record lines of this run (each process calls it; one process: its own)."""
    if shard.count <= 1:
        return list(records)
    from accelerate.utils import gather_object

    _state()
    return list(gather_object(list(records)))


def finish_processes(shard: Shard) -> None:
    """The processes' last meeting (after the main one's summary), then their process group ends."""
    if shard.count > 1:
        import torch.distributed as dist

        _state().wait_for_everyone()
        if dist.is_initialized():
            dist.destroy_process_group()


def process_device(device: str, shard: Shard) -> str:
    """The device of this process: under a launcher with ``--device auto`` or ``cuda``, Accelerate's
    (each process its own GPU, or the CPU)."""
    if shard.count > 1 and device in ("auto", "cuda"):
        return str(_state(device).device)
    return device


# ------------------------------------------------------------------------------------------- the job
def run_cohort(
    cohort: Cohort,
    out_dir: str | os.PathLike[str],
    settings: CohortSettings,
    *,
    shard: Shard | None = None,
    cohort_sources: list[SupportSource] | None = None,
    on_study: StudyCallback | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> CohortReport:
    """Segment this process's studies of ``cohort`` into ``out_dir``; a core job.

    ``cohort_sources``: the cohort's supports already loaded (the GUI's painted slices); else
    ``settings.support`` is loaded once here. Raises :class:`UserError` before any study for what concerns
    the whole cohort (an unusable output folder, support or engine); a study's own problem is recorded.
    """
    shard = shard or Shard()
    cancel = cancel or CancelToken()
    out = Path(out_dir)
    inputs = Inputs()
    for path, what in cohort.input_paths():
        inputs.add(path, what)
    if settings.support is not None:
        inputs.add(settings.support.image, "the support study (--support)")
        inputs.add(settings.support.mask, "the support mask (--support-mask)")
    if cohort.source.is_file():
        inputs.add(cohort.source, "the manifest (--queries)")
    elif out.resolve() in (cohort.source.resolve(), (cohort.source / "images").resolve()):
        raise OutputError(
            f"--out-dir {out} is the folder of the studies: masks named by study would lie among them "
            "(and could replace one); choose another folder"
        )
    inputs.refuse(out, "--out-dir")
    check_destination_folder(out, inputs, option="--out-dir")
    report = CohortReport(studies=len(cohort.studies), left_out=list(cohort.left_out), started_at=now_iso())
    if cohort_sources is None and settings.support is not None:
        cohort_sources = [load_support(settings.support, settings.label)]
    needs_cohort_support = any(not s.supports for s in cohort.studies)
    if needs_cohort_support and not cohort_sources:
        raise MaskError(
            "no support for the studies without their own: give --support-mask (and --support) or "
            "support_mask in the manifest"
        )
    out.mkdir(parents=True, exist_ok=True)  # only now: a cohort refused up front leaves no empty folder
    common = settings.identity()
    common["cohort_support"] = _sources_identity(cohort_sources or [])
    mine = shard.take(cohort.studies)
    done = _finished(out)
    todo: list[tuple[CohortStudy, str]] = []
    for study in mine:
        digest = study_settings_hash(study, common)
        if done.get(study.id) == digest:
            report.skipped.append(study.id)
        else:
            todo.append((study, digest))
    if report.skipped:
        log.info("%d studies done before with the same settings: skipped", len(report.skipped))
    writer = RecordWriter(record_path(out, shard.index, shard.count))
    refused = {s.id: inputs.owner(out / f"{s.id}{MASK_SUFFIX}") for s, _ in todo}

    def finished(record: dict, outcome: SegmentationOutcome | None) -> None:
        record["process"] = shard.index
        writer.write(record)
        report.records.append(record)
        if on_study is not None:
            on_study(record, outcome)

    items = [
        _Item(study, digest, str(out / f"{study.id}{MASK_SUFFIX}"), refused.get(study.id))
        for study, digest in todo
    ]
    if items:
        segment_studies(
            items,
            settings,
            cohort_sources=cohort_sources,
            on_study=finished,
            progress=progress,
            cancel=cancel,
            device=settings.device,
        )
    return report


def study_settings_hash(study: CohortStudy, common: dict) -> str:
    """The settings hash of one study: the cohort's settings, its own supports and label, its file."""
    own = {
        "study": fingerprint(study.image),
        "series": study.series,
        "label": study.label,
        "supports": [
            {**s.to_dict(), "image": fingerprint(s.image), "mask": fingerprint(s.mask)}
            for s in study.supports
        ],
    }
    return settings_hash({**common, **own})


def _finished(out: Path) -> dict[str, str]:
    from sd_fsmis.core.cohort.record import finished

    return finished(out, read_records(out))


@dataclass
class _Item:
    """A study on disk to segment, with its settings hash, its mask's path and why it must not be written."""

    study: CohortStudy
    digest: str
    out: str
    refused_as: str | None = None


@dataclass
class _Loaded:
    """A study read by a loader worker (or why it could not be)."""

    item: _Item | MemoryStudy
    volume: Volume | None = None
    sources: list[SupportSource] = field(default_factory=list)
    error: str | None = None
    load_seconds: float = 0.0


# --------------------------------------------------------------------------------------- the loop
def segment_studies(
    items: Sequence[_Item | MemoryStudy],
    settings: CohortSettings,
    *,
    cohort_sources: list[SupportSource] | None = None,
    on_study: StudyCallback | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    device: str = "auto",
) -> None:
    """Segment ``items`` one after another with one engine (studies read ahead), or in worker processes
    with a built-in engine; ``on_study(record, outcome)`` for each. Raises JobCancelled when cancelled
    (the studies finished before stay recorded)."""
    cancel = cancel or CancelToken()
    state = _ProgressState(len(items), progress)
    workers = _worker_count(settings, len(items))
    on_disk = all(isinstance(i, _Item) for i in items)
    if is_builtin(settings.engine) and workers > 1 and on_disk:
        _segment_in_processes(items, settings, cohort_sources or [], workers, on_study, state, cancel)
        return
    state.report("loading the model" if not is_builtin(settings.engine) else "starting")
    engine = load_engine(
        settings.engine, device=device, batch_size=settings.batch_size, precision=settings.precision
    )
    reuse = getattr(engine, "reuse_supports", None)
    studies = _loaded_studies(items, settings, workers, cancel)
    with reuse() if reuse is not None else contextlib.nullcontext(), contextlib.closing(studies):
        for loaded in studies:
            cancel.raise_if_cancelled()
            record, outcome = _segment_loaded(loaded, engine, settings, cohort_sources or [], state, cancel)
            state.study_done(record)
            if on_study is not None:
                on_study(record, outcome)
    cancel.raise_if_cancelled()


def _worker_count(settings: CohortSettings, studies: int) -> int:
    if settings.workers is not None:
        return max(0, min(int(settings.workers), studies))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, cores // launched_processes())  # processes of a launcher on this machine share them
    if is_builtin(settings.engine):
        return max(1, min(cores, studies))
    return max(0, min(4, cores - 1, studies - 1))


class _ProgressState:
    """Progress in studies, with the current study's slices in ``extra``."""

    def __init__(self, total: int, progress: ProgressCallback | None) -> None:
        self.total, self.done, self.progress = total, 0, progress
        self.start = time.perf_counter()

    def report(self, message: str, **extra: object) -> None:
        if self.progress is not None:
            elapsed = time.perf_counter() - self.start
            self.progress(Progress(self.done, self.total, message, elapsed, dict(extra)))

    def study_done(self, record: dict) -> None:
        self.done += 1
        state = record.get("status", "")
        self.report(f"{record['study']}: {state}", study=record["study"], state=state)

    def slices(self, study: str) -> ProgressCallback:
        def report(p: Progress) -> None:
            self.report(
                f"{study}: {p.done}/{p.total} slices" if p.total > 0 else f"{study}: {p.message}",
                study=study,
                state="running",
                slices_done=p.done,
                slices_total=p.total,
            )

        return report


# ---------------------------------------------------------------------------------- reading studies
def load_support(
    spec: SupportSpec, label: int, study: Volume | None = None, study_path: str = ""
) -> SupportSource:
    """A support from files: its study (``study`` itself when ``spec.image`` is None or the same file) and the
    label ``label`` of its mask (a label map on that study's grid)."""
    from sd_fsmis.core.engines.segmentation import support_mask_for_label
    from sd_fsmis.core.io.labelmap import LabelMap, refuse_image_as_mask
    from sd_fsmis.core.io.loader import load_volume

    is_query = study is not None and (
        spec.image is None
        or (
            same_path(spec.image, study_path)
            and spec.series in (None, "", study.metadata.series_instance_uid)
        )
    )
    image_path = study_path if is_query else spec.image
    if image_path is None:
        raise MaskError(f"the support mask {spec.mask} needs its support study")
    refuse_image_as_mask(spec.mask, [image_path], "the support mask")
    volume = study if is_query else load_volume(image_path, spec.series)
    labels = LabelMap.load(spec.mask, like=volume.geometry, like_name="support image")
    refuse_image_as_mask(labels, [volume], "the support mask")
    mask = support_mask_for_label(labels, label, Path(spec.mask).name)
    return SupportSource(
        volume=volume,
        mask=mask,
        slices=list(spec.slices) if spec.slices is not None else None,
        is_query=is_query,
        name=str(image_path),
    )


def _load(item: _Item | MemoryStudy, settings: CohortSettings) -> _Loaded:
    """Read a study and its own supports (in a loader worker); an error is returned, not raised."""
    if isinstance(item, MemoryStudy):
        return _Loaded(item, item.volume, list(item.sources))
    from sd_fsmis.core.io.loader import load_volume

    start = time.perf_counter()
    study = item.study
    try:
        if item.refused_as is not None:
            raise UserError(f"{item.out} is {item.refused_as}: refusing to write over an input")
        volume = load_volume(study.image, study.series)
        label = study.label or settings.label
        sources = [load_support(s, label, volume, study.image) for s in study.supports]
        return _Loaded(item, volume, sources, load_seconds=time.perf_counter() - start)
    except (UserError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        log.info("study %s not read: %s", study.id, exc, exc_info=not isinstance(exc, UserError))
        return _Loaded(item, error=_one_line(exc), load_seconds=time.perf_counter() - start)


class QueryStudies:
    """The cohort's studies as a map-style dataset (``torch.utils.data.Dataset`` protocol): item ``i`` is
    study ``i`` read from disk with its own supports, or the reason it could not be read."""

    def __init__(self, items: Sequence[_Item | MemoryStudy], settings: CohortSettings) -> None:
        self.items = list(items)
        self.settings = settings

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Loaded:
        return _load(self.items[index], self.settings)


def _as_is(sample: _Loaded) -> _Loaded:
    return sample


def _loaded_studies(
    items: Sequence[_Item | MemoryStudy], settings: CohortSettings, workers: int, cancel: CancelToken
) -> Iterable[_Loaded]:
    """The studies in order; with workers, read ahead by a DataLoader while the current one is segmented."""
    if workers <= 0 or not all(isinstance(i, _Item) for i in items):
        for item in items:
            cancel.raise_if_cancelled()
            yield _load(item, settings)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(
        QueryStudies(items, settings),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_is,
        prefetch_factor=PREFETCH_PER_WORKER,
        multiprocessing_context=multiprocessing.get_context(settings.start_method),
    )
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:  # stop the readers now (a cancelled cohort), not at garbage collection
            shutdown()


# ------------------------------------------------------------------------------------- one study
def _segment_loaded(
    loaded: _Loaded,
    engine,
    settings: CohortSettings,
    cohort_sources: list[SupportSource],
    state: _ProgressState,
    cancel: CancelToken,
) -> tuple[dict, SegmentationOutcome | None]:
    item = loaded.item
    sid = item.id if isinstance(item, MemoryStudy) else item.study.id
    record = _blank_record(sid, item, engine.name)
    record["load_seconds"] = round(loaded.load_seconds, 3)
    if loaded.error is not None:
        return _failed(record, loaded.error), None
    state.report(f"{sid}: segmenting", study=sid, state="running")
    volume = loaded.volume
    try:
        sources = loaded.sources or _for_this_study(cohort_sources, volume, item)
        if isinstance(item, MemoryStudy):
            label, label_name, colour = item.label, item.label_name, item.label_colour
        else:
            label, label_name, colour = item.study.label or settings.label, settings.label_name, None
        outcome = segment_volume(
            volume,
            sources,
            engine,
            label=label,
            label_name=label_name,
            label_colour=colour,
            assignment=settings.assignment,
            progress=state.slices(sid),
            cancel=cancel,
        )
        if isinstance(item, _Item):
            outcome.label_map.save(item.out)
            record["out"] = Path(item.out).name
    except JobCancelled:
        raise
    except (UserError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        log.info("study %s failed: %s", sid, exc, exc_info=not isinstance(exc, UserError))
        return _failed(record, _one_line(exc)), None
    _fill(record, outcome, volume)
    return record, outcome


def _for_this_study(
    cohort_sources: list[SupportSource], volume: Volume, item: _Item | MemoryStudy
) -> list[SupportSource]:
    """The cohort's supports for this study: a support painted on this very study becomes its own
    (``is_query``), so that engines propagate from it."""
    if not cohort_sources:
        raise MaskError("this study has no support and the cohort has none")
    path = item.study.image if isinstance(item, _Item) else ""
    out = []
    for source in cohort_sources:
        same = path and same_path(source.name, path) and source.volume.shape == volume.shape
        out.append(replace(source, volume=volume, is_query=True) if same else source)
    return out


def _blank_record(sid: str, item, engine: str) -> dict:
    record = {
        "study": sid,
        "engine": engine,
        "device": "",
        "seconds": None,
        "voxels": None,
        "ml": None,
        "warnings": [],
        "error": None,
        "status": "failed",
    }
    if isinstance(item, _Item):
        record["image"] = item.study.image
        record["settings"] = item.digest
        record["out"] = None
    return record


def _failed(record: dict, error: str) -> dict:
    record.update(status="failed", error=error, finished_at=now_iso())
    return record


def _fill(record: dict, outcome: SegmentationOutcome, volume: Volume) -> None:
    info = outcome.result.info or {}
    voxels = int(outcome.mask.sum())
    sx, sy, sz = volume.geometry.spacing
    record.update(
        status="done",
        engine=outcome.engine,
        device=str(info.get("device") or "CPU"),
        seconds=round(outcome.seconds, 3),
        voxels=voxels,
        ml=round(voxels * sx * sy * sz / 1000.0, 3),
        warnings=list(volume.warnings),
        error=None,
        shots=outcome.shots,
        support_slices=[z for _, z in outcome.support_slices],
        finished_at=now_iso(),
    )
    for key in ("support_sets_encoded", "support_sets_reused", "batch_size", "dtype"):
        if key in info:
            record[key] = info[key]
    if "grid" in outcome.settings:
        record["grid"] = outcome.settings["grid"]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, UserError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------- built-in engine, many processes
_worker_state: dict = {}


def _init_worker(settings: CohortSettings, cohort_sources: list[SupportSource]) -> None:
    engine = load_engine(settings.engine)
    if hasattr(engine, "workers"):
        engine.workers = 1  # the processes are the parallelism
    _worker_state.update(engine=engine, settings=settings, sources=cohort_sources)


def _segment_in_worker(item: _Item) -> dict:
    state = _ProgressState(1, None)
    loaded = _load(item, _worker_state["settings"])
    record, _outcome = _segment_loaded(
        loaded,
        _worker_state["engine"],
        _worker_state["settings"],
        _worker_state["sources"],
        state,
        CancelToken(),
    )
    return record


def _segment_in_processes(
    items: Sequence[_Item],
    settings: CohortSettings,
    cohort_sources: list[SupportSource],
    workers: int,
    on_study: StudyCallback | None,
    state: _ProgressState,
    cancel: CancelToken,
) -> None:
    """The built-in engine on ``workers`` studies at once (CPU processes); records in the caller's process.
    Cancel stops handing out studies; those already started finish (seconds each) and are recorded."""
    state.report(f"starting {workers} processes")
    context = multiprocessing.get_context(settings.start_method)
    with futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(settings, cohort_sources)
    ) as pool:
        pending = {pool.submit(_segment_in_worker, item): item for item in items}
        try:
            while pending:
                done, _ = futures.wait(pending, timeout=0.2, return_when=futures.FIRST_COMPLETED)
                if cancel.cancelled:
                    for future in pending:
                        future.cancel()
                for future in done:
                    item = pending.pop(future)
                    if future.cancelled():
                        continue
                    try:
                        record = future.result()
                    except Exception as exc:  # a worker process died (out of memory, killed)
                        log.exception("worker for %s failed", item.study.id)
                        record = _failed(_blank_record(item.study.id, item, settings.engine), _one_line(exc))
                    state.study_done(record)
                    if on_study is not None:
                        on_study(record, None)
        finally:
            for future in pending:
                future.cancel()
    cancel.raise_if_cancelled()


# ------------------------------------------------------------------------------------------- identity
def _engine_identity(name: str) -> dict:
    """The engine in the settings hash: a built-in engine by name, a model by its folder's content."""
    if is_builtin(name):
        return {"name": name.strip().lower()}
    try:
        from sd_fsmis.core.model.store import resolve_model

        return {"name": name, "model": fingerprint(resolve_model(name))}
    except Exception:  # not resolvable here: loading it says why
        return {"name": name}


def _sources_identity(sources: list[SupportSource]) -> list[dict]:
    """In-memory supports in the settings hash: their study's name, slices and the mask's content."""
    import hashlib

    out = []
    for s in sources:
        digest = hashlib.sha1(np.packbits(s.mask).tobytes(), usedforsecurity=False).hexdigest()
        out.append(
            {"study": s.name, "slices": s.chosen_slices(), "mask": digest, "shape": list(s.mask.shape)}
        )
    return out
