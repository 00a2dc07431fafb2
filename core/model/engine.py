"""The SD-FSMIS segmentation engine: a volume's query slices in batches, each support set encoded once.

``segment`` groups the query slices by the support subset that serves them
(``request.supports_for``); per group it encodes the supports, computes the VTCT token and QE prototypes
and records the support bank ONCE, then predicts the group's slices in batches (the query pass attends to
the shared bank; VAE encoding and decoding batched). Within :meth:`SDFSMISEngine.reuse_supports` (a
cohort: many studies, one support set) a support set met again, slice for slice the same images and masks,
is not encoded again: its bank and VTCT token are kept and replayed for the next study. The batch size
follows free GPU memory on CUDA (and is halved and retried on an out-of-memory error); on the CPU it is a
small constant. Progress is reported per batch and cancellation checked between batches; the bank is
cleared in any case. On the CPU, freed large blocks are reused during a segmentation instead of being
unmapped and faulted in again (``core/cpu_memory.py``; ``reuse_cpu_memory=False`` turns it off).

Binarisation (both steps are options of the model's post-processing config): foreground where
soft > r * max, the max taken over ALL predicted slices of the volume (r = 0.25), then the largest
8-connected component of each slice.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch

from sd_fsmis.core.cpu_memory import reuse_freed_memory
from sd_fsmis.core.device import (
    default_dtype,
    describe_device,
    empty_cache,
    free_memory_bytes,
    is_out_of_memory,
    select_device,
)
from sd_fsmis.core.engines.base import SegmentationRequest, SegmentationResult
from sd_fsmis.core.errors import ModelError
from sd_fsmis.core.jobs import CancelToken, ProgressCallback, ProgressReporter
from sd_fsmis.core.model.config import PostprocessingConfig
from sd_fsmis.core.model.pipeline import Episode, SDFSMISPipeline

log = logging.getLogger(__name__)

#: query slices per batch on the CPU (larger batches gain little there and cost memory)
CPU_BATCH_SIZE = 4
#: upper bound of the automatic batch size on a GPU
MAX_GPU_BATCH_SIZE = 64
#: share of the free GPU memory the automatic batch size may use
GPU_MEMORY_FRACTION = 0.7
#: encoded support sets kept by :meth:`SDFSMISEngine.reuse_supports` (each holds a U-Net bank)
KEPT_SUPPORT_SETS = 2
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def binarize(
    soft: np.ndarray, config: PostprocessingConfig, predicted: np.ndarray | None = None
) -> np.ndarray:
    """Soft masks ``[Z, H, W]`` -> bool ``[Z, H, W]``: the (relative) threshold, then the largest component.

    ``predicted`` (bool ``[Z]``) marks the slices that were predicted: the max is taken over those only and
    the others stay empty.
    """
    predicted = np.ones(soft.shape[0], bool) if predicted is None else np.asarray(predicted, bool)
    mask = np.zeros(soft.shape, dtype=bool)
    if not predicted.any():
        return mask
    values = soft[predicted]
    if config.relative_threshold:
        peak = float(values.max())
        if peak <= 0.0:
            return mask
        threshold = config.threshold * peak
    else:
        threshold = config.threshold
    mask[predicted] = values > threshold
    if config.largest_component:
        for z in np.flatnonzero(predicted):
            mask[z] = largest_component(mask[z])
    return mask


def largest_component(mask2d: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2-D bool mask (empty stays empty)."""
    labels, count = ndi.label(mask2d, structure=_EIGHT_CONNECTED)
    if count <= 1:
        return mask2d.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


class SDFSMISEngine:
    """SD-FSMIS behind :class:`~sd_fsmis.core.engines.base.SegmentationEngine`."""

    def __init__(
        self,
        pipeline: SDFSMISPipeline,
        *,
        name: str | None = None,
        batch_size: int | None = None,
        postprocessing: PostprocessingConfig | None = None,
        reuse_cpu_memory: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.name = name or pipeline.config.name or "sd-fsmis"
        #: fixed query batch size; None sizes it to free memory (CUDA) or uses CPU_BATCH_SIZE
        self.batch_size = batch_size
        self.postprocessing = postprocessing or replace(pipeline.config.postprocessing)
        #: on the CPU, reuse freed memory blocks during a segmentation (glibc; see core/cpu_memory.py)
        self.reuse_cpu_memory = reuse_cpu_memory
        self._lock = threading.Lock()
        #: support sets encoded in this cohort: key -> (context, bank entries); None outside reuse_supports
        self._kept: OrderedDict[str, tuple] | None = None
        #: support sets encoded and reused since the engine was made (a cohort's record and benchmark)
        self.supports_encoded = 0
        self.supports_reused = 0

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str | os.PathLike[str] | None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | str | None = None,
        batch_size: int | None = None,
    ) -> SDFSMISEngine:
        """Load a model (store name, folder, or None for the store's default) on ``device``.

        ``dtype``: a torch dtype, "fp32"/"bf16"/"fp16", or None for the device's default (bf16 on CUDA).
        """
        from sd_fsmis.core.model.folder import load_pipeline
        from sd_fsmis.core.model.store import resolve_model

        torch_device = select_device(device)
        if dtype is None or isinstance(dtype, str):
            dtype = default_dtype(torch_device, dtype or "auto")
        folder = resolve_model(path_or_name)
        pipeline = load_pipeline(folder, device=torch_device, dtype=dtype)
        if torch_device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed slice shapes: let cuDNN pick its fastest kernels
        log.info("loaded model %s on %s (%s)", folder, describe_device(torch_device), dtype)
        return cls(pipeline, name=Path(folder).name, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.dtype

    def describe(self) -> str:
        """``"<model> on <device> (<dtype>)"``, for the status bar and logs."""
        return f"{self.name} on {describe_device(self.device)} ({str(self.dtype).replace('torch.', '')})"

    def close(self) -> None:
        """Drop the networks and give cached GPU memory back (before loading another model)."""
        with self._lock:
            device = self.device
            self.pipeline.bank.clear()
            for module in self.pipeline.modules.values():
                torch.nn.Module.to(module, device="meta")
            empty_cache(device)

    # -- batch size ---------------------------------------------------------------------------------------
    def bytes_per_slice(self) -> int:
        """Rough peak memory per query slice in a batch (VAE decoder activations dominate)."""
        size = self.pipeline.config.preprocessing.image_size
        element = torch.finfo(self.dtype).bits // 8
        return int(1600 * size * size * element)

    def auto_batch_size(self, slices: int) -> int:
        """Query slices per batch: the fixed size if set; on CUDA what fits in free memory; else CPU's."""
        if self.batch_size:
            return max(1, min(self.batch_size, slices))
        free = free_memory_bytes(self.device)
        if free is None:
            return max(1, min(CPU_BATCH_SIZE, slices))
        fit = int(free * GPU_MEMORY_FRACTION) // max(1, self.bytes_per_slice())
        return max(1, min(MAX_GPU_BATCH_SIZE, slices, fit))

    # -- a cohort: one support set, many studies -----------------------------------------------------------
    @contextlib.contextmanager
    def reuse_supports(self) -> Iterator[SDFSMISEngine]:
        """Within the block, each support set is encoded once (VAE, VTCT token, QE prototypes, the support
        pass's bank) and reused for every later query with the same support slices; forgotten on exit."""
        with self._lock:
            self._kept = OrderedDict()
        try:
            yield self
        finally:
            with self._lock:
                self._kept = None
                self.pipeline.bank.clear()
                empty_cache(self.device)

    @contextlib.contextmanager
    def _episode(self, images: list[np.ndarray], masks: list[np.ndarray]) -> Iterator[Episode]:
        """An episode for these supports: encoded now, or replayed when kept by :meth:`reuse_supports`."""
        key = _support_key(images, masks) if self._kept is not None else None
        kept = self._kept.get(key) if key is not None else None
        if kept is not None:
            context, entries = kept
            self._kept.move_to_end(key)
            self.supports_reused += 1
            with self.pipeline.bank.replay(("off", entries)):
                yield Episode(self.pipeline, context)
            return
        with self.pipeline.episode(images, masks) as episode:
            self.supports_encoded += 1
            if key is not None:
                self._kept[key] = (episode.context, self.pipeline.bank.snapshot()[1])
                while len(self._kept) > KEPT_SUPPORT_SETS:
                    self._kept.popitem(last=False)
            yield episode

    # -- segmentation -------------------------------------------------------------------------------------
    def segment(
        self,
        request: SegmentationRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentationResult:
        """Segment the request's query slices; raise JobCancelled between batches when cancelled."""
        reuse = self.reuse_cpu_memory and self.device.type == "cpu"
        with self._lock, torch.inference_mode(), reuse_freed_memory(reuse):
            return self._segment(request, progress, cancel)

    def _segment(
        self, request: SegmentationRequest, progress: ProgressCallback | None, cancel: CancelToken | None
    ) -> SegmentationResult:
        start = time.perf_counter()
        query = np.asarray(request.query, dtype=np.float32)
        indices = request.slice_indices
        reporter = ProgressReporter(len(indices), progress, cancel)
        reporter.report("preparing")
        reporter.check()
        groups: OrderedDict[tuple[int, ...], list[int]] = OrderedDict()
        for z in indices:
            groups.setdefault(tuple(request.supports_for(z)), []).append(z)
        soft = np.zeros(query.shape, dtype=np.float32)
        batch = self.auto_batch_size(len(indices))
        batches = 0
        encoded, reused = self.supports_encoded, self.supports_reused
        try:
            for support_ids, slices in groups.items():
                if not support_ids:
                    raise ModelError("a query slice has no support example assigned")
                images = [request.supports[i].image for i in support_ids]
                masks = [request.supports[i].mask for i in support_ids]
                with self._episode(images, masks) as episode:
                    position = 0
                    while position < len(slices):
                        reporter.check()
                        part = slices[position : position + batch]
                        try:
                            result = episode.predict(query[part])  # [b, H, W]
                        except Exception as exc:
                            if not is_out_of_memory(exc) or batch == 1:
                                if is_out_of_memory(exc):
                                    raise MemoryError(
                                        f"out of memory on {describe_device(self.device)}"
                                    ) from exc
                                raise
                            empty_cache(self.device)
                            batch = max(1, batch // 2)
                            log.warning("out of memory: retrying with %d query slices per batch", batch)
                            continue
                        soft[part] = result.float().cpu().numpy()
                        position += len(part)
                        batches += 1
                        reporter.advance(len(part), f"{reporter.done + len(part)}/{len(indices)} slices")
        finally:
            self.pipeline.bank.clear()
        predicted = np.zeros(query.shape[0], dtype=bool)
        predicted[indices] = True
        mask = binarize(soft, self.postprocessing, predicted)
        seconds = time.perf_counter() - start
        info = {
            "engine": "sd-fsmis",
            "model": self.name,
            "device": describe_device(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "batch_size": batch,
            "batches": batches,
            "support_sets": len(groups),
            "support_sets_encoded": self.supports_encoded - encoded,
            "support_sets_reused": self.supports_reused - reused,
            "shots": sorted({len(k) for k in groups}),
            "postprocessing": {
                "relative_threshold": self.postprocessing.relative_threshold,
                "threshold": self.postprocessing.threshold,
                "largest_component": self.postprocessing.largest_component,
            },
        }
        return SegmentationResult(mask=mask, soft=soft, seconds=seconds, info=info)


def _support_key(images: list[np.ndarray], masks: list[np.ndarray]) -> str:
    """The identity of a support set: its slices' pixels and masks, in order."""
    digest = hashlib.sha1(usedforsecurity=False)
    for image, mask in zip(images, masks, strict=True):
        for array in (np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(mask, dtype=bool)):
            digest.update(str(array.shape).encode())
            digest.update(array.tobytes())
    return digest.hexdigest()
