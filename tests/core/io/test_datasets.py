"""Datasets: a CHAOS-like folder, and JSON/CSV manifests for a user's own data."""

from __future__ import annotations

import json

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
