"""Supervoxels: pseudo-labels for self-supervised episodic training, computed for any volume.

The self-supervised few-shot literature (SSL-ALPNet, Ouyang et al., ECCV 2020; ADNet, Q-Net, GMRD after it)
trains without annotations by taking an over-segmentation of each image as classes. This module computes
it the way SSL-ALPNet's ``pseudolabel_gen`` does, on scikit-image:

1. a body (foreground) mask per slice, so that air and padding never become a class: voxels above a low
   threshold, the largest connected component, holes filled (SSL-ALPNet thresholds at 50 raw MR units, about
   5 % of its volumes' range; here 5 % of the volume's own robust range, so that CT and MR alike work);
2. Felzenszwalb's graph segmentation (:func:`skimage.segmentation.felzenszwalb`) of every slice, with
   SSL-ALPNet's default setting ``sigma=1``, ``min_size=400`` pixels (given here in mm², 625 mm² = 400 pixels
   of 1.25 mm, so that a finer grid does not make finer segments) and scale 1 on its raw MR values
   (0..~1000), i.e. ``scale=0.001`` on intensities rescaled to [0, 1]; segments outside the body dropped;
3. the episodes of our trainer are ``shots + 1`` *consecutive* slices of one class (ADNet's 3-D supervoxels),
   so each slice's segments are linked to the next slice's: two segments are one supervoxel when each covers
   more than half of the other (``link_overlap``), which pairs them one to one.

The result is an integer label map on the image's grid (0 = outside the body, 1..N supervoxels) with the
:class:`SupervoxelParameters` it was made with. :func:`cached_supervoxels` keeps results in a cache folder
(the application passes its platformdirs cache), keyed by the image's voxel content and the parameters:
never written next to the user's data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from sd_fsmis.core.io.labelmap import SUPERVOXELS_SIDECAR_SUFFIX, labels_sidecar_path
from sd_fsmis.core.jobs import CancelToken, ProgressCallback, ProgressReporter

log = logging.getLogger(__name__)

#: the format of the cache's sidecar files (bump when the meaning of the parameters changes)
CACHE_FORMAT = "sd-fsmis-supervoxels"
CACHE_VERSION = 1
#: the cache is kept under this size: the least recently used entries go first (a CHAOS volume's entry is
#: about 0.15 MB, so this holds over ten thousand volumes)
CACHE_LIMIT_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class SupervoxelParameters:
    """How supervoxels are computed; stored with every result (sidecar JSON, the training config)."""

    method: str = "felzenszwalb-2d-linked"
    #: Felzenszwalb's scale on intensities rescaled to [0, 1] (SSL-ALPNet: 1 on raw MR values ~0..1000)
    scale: float = 0.001
    #: Gaussian smoothing before segmenting, in pixels (SSL-ALPNet: 1)
    sigma: float = 1.0
    #: smallest segment, in mm² of the slice (SSL-ALPNet: 400 pixels of 1.25 x 1.25 mm)
    min_area_mm2: float = 625.0
    #: intensity percentiles mapped to 0 and 1 before segmenting (robust to a few extreme voxels)
    percentiles: tuple[float, float] = (0.5, 99.5)
    #: body mask: voxels above this fraction of the robust intensity range (SSL-ALPNet: 50 MR units)
    foreground_fraction: float = 0.05
    #: two segments of neighbouring slices are one supervoxel when each covers more than this of the other
    link_overlap: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["percentiles"] = list(self.percentiles)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SupervoxelParameters:
        values = dict(data)
        if "percentiles" in values:
            values["percentiles"] = tuple(float(v) for v in values["percentiles"])
        return cls(**values)

    def key(self) -> str:
        """A short stable digest of the parameters (part of the cache key)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Supervoxels:
    """A supervoxel label map ``[Z, H, W]`` (int32; 0 = outside the body) and how it was made."""

    labels: np.ndarray
    foreground: np.ndarray  # bool [Z, H, W]: the body mask
    parameters: SupervoxelParameters
    #: the cache file it was read from or written to ("" when not cached)
    cache_path: str = ""
    from_cache: bool = False

    @property
    def count(self) -> int:
        """The number of supervoxels."""
        return len(np.unique(self.labels[self.labels > 0]))

    def per_slice_counts(self) -> list[int]:
        return [len(np.unique(s[s > 0])) for s in self.labels]


# ------------------------------------------------------------------------------------------ computing
def _robust_range(image: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """Percentiles of the finite voxels, leaving out the volume's minimum when it is padding (a constant
    value below the air, as CT's -3024) so that it does not stretch the range."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 0.0
    lowest = finite.min()
    rest = finite[finite > lowest]
    values = rest if rest.size >= 0.05 * finite.size else finite
    lo, hi = np.percentile(values, percentiles)
    return float(lo), float(hi)


def foreground_mask(image: np.ndarray, parameters: SupervoxelParameters | None = None) -> np.ndarray:
    """The body per slice (bool ``[Z, H, W]``): above a low threshold, the largest component, holes filled."""
    p = parameters or SupervoxelParameters()
    image = np.asarray(image, dtype=np.float32)
    lo, hi = _robust_range(image, p.percentiles)
    above = np.isfinite(image) & (image > lo + p.foreground_fraction * (hi - lo))
    out = np.zeros(image.shape, dtype=bool)
    if hi <= lo:
        return out
    for z in range(image.shape[0]):
        components, n = ndimage.label(above[z])
        if n == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        out[z] = ndimage.binary_fill_holes(components == 1 + int(np.argmax(sizes)))
    return out


def _link_slices(slices: list[np.ndarray], link_overlap: float) -> np.ndarray:
    """Per-slice segment maps (0 = none, 1..n_z on slice z) -> supervoxel ids ``[Z, H, W]`` 1..N: segments
    of neighbouring slices that each cover more than ``link_overlap`` of the other share an id."""
    counts = [int(s.max()) for s in slices]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # slice z's ids: offsets[z] + 1..
    total = int(offsets[-1]) + 1
    parent = np.arange(total)  # each segment its own supervoxel, then chains joined
    present = np.zeros(total, dtype=bool)
    for z, (a, b) in enumerate(itertools.pairwise(slices)):
        na, nb = counts[z], counts[z + 1]
        if na == 0 or nb == 0:
            continue
        overlap = np.bincount(
            (a.astype(np.int64) * (nb + 1) + b).ravel(), minlength=(na + 1) * (nb + 1)
        ).reshape(na + 1, nb + 1)
        area_a, area_b = overlap.sum(axis=1), overlap.sum(axis=0)
        keep = (overlap > link_overlap * area_a[:, None]) & (overlap > link_overlap * area_b[None, :])
        keep[0, :] = keep[:, 0] = False
        for la, lb in zip(*np.nonzero(keep), strict=True):
            # one to one (each covers more than half of the other); a's root is already final
            parent[offsets[z + 1] + lb] = parent[offsets[z] + la]
    for z, s in enumerate(slices):
        if counts[z]:
            present[offsets[z] + np.flatnonzero(np.bincount(s.ravel())[1:]) + 1] = True
    roots = np.unique(parent[present])
    new_id = np.zeros(total, dtype=np.int32)
    new_id[roots] = np.arange(1, len(roots) + 1, dtype=np.int32)
    out = np.zeros((len(slices), *slices[0].shape) if slices else (0, 0, 0), dtype=np.int32)
    for z, s in enumerate(slices):
        if counts[z]:
            out[z] = np.where(s > 0, new_id[parent[offsets[z] + s]], 0)
    return out


def compute_supervoxels(
    image: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    parameters: SupervoxelParameters | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Supervoxels:
    """Supervoxels of ``image`` ``[Z, H, W]``; ``spacing`` in mm as (x, y, z), as SimpleITK gives it.

    Progress is reported per slice; ``cancel`` is checked between slices (:class:`JobCancelled`).
    """
    from skimage.segmentation import felzenszwalb

    p = parameters or SupervoxelParameters()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"supervoxels need a 3-D volume (slice, row, column), got shape {image.shape}")
    lo, hi = _robust_range(image, p.percentiles)
    scaled = np.clip((np.nan_to_num(image, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    body = foreground_mask(image, p)
    pixel_area = float(spacing[0]) * float(spacing[1])
    min_size = max(1, round(p.min_area_mm2 / pixel_area)) if pixel_area > 0 else 400
    reporter = ProgressReporter(image.shape[0] + 1, progress, cancel)
    reporter.check()
    slices: list[np.ndarray] = []
    for z in range(image.shape[0]):
        segments = np.zeros(image.shape[1:], dtype=np.int32)
        if body[z].any():
            raw = felzenszwalb(scaled[z], scale=p.scale, sigma=p.sigma, min_size=min_size, channel_axis=None)
            segments = np.where(body[z], raw + 1, 0).astype(np.int32)  # segments outside the body dropped
        slices.append(segments)
        reporter.advance(message=f"supervoxels: slice {z + 1} of {image.shape[0]}")
    labels = _link_slices(slices, p.link_overlap) if slices else np.zeros(image.shape, dtype=np.int32)
    reporter.advance(message="supervoxels: slices linked")
    return Supervoxels(labels, body, p)


# ------------------------------------------------------------------------------------------ the cache
def content_key(image: np.ndarray, spacing: tuple[float, ...], parameters: SupervoxelParameters) -> str:
    """The cache key: a digest of the voxel values, the grid's shape and spacing, and the parameters."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}{tuple(round(float(s), 6) for s in spacing)}".encode())
    digest.update(memoryview(array).cast("B"))
    return f"{digest.hexdigest()[:32]}-{parameters.key()}"


def cached_supervoxels(
    volume: Any,
    cache_dir: str | os.PathLike[str] | None,
    parameters: SupervoxelParameters | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Supervoxels:
    """The supervoxels of a :class:`~sd_fsmis.core.volume.Volume`, read from ``cache_dir`` when computed
    before (same voxels, same parameters), else computed and stored there. ``cache_dir=None``: no cache.

    A damaged cache entry is computed again; a cache that cannot be written is logged and skipped (the
    result is still returned): the cache is never a reason for a job to fail.
    """
    p = parameters or SupervoxelParameters()
    array = np.asarray(volume.array)
    spacing = tuple(volume.geometry.spacing)
    if cache_dir is None:
        return compute_supervoxels(array, spacing, p, progress=progress, cancel=cancel)
    folder = Path(cache_dir).expanduser()
    key = content_key(array, spacing, p)
    path = folder / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                labels = data["labels"].astype(np.int32)
                foreground = data["foreground"].astype(bool)
                meta = json.loads(str(data["meta"]))
            stored = SupervoxelParameters.from_dict(meta["parameters"])
            fits = labels.shape == array.shape and foreground.shape == array.shape
            if (
                meta.get("format") == CACHE_FORMAT
                and meta.get("version") == CACHE_VERSION
                and fits
                and stored == p
            ):
                log.info("supervoxels from the cache: %s", path)
                _touch(path)
                return Supervoxels(labels, foreground, p, str(path), from_cache=True)
            log.warning("cache entry %s does not match the volume: computing again", path)
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            log.warning("cache entry %s unreadable (%s): computing again", path, exc)
    result = compute_supervoxels(array, spacing, p, progress=progress, cancel=cancel)
    try:
        _write_cache(path, result)
        result.cache_path = str(path)
        trim_cache(folder, keep=path)
    except OSError as exc:
        log.warning("supervoxels not cached in %s: %s", folder, exc)
    return result


def _touch(path: Path) -> None:
    """Mark a cache entry as used now (its modification time orders the trimming)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def trim_cache(folder: str | os.PathLike[str], limit: int | None = None, keep: Path | None = None) -> int:
    """Delete the least recently used entries of a supervoxel cache folder until it holds at most ``limit``
    bytes (default :data:`CACHE_LIMIT_BYTES`), never ``keep``; returns the number deleted."""
    limit = CACHE_LIMIT_BYTES if limit is None else limit
    entries = []
    for p in Path(folder).glob("*.npz"):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if keep is not None and p == keep:
            continue
        try:
            p.unlink()
        except OSError:
            continue
        total -= size
        removed += 1
    if removed:
        log.info("supervoxel cache %s: %d least recently used entries removed", folder, removed)
    return removed


def _write_cache(path: Path, result: Supervoxels) -> None:
    from sd_fsmis.core.io.atomic import atomic_path

    dtype = np.uint16 if result.labels.max(initial=0) < 2**16 else np.int32
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "parameters": result.parameters.to_dict()}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            labels=result.labels.astype(dtype),
            foreground=result.foreground,
            meta=np.array(json.dumps(meta)),
        )


# ------------------------------------------------------------------------------------------ a data set
def volumes_needing_supervoxels(dataset: Any, ids: list[int] | None, source: str) -> list[int]:
    """The ids (of ``ids``, default all) whose episodes come from supervoxels the data does not bring:
    ``source="supervoxels"``: every volume without a supervoxel file; "mixed": those also without labels."""
    if source == "labels":
        return []
    wanted = dataset.ids if ids is None else list(ids)
    out = []
    for case_id in wanted:
        case = dataset.case(case_id)
        if case.supervoxels is not None or (source == "mixed" and case.label is not None):
            continue
        out.append(int(case_id))
    return out


def prepare_supervoxels(
    dataset: Any,
    ids: list[int],
    cache_dir: str | os.PathLike[str],
    parameters: SupervoxelParameters | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> int:
    """Compute (or find in the cache) the supervoxels of the volumes ``ids`` of ``dataset``, so that a
    training run finds them in ``cache_dir``; progress in volumes (fractions while a volume is computed).
    Returns how many were computed rather than found."""
    from sd_fsmis.core.io.loader import load_volume
    from sd_fsmis.core.jobs import Progress

    report = progress or (lambda p: None)
    computed = 0
    for n, case_id in enumerate(ids):
        if cancel is not None:
            cancel.raise_if_cancelled()
        case = dataset.case(case_id)
        volume = load_volume(case.image, case.series_uid, cancel=cancel)

        def per_slice(p: Progress, n: int = n, case_id: int = case_id) -> None:
            what = p.message.split(": ", 1)[-1]
            report(Progress(n + p.fraction, len(ids), f"volume {case_id}: {what}", p.elapsed_s))

        result = cached_supervoxels(volume, cache_dir, parameters, progress=per_slice, cancel=cancel)
        computed += not result.from_cache
        how = "from the cache" if result.from_cache else "computed"
        report(Progress(n + 1, len(ids), f"volume {case_id}: {result.count} supervoxels ({how})", 0.0))
    return computed


# ------------------------------------------------------------------------------------------ files
def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``FILE.nii.gz`` -> ``FILE.supervoxels.json`` (the parameters and the count, beside the label map;
    it also tells the label-map reader that the many labels are regions, not an image's intensities)."""
    return labels_sidecar_path(path, SUPERVOXELS_SIDECAR_SUFFIX)


def save_supervoxels(
    result: Supervoxels, geometry: Any, path: str | os.PathLike[str], source: str = ""
) -> Path:
    """Write the supervoxel label map as NIfTI on ``geometry`` (the image's grid; uint16, 0 = outside the
    body) and its sidecar JSON (parameters, count, the image it was computed from), both atomically."""
    import SimpleITK as sitk

    from sd_fsmis.core.io.atomic import atomic_path
    from sd_fsmis.core.io.destinations import output_error
    from sd_fsmis.core.io.imagefile import itk_reason

    target = Path(path)
    if result.labels.shape != tuple(geometry.shape):
        raise ValueError(f"supervoxels {result.labels.shape} are not on the grid {tuple(geometry.shape)}")
    dtype = np.uint16 if result.labels.max(initial=0) < 2**16 else np.uint32
    image = geometry.image_from_array(result.labels.astype(dtype))
    document = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "image": str(source),
        "labels": target.name,
        "supervoxels": result.count,
        "body_voxels": int(result.foreground.sum()),
        "parameters": result.parameters.to_dict(),
    }
    sidecar = sidecar_path(target)
    with atomic_path(target) as tmp_image, atomic_path(sidecar) as tmp_sidecar:
        try:
            sitk.WriteImage(image, str(tmp_image), useCompression=target.name.lower().endswith(".gz"))
        except RuntimeError as exc:
            reason = itk_reason(exc).replace(str(tmp_image), target.name)
            raise output_error(target, OSError(None, reason)) from exc
        tmp_sidecar.write_text(json.dumps(document, indent=2) + "\n", "utf-8")
    return target
