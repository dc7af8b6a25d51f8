"""Anatomical guard: keep predicted hemorrhage only where hemorrhage can be — inside the skull, at blood density.

The networks see windowed 8-bit slices, so bone edges, scalp haematoma, petrous bone and mastoid air can look like
blood to them. The HU volume tells these apart cheaply. Three rules, applied in this order to the segmenter's mask:

1. **cavity**: inside the inner table of the skull, at least ``CAVITY_MARGIN_MM`` from bone (the partial-volume
   rim of the inner table looks like blood at brain windows);
2. **density**: blood HU on a lightly smoothed HU (3×3 mean over the non-bone neighbours, so a subdural lying
   against the inner table is not pushed over the upper bound by the bone beside it). The range moves by the
   series' calibration offset (``Anatomy.calibration_hu``: the one the windowing measured and took off the networks'
   input, ``ichseg.calibration``), so a scanner that reads every tissue a few HU higher or lower keeps the same blood;
3. **size**: 3D connected components (26-connected) of at least ``min_ml`` millilitres (single specks of noise).

The cavity is found per slice: bone (> ``BONE_HU``) closed with a small disk, holes filled, minus the bone. Where
the skull ring is open (skull base, foramen magnum, vertex cut tangentially, craniotomy) the filled area is much
smaller than the area inside the bone's convex hull: the slice is closed again with a larger disk, then takes the
cavity of the nearest closed slice within ``NEIGHBOUR_MM`` clipped to its own hull, then the hull itself. Every
fallback is clipped to the inside of the slice's own bone hull, so it can never reach the scalp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from ichseg.calibration import REFERENCE_SOFT_TISSUE_HU

BONE_HU = 250.0  # cortical bone 700-1500 and diploe 250-600; calcified falx/plexus stay mostly below
# Defaults chosen on the validation split with the bundled weights (detector v0.3.0, segmenter v0.2.0):
# `python -m evaluation.evaluate --choose-guard` (results/guard/guard_choice.md) — objective 0.558 → 0.618, study
# specificity 0.43 → 0.57 at sensitivity 0.82 → 0.88 against the earlier 35–130 HU, 0.5 mm, 0.1 mL. Synthetic data:
# rerun the sweep on real validation studies before relying on them.
BLOOD_HU = (40.0, 200.0)  # 3×3-smoothed HU kept: from 40 (below: oedema, CSF mixing); 200 keeps a clot's rim by bone
MIN_COMPONENT_ML = 0.2  # smallest kept 3D component (a 7.3 mm sphere): most leftover false positives are smaller
CAVITY_MARGIN_MM = 0.0  # kept distance from bone: the closed inner table itself is the boundary
CLOSING_MM = 3.0  # closes sutures, emissary foramina, small defects of the ring
WIDE_CLOSING_MM = 12.0  # second try on an open ring (foramen magnum, burr hole)
OPEN_RING_RATIO = 0.5  # filled inside / inside of the bone hull below this: the ring is open
MIN_BONE_MM2 = 200.0  # less bone than this on a slice: no skull there, no cavity
NEIGHBOUR_MM = 15.0  # an open slice borrows the cavity of a closed slice at most this far away
SMOOTHING_PX = 3  # the mean's window (3×3)


@dataclass(frozen=True)
class GuardOptions:
    """What the guard does; the defaults are the constants above."""

    enabled: bool = True
    hu_range: tuple[float, float] = BLOOD_HU
    min_ml: float = MIN_COMPONENT_ML
    margin_mm: float = CAVITY_MARGIN_MM

    def blood_range(self, anatomy: Anatomy) -> tuple[float, float]:
        """The density rule's range in this series' own HU: ``hu_range`` moved by its calibration offset."""
        return self.hu_range[0] + anatomy.calibration_hu, self.hu_range[1] + anatomy.calibration_hu

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the settings, with the fixed constants the cavity rule used."""
        return {
            "enabled": self.enabled, "hu_range": list(self.hu_range), "min_component_ml": self.min_ml,
            "cavity_margin_mm": self.margin_mm, "bone_hu": BONE_HU, "smoothing_px": SMOOTHING_PX,
            "reference_soft_tissue_hu": REFERENCE_SOFT_TISSUE_HU,
        }


@dataclass
class Anatomy:
    """What the guard reads from a series' HU volume, computed once and reusable for any mask and options."""

    inside: np.ndarray  # (N, H, W) bool, inside the inner table (bone excluded, no margin)
    bone_distance_mm: np.ndarray  # (N, H, W) float32, in-plane distance to the nearest bone pixel (inf: no skull)
    smoothed_hu: np.ndarray  # (N, H, W) float32, see ``smoothed_hu``
    method: list[str]  # per slice: "ring", "wide closing", "neighbour", "hull" or "no skull"
    voxel_volume_ml: float
    calibration_hu: float = 0.0  # how many HU the series reads above the reference (the windowing's measurement)

    def cavity(self, margin_mm: float = CAVITY_MARGIN_MM) -> np.ndarray:
        """The cavity keeping only pixels farther than ``margin_mm`` from bone."""
        return self.inside & (self.bone_distance_mm > margin_mm)

    def cut(self, box: tuple[slice, slice, slice]) -> Anatomy:
        """The anatomy of a part of the volume (slices, rows, columns)."""
        return Anatomy(self.inside[box], self.bone_distance_mm[box], self.smoothed_hu[box], self.method[box[0]],
                       self.voxel_volume_ml, self.calibration_hu)

    def fallback_slices(self) -> dict[str, list[int]]:
        """Slices whose cavity is not from a closed ring, by method (for the report)."""
        out: dict[str, list[int]] = {}
        for index, method in enumerate(self.method):
            if method != "ring":
                out.setdefault(method, []).append(index)
        return out


@dataclass
class GuardReport:
    """What the guard removed, rule by rule, for the JSON report."""

    options: GuardOptions
    voxels_in: int = 0
    voxels_out: int = 0
    removed_voxels: dict[str, int] = field(default_factory=dict)
    voxel_volume_ml: float = 0.0
    cavity_fallback_slices: dict[str, list[int]] = field(default_factory=dict)
    calibration_hu: float | None = None  # the series' calibration offset the range moved by (None: guard off)
    blood_range: tuple[float, float] | None = None  # the density rule's range, calibrated

    @classmethod
    def unchanged(cls, mask: np.ndarray, options: GuardOptions, voxel_ml: float) -> GuardReport:
        """The report of a guard that removed nothing (switched off)."""
        voxels = int(mask.sum())
        return cls(options, voxels_in=voxels, voxels_out=voxels, voxel_volume_ml=voxel_ml)

    def to_json(self) -> dict[str, Any]:
        ml = self.voxel_volume_ml
        return {
            "applied": self.options.enabled,
            "settings": self.options.describe(),
            "voxels_before": self.voxels_in,
            "voxels_after": self.voxels_out,
            "removed": {
                rule: {"voxels": voxels, "ml": round(voxels * ml, 3)} for rule, voxels in self.removed_voxels.items()
            },
            "cavity_fallback_slices": self.cavity_fallback_slices,
            "calibration_offset_hu": None if self.calibration_hu is None else round(self.calibration_hu, 1),
            "blood_hu_applied": None if self.blood_range is None else [round(v, 1) for v in self.blood_range],
        }


def _disk(radius_px: int) -> np.ndarray:
    size = 2 * max(radius_px, 1) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _close(bone: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary closing padded by the radius, so the image border does not glue bone to it."""
    pad = radius_px + 1
    padded = cv2.copyMakeBorder(bone.astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, _disk(radius_px))
    return closed[pad:-pad, pad:-pad].astype(bool)


def _hull(bone: np.ndarray) -> np.ndarray:
    """Filled convex hull of the bone pixels of a slice."""
    points = cv2.findNonZero(bone.astype(np.uint8))
    hull = np.zeros(bone.shape, dtype=np.uint8)
    if points is not None:
        cv2.fillPoly(hull, [cv2.convexHull(points)], 1)
    return hull.astype(bool)


def _inside(closed: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(closed) & ~closed


def _slice_cavity(bone: np.ndarray, mm: float) -> tuple[np.ndarray, np.ndarray, str]:
    """One slice's bone → (inside of the ring or empty, inside of the bone hull, method: "ring", "wide closing",
    "open" or "no skull")."""
    if bone.sum() * mm * mm < MIN_BONE_MM2:
        return np.zeros_like(bone), np.zeros_like(bone), "no skull"
    hull = _hull(bone) & ~bone
    for radius_mm, method in ((CLOSING_MM, "ring"), (WIDE_CLOSING_MM, "wide closing")):
        inside = _inside(_close(bone, max(int(round(radius_mm / mm)), 1))) & hull
        if inside.sum() >= OPEN_RING_RATIO * hull.sum():
            return inside, hull, method
    return np.zeros_like(bone), hull, "open"


def intracranial_cavity(
    hu: np.ndarray, pixel_spacing: tuple[float, float], slice_spacing: float
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, H, W) HU → inside of the inner table, each pixel's distance to bone (mm) and each slice's method.

    An open slice takes the cavity of the nearest closed slice within ``NEIGHBOUR_MM``, clipped to its own bone hull,
    or else that hull.
    """
    mm = float(np.mean(pixel_spacing))
    bone = hu > BONE_HU
    found = [_slice_cavity(bone[index], mm) for index in range(len(hu))]
    cavity = np.stack([inside for inside, _, _ in found])
    method = [name for _, _, name in found]
    closed = np.asarray([i for i, name in enumerate(method) if name in ("ring", "wide closing")], dtype=int)
    reach = int(NEIGHBOUR_MM // max(slice_spacing, 1e-3))
    for index in (i for i, name in enumerate(method) if name == "open"):
        hull = found[index][1]
        nearest = int(closed[np.abs(closed - index).argmin()]) if len(closed) else -1
        if nearest >= 0 and abs(nearest - index) <= reach:
            cavity[index], method[index] = cavity[nearest] & hull, "neighbour"
        else:
            cavity[index], method[index] = hull, "hull"
    distance = np.full(hu.shape, np.inf, dtype=np.float32)
    for slice_index in np.flatnonzero(cavity.reshape(len(hu), -1).any(axis=1)):
        distance[slice_index] = cv2.distanceTransform((~bone[slice_index]).astype(np.uint8), cv2.DIST_L2, 5) * mm
    return cavity, distance, method


def read_anatomy(
    hu: np.ndarray, pixel_spacing: tuple[float, float], slice_spacing: float, *, calibration_hu: float
) -> Anatomy:
    """Everything the guard needs from the HU volume as stored (≈ 0.02 s per 512² slice); ``calibration_hu``: the
    series' calibration offset (``ichseg.pipeline.WindowedSeries.calibration_hu``; 0: uncalibrated), asked for by
    name so that no caller gets an uncalibrated guard by default."""
    inside, distance, method = intracranial_cavity(hu, pixel_spacing, slice_spacing)
    voxel_ml = pixel_spacing[0] * pixel_spacing[1] * slice_spacing / 1000.0
    return Anatomy(inside, distance, smoothed_hu(hu), method, voxel_ml, calibration_hu)


def smoothed_hu(hu: np.ndarray) -> np.ndarray:
    """Per-slice 3×3 mean over the non-bone pixels; bone pixels keep their own HU (so they stay out of range)."""
    bone = hu > BONE_HU
    soft = np.where(bone, 0.0, hu).astype(np.float32)
    size = (1, SMOOTHING_PX, SMOOTHING_PX)
    total = ndimage.uniform_filter(soft, size=size, mode="nearest")
    weight = ndimage.uniform_filter((~bone).astype(np.float32), size=size, mode="nearest")
    mean = np.divide(total, weight, out=np.zeros_like(total), where=weight > 1e-6)
    return np.where(bone, hu, mean).astype(np.float32)


class Components:
    """26-connected 3D components of a mask, labelled once so that any minimum size is a cheap lookup."""

    def __init__(self, mask: np.ndarray) -> None:
        self.labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        self.sizes = np.bincount(self.labels.ravel(), minlength=count + 1)

    def at_least(self, min_voxels: float) -> np.ndarray:
        """The mask of the components with at least ``min_voxels`` voxels."""
        return self.mask_of(self.kept(min_voxels))

    def kept(self, min_voxels: float) -> np.ndarray:
        """Per label, whether its component has at least ``min_voxels`` voxels (label 0, the background, never)."""
        keep = self.sizes >= min_voxels
        keep[0] = False
        return keep

    def mask_of(self, keep: np.ndarray) -> np.ndarray:
        """The mask of the components ``keep`` marks."""
        return keep[self.labels]


def drop_small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """The mask without its 26-connected 3D components smaller than ``min_voxels``."""
    if min_voxels <= 1 or not mask.any():
        return mask.copy()
    return Components(mask).at_least(min_voxels)


def cavity_and_density(
    mask: np.ndarray, anatomy: Anatomy, margin_mm: float, hu_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Rules 1 and 2: the mask inside the cavity, and of that the part at blood density."""
    inside = mask & anatomy.cavity(margin_mm)
    low, high = hu_range
    return inside, inside & (anatomy.smoothed_hu >= low) & (anatomy.smoothed_hu <= high)


def apply_guard(
    mask: np.ndarray, anatomy: Anatomy, options: GuardOptions = GuardOptions()
) -> tuple[np.ndarray, GuardReport]:
    """The guarded mask and what each rule removed (the rules in order: cavity, density, size)."""
    report = GuardReport.unchanged(mask, options, anatomy.voxel_volume_ml)
    if not options.enabled:
        return mask.copy(), report
    blood_range = options.blood_range(anatomy)
    inside, dense = cavity_and_density(mask, anatomy, options.margin_mm, blood_range)
    sized = drop_small_components(dense, options.min_ml / anatomy.voxel_volume_ml)
    report.removed_voxels = {
        "cavity": int(mask.sum() - inside.sum()),
        "density": int(inside.sum() - dense.sum()),
        "size": int(dense.sum() - sized.sum()),
    }
    report.voxels_out = int(sized.sum())
    report.cavity_fallback_slices = anatomy.fallback_slices()
    report.calibration_hu = anatomy.calibration_hu
    report.blood_range = blood_range
    return sized, report
