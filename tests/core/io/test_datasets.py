"""Datasets: a CHAOS-like folder, and JSON/CSV manifests for a user's own data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sd_fsmis.core.errors import GeometryMismatchError, UserError
from sd_fsmis.core.io.datasets import DatasetError, FewShotDataset
from sd_fsmis.core.training.episodes import load_training_volumes


def test_chaos_folder_ids_sorted_as_integers(chaos_dir):
    dataset = FewShotDataset.open(chaos_dir)
    assert dataset.ids == sorted(dataset.ids) and len(dataset.ids) == 20
    assert dataset.ids[:5] == [1, 2, 3, 5, 8]
    assert dataset.class_name(1) == "liver"


def test_json_manifest_with_class_names(chaos_dir, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "classes": {"1": "liver", "4": "spleen"},
                "cases": [
                    {
                        "id": 5,
                        "image": str(chaos_dir / "images/image_5.nii.gz"),
                        "label": str(chaos_dir / "labels/label_5.nii.gz"),
                    },
                    {
                        "id": 2,
                        "image": str(chaos_dir / "images/image_2.nii.gz"),
                        "label": str(chaos_dir / "labels/label_2.nii.gz"),
                    },
                ],
            }
        )
    )
    dataset = FewShotDataset.open(manifest)
    assert dataset.ids == [2, 5]
    assert dataset.class_name(4) == "spleen" and dataset.class_name(2) == "Label 2"
    volumes = load_training_volumes(dataset, [2])
    assert volumes[0].image.shape == volumes[0].labels.shape


def test_csv_manifest_relative_paths_and_classes_column(chaos_dir, tmp_path):
    (tmp_path / "img.nii.gz").symlink_to(chaos_dir / "images/image_1.nii.gz")
    (tmp_path / "lab.nii.gz").symlink_to(chaos_dir / "labels/label_1.nii.gz")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,label,classes\nimg.nii.gz,lab.nii.gz,1:liver;4:spleen\n")
    dataset = FewShotDataset.open(manifest)
    assert dataset.ids == [1]
    assert dataset.case(1).image == tmp_path / "img.nii.gz"
    assert dataset.class_names == {1: "liver", 4: "spleen"}


def test_label_map_of_another_patient_is_refused(chaos_dir, tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(
        json.dumps(
            [
                {
                    "id": 1,
                    "image": str(chaos_dir / "images/image_1.nii.gz"),
                    "label": str(chaos_dir / "labels/label_2.nii.gz"),
                }
            ]
        )
    )
    dataset = FewShotDataset.open(manifest)
    with pytest.raises(GeometryMismatchError, match="does not match"):
        load_training_volumes(dataset, [1])


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "cannot read the manifest"),
        ("[]", "lists no cases"),
        ('[{"image": "a.nii.gz"}]', "needs an image and a label"),
        ('[{"image": "missing.nii.gz", "label": "missing.nii.gz"}]', "does not exist"),
    ],
)
def test_bad_manifests_give_one_clear_error(tmp_path, text, message):
    manifest = tmp_path / "m.json"
    manifest.write_text(text)
    with pytest.raises(DatasetError, match=message) as exc:
        FewShotDataset.open(manifest)
    assert isinstance(exc.value, UserError) and "\n" not in str(exc.value)


def test_volumes_without_label_maps_only_for_self_supervised_training(chaos_dir, tmp_path):
    folder = tmp_path / "unlabelled"
    (folder / "images").mkdir(parents=True)
    for i in (2, 5):
        (folder / "images" / f"image_{i}.nii.gz").symlink_to(chaos_dir / "images" / f"image_{i}.nii.gz")
    with pytest.raises(DatasetError, match="--source supervoxels"):
        FewShotDataset.open(folder)
    dataset = FewShotDataset.open(folder, require_labels=False)
    assert dataset.ids == [2, 5] and dataset.labelled_ids == [] and dataset.case(2).label is None
    # a manifest may mix labelled and unlabelled volumes
    manifest = tmp_path / "mixed.json"
    cases = [
        {"id": 1, "image": str(chaos_dir / "images" / "image_2.nii.gz")},
        {
            "id": 2,
            "image": str(chaos_dir / "images" / "image_5.nii.gz"),
            "label": str(chaos_dir / "labels" / "label_5.nii.gz"),
        },
    ]
    manifest.write_text(json.dumps({"cases": cases}))
    with pytest.raises(DatasetError, match="case 1 needs an image and a label path"):
        FewShotDataset.open(manifest)
    dataset = FewShotDataset.open(manifest, require_labels=False)
    assert dataset.labelled_ids == [2]
    with pytest.raises(UserError, match="no label map"):
        load_training_volumes(dataset, [1], source="labels")
    volumes = load_training_volumes(dataset, [1, 2], source="mixed", supervoxel_cache=tmp_path / "cache")
    assert volumes[0].pseudo and volumes[0].annotation is None and volumes[0].labels.max() > 100
    assert not volumes[1].pseudo and set(np.unique(volumes[1].labels)) <= {0, 1, 2, 3, 4}
