"""Common structures and their DICOM codes: each concept is one the DICOM tables list for its role."""

from __future__ import annotations

from pydicom.sr._concepts_dict import concepts

from sd_fsmis.core.structures import COMMON_STRUCTURES, find_structure, normalise_name

#: CID 7151 Segmentation Property Types and the subsets the structures use (7152 cardiac, 7153 CNS,
#: 7154 abdominal, 7155 thoracic, 7159 abnormal, 7160 pelvic, 12305 the left ventricle myocardium)
TYPE_CIDS = {7151, 7152, 7153, 7154, 7155, 7159, 7160, 12305}


def _cids(keyword: str, value: str) -> set[int]:
    return set(concepts["SCT"][keyword][value][1])


def test_every_code_is_in_the_dicom_table_of_its_role():
    for s in COMMON_STRUCTURES:
        assert _cids(s.type_keyword, s.type.value) & TYPE_CIDS, s.name
        assert 7150 in _cids(s.category_keyword, s.category.value), s.name
        if s.laterality:
            assert 244 in _cids(s.laterality, s.modifier.value), s.name
    assert len({s.name for s in COMMON_STRUCTURES}) == len(COMMON_STRUCTURES)


def test_names_are_recognised_with_their_side():
    assert normalise_name(" Kidney_Right ") == "right kidney"
    assert find_structure("Right Kidney").laterality == "Right"
    assert find_structure("kidney-left").laterality == "Left"
    assert find_structure("kidney").laterality is None
    assert find_structure("LV").name == "left ventricle"
    assert find_structure("Gall bladder").name == "gallbladder"
    assert find_structure("Label 1") is None and find_structure("my region") is None
