"""A series' calibration offset: how many HU its soft tissue reads above the calibration the models know.

CT numbers differ between scanners, kVp and calibrations by several HU (water is accepted within ±4 HU), and the
networks are sensitive to that: moving every HU of the validation phantoms by +6 took the product's study sensitivity
from 0.87 to 0.67 and its slice Dice from 0.53 to 0.40 (``benchmarks/robustness.py``), because the detector's
confidence follows the brightness of the brain around the blood. The brain itself is the reference: the median of a
head's soft tissue between ``SOFT_TISSUE_HU`` is its white and grey matter (29.7 ± 1.9 HU over the 24 validation
phantoms; real white and grey matter, 20–30 and 35–45 HU, give about the same). Its distance from
``REFERENCE_SOFT_TISSUE_HU`` is the offset the windowing (``ichseg.pipeline.window_series``) takes off the HU the
networks see, and the guard (``ichseg.guard``) adds to its blood range: one measurement per series for both.
"""

from __future__ import annotations

import numpy as np

REFERENCE_SOFT_TISSUE_HU = 30.0
SOFT_TISSUE_HU = (0.0, 60.0)  # counted for the median: above CSF and fat, below most clotted blood
MAX_OFFSET_HU = 10.0  # a larger offset is not a calibration (a study mostly blood, oedema or artefact): clipped


def soft_tissue_median(hu: np.ndarray) -> float:
    """Median HU of the voxels within ``SOFT_TISSUE_HU``; nan where there are none."""
    values = hu.ravel()
    values = values[(values > SOFT_TISSUE_HU[0]) & (values < SOFT_TISSUE_HU[1])]
    return float(np.median(values)) if values.size else float("nan")


def calibration_offset(median_hu: float) -> float:
    """The offset a soft-tissue median implies, clipped to ±``MAX_OFFSET_HU``; 0 where unmeasured."""
    if not np.isfinite(median_hu):
        return 0.0
    return float(np.clip(median_hu - REFERENCE_SOFT_TISSUE_HU, -MAX_OFFSET_HU, MAX_OFFSET_HU))


def series_offset(hu: np.ndarray) -> float:
    """The offset of a whole series from every other row and column of every other slice (brain dominates the
    soft tissue of a head; the cavity is not needed, and a sample measures the median to well under 1 HU)."""
    return calibration_offset(soft_tissue_median(hu[::2, ::2, ::2]))
