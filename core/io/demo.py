"""A synthetic abdominal MR study for the demo and the tests (no patient data ships with the application).

:func:`make_demo_phantom` draws a T2-weighted axial abdomen from smooth 3-D shapes: the body with its
subcutaneous fat, abdominal wall and back muscles, the lumbar spine (vertebral bodies, discs, spinal canal),
psoas muscles, aorta and inferior vena cava (dark flow voids), liver with hepatic vessels, gallbladder,
stomach, bowel loops in mesenteric fat, both kidneys (cortex, brighter medulla, sinus fat, perirenal fat)
and the spleen; then texture, a receive-coil bias field and Rician noise. The label map follows the CHAOS
MR convention: 1 liver, 2 right kidney, 3 left kidney, 4 spleen.

Geometry: 256 x 256 voxels of 1.5 mm, 48 slices of 6 mm, LPS with identity direction (columns go to the
patient's left, rows to posterior, slices upwards: slice 0 is the lowest), so the usual radiological display
(patient's right on the screen's left, anterior up) is the array as is.

Deterministic: a fixed seed, and only +, -, *, / and square roots on arrays (no transcendental functions,
whose last bit may differ between CPUs), quantised to integers: the same voxels on every machine
(:data:`DEMO_SHA256`). :func:`demo_study_paths` writes the study once into the cache folder (atomically) and
reuses it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io.atomic import atomic_path
from sd_fsmis.core.io.labelmap import CHAOS_MR_ORGANS, Label, LabelMap, labels_sidecar_path
from sd_fsmis.core.volume import Volume, VolumeMetadata

if TYPE_CHECKING:
    from sd_fsmis.core.session.state import Session
    from sd_fsmis.core.session.study import Study

log = logging.getLogger(__name__)

DEMO_SEED = 20240611
DEMO_VERSION = 1
SHAPE = (48, 256, 256)  # (z, y, x)
SPACING_XYZ = (1.5, 1.5, 6.0)

LIVER, RIGHT_KIDNEY, LEFT_KIDNEY, SPLEEN = 1, 2, 3, 4
#: Label names (CHAOS convention) and overlay colours.
DEMO_LABELS: dict[int, Label] = {
    LIVER: Label(LIVER, CHAOS_MR_ORGANS[LIVER], (221, 130, 101)),
    RIGHT_KIDNEY: Label(RIGHT_KIDNEY, CHAOS_MR_ORGANS[RIGHT_KIDNEY], (0, 200, 80)),
    LEFT_KIDNEY: Label(LEFT_KIDNEY, CHAOS_MR_ORGANS[LEFT_KIDNEY], (60, 120, 255)),
    SPLEEN: Label(SPLEEN, CHAOS_MR_ORGANS[SPLEEN], (230, 210, 40)),
}

#: SHA-256 of the image (int16) bytes followed by the label (uint8) bytes of the default phantom.
DEMO_SHA256 = "acb9e8e0698c40029f67e1659bd35db32b0960ea01491f7f05f79ff351c5de6e"

# T2-weighted signal (arbitrary units, like a scanner's 12-bit output)
_AIR = 0.0
_FAT = 620.0
_MUSCLE = 150.0
_LIVER = 235.0
_SPLEEN = 430.0
_CORTEX = 380.0
_MEDULLA = 540.0
_SINUS_FAT = 600.0
_FLOW_VOID = 45.0
_MARROW = 340.0
_CORTICAL_BONE = 60.0
_DISC = 520.0
_CSF = 950.0
_CORD = 330.0
_BOWEL_WALL = 270.0
_BOWEL_FLUID = 760.0
_GAS = 15.0
_BILE = 980.0
_GASTRIC_FLUID = 820.0


def demo_geometry() -> Geometry:
    """The phantom's grid: centred on the origin, identity (LPS) direction."""
    z, y, x = SHAPE
    sx, sy, sz = SPACING_XYZ
    origin = (-(x - 1) * sx / 2, -(y - 1) * sy / 2, -(z - 1) * sz / 2)
    return Geometry(
        size=(x, y, z),
        spacing=SPACING_XYZ,
        origin=origin,
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )


class _Grid:
    """Physical coordinates (mm) as broadcastable arrays: u (left +), v (posterior +), w (superior +)."""

    def __init__(self, geometry: Geometry) -> None:
        z, y, x = geometry.shape
        sx, sy, sz = geometry.spacing
        ox, oy, oz = geometry.origin
        self.shape = (z, y, x)
        self.u = (ox + np.arange(x) * sx).reshape(1, 1, x)
        self.v = (oy + np.arange(y) * sy).reshape(1, y, 1)
        self.w = (oz + np.arange(z) * sz).reshape(z, 1, 1)

    def ellipsoid(
        self,
        centre: tuple[float, float, float],
        semi: tuple[float, float, float],
        tilt_uw: float = 0.0,
        tilt_vw: float = 0.0,
    ) -> np.ndarray:
        """The quadratic form of an ellipsoid (< 1 inside); tilts are (cos, sin)-free shears in mm/mm."""
        du = self.u - centre[0]
        dv = self.v - centre[1]
        dw = self.w - centre[2]
        # a shear instead of a rotation: the long axis leans by tilt mm per mm of height
        du = du - tilt_uw * dw
        dv = dv - tilt_vw * dw
        return (du / semi[0]) ** 2 + (dv / semi[1]) ** 2 + (dw / semi[2]) ** 2

    def cylinder(self, centre: tuple[float, float], semi: tuple[float, float]) -> np.ndarray:
        """The quadratic form of an elliptic cylinder along the slices (< 1 inside), shape (1, y, x)."""
        return ((self.u - centre[0]) / semi[0]) ** 2 + ((self.v - centre[1]) / semi[1]) ** 2


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], sigma: tuple[float, float, float]
) -> np.ndarray:
    """A smooth random field of unit standard deviation (Gaussian-filtered white noise)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / float(np.sqrt(np.mean(field * field)))


def make_demo_phantom(seed: int = DEMO_SEED) -> tuple[Volume, LabelMap]:
    """The synthetic abdominal T2 MR volume (int16) and its label map (uint8, CHAOS labels)."""
    geometry = demo_geometry()
    g = _Grid(geometry)
    rng = np.random.default_rng(seed)
    shape = g.shape
    full = np.ones(shape, dtype=bool)

    # --- body: outline, subcutaneous fat, muscle wall, cavity --------------------------------------
    w = g.w
    taper = 1.0 - 0.07 * ((w - 10.0) / 150.0) ** 2  # slightly narrower towards the chest and pelvis
    body_a, body_b = 162.0 * taper, 118.0 * taper
    back = np.where(g.v > 15.0, 1.2, 1.0)  # a flatter back
    body = (((g.u / body_a) ** 2 + ((g.v - 15.0) / body_b) ** 2 * back) * full) < 1.0
    fat_in = ((g.u / (body_a - 17.0)) ** 2 + ((g.v - 16.0) / (body_b - 19.0)) ** 2 * back) < 1.0
    cavity = ((g.u / (body_a - 27.0)) ** 2 + ((g.v - 12.0) / (body_b - 29.0)) ** 2 * back) < 1.0
    cavity &= fat_in
    lungs = (g.ellipsoid((-78.0, 42.0, 196.0), (64.0, 62.0, 90.0)) < 1.0) | (
        g.ellipsoid((80.0, 42.0, 186.0), (62.0, 62.0, 86.0)) < 1.0
    )
    lungs &= cavity
    heart_q = g.ellipsoid((12.0, -28.0, 205.0), (78.0, 60.0, 80.0))
    heart = (heart_q < 1.0) & cavity & ~lungs
    heart_blood = (heart_q < 0.6) & heart

    # --- spine, canal, back muscles, psoas ---------------------------------------------------------
    spine_v = 46.0
    vb = (g.cylinder((0.0, spine_v), (23.0, 19.0)) < 1.0) & full
    vb_marrow = (g.cylinder((0.0, spine_v), (19.5, 15.5)) < 1.0) & full
    period = 34.0
    level = (w + 200.0) - np.floor((w + 200.0) / period) * period
    disc = (level < 8.0) & vb
    canal = (g.cylinder((0.0, spine_v + 33.0), (10.0, 8.5)) < 1.0) & full
    cord = (g.cylinder((0.0, spine_v + 33.0), (5.0, 4.5)) < 1.0) & (w > -40.0)
    lamina = (g.cylinder((0.0, spine_v + 36.0), (22.0, 14.0)) < 1.0) & ~canal & full
    spinous = (g.cylinder((0.0, spine_v + 52.0), (5.0, 12.0)) < 1.0) & fat_in
    erector = (
        (g.cylinder((-38.0, spine_v + 45.0), (27.0, 22.0)) < 1.0)
        | (g.cylinder((38.0, spine_v + 45.0), (27.0, 22.0)) < 1.0)
    ) & fat_in
    psoas_r = np.clip(6.0 + 0.16 * (40.0 - w), 0.0, 26.0)
    psoas = (g.cylinder((-36.0, spine_v - 4.0), (1.0, 0.8)) < psoas_r**2) | (
        g.cylinder((36.0, spine_v - 4.0), (1.0, 0.8)) < psoas_r**2
    )
    psoas &= w < 40.0

    # --- vessels -------------------------------------------------------------------------------------
    aorta = (g.cylinder((14.0, spine_v - 33.0), (11.0, 11.0)) < 1.0) & full
    ivc_v = spine_v - 35.0 - np.clip((w - 20.0) * 0.25, 0.0, 18.0)
    ivc = (((g.u + 24.0) / 14.0) ** 2 + ((g.v - ivc_v) / 10.0) ** 2) < 1.0

    # --- organs (labels) -----------------------------------------------------------------------------
    liver_main = g.ellipsoid((-66.0, 0.0, 55.0), (90.0, 84.0, 78.0)) < 1.0
    liver_left = g.ellipsoid((18.0, -50.0, 80.0), (58.0, 32.0, 38.0)) < 1.0
    liver_tip = g.ellipsoid((-98.0, 8.0, -8.0), (38.0, 50.0, 45.0)) < 1.0
    retroperitoneum = (g.cylinder((0.0, spine_v + 5.0), (42.0, 38.0)) < 1.0) & full
    liver = (liver_main | liver_left | liver_tip) & cavity & ~lungs & ~heart & ~retroperitoneum
    gallbladder = g.ellipsoid((-48.0, -52.0, 12.0), (15.0, 14.0, 30.0), tilt_vw=0.3) < 1.0
    liver &= ~gallbladder

    spleen = (g.ellipsoid((98.0, 36.0, 60.0), (38.0, 58.0, 52.0), tilt_vw=-0.25) < 1.0) & ~(
        g.ellipsoid((58.0, 30.0, 60.0), (30.0, 50.0, 64.0)) < 1.0
    )
    spleen &= cavity & ~lungs

    def kidney(cu: float, cw: float, tilt: float) -> tuple[np.ndarray, ...]:
        centre = (cu, spine_v - 2.0, cw)
        semi = (27.0, 24.0, 52.0)
        outer = g.ellipsoid(centre, semi, tilt_uw=tilt, tilt_vw=-0.15)
        # the hilum: a notch facing anteromedially
        hu = cu - np.sign(cu) * 22.0
        hilum = g.ellipsoid((hu, spine_v - 14.0, cw), (16.0, 13.0, 20.0), tilt_uw=tilt, tilt_vw=-0.15) < 1.0
        organ = (outer < 1.0) & ~hilum
        inner = outer < 0.42
        sinus = (
            g.ellipsoid(
                (cu - np.sign(cu) * 8.0, spine_v - 6.0, cw), (10.0, 9.0, 30.0), tilt_uw=tilt, tilt_vw=-0.15
            )
            < 1.0
        ) & organ
        perirenal = (outer < 1.9) & ~organ
        return organ, inner & organ & ~sinus, sinus, perirenal

    r_kidney, r_medulla, r_sinus, r_peri = kidney(-68.0, -48.0, 0.12)
    l_kidney, l_medulla, l_sinus, l_peri = kidney(70.0, -30.0, -0.12)
    # the liver and spleen sit on the kidneys' upper poles
    liver &= ~(r_kidney | r_peri)
    spleen &= ~(l_kidney | l_peri)

    stomach_q = g.ellipsoid((58.0, -40.0, 62.0), (42.0, 32.0, 48.0), tilt_uw=-0.25)
    stomach = (stomach_q < 1.0) & cavity & ~liver & ~spleen & ~lungs
    stomach_lumen = (stomach_q < 0.72) & stomach
    gastric_air = stomach_lumen & (g.v < -56.0)

    # --- intensities ---------------------------------------------------------------------------------
    bowel_field = _smooth_field(rng, shape, (0.7, 3.5, 3.5))
    content_field = _smooth_field(rng, shape, (0.6, 2.5, 2.5))
    texture = _smooth_field(rng, shape, (0.5, 1.2, 1.2))
    vessel_field = _smooth_field(rng, shape, (1.0, 6.0, 6.0))

    img = np.zeros(shape, dtype=np.float64)
    img[body] = _FAT
    img[fat_in] = _MUSCLE  # the muscle wall, then the cavity inside it
    # the abdominal contents: bowel loops in mesenteric fat
    loops = bowel_field > 0.1  # bowel loops: blobs of the field; their wall, then their content
    lumen = bowel_field > 0.45
    inside = cavity & ~(vb | canal | lamina | erector)
    img[inside] = _FAT * 0.92
    img[inside & loops] = _BOWEL_WALL
    content = content_field[inside & lumen]
    img[inside & lumen] = np.where(
        content > 0.9, _BOWEL_FLUID, np.where(content < -1.7, _GAS, 390.0 + 90.0 * content)
    )
    img[lungs] = _GAS * 2.0
    img[heart] = _MUSCLE * 1.3
    img[heart_blood] = _FLOW_VOID * 1.5
    img[lungs & (np.abs(vessel_field) < 0.05)] = _MUSCLE  # pulmonary vessels
    # retroperitoneum
    img[r_peri | l_peri] = _SINUS_FAT
    img[psoas & cavity] = _MUSCLE * 1.05
    img[erector] = _MUSCLE
    # organs
    img[stomach] = _BOWEL_WALL
    img[stomach_lumen] = _GASTRIC_FLUID
    img[gastric_air] = _GAS
    img[liver] = _LIVER
    hepatic_vessels = liver & (np.abs(vessel_field) < 0.06) & (content_field > -0.2)
    img[hepatic_vessels] = _FLOW_VOID * 2.2
    img[gallbladder & cavity] = _BILE
    img[spleen] = _SPLEEN
    for organ, medulla, sinus in ((r_kidney, r_medulla, r_sinus), (l_kidney, l_medulla, l_sinus)):
        img[organ] = _CORTEX
        img[medulla] = _MEDULLA
        img[sinus] = _SINUS_FAT
    # vessels and spine
    img[aorta] = _FLOW_VOID
    img[ivc & cavity] = _FLOW_VOID * 1.2
    img[lamina | spinous] = _MARROW * 0.75
    img[vb] = _CORTICAL_BONE
    img[vb_marrow] = _MARROW
    img[disc & vb_marrow] = _DISC
    img[canal] = _CSF
    img[cord] = _CORD

    labels = np.zeros(shape, dtype=np.uint8)
    labels[liver & ~(ivc & cavity)] = LIVER
    labels[r_kidney] = RIGHT_KIDNEY
    labels[l_kidney] = LEFT_KIDNEY
    labels[spleen] = SPLEEN

    # texture, partial volume at the edges, coil bias, Rician noise
    img *= 1.0 + 0.05 * texture
    img = ndimage.gaussian_filter(img, (0.0, 0.8, 0.8))
    bias = (
        0.78
        + 0.30 * ((g.v - 10.0) / 150.0) ** 2
        + 0.12 * ((g.u / 170.0) ** 2)
        + 0.04 * (g.u / 170.0)
        + 0.0 * g.w
    )
    img *= bias
    sigma = 16.0
    n1 = rng.standard_normal(shape)
    n2 = rng.standard_normal(shape)
    img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)
    image = np.clip(np.rint(img), 0, 32767).astype(np.int16)

    metadata = VolumeMetadata(
        modality="MR",
        patient_id="DEMO",
        patient_name="Phantom^Abdomen",
        study_description="SD-FSMIS demo: synthetic abdominal MR",
        series_description="T2 axial (synthetic phantom)",
        source_format="nifti",
    )
    volume = Volume(image, geometry, metadata)
    label_map = LabelMap(labels, geometry, dict(DEMO_LABELS))
    return volume, label_map


def phantom_checksum(volume: Volume, label_map: LabelMap) -> str:
    """SHA-256 of the image bytes (int16, little-endian) followed by the label bytes (uint8)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(volume.array, dtype="<i2").tobytes())
    h.update(np.ascontiguousarray(label_map.array, dtype=np.uint8).tobytes())
    return h.hexdigest()


def demo_folder() -> Path:
    from sd_fsmis.paths import cache_dir

    return cache_dir() / "demo"


def demo_image_path() -> Path:
    """Where the demo image is (or will be) written."""
    return demo_folder() / f"demo_abdomen_mr_v{DEMO_VERSION}.nii.gz"


def demo_label_path() -> Path:
    return demo_folder() / f"demo_abdomen_mr_v{DEMO_VERSION}_labels.nii.gz"


def demo_study_paths() -> tuple[Path, Path]:
    """``(image_path, label_path)`` of the demo study, generated into the cache folder on first use."""
    image_path, label_path = demo_image_path(), demo_label_path()
    if image_path.is_file() and label_path.is_file() and labels_sidecar_path(label_path).is_file():
        return image_path, label_path
    volume, label_map = make_demo_phantom()
    # the labels first, the image last: the image's presence says the study is complete
    label_map.save(label_path)
    image = volume.to_sitk()
    with atomic_path(image_path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    log.info("wrote the demo study to %s", image_path.parent)
    return image_path, label_path


def open_demo(session: Session) -> Study:
    """Open the demo study in ``session`` with its organ labels as the reference layer ("demo labels")."""
    image_path, label_path = demo_study_paths()
    study = session.open_study(image_path)
    layer = study.load_layer(label_path, name="demo labels", kind="reference", activate=False)
    layer.opacity = 0.3
    session.set_reference(layer)
    return study
