"""The cohort core: studies of a folder or manifest, the run record and resume, shards, and the model engine
encoding one support set once for many studies (tiny random model on cropped CHAOS volumes)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from sd_fsmis.core.cohort.record import RecordWriter, finished, read_records, settings_hash, summary_table
from sd_fsmis.core.cohort.run import CohortSettings, MemoryStudy, Shard, segment_studies
from sd_fsmis.core.cohort.studies import CohortError, open_cohort, study_id
from sd_fsmis.core.engines.registry import register_engine, unregister_engine
from sd_fsmis.core.engines.segmentation import SupportSource, segment_volume, support_mask_for_label
from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.io.loader import load_volume
from sd_fsmis.core.volume import Volume


def test_a_folder_lists_nifti_files_and_dicom_folders_by_name(tmp_path, chaos_dir):
    folder = tmp_path / "studies"
    folder.mkdir()
    for i in (10, 2):
        (folder / f"image_{i}.nii.gz").symlink_to(chaos_dir / f"images/image_{i}.nii.gz")
    (folder / "patient 7").mkdir()  # a DICOM study: named by its folder
    (folder / "notes.txt").write_text("not a study")
    (folder / "broken.nii").write_bytes(b"\0" * 100)  # listed by name; fails when read, not here
    out = folder / "masks"
    out.mkdir()
    (out / "image_2.nii.gz").write_bytes(b"x")  # an earlier run's output inside: never a study
    cohort = open_cohort(folder, exclude=[out])
    assert [s.id for s in cohort.studies] == ["broken", "image_2", "image_10", "patient_7"]
    assert cohort.left_out == ["notes.txt"]
    assert study_id("a/b:c.nii.gz") == "a_b_c"


def test_a_chaos_like_folder_gives_its_images(chaos_dir):
    cohort = open_cohort(chaos_dir)
    assert len(cohort.studies) == 20 and cohort.studies[0].id == "image_1"
    assert all("/images/" in s.image for s in cohort.studies)


def test_a_manifest_gives_each_study_its_own_supports(tmp_path):
    (tmp_path / "m.json").write_text(
        json.dumps(
            {
                "studies": [
                    {"id": "p1", "image": "p1.nii.gz"},
                    {"id": "p2", "image": "p2.nii.gz", "support_mask": "p2_paint.nii.gz", "label": 3},
                    {
                        "image": "sub/p3.nii.gz",
                        "supports": [{"image": "atlas.nii.gz", "mask": "atlas_l.nii.gz", "slices": [4, 9]}],
                    },
                ]
            }
        )
    )
    studies = open_cohort(tmp_path / "m.json").studies
    assert [s.id for s in studies] == ["p1", "p2", "p3"]
    assert studies[0].supports == () and studies[0].label is None
    own = studies[1].supports[0]
    assert own.image is None and own.mask == str(tmp_path / "p2_paint.nii.gz") and studies[1].label == 3
    atlas = studies[2].supports[0]
    assert atlas.image == str(tmp_path / "atlas.nii.gz") and atlas.slices == (4, 9)
    (tmp_path / "m.csv").write_text(
        "id,image,support,support_mask,support_slices,label\nq,q.nii.gz,s.nii.gz,s_l.nii.gz,3;5,2\n"
    )
    (row,) = open_cohort(tmp_path / "m.csv").studies
    assert row.supports[0].slices == (3, 5) and row.supports[0].image == str(tmp_path / "s.nii.gz")
    (tmp_path / "bad.json").write_text(json.dumps({"studies": [{"image": "a.nii.gz", "label": "liver"}]}))
    with pytest.raises(CohortError, match="label 'liver' is not a label value"):
        open_cohort(tmp_path / "bad.json")
    (tmp_path / "twice.json").write_text(json.dumps([{"image": "a.nii.gz"}, {"image": "x/a.nii"}]))
    with pytest.raises(CohortError, match="two studies have the id a"):
        open_cohort(tmp_path / "twice.json")


def test_shards_split_the_studies_without_overlap():
    studies = list(range(11))
    parts = [Shard(i, 3).take(studies) for i in range(3)]
    assert sorted(x for part in parts for x in part) == studies and all(len(p) in (3, 4) for p in parts)
    with pytest.raises(Exception, match="does not exist"):
        Shard(3, 3)


def test_the_record_tolerates_a_cut_line_and_resume_needs_the_mask(tmp_path):
    writer = RecordWriter(tmp_path / "run-record.jsonl")
    writer.write({"study": "a", "status": "done", "out": "a.nii.gz", "settings": "h1", "finished_at": "1"})
    writer.write({"study": "b", "status": "done", "out": "b.nii.gz", "settings": "h1", "finished_at": "2"})
    writer.write({"study": "c", "status": "failed", "error": "corrupt", "finished_at": "3"})
    with open(tmp_path / "run-record.jsonl", "a") as f:
        f.write('{"study": "d", "stat')  # a crash in the middle of a line
    (tmp_path / "a.nii.gz").write_bytes(b"mask")  # b's mask was deleted since: b is done again
    lines = (tmp_path / "run-record.jsonl").read_text().splitlines()
    assert list(json.loads(lines[0]))[:8] == [
        "study", "engine", "device", "seconds", "voxels", "ml", "warnings", "error"
    ]  # fmt: skip
    assert [e["study"] for e in read_records(tmp_path)] == ["a", "b", "c"]
    assert finished(tmp_path) == {"a": "h1"}
    table = summary_table(read_records(tmp_path), skipped=["z"])
    assert (
        "| c | failed |" in table and "corrupt" in table and "2 segmented, 1 failed, 1 done before" in table
    )
    assert settings_hash({"a": 1, "b": [1, 2]}) == settings_hash({"b": [1, 2], "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})


def _cropped(chaos_dir, case: int, first: int, count: int) -> tuple[Volume, np.ndarray]:
    """A CHAOS volume cut to ``count`` slices from ``first`` (the tiny model needs no more), and its liver."""
    volume = load_volume(chaos_dir / f"images/image_{case}.nii.gz")
    labels = LabelMap.load(chaos_dir / f"labels/label_{case}.nii.gz", like=volume.geometry)
    liver = support_mask_for_label(labels, 1)
    cut = Volume.from_sitk(volume.to_sitk()[:, :, first : first + count])  # its true place in space
    return cut, liver[first : first + count].copy()


def test_the_model_engine_encodes_the_cohorts_support_set_once(chaos_dir, monkeypatch):
    import torch

    from sd_fsmis.core.model.engine import SDFSMISEngine
    from sd_fsmis.core.model.presets import build_random_pipeline

    torch.set_num_threads(1)
    support_volume, support_mask = _cropped(chaos_dir, 8, 14, 3)
    support = SupportSource(support_volume, support_mask, slices=[1], name="image_8")
    queries = [_cropped(chaos_dir, case, 12, 3)[0] for case in (1, 2, 3)]
    engine = SDFSMISEngine(build_random_pipeline("tiny", seed=0), name="tiny-cohort", batch_size=2)
    register_engine("tiny-cohort", lambda: engine)
    try:
        records, masks = [], {}

        def keep(record, outcome):
            records.append(record)
            masks[record["study"]] = outcome.mask

        items = [
            MemoryStudy(f"q{k}", v, [support], label=1, label_name="liver") for k, v in enumerate(queries)
        ]
        segment_studies(items, CohortSettings(engine="tiny-cohort", workers=0), on_study=keep)
        assert [r["status"] for r in records] == ["done"] * 3
        assert [r["support_sets_encoded"] for r in records] == [1, 0, 0]
        assert [r["support_sets_reused"] for r in records] == [0, 1, 1]
        assert engine.pipeline.bank.is_empty  # nothing kept once the cohort is done
        # the reused bank and token give exactly what encoding the supports again gives
        alone = segment_volume(queries[2], [support], engine, label=1)
        assert alone.result.info["support_sets_encoded"] == 1
        assert np.array_equal(alone.mask, masks["q2"])
        # a study's own supports (painted on itself) are not another study's: encoded for it
        own = SupportSource(queries[0], np.zeros(queries[0].shape, bool) | _cropped(chaos_dir, 1, 12, 3)[1])
        own = replace(own, slices=[1], is_query=True)
        records.clear()
        segment_studies(
            [MemoryStudy("p", queries[0], [own]), MemoryStudy("q", queries[1], [support])],
            CohortSettings(engine="tiny-cohort", workers=0),
            on_study=keep,
        )
        assert [r["support_sets_encoded"] for r in records] == [1, 1]
    finally:
        unregister_engine("tiny-cohort")
