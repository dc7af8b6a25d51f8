"""Blood density classes, shared by the evaluation (its by-density table) and the segmenter's training (which can
draw low-density crops more often): hyperacute, anaemic or unclotted blood under ≈ 50 HU lies within a few HU of grey
matter (≈ 35–45 HU), while clotted acute blood (60–90 HU) stands out."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

#: blood whose median is below this is "low density" (hyperacute, anaemic or unclotted)
LOW_DENSITY_HU = 50.0
#: (label, lower HU inclusive, upper HU exclusive) of each class, in table order
DENSITY_CLASSES: tuple[tuple[str, float, float], ...] = (
    ("< 50 HU", -math.inf, LOW_DENSITY_HU),
    ("50–70 HU", LOW_DENSITY_HU, 70.0),
    ("≥ 70 HU", 70.0, math.inf),
)


def blood_density(hu_slice: np.ndarray, blood: np.ndarray) -> float:
    """Median HU of one slice's blood voxels (the stored HU, before any smoothing); NaN where there is none."""
    return float(np.median(hu_slice[blood])) if blood.any() else math.nan


def slice_densities(hu: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N,) ``blood_density`` of each slice of a (N, H, W) volume; NaN on slices without blood."""
    return np.array([blood_density(h, t) for h, t in zip(hu, truth, strict=True)], dtype=float)


#: soft tissue (brain, CSF, blood; not bone or air) that counts as a slice's blood surroundings
SOFT_TISSUE_HU: tuple[float, float] = (0.0, 100.0)
#: the surroundings: this many pixels beyond the blood, after a one-pixel gap that partial volume fills
SURROUNDINGS_PX = 3


def blood_contrast(hu_slice: np.ndarray, blood: np.ndarray) -> float:
    """Median HU of one slice's blood minus that of the soft tissue just around it: how far blood stands out from
    where it lies (≈ 5 HU for hyperacute blood on brain, with pixel noise of 3–20 HU); NaN where either is empty."""
    if not blood.any():
        return math.nan
    near = ndimage.binary_dilation(blood, iterations=1)
    ring = ndimage.binary_dilation(near, iterations=SURROUNDINGS_PX) & ~near
    ring &= (hu_slice >= SOFT_TISSUE_HU[0]) & (hu_slice < SOFT_TISSUE_HU[1])
    if not ring.any():
        return math.nan
    return blood_density(hu_slice, blood) - float(np.median(hu_slice[ring]))


def slice_contrasts(hu: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N,) ``blood_contrast`` of each slice of a (N, H, W) volume; NaN on slices without blood."""
    return np.array([blood_contrast(h, t) for h, t in zip(hu, truth, strict=True)], dtype=float)


def density_class(density: float) -> str:
    """The label of the class holding ``density`` (HU)."""
    return next(label for label, low, high in DENSITY_CLASSES if low <= density < high)
