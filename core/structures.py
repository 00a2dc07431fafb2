"""The common structures a person segments, with the codes DICOM gives them (SNOMED CT).

A DICOM-SEG names each segment with coded concepts (PS3.3 C.8.20.2): a *category* from CID 7150
"Segmentation Property Categories" (here "Anatomical Structure", or "Morphologically Abnormal Structure" for a
tumour or lesion), a *type* from CID 7151 "Segmentation Property Types" (or a subset of it: CID 7152 cardiac,
7154 abdominal, 7155 thoracic, 7160 pelvic, 7159 abnormal; CID 12305 for the left ventricle myocardium),
and, for a paired organ, a laterality *modifier* from CID 244 "Laterality" (Right 24028007, Left 7771000),
as dcmqi and TotalSegmentator code "kidney right" (Kidney + Right) rather than with a separate concept.

The concepts are pydicom's (``pydicom.sr.codedict.codes.SCT``), so their values and meanings are the DICOM
standard's. :func:`find_structure` recognises a label's name ("Right kidney", "kidney_right", "RK" are not
all the same: the first two are; abbreviations are listed in :data:`SYNONYMS`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

ANATOMICAL = "AnatomicalStructure"
ABNORMAL = "MorphologicallyAbnormalStructure"


@dataclass(frozen=True)
class Structure:
    """One common structure: the name shown, and the keywords of its ``codes.SCT`` concepts."""

    name: str
    #: keyword of the SNOMED CT concept of the structure (``codes.SCT.<type_keyword>``)
    type_keyword: str
    #: "Right" or "Left" for one of a pair (a laterality modifier of the type), else None
    laterality: str | None = None
    category_keyword: str = ANATOMICAL

    @property
    def category(self) -> Code:
        """The segmented property category (CID 7150)."""
        return getattr(codes.SCT, self.category_keyword)

    @property
    def type(self) -> Code:
        """The segmented property type (CID 7151)."""
        return getattr(codes.SCT, self.type_keyword)

    @property
    def modifier(self) -> Code | None:
        """The laterality modifier of the type (CID 244), or None."""
        return getattr(codes.SCT, self.laterality) if self.laterality else None


def _pair(name: str, keyword: str) -> tuple[Structure, Structure, Structure]:
    return (
        Structure(f"right {name}", keyword, "Right"),
        Structure(f"left {name}", keyword, "Left"),
        Structure(name, keyword),
    )


#: The structures offered by name (in menu order: abdomen, chest and heart, pelvis, head, lesions).
COMMON_STRUCTURES: tuple[Structure, ...] = (
    Structure("liver", "Liver"),
    Structure("spleen", "Spleen"),
    Structure("pancreas", "Pancreas"),
    *_pair("kidney", "Kidney"),
    Structure("gallbladder", "Gallbladder"),
    Structure("stomach", "Stomach"),
    Structure("duodenum", "Duodenum"),
    Structure("small intestine", "SmallIntestine"),
    Structure("colon", "Colon"),
    *_pair("adrenal gland", "AdrenalGland"),
    Structure("aorta", "Aorta"),
    Structure("inferior vena cava", "InferiorVenaCava"),
    Structure("portal vein", "PortalVein"),
    Structure("heart", "Heart"),
    Structure("left ventricle", "LeftVentricle"),
    Structure("right ventricle", "RightVentricle"),
    Structure("left atrium", "LeftAtrium"),
    Structure("right atrium", "RightAtrium"),
    # the "myocardium" label of cardiac MRI data sets (ACDC, M&Ms, MM-WHS) is the left ventricle's
    Structure("myocardium", "LeftVentricleMyocardium"),
    Structure("pulmonary artery", "PulmonaryArtery"),
    *_pair("lung", "Lung"),
    Structure("trachea", "Trachea"),
    Structure("esophagus", "Esophagus"),
    Structure("bladder", "Bladder"),
    Structure("prostate", "Prostate"),
    Structure("uterus", "Uterus"),
    Structure("rectum", "Rectum"),
    Structure("brain", "Brain"),
    Structure("spinal cord", "SpinalCord"),
    Structure("tumor", "Neoplasm", category_keyword=ABNORMAL),
    Structure("lesion", "Lesion", category_keyword=ABNORMAL),
)

#: Other names for the same structures (after :func:`normalise_name`).
SYNONYMS = {
    "gall bladder": "gallbladder",
    "urinary bladder": "bladder",
    "oesophagus": "esophagus",
    "ivc": "inferior vena cava",
    "lv": "left ventricle",
    "rv": "right ventricle",
    "la": "left atrium",
    "ra": "right atrium",
    "myo": "myocardium",
    "lv myocardium": "myocardium",
    "left ventricle myocardium": "myocardium",
    "left ventricular myocardium": "myocardium",
    "heart myocardium": "myocardium",
    "tumour": "tumor",
    "neoplasm": "tumor",
}

_BY_NAME = {s.name: s for s in COMMON_STRUCTURES}


def common_names() -> list[str]:
    """The names of :data:`COMMON_STRUCTURES`, in menu order."""
    return [s.name for s in COMMON_STRUCTURES]


def normalise_name(name: str) -> str:
    """Lower case, ``_``/``-`` as spaces, one space between words, a trailing side first
    (``"Kidney_Right"`` -> ``"right kidney"``)."""
    text = re.sub(r"[\s_\-]+", " ", str(name).strip().lower()).strip()
    words = text.split(" ")
    if len(words) > 1 and words[-1] in ("right", "left"):
        words = [words[-1], *words[:-1]]
    return " ".join(words)


def find_structure(name: str) -> Structure | None:
    """The common structure a label's name means, or None (a name without a standard code)."""
    key = normalise_name(name)
    key = SYNONYMS.get(key, key)
    return _BY_NAME.get(key)
