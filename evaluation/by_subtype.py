"""Where the answer falls short, by hemorrhage subtype: the overall slice Dice cannot say which blood is missed.

Per row and subtype (a slice counts under every subtype it holds; the masks are class-agnostic, as the app's):
* slice Dice (all blood): mean, over the slices holding the subtype, of the row's slice Dice against all hemorrhage;
* slices touched: the share of those slices where the prediction touches the subtype's blood (a slice the detector
  left without a box stays untouched, so this falls with missed lesions, and voxel recall with boxes too small too);
* voxel recall: Σ|P ∩ G_k| / Σ|G_k|, the share of the subtype's voxels the prediction covers;
* lesions found: the subtype's lesions — its voxels grouped in 3D where they lie within about ``LESION_GAP_MM`` of
  each other (a distance between voxels, where the boxes measure the gap between box edges in 2D: the two groupings
  agree roughly, not exactly; a thin subdural at 5 mm slices is one lesion, not dozens of specks) — that
  any predicted voxel touches, and the median volume of the lesions missed (tiny misses and large misses call for
  different fixes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ichseg.boxes import LESION_GAP_MM
from ichseg.subtypes import SUBTYPES

CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # touching along an edge or a corner counts


@dataclass(frozen=True)
class SubtypeLesions:
    """One subtype's ground truth in one study, labelled once and scored against every row."""

    truth: np.ndarray  # (N, H, W) bool
    slices: np.ndarray  # (N,) bool: the slices holding the subtype
    components: np.ndarray  # (N, H, W) int: 0 outside, lesion number inside
    volumes_ml: np.ndarray  # (lesions,)


def study_lesions(labels: np.ndarray, voxel_ml: float, spacing_mm: tuple[float, float, float] | None = None,
                  gap_mm: float = LESION_GAP_MM) -> dict[str, SubtypeLesions]:
    """The lesions of each subtype present in ``labels`` (0 background, k+1 subtype k): with ``spacing_mm`` (slice,
    row, column) voxels closer than ``gap_mm`` are one lesion, without it each connected component is."""
    lesions = {}
    for index, name in enumerate(SUBTYPES):
        truth = labels == index + 1
        if truth.any():
            groups = _groups(truth, spacing_mm, gap_mm)
            kept = np.unique(groups[truth])  # the groups that hold the subtype's voxels, numbered 1…
            lookup = np.zeros(groups.max() + 1, dtype=np.int64)
            lookup[kept] = np.arange(1, len(kept) + 1)
            components = np.where(truth, lookup[groups], 0)
            sizes = np.bincount(components.ravel(), minlength=len(kept) + 1)[1:]
            lesions[name] = SubtypeLesions(truth, truth.any(axis=(1, 2)), components, sizes * voxel_ml)
    return lesions


def _groups(truth: np.ndarray, spacing_mm: tuple[float, float, float] | None, gap_mm: float) -> np.ndarray:
    """Connected components of ``truth`` widened by ``gap_mm / 2`` (a voxel near two fragments bridges them),
    computed in the truth's bounding box plus that margin."""
    if spacing_mm is None:
        return ndimage.label(truth, structure=CONNECTIVITY)[0]
    margin = [int(np.ceil(gap_mm / 2 / step)) + 1 for step in spacing_mm]
    where = np.argwhere(truth)
    low = np.maximum(where.min(axis=0) - margin, 0)
    high = np.minimum(where.max(axis=0) + 1 + margin, truth.shape)
    window = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    near = ndimage.distance_transform_edt(~truth[window], sampling=spacing_mm) <= gap_mm / 2
    groups = np.zeros(truth.shape, dtype=np.int32)
    groups[window] = ndimage.label(near, structure=CONNECTIVITY)[0]
    return groups


@dataclass
class SubtypeTally:
    """Running totals of one subtype in one row."""

    slice_dice: list[float] = field(default_factory=list)
    touched_slices: int = 0
    covered_voxels: int = 0
    voxels: int = 0
    lesions: int = 0
    found: int = 0
    missed_ml: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "slices": len(self.slice_dice),
            "slice_dice": float(np.mean(self.slice_dice)),
            "slices_touched": self.touched_slices / len(self.slice_dice),
            "voxel_recall": self.covered_voxels / self.voxels,
            "lesions": self.lesions,
            "lesions_found": self.found,
            "median_missed_ml": float(np.median(self.missed_ml)) if self.missed_ml else math.nan,
        }


@dataclass
class SubtypeScores:
    """One row's tallies, by subtype name."""

    tallies: dict[str, SubtypeTally] = field(default_factory=lambda: {name: SubtypeTally() for name in SUBTYPES})

    def add(self, predicted: np.ndarray, lesions: dict[str, SubtypeLesions], positive_slice_dice: list[float]) -> None:
        """One study: ``predicted`` (N, H, W); ``lesions`` from ``study_lesions``; ``positive_slice_dice`` the Dice
        against all hemorrhage of each slice with hemorrhage, in slice order (``StudyScore.slice_dice``)."""
        predicted = np.asarray(predicted, dtype=bool)
        per_slice = np.full(len(predicted), math.nan)
        positive = np.zeros(len(predicted), dtype=bool)
        for subtype in lesions.values():
            positive |= subtype.slices
        if len(positive_slice_dice) != positive.sum():
            raise ValueError(f"{len(positive_slice_dice)} slice Dice values for {positive.sum()} slices with blood")
        per_slice[positive] = positive_slice_dice
        for name, subtype in lesions.items():
            tally = self.tallies[name]
            tally.slice_dice += per_slice[subtype.slices].tolist()
            hit = subtype.truth & predicted
            tally.touched_slices += int(hit.any(axis=(1, 2)).sum())
            tally.voxels += int(subtype.truth.sum())
            tally.covered_voxels += int(hit.sum())
            touched = np.bincount(subtype.components[predicted], minlength=len(subtype.volumes_ml) + 1)[1:] > 0
            tally.lesions += len(touched)
            tally.found += int(touched.sum())
            tally.missed_ml += subtype.volumes_ml[~touched].tolist()

    def summary(self) -> dict[str, dict[str, Any]]:
        """Subtypes present in the ground truth only."""
        return {name: tally.summary() for name, tally in self.tallies.items() if tally.voxels}
