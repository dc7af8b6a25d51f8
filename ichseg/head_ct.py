"""Is this series a head CT? The header's BodyPartExamined, then the image: a skull ring around brain at head size.

The models were trained on head CT only; given a chest they still "find" hemorrhage (137,000 voxels on one
chest CT). So the application refuses a series that is not a head CT, before any model runs, with a message
saying why. Two checks:

1. ``BodyPartExamined`` when present: a clear non-head region (CHEST, ABDOMEN, PELVIS, SPINE, EXTREMITY, ...)
   is refused; HEAD, BRAIN, SKULL, HEADNECK and the like, an empty value or a value we do not know pass on
   to the image check (scanners fill it inconsistently, so an unknown value proves nothing).
2. The HU volume, slice by slice (at most ``MAX_EXAMINED_SLICES`` of them, evenly spread): from the centre
   of the patient's outline, rays are cast outwards; on each ray the skull is the last run of bone before
   the ray leaves the outline (so calcifications inside and scalp outside do not count), and the inner
   table is where that run starts. A slice is a *head slice* when the rays meet skull all round (a closed
   or nearly closed ring), the ring's inner diameters are those of an adult skull, and what it encloses has
   brain density. A slice is a *body slice* when the outline is wider than any head or holds air-filled
   lungs — whatever ring-like bone it may also show (the bony pelvis is a ring of about head size).
   A series is a head CT when enough slices are head slices and body slices are not the majority.

Every threshold below says why it has its value. ``ICH_HEAD_CHECK=0`` switches both checks off for
integrators with unusual data (phantoms, paediatric or post-operative series the check does not know).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from ichseg.dicom_series import CTSeries, DicomInputError

ENV_SWITCH = "ICH_HEAD_CHECK"
SKIP_HINT = f"set {ENV_SWITCH}=0 to skip this check"

# --- BodyPartExamined (normalised: upper case, letters and digits only; matched as substrings) ---------------
#: Values that name the head: DICOM's HEAD, BRAIN, SKULL, HEADNECK and common local spellings.
HEAD_BODY_PARTS = ("HEAD", "BRAIN", "SKULL", "CRAN", "CEREB", "KOPF", "SCHADEL", "SCHAEDEL", "CABEZA", "CRANE", "TETE")
#: Values that name a region that is not the head (DICOM PS3.16 Annex L terms and their common variants). A value
#: containing one of these and none of HEAD_BODY_PARTS is refused (so HEADNECK passes, NECK alone does not).
#: FACE, SINUS, ORBIT, IAC, JAW are not here: such series may hold much of the brain; the image check decides.
NON_HEAD_BODY_PARTS = (
    "NECK", "CHEST", "THORAX", "LUNG", "HEART", "CARDIAC", "CORONARY", "BREAST", "MEDIASTIN", "RIB",
    "ABDOM", "ABD", "PELVIS", "LIVER", "KIDNEY", "RENAL", "PANCREA", "BLADDER", "PROSTATE", "COLON", "BOWEL",
    "SPINE", "SACRUM", "COCCYX", "WHOLEBODY", "BODY", "AORTA",
    "EXTREMITY", "ARM", "LEG", "KNEE", "HIP", "SHOULDER", "ELBOW", "WRIST", "HAND", "FOOT", "ANKLE", "FEMUR",
    "TIBIA", "HUMERUS", "CLAVICLE", "SCAPULA",
)

# --- image check ---------------------------------------------------------------------------------------------
#: Above this the voxel is bone. Skull tables are 700–1500 HU and diploe 250–600; brain, blood (≤ 100) and
#: soft tissue stay far below even with the noise of thin slices; the CT table and head holders (carbon fibre,
#: plastics, ≤ 200) are below it too.
BONE_HU = 300.0
#: Below this the voxel is air or lung (not fat, −100): the outline of the patient is everything above it.
OUTLINE_HU = -300.0
#: Lung: aerated lung is −900…−700 HU; anything below this inside the outline is air.
LUNG_HU = -500.0
#: Brain density: grey matter 35–45 HU, white matter 22–32. The median along the rays inside the ring must lie
#: in this range (CSF 0–15 and blood 50–90 pull it only a little: they fill a minority of the cavity).
BRAIN_MEDIAN_HU = (15.0, 60.0)
#: ... and at least this share of the samples inside the ring must be soft tissue (CSF, brain, blood). Above the
#: skull base it is 0.95–1.0; on skull-base slices petrous bone, clivus, sinus and mastoid air take up to half of
#: the samples (0.47–0.7 measured), and a series limited to the lower head must still pass. A ring filled mostly
#: with lung, fat or air fails it.
SOFT_TISSUE_HU = (-30.0, 100.0)
MIN_SOFT_TISSUE_SHARE = 0.45
#: Outline and lungs are measured on a grid of about this pixel size (mm): cheap, and fine enough for sizes.
GRID_MM = 2.0
#: Thin attachments of the outline (head holder shells, table, cushions, cables, up to twice this thick) are
#: cut off by an opening with a disk of this radius (mm) of the filled outline before it is measured.
OPENING_MM = 8.0
#: An outline wider than this (mm, its longer extent) is a trunk or pelvis, not a head: adult heads measure at
#: most ≈ 210 mm front to back with the scalp (the synthetic heads measure up to 204); adult chests ≈ 300 mm.
BODY_OUTLINE_MM = 250.0
#: A single enclosed air region larger than this (cm²) is a lung (or a gas-filled bowel loop). The largest air
#: spaces of a head (maxillary sinus ≈ 10 cm², nasal cavity with both antra ≈ 30 cm²; the synthetic heads with
#: sinuses and mastoids ≤ 7 cm²) stay below it; one lung in an axial chest slice is ≈ 60–150 cm².
LUNG_AREA_CM2 = 40.0
#: Rays from the outline's centre; a ray reaching this far (mm) without leaving the outline is not in a head.
RAY_COUNT = 72
RAY_STEP_MM = 0.5
RAY_LENGTH_MM = 170.0
#: Bone runs separated by less than this (mm) along a ray are one skull (diploe may dip below BONE_HU).
SKULL_GAP_MM = 6.0
#: The ray's last bone may start up to this far (mm) beyond the opened outline (the opening rounds the outline).
EXIT_MARGIN_MM = 10.0
#: A ray whose skull starts closer than this (mm) to the centre started in bone (skull base), not in the brain.
MIN_INNER_RADIUS_MM = 12.0
#: What the ring encloses is sampled up to this far (mm) short of the inner table (partial volume with bone).
TABLE_MARGIN_MM = 2.0
#: Share of rays that must meet skull: a closed ring gives 1.0; 0.75 tolerates burr holes, sutures, partial
#: volume and a defect of a quarter of the circumference. After a hemicraniectomy (120–150° of the ring missing,
#: coverage 0.6–0.68) the slices with the defect do not count, but those below and above it do: such series
#: still pass (tested). The ribs of the chest phantom meet 0.3–0.4 of the rays (and chest slices are body slices).
MIN_RING_COVERAGE = 0.75
#: Inner diameters of the ring (mm), measured as chords through the centre between opposite rays: the longest
#: is the skull's length, the shortest its width. Adult inner skull ≈ 150–180 × 120–150 mm at its widest;
#: slices towards the vertex and the skull base are smaller and simply do not count. Lower bounds: no bone ring
#: of the body (spinal canal ≈ 20 mm, femur ≈ 30 mm, orbit ≈ 40 mm) comes near them. Upper bounds: above any
#: head; the bony pelvis (≈ 110–130 mm) falls inside the range, which is why body-size slices never count.
SKULL_LENGTH_MM = (100.0, 220.0)
SKULL_WIDTH_MM = (65.0, 200.0)
#: A head CT needs this many head slices, or this share of the examined slices if that is fewer: the synthetic
#: head studies show 40–100 % head slices (the vertex and the skull base are too small), a series limited to a
#: part of the head at least a few; chest, abdomen, pelvis, limbs and phantoms none.
MIN_HEAD_SLICES = 3
MIN_HEAD_SHARE = 0.15
#: A series in which at least this share of the examined slices are body slices is not a head CT even if it
#: shows a head (whole-body CT, chest CT with the skull base): head CT shows none; a head-and-neck CT shows the
#: shoulders and lung apices on a minority of its slices.
MAX_BODY_SHARE = 0.5
#: Thin-slice series: at most this many slices are examined, evenly spread (neighbouring thin slices agree).
MAX_EXAMINED_SLICES = 48


class NotHeadCTError(DicomInputError):
    """The chosen series is not a head CT (input refused, exit status 3)."""


def body_part_refusal(header: Dataset) -> str | None:
    """Why BodyPartExamined shows this is not a head CT, or None (head, empty, absent or unknown value)."""
    raw = str(header.get("BodyPartExamined", "") or "").strip()
    value = re.sub(r"[^A-Z0-9]", "", raw.upper())
    if not value or any(part in value for part in HEAD_BODY_PARTS):
        return None
    if any(part in value for part in NON_HEAD_BODY_PARTS):
        return f"not a head CT: BodyPartExamined {raw!r}"
    return None


@dataclass(frozen=True)
class SliceFinding:
    """What the image check saw on one slice."""

    index: int
    outline_mm: float  # longer extent of the patient's outline (0: no outline)
    lung_cm2: float  # largest enclosed air region
    ring_coverage: float  # share of rays meeting skull
    length_mm: float  # longest inner chord of the ring (0: no ring)
    width_mm: float  # shortest inner chord
    brain_median_hu: float  # median HU inside the ring (nan: no ring)
    soft_tissue_share: float

    @property
    def body(self) -> bool:
        return self.outline_mm > BODY_OUTLINE_MM or self.lung_cm2 > LUNG_AREA_CM2

    @property
    def head(self) -> bool:
        return (
            not self.body
            and self.ring_coverage >= MIN_RING_COVERAGE
            and SKULL_LENGTH_MM[0] <= self.length_mm <= SKULL_LENGTH_MM[1]
            and SKULL_WIDTH_MM[0] <= self.width_mm <= SKULL_WIDTH_MM[1]
            and BRAIN_MEDIAN_HU[0] <= self.brain_median_hu <= BRAIN_MEDIAN_HU[1]
            and self.soft_tissue_share >= MIN_SOFT_TISSUE_SHARE
        )


@dataclass(frozen=True)
class HeadCheck:
    """The image check of one series: per examined slice what was seen, and the verdict."""

    slices: int  # in the series
    findings: list[SliceFinding]  # one per examined slice

    @property
    def examined(self) -> int:
        return len(self.findings)

    @property
    def head_slices(self) -> int:
        return sum(f.head for f in self.findings)

    @property
    def body_slices(self) -> int:
        return sum(f.body for f in self.findings)

    @property
    def required(self) -> int:
        return max(1, min(MIN_HEAD_SLICES, math.ceil(MIN_HEAD_SHARE * self.examined)))

    @property
    def is_head(self) -> bool:
        return self.body_slices < MAX_BODY_SHARE * self.examined and self.head_slices >= self.required

    def _of(self) -> str:
        if self.examined == self.slices:
            return f"{self.examined} slices"
        return f"{self.examined} examined of {self.slices} slices"

    def summary(self) -> str:
        """Why the series is or is not a head CT, in one line."""
        head = f"skull ring enclosing brain at head size on {self.head_slices} of {self._of()}"
        if self.body_slices >= MAX_BODY_SHARE * self.examined:
            body = [f for f in self.findings if f.body]
            widest = max(f.outline_mm for f in body)
            lungs = max(f.lung_cm2 for f in body)
            what = f"outline up to {widest:.0f} mm wide (a head is at most {BODY_OUTLINE_MM:.0f})"
            if lungs > LUNG_AREA_CM2:
                what += f", enclosed air (lungs) up to {lungs:.0f} cm²"
            return f"{len(body)} of {self._of()} show a body cross-section ({what}); {head}"
        if self.head_slices == 0:
            return (
                "no skull ring enclosing brain at head size "
                f"(inner skull {SKULL_LENGTH_MM[0]:.0f}–{SKULL_LENGTH_MM[1]:.0f} "
                f"× {SKULL_WIDTH_MM[0]:.0f}–{SKULL_WIDTH_MM[1]:.0f} mm) on any of {self._of()}"
            )
        if self.head_slices < self.required:
            return f"{head}, fewer than the {self.required} needed"
        return head


def check_volume(hu: np.ndarray, pixel_spacing: tuple[float, float]) -> HeadCheck:
    """Image check of a HU volume (slices, rows, columns) with (row, column) pixel spacing in mm."""
    count = hu.shape[0]
    indices = np.unique(np.linspace(0, count - 1, min(count, MAX_EXAMINED_SLICES)).round().astype(int))
    geometry = _RayGeometry(hu.shape[1:], pixel_spacing)
    return HeadCheck(count, [_examine_slice(int(i), hu[i], geometry) for i in indices])


def check_series(series: CTSeries, where: str) -> HeadCheck:
    """Image check of a loaded ``CTSeries``; NotHeadCTError naming ``where`` (series, folder) and why."""
    result = check_volume(series.hu, series.pixel_spacing)
    if not result.is_head:
        raise NotHeadCTError(f"{where}: not a head CT: {result.summary()} — {SKIP_HINT}")
    return result


class _RayGeometry:
    """Everything about the rays and the coarse grid that depends only on matrix and pixel spacing."""

    def __init__(self, shape: tuple[int, int], spacing: tuple[float, float]):
        self.shape = shape
        self.spacing = (float(spacing[0]), float(spacing[1]))
        self.stride = max(1, int(round(GRID_MM / min(self.spacing))))
        self.grid_mm = (self.spacing[0] * self.stride, self.spacing[1] * self.stride)
        radius = max(1, int(round(OPENING_MM / min(self.grid_mm))))
        y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
        self.disk = x * x + y * y <= radius * radius
        angles = np.arange(RAY_COUNT) * (2 * np.pi / RAY_COUNT)
        self.radii = np.arange(0.0, RAY_LENGTH_MM, RAY_STEP_MM)
        # row / column offsets (pixels) of every sample: (rays, samples)
        self.d_rows = np.sin(angles)[:, None] * self.radii[None, :] / self.spacing[0]
        self.d_cols = np.cos(angles)[:, None] * self.radii[None, :] / self.spacing[1]
        self.gap = int(round(SKULL_GAP_MM / RAY_STEP_MM))  # samples
        self.margin = int(round(EXIT_MARGIN_MM / RAY_STEP_MM))
        self.min_inner = int(round(MIN_INNER_RADIUS_MM / RAY_STEP_MM))
        self.table_margin = int(round(TABLE_MARGIN_MM / RAY_STEP_MM))


def _examine_slice(index: int, image: np.ndarray, geo: _RayGeometry) -> SliceFinding:
    coarse = image[:: geo.stride, :: geo.stride]
    # Filled before the opening, so that a thin chest wall around the lungs is not cut through.
    outline = ndimage.binary_opening(ndimage.binary_fill_holes(coarse > OUTLINE_HU), structure=geo.disk)
    labels, count = ndimage.label(outline)
    if count == 0:
        return SliceFinding(index, 0.0, 0.0, 0.0, 0.0, 0.0, float("nan"), 0.0)
    sizes = np.bincount(labels.ravel())[1:]
    body = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
    rows, cols = np.nonzero(body)
    outline_mm = float(max((np.ptp(rows) + 1) * geo.grid_mm[0], (np.ptp(cols) + 1) * geo.grid_mm[1]))
    air, air_count = ndimage.label(body & (coarse < LUNG_HU))
    cell_cm2 = geo.grid_mm[0] * geo.grid_mm[1] / 100.0
    lung_cm2 = float(np.bincount(air.ravel())[1:].max() * cell_cm2) if air_count else 0.0

    # Rays from the outline's centre, sampled at full resolution (nearest pixel).
    centre = (rows.mean() * geo.stride, cols.mean() * geo.stride)
    r = np.rint(centre[0] + geo.d_rows).astype(int)
    c = np.rint(centre[1] + geo.d_cols).astype(int)
    in_image = (r >= 0) & (r < geo.shape[0]) & (c >= 0) & (c < geo.shape[1])
    r, c = np.clip(r, 0, geo.shape[0] - 1), np.clip(c, 0, geo.shape[1] - 1)
    values = np.where(in_image, image[r, c], -1000.0)
    inside = in_image & body[
        np.minimum(r // geo.stride, body.shape[0] - 1), np.minimum(c // geo.stride, body.shape[1] - 1)
    ]
    samples = np.arange(values.shape[1])
    exits = np.where(inside.all(axis=1), values.shape[1], np.argmin(inside, axis=1))  # first sample outside
    within = samples[None, :] < (exits[:, None] + geo.margin)
    bone = (values > BONE_HU) & within
    has_bone = bone.any(axis=1)
    # A bone sample starts a run when the previous bone sample on its ray lies more than SKULL_GAP_MM before it;
    # the skull is the last run, and its first sample is the inner table.
    bone_at = np.where(bone, samples[None, :], -(10**6))
    previous = np.maximum.accumulate(
        np.concatenate([np.full((RAY_COUNT, 1), -(10**6)), bone_at[:, :-1]], axis=1), axis=1
    )
    starts = bone & (samples[None, :] - previous > geo.gap)
    inner = np.where(starts, samples[None, :], -1).max(axis=1)
    skull = has_bone & (inner >= geo.min_inner) & (exits < values.shape[1])  # a ray never leaving is not a head
    coverage = float(skull.mean())
    half = RAY_COUNT // 2
    both = skull[:half] & skull[half:]
    if both.sum() < 4:
        return SliceFinding(index, outline_mm, lung_cm2, coverage, 0.0, 0.0, float("nan"), 0.0)
    chords = (inner[:half] + inner[half:])[both] * RAY_STEP_MM
    enclosed = values[skull][samples[None, :] < (inner[skull, None] - geo.table_margin)]
    enclosed = enclosed if enclosed.size else np.array([np.nan])
    share = float(np.mean((enclosed >= SOFT_TISSUE_HU[0]) & (enclosed <= SOFT_TISSUE_HU[1])))
    return SliceFinding(
        index, outline_mm, lung_cm2, coverage, float(chords.max()), float(chords.min()),
        float(np.median(enclosed)), share
    )
