"""Where the answer falls short, by blood density (``ichseg.blood_density``): a model can be good on clotted blood
and blind to hyperacute blood a few HU above grey matter, and the overall slice Dice mixes them.

Each slice with hemorrhage is classed by the median HU of its ground-truth blood voxels (the stored HU, before the
guard's smoothing). Per row and density class: the number of slices and of the studies they come from, the share of
them where the prediction touches the blood ("slices touched"), the mean slice Dice against all blood, and the voxel
recall Σ|P ∩ G| / Σ|G|; and, a property of the data rather than of the row, the median contrast of the class's blood
against the soft tissue around it (``ichseg.blood_density.blood_contrast``): a class whose blood stands a few HU above
its surroundings under pixel noise of 3–20 HU is one no model sees well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ichseg.blood_density import DENSITY_CLASSES, density_class


@dataclass
class DensityTally:
    """Running totals of one density class in one row."""

    slice_dice: list[float] = field(default_factory=list)
    contrasts: list[float] = field(default_factory=list)  # HU, of the slices whose surroundings have soft tissue
    studies: int = 0  # with at least one slice in the class: a class held by one or two studies is their figure
    touched_slices: int = 0
    covered_voxels: int = 0
    voxels: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "slices": len(self.slice_dice),
            "studies": self.studies,
            "slice_dice": float(np.mean(self.slice_dice)),
            "slices_touched": self.touched_slices / len(self.slice_dice),
            "voxel_recall": self.covered_voxels / self.voxels,
            "median_contrast_hu": float(np.median(self.contrasts)) if self.contrasts else None,
        }


@dataclass
class DensityScores:
    """One row's tallies, by density class label."""

    tallies: dict[str, DensityTally] = field(
        default_factory=lambda: {label: DensityTally() for label, _, _ in DENSITY_CLASSES}
    )

    def add(self, predicted: np.ndarray, truth: np.ndarray, densities: np.ndarray, contrasts: np.ndarray,
            positive_slice_dice: list[float]) -> None:
        """One study: ``predicted`` and ``truth`` (N, H, W); ``densities`` and ``contrasts`` from ``slice_densities``
        and ``slice_contrasts``; ``positive_slice_dice`` the Dice of each slice with hemorrhage, in slice order
        (``StudyScore.slice_dice``)."""
        predicted = np.asarray(predicted, dtype=bool)
        positive = np.flatnonzero(~np.isnan(densities))
        if len(positive_slice_dice) != len(positive):
            raise ValueError(f"{len(positive_slice_dice)} slice Dice values for {len(positive)} slices with blood")
        for label in {density_class(float(densities[index])) for index in positive}:
            self.tallies[label].studies += 1
        for index, dice in zip(positive, positive_slice_dice, strict=True):
            tally = self.tallies[density_class(float(densities[index]))]
            hit = int((predicted[index] & truth[index]).sum())
            tally.slice_dice.append(dice)
            if not np.isnan(contrasts[index]):
                tally.contrasts.append(float(contrasts[index]))
            tally.touched_slices += int(hit > 0)
            tally.covered_voxels += hit
            tally.voxels += int(truth[index].sum())

    def summary(self) -> dict[str, dict[str, Any]]:
        """Classes with at least one slice only."""
        return {label: tally.summary() for label, tally in self.tallies.items() if tally.slice_dice}
