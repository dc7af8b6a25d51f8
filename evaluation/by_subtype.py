"""Where the answer falls short, by hemorrhage subtype: the overall slice Dice cannot say which blood is missed.

Per row and subtype (a slice counts under every subtype it holds; the masks are class-agnostic, as the app's):
* slice Dice: mean, over the slices holding the subtype, of the Dice of the prediction against all hemorrhage;
* voxel recall: Σ|P ∩ G_k| / Σ|G_k|, the share of the subtype's voxels the prediction covers;
* lesions found: 3D connected components of the subtype's label (face connectivity) that any predicted voxel
  touches, and the median volume of the lesions missed (tiny misses and large misses call for different fixes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ichseg.subtypes import SUBTYPES


@dataclass
class SubtypeTally:
    """Running totals of one subtype in one row."""

    slice_dice: list[float] = field(default_factory=list)
    covered_voxels: int = 0
    voxels: int = 0
    lesions: int = 0
    found: int = 0
    missed_ml: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "slices": len(self.slice_dice),
            "slice_dice": float(np.mean(self.slice_dice)) if self.slice_dice else math.nan,
            "voxel_recall": self.covered_voxels / self.voxels if self.voxels else math.nan,
            "lesions": self.lesions,
            "lesions_found": self.found,
            "median_missed_ml": float(np.median(self.missed_ml)) if self.missed_ml else math.nan,
        }


@dataclass
class SubtypeScores:
    """One row's tallies, by subtype name."""

    tallies: dict[str, SubtypeTally] = field(default_factory=lambda: {name: SubtypeTally() for name in SUBTYPES})

    def add(self, predicted: np.ndarray, labels: np.ndarray, positive_slice_dice: list[float], voxel_ml: float) -> None:
        """One study: ``predicted`` (N, H, W) bool; ``labels`` 0 / k+1 for subtype k; ``positive_slice_dice`` the
        Dice against all hemorrhage of each slice with hemorrhage, in slice order (``StudyScore.slice_dice``)."""
        per_slice = np.full(len(labels), math.nan)
        per_slice[(labels > 0).any(axis=(1, 2))] = positive_slice_dice
        for index, name in enumerate(SUBTYPES):
            truth = labels == index + 1
            if not truth.any():
                continue
            tally = self.tallies[name]
            tally.slice_dice += per_slice[truth.any(axis=(1, 2))].tolist()
            tally.voxels += int(truth.sum())
            tally.covered_voxels += int((truth & predicted).sum())
            components, count = ndimage.label(truth)
            sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
            touched = np.bincount(components[predicted], minlength=count + 1)[1:] > 0
            tally.lesions += count
            tally.found += int(touched.sum())
            tally.missed_ml += (sizes[~touched] * voxel_ml).tolist()

    def summary(self) -> dict[str, dict[str, Any]]:
        """Subtypes present in the ground truth only."""
        return {name: tally.summary() for name, tally in self.tallies.items() if tally.voxels}
