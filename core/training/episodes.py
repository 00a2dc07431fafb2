"""Episodic training data: (support, query) slice episodes drawn from labelled volumes.

An episode (method section, "Training"): a training volume, a class present in it, K+1 consecutive slices
that each hold at least ``min_pixels`` foreground pixels of that class; the last is the query, the others
the support; the order is reversed at random. Which classes may be targets follows the setting of
docs/fsmis-protocol.md:

- Setting 1: the test classes are never targets (they may still appear in the images);
- Setting 2: every slice that holds ANY test class (rule ``any``; ``all``: only slices holding all of them,
  ADNet's easier rule) is removed before windows are formed, so the test organs are never seen. Rule
  ``reference``: the reference's code removes the slices holding all four abdominal organs (liver, both
  kidneys, spleen), whatever the test classes (54 of 544 slices of CHAOS fold 0, against 195 for ``all``
  and more for ``any``); the test classes are still never targets.

Episode minimum: ``every`` (ours) needs each slice of the window to hold ``min_pixels`` pixels of the class;
``largest`` (the reference) needs each to hold the class and only the largest of them ``min_pixels``.

The self-supervised variant (``source="supervoxels"``) draws the "class" from the supervoxel pseudo-labels
instead of the annotation: the data's own (``supervoxels/`` of a CHAOS-like folder, a manifest's
"supervoxels") or, where a volume has none, computed by :mod:`sd_fsmis.core.training.supervoxels` (and kept
in its cache). ``source="mixed"``: labels where a volume has a label map, supervoxels elsewhere.

Sampling is deterministic for a seed: one ``numpy.random.Generator`` drives the choices (and the
augmentation, when given); :meth:`EpisodeSampler.state_dict` / :meth:`load_state_dict` save and restore it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sd_fsmis.core.engines.support import normalize_intensities
from sd_fsmis.core.errors import UserError
from sd_fsmis.core.io.datasets import CHAOS_CLASSES, FewShotDataset
from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback
from sd_fsmis.core.training.augmentation import AugmentationConfig, augment_episode_slices

SETTINGS = (1, 2)
EXCLUSION_RULES = ("any", "all", "reference")
SOURCES = ("labels", "supervoxels", "mixed")
#: the reference's minimum number of foreground pixels per episode slice
MIN_PIXELS = 200
#: which slices of a window need ``min_pixels``: "every" one (ours) or the "largest" only (the reference)
EPISODE_MINIMUMS = ("every", "largest")
#: the organs the reference's Setting 2 removes slices for when a slice holds them all (its CHAOS labels
#: [1, 2, 3, 4] and Synapse labels [1, 2, 3, 6] are these four)
REFERENCE_EXCLUSION_ORGANS = ("liver", "right kidney", "left kidney", "spleen")


class EpisodeError(UserError):
    """Training data from which no episode can be drawn as asked."""


@dataclass
class TrainingVolume:
    """One volume for episodic training: intensities normalised to [0, 1] and an integer label map."""

    id: int
    image: np.ndarray  # [Z, H, W] float32 in [0, 1]
    labels: np.ndarray  # [Z, H, W] integer classes (or supervoxel ids), 0 = background
    #: the annotation, when ``labels`` holds pseudo-labels (used for Setting 2's slice removal)
    annotation: np.ndarray | None = None
    #: ``labels`` holds supervoxel ids (pseudo-labels), not classes
    pseudo: bool = False

    def __post_init__(self) -> None:
        if self.image.shape != self.labels.shape:
            raise EpisodeError(
                f"volume {self.id}: image {self.image.shape} and labels {self.labels.shape} differ"
            )


@dataclass
class Episode:
    """K support slices and one query slice of one class (native resolution)."""

    support_images: np.ndarray  # [K, H, W] float32 in [0, 1]
    support_masks: np.ndarray  # [K, H, W] float32 0/1
    query_images: np.ndarray  # [1, H, W]
    query_masks: np.ndarray  # [1, H, W]
    volume_id: int
    label: int
    slices: list[int] = field(default_factory=list)  # support slices, then the query slice
    augmented: str = ""  # "support", "query", "" or (reference preset) "support geometry, query gamma"


def load_training_volumes(
    dataset: FewShotDataset,
    ids: Sequence[int],
    *,
    source: str = "labels",
    supervoxel_cache: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[TrainingVolume]:
    """Read the volumes ``ids`` of ``dataset`` (normalised as for inference) with their label maps.

    ``source``: "labels", "supervoxels" (the data's supervoxel files, else computed and cached in
    ``supervoxel_cache``) or "mixed" (labels where present, supervoxels elsewhere). Progress is reported per
    volume (and per slice while supervoxels are computed); ``cancel`` is checked in between.
    """
    from sd_fsmis.core.io.labelmap import LabelMap
    from sd_fsmis.core.io.loader import load_volume

    if source not in SOURCES:
        raise EpisodeError(f"unknown episode source '{source}' (choose labels, supervoxels or mixed)")
    out = []
    report = progress or (lambda p: None)
    for n, case_id in enumerate(ids):
        if cancel is not None:
            cancel.raise_if_cancelled()
        case = dataset.case(case_id)
        volume = load_volume(case.image, case.series_uid)
        annotation = None
        if case.label is not None:
            # a label map on another grid is refused with a message naming every difference
            annotation = np.asarray(
                LabelMap.load(case.label, like=volume.geometry, labels=dataset.class_names).array
            )
        elif source == "labels":
            raise EpisodeError(f"volume {case_id} has no label map (train it with --source supervoxels)")
        image = normalize_intensities(volume.array)
        if source == "labels" or (source == "mixed" and annotation is not None):
            out.append(TrainingVolume(case_id, image, annotation.astype(np.int64)))
        elif case.supervoxels is not None:
            pseudo = np.asarray(load_volume(case.supervoxels).array).round().astype(np.int64)
            if pseudo.shape != image.shape:
                raise EpisodeError(f"volume {case_id}: supervoxels {pseudo.shape} vs image {image.shape}")
            out.append(TrainingVolume(case_id, image, pseudo, annotation, pseudo=True))
        else:
            from sd_fsmis.core.training.supervoxels import cached_supervoxels

            def per_slice(p: Progress, n: int = n, case_id: int = case_id) -> None:
                report(
                    Progress(
                        n + p.fraction,
                        len(ids),
                        f"supervoxels of volume {case_id}: {p.message.split(': ', 1)[-1]}",
                        p.elapsed_s,
                        {"volume": case_id},
                    )
                )

            computed = cached_supervoxels(volume, supervoxel_cache, progress=per_slice, cancel=cancel)
            labels = computed.labels.astype(np.int64)
            out.append(TrainingVolume(case_id, image, labels, annotation, pseudo=True))
        report(Progress(n + 1, len(ids), f"volume {case_id} read", 0.0, {"volume": case_id}))
    return out


def reference_exclusion_classes(class_names: Mapping[int, str]) -> list[int]:
    """The label values of :data:`REFERENCE_EXCLUSION_ORGANS` among ``class_names`` (by name, any case);
    :class:`EpisodeError` when one is missing (the reference's rule is defined for these four organs)."""
    by_name = {str(name).strip().lower(): int(value) for value, name in class_names.items()}
    missing = [organ for organ in REFERENCE_EXCLUSION_ORGANS if organ not in by_name]
    if missing:
        raise EpisodeError(
            "the reference's Setting-2 rule removes the slices holding liver, right kidney, left kidney and "
            f"spleen together; this data has no class named {', '.join(missing)} (use --exclusion any or all)"
        )
    return sorted(by_name[organ] for organ in REFERENCE_EXCLUSION_ORGANS)


def excluded_slices(
    annotation: np.ndarray,
    test_classes: Sequence[int],
    rule: str = "any",
    reference_classes: Sequence[int] | None = None,
) -> np.ndarray:
    """bool ``[Z]``: the slices Setting 2 removes: holding any / all of ``test_classes`` (rules ``any`` /
    ``all``) or all of ``reference_classes`` (rule ``reference``, whatever the test classes; default the
    CHAOS labels of the four organs)."""
    if rule not in EXCLUSION_RULES:
        raise EpisodeError(f"unknown exclusion rule '{rule}' (choose {', '.join(EXCLUSION_RULES)})")
    if rule == "reference":
        classes = list(
            reference_exclusion_classes(CHAOS_CLASSES) if reference_classes is None else reference_classes
        )
    else:
        classes = list(test_classes)
    if not classes:
        return np.zeros(annotation.shape[0], dtype=bool)
    flat = annotation.reshape(annotation.shape[0], -1)
    holds = np.stack([(flat == c).any(axis=1) for c in classes], axis=1)  # [Z, C]
    return holds.any(axis=1) if rule == "any" else holds.all(axis=1)


def window_starts(
    counts: np.ndarray, removed: np.ndarray, length: int, min_pixels: int, minimum: str
) -> list[int]:
    """Starts of the windows of ``length`` consecutive slices usable for a class with pixel ``counts [Z]``:
    no slice ``removed``; ``every`` slice with ``min_pixels``, or (``largest``) each slice holding the class
    and the largest with ``min_pixels``."""
    if minimum == "every":
        return _window_starts((counts >= min_pixels) & ~removed, length)
    if minimum != "largest":
        raise EpisodeError(f"unknown episode minimum '{minimum}' (choose {', '.join(EPISODE_MINIMUMS)})")
    starts = _window_starts((counts > 0) & ~removed, length)
    return [s for s in starts if int(counts[s : s + length].max()) >= min_pixels]


def _slice_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes present and their pixel counts per slice: ``classes [C]``, ``counts [Z, C]``."""
    classes = np.unique(labels)
    classes = classes[classes > 0]
    index = np.searchsorted(classes, labels)  # position of each value among the classes
    counts = np.zeros((labels.shape[0], len(classes)), dtype=np.int64)
    fg = labels > 0
    for z in range(labels.shape[0]):
        counts[z] = np.bincount(index[z][fg[z]], minlength=len(classes))
    return classes, counts


class EpisodeSampler:
    """Draw episodes from training volumes, deterministically for a seed.

    ``volume -> class -> window``: a volume uniformly among those with at least one valid window, a class
    uniformly among its valid classes, a window of ``shots + 1`` consecutive slices uniformly among the
    class's valid windows.
    """

    def __init__(
        self,
        volumes: Sequence[TrainingVolume],
        *,
        shots: int = 1,
        min_pixels: int = MIN_PIXELS,
        setting: int = 1,
        test_classes: Sequence[int] = (),
        exclusion: str = "any",
        classes: Sequence[int] | None = None,
        augmentation: AugmentationConfig | None = None,
        seed: int = 42,
        episode_minimum: str = "every",
        reference_classes: Sequence[int] | None = None,
    ) -> None:
        if setting not in SETTINGS:
            raise EpisodeError(f"unknown setting {setting} (choose 1 or 2)")
        if exclusion not in EXCLUSION_RULES:
            raise EpisodeError(f"unknown exclusion rule '{exclusion}' (choose {', '.join(EXCLUSION_RULES)})")
        if episode_minimum not in EPISODE_MINIMUMS:
            raise EpisodeError(
                f"unknown episode minimum '{episode_minimum}' (choose {', '.join(EPISODE_MINIMUMS)})"
            )
        if shots < 1:
            raise EpisodeError("shots must be at least 1")
        self.volumes = list(volumes)
        self.shots = int(shots)
        self.min_pixels = int(min_pixels)
        self.setting = int(setting)
        self.test_classes = sorted(int(c) for c in test_classes)
        self.exclusion = exclusion
        self.episode_minimum = episode_minimum
        self.augmentation = augmentation
        self.rng = np.random.default_rng(seed)
        #: per volume: {class: [window start slices]}
        self.windows: list[dict[int, list[int]]] = []
        allowed = None if classes is None else {int(c) for c in classes}
        for vol in self.volumes:
            pseudo = vol.pseudo or vol.annotation is not None
            annotation = vol.annotation if pseudo else vol.labels
            removed = (
                excluded_slices(annotation, self.test_classes, exclusion, reference_classes)
                if self.setting == 2 and annotation is not None
                else np.zeros(vol.labels.shape[0], dtype=bool)
            )
            present, counts = _slice_counts(vol.labels)
            per_class: dict[int, list[int]] = {}
            for j, c in enumerate(present):
                c = int(c)
                if not pseudo and (c in self.test_classes or (allowed is not None and c not in allowed)):
                    continue
                starts = window_starts(
                    counts[:, j], removed, self.shots + 1, self.min_pixels, episode_minimum
                )
                if starts:
                    per_class[c] = starts
            self.windows.append(per_class)
        self._usable = [i for i, w in enumerate(self.windows) if w]
        if not self._usable:
            which = "each" if episode_minimum == "every" else "the largest of"
            raise EpisodeError(
                f"no training episode can be drawn: no volume has {self.shots + 1} consecutive slices of a "
                f"training class with >= {self.min_pixels} pixels in {which} them"
            )

    @property
    def classes(self) -> list[int]:
        """The classes episodes are drawn from (annotation mode) or the number of pseudo-classes."""
        return sorted({c for w in self.windows for c in w})

    def slices_used(self, volume_index: int) -> set[int]:
        """Every slice of a volume that some episode can contain."""
        return {
            s + i
            for starts in self.windows[volume_index].values()
            for s in starts
            for i in range(self.shots + 1)
        }

    def sample(self) -> Episode:
        """One episode (augmented when the sampler has an augmentation config)."""
        rng = self.rng
        v = self._usable[int(rng.integers(len(self._usable)))]
        vol, windows = self.volumes[v], self.windows[v]
        classes = sorted(windows)
        label = classes[int(rng.integers(len(classes)))]
        starts = windows[label]
        start = starts[int(rng.integers(len(starts)))]
        slices = list(range(start, start + self.shots + 1))
        if rng.random() < 0.5:
            slices.reverse()
        images = vol.image[slices].astype(np.float32)  # [K+1, H, W]
        masks = (vol.labels[slices] == label).astype(np.float32)
        episode = Episode(
            support_images=images[:-1],
            support_masks=masks[:-1],
            query_images=images[-1:],
            query_masks=masks[-1:],
            volume_id=vol.id,
            label=int(label),
            slices=slices,
        )
        if self.augmentation is not None:
            _augment_episode(episode, self.augmentation, rng)
        return episode

    # -- state for resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The generator's state (JSON-serialisable)."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def _window_starts(ok: np.ndarray, length: int) -> list[int]:
    """Starts ``s`` with ``ok[s:s+length]`` all true."""
    if len(ok) < length:
        return []
    run = np.convolve(ok.astype(np.int64), np.ones(length, dtype=np.int64), mode="valid")
    return [int(s) for s in np.flatnonzero(run == length)]


def _augment_episode(episode: Episode, config: AugmentationConfig, rng: np.random.Generator) -> None:
    """Augment the support (every shot) or the query, 50/50 (method section; see the presets of
    :mod:`sd_fsmis.core.training.augmentation`)."""
    (
        episode.support_images,
        episode.support_masks,
        episode.query_images,
        episode.query_masks,
        episode.augmented,
    ) = augment_episode_slices(
        episode.support_images, episode.support_masks, episode.query_images, episode.query_masks, config, rng
    )
