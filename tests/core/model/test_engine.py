"""The SD-FSMIS engine on the tiny model: grouping, batching, progress, cancellation, binarisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_fsmis.core.engines.base import SegmentationEngine
from sd_fsmis.core.errors import JobCancelled
from sd_fsmis.core.jobs import CancelToken
from sd_fsmis.core.model.config import PostprocessingConfig
from sd_fsmis.core.model.engine import SDFSMISEngine, binarize, largest_component


def test_engine_implements_the_interface(tiny_pipeline):
    engine = SDFSMISEngine(tiny_pipeline, name="tiny")
    assert isinstance(engine, SegmentationEngine)
    assert engine.auto_batch_size(40) == 4  # the CPU default
    assert SDFSMISEngine(tiny_pipeline, batch_size=3).auto_batch_size(2) == 2


def test_segment_matches_the_pipeline_and_reports_progress_per_batch(tiny_pipeline, phantom, make_request):
    volume, mask = phantom
    engine = SDFSMISEngine(tiny_pipeline, name="tiny", batch_size=2)
    reports = []
    result = engine.segment(make_request(volume, mask, slices=[0, 1, 3, 4, 5]), progress=reports.append)
    expected = tiny_pipeline.segment_slices([volume[2]], [mask], volume[[0, 1, 3, 4, 5]])
    assert result.mask.shape == volume.shape and result.mask.dtype == bool
    np.testing.assert_allclose(result.soft[[0, 1, 3, 4, 5]], expected, atol=2e-5, rtol=0)
    assert not result.soft[2].any() and not result.mask[2].any()  # not asked for: left empty
    assert [r.done for r in reports] == [0, 2, 4, 5] and reports[-1].total == 5
    assert result.info["batches"] == 3 and result.info["support_sets"] == 1 and result.info["shots"] == [1]
    assert tiny_pipeline.bank.is_empty


def test_slices_are_grouped_by_their_support_subset(tiny_pipeline, phantom, make_request):
    volume, mask = phantom
    assignment = {0: [0], 1: [0], 2: [1], 3: [0, 1], 4: [1], 5: [0, 1]}
    request = make_request(volume, mask, shots=(2, 3), assignment=assignment)
    result = SDFSMISEngine(tiny_pipeline, batch_size=8).segment(request)
    assert result.info["support_sets"] == 3 and result.info["shots"] == [1, 2]
    supports = request.supports
    for ids, slices in (([0], [0, 1]), ([1], [2, 4]), ([0, 1], [3, 5])):
        expected = tiny_pipeline.segment_slices(
            [supports[i].image for i in ids], [supports[i].mask for i in ids], volume[slices]
        )
        np.testing.assert_allclose(result.soft[slices], expected, atol=2e-5, rtol=0)


def test_cancel_between_batches_clears_the_bank(tiny_pipeline, phantom, make_request):
    volume, mask = phantom
    engine = SDFSMISEngine(tiny_pipeline, batch_size=2)
    token = CancelToken()
    done = []

    def progress(p):
        done.append(p.done)
        if p.done >= 2:
            token.cancel()

    with pytest.raises(JobCancelled):
        engine.segment(make_request(volume, mask), progress=progress, cancel=token)
    assert done == [0, 2]
    assert tiny_pipeline.bank.is_empty and tiny_pipeline.bank.mode == "off"
    # a cancelled token before the start: nothing runs
    with pytest.raises(JobCancelled):
        engine.segment(make_request(volume, mask), cancel=token)


def test_out_of_memory_halves_the_batch_and_retries(tiny_pipeline, phantom, make_request, monkeypatch):
    """Fault injection around the real predict: an accelerator OOM for batches above 3 slices."""
    from sd_fsmis.core.model import pipeline as pipeline_module

    volume, mask = phantom
    real_predict = pipeline_module.Episode.predict
    sizes = []

    def predict_or_oom(self, query):
        sizes.append(len(query))
        if len(query) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real_predict(self, query)

    monkeypatch.setattr(pipeline_module.Episode, "predict", predict_or_oom)
    result = SDFSMISEngine(tiny_pipeline, batch_size=6).segment(make_request(volume, mask))
    assert sizes == [6, 3, 3] and result.info["batch_size"] == 3
    monkeypatch.undo()
    expected = tiny_pipeline.segment_slices([volume[2]], [mask], volume)
    np.testing.assert_allclose(result.soft, expected, atol=2e-5, rtol=0)


def test_relative_threshold_uses_the_max_over_the_whole_volume():
    soft = np.zeros((3, 5, 5), np.float32)
    soft[0, 1:3, 1:3] = 1.0
    soft[1, 2, 2] = 0.3  # above 0.25 * 1.0 (the volume's max), although it is this slice's only value
    soft[2, 2, 2] = 0.2  # below
    mask = binarize(soft, PostprocessingConfig())
    assert mask[0].sum() == 4 and mask[1].sum() == 1 and mask[2].sum() == 0
    absolute = binarize(soft, PostprocessingConfig(relative_threshold=False, threshold=0.5))
    assert absolute[0].sum() == 4 and absolute[1].sum() == 0
    # slices not predicted do not count for the max and stay empty
    only = binarize(soft, PostprocessingConfig(), predicted=np.array([False, True, True]))
    assert only[0].sum() == 0 and only[1].sum() == 1 and only[2].sum() == 1


def test_largest_component_is_eight_connected():
    mask = np.zeros((7, 7), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # 3 pixels touching by corners: one 8-connected component
    mask[4:6, 5:7] = True  # a 2 x 2 square: 4 pixels
    mask[0, 5] = True  # a lone pixel
    kept = largest_component(mask)
    assert kept.sum() == 4 and kept[4:6, 5:7].all()
    mask[3, 3] = mask[4, 4] = True  # the diagonal now reaches the square by a corner: 9 pixels
    assert largest_component(mask).sum() == 9
    soft = np.where(mask, 1.0, 0.0)[None].astype(np.float32)
    assert binarize(soft, PostprocessingConfig(largest_component=False)).sum() == mask.sum() == 10
    assert binarize(soft, PostprocessingConfig()).sum() == 9
    assert not largest_component(np.zeros((4, 4), bool)).any()


def test_from_pretrained_by_name_and_close(tiny_pipeline, phantom, make_request):
    from sd_fsmis.core.model.folder import save_pipeline
    from sd_fsmis.paths import models_dir

    save_pipeline(tiny_pipeline, models_dir() / "tiny-engine", name="tiny-engine")
    engine = SDFSMISEngine.from_pretrained("tiny-engine", device="cpu", batch_size=3)
    assert engine.name == "tiny-engine" and engine.batch_size == 3 and engine.dtype == torch.float32
    assert engine.describe() == "tiny-engine on CPU (float32)"
    volume, mask = phantom
    result = engine.segment(make_request(volume, mask))
    expected = tiny_pipeline.segment_slices([volume[2]], [mask], volume)
    np.testing.assert_allclose(result.soft, expected, atol=2e-5, rtol=0)  # batches of 3 vs one of 6
    engine.close()
    assert engine.device.type == "meta"
