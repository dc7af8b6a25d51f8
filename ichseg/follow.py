"""Following a finding into the slices the detector left empty: the segmenter, not the detector, decides there.

Why: the detector misses the thin ends of a hemorrhage (a subdural's top and bottom slices, where it is a few
millimetres thick): on the test phantoms it touched the blood on 62 % of subdural slices where ground-truth boxes
reach 92 % (README, by subtype).
The segmenter, trained on crops with and without blood, segments those slices well once it is given a box. So each
slice whose guarded mask has blood hands a box to its empty neighbour — the tight box of that blood, grown by
``BOX_GROWTH`` of its side, as training jitters ground-truth boxes — and what the segmenter paints there is kept when
it continues the finding in 3D:

- only the 2D components of the new mask that touch the seed's blood (dilated by ``OVERLAP_PX``) count;
- of those, only voxels the guard's cavity and density rules keep (``ichseg.guard.cavity_and_density``);
- nothing left: the finding ends there; else that slice seeds the next one, at most ``slices`` slices each way.

Seeds are guarded masks, never the raw one: following raw findings grew false positives on hemorrhage-free studies
past the guard's size rule (validation: a negative study called). So following needs the guard and is off with it.
Slices the detector gave a box are never followed into: the detector's answer there stands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ichseg.boxes import Box, box_of_mask
from ichseg.guard import Anatomy, GuardOptions, cavity_and_density

# Chosen on the validation phantoms with detector v0.6.0 + segmenter v0.4.0 (models/README.md): 3 slices each way
# lifted mean slice Dice 0.497 → 0.535 on the 24 validation studies (objective 0.789 → 0.799); unlimited following
# with the same rules added 37 false-positive slices instead of 12.
FOLLOW_SLICES = 3
OVERLAP_PX = 2  # the new blood must touch the seed's blood grown by this many pixels
BOX_GROWTH = 0.1  # the seed's blood box grown by this fraction of its side (+1 px) each way

SegmentBoxes = Callable[[list[tuple[int, Box]]], Iterable[np.ndarray]]  # (slice index, box) crops → (H, W) bool
# masks of each, pasted back on its slice (``HemorrhageSegmenter.crop_masks``)


@dataclass(frozen=True)
class FollowOptions:
    """How far findings are followed; ``slices`` 0 is off."""

    slices: int = FOLLOW_SLICES

    def describe(self) -> dict[str, Any]:
        return {"slices": self.slices, "overlap_px": OVERLAP_PX, "box_growth": BOX_GROWTH}


DEFAULT_FOLLOWING = FollowOptions()
NO_FOLLOWING = FollowOptions(0)


@dataclass
class Followed:
    """What following added: the masks and boxes of the followed slices (the segmenter's, before the guard)."""

    options: FollowOptions
    boxes: dict[int, Box] = field(default_factory=dict)  # slice index → the box segmented there
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # slice index → kept components, unguarded

    def to_json(self, voxel_ml: float) -> dict[str, Any]:
        voxels = sum(int(m.sum()) for m in self.masks.values())
        return {
            "settings": self.options.describe(),
            "slices": sorted(self.boxes),
            "voxels_before_guard": voxels,
            "ml_before_guard": round(voxels * voxel_ml, 3),
        }

    def add_to(self, boxes: Sequence[Sequence[Box]], unguarded: np.ndarray) -> tuple[list[list[Box]], np.ndarray]:
        """The slices' boxes and the segmenter's mask with the followed slices added; nothing followed: ``unguarded``
        itself, not a copy (every run calls this, and a long series' mask is hundreds of MiB)."""
        merged = [list(found) for found in boxes]
        mask = unguarded.copy() if self.masks else unguarded
        for index, box in self.boxes.items():
            merged[index].append(box)
        for index, kept in self.masks.items():
            mask[index] |= kept
        return merged, mask


def grown_box(blood: np.ndarray) -> Box:
    """The tight box of a slice's blood grown by ``BOX_GROWTH`` of its side (+1 px), clipped to the slice."""
    x0, y0, x1, y1 = box_of_mask(blood)
    dx, dy = BOX_GROWTH * (x1 - x0) + 1.0, BOX_GROWTH * (y1 - y0) + 1.0
    height, width = blood.shape
    return (max(x0 - dx, 0.0), max(y0 - dy, 0.0), min(x1 + dx, float(width)), min(y1 + dy, float(height)))


def touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The 2D components of ``mask`` that touch ``seed`` grown by ``OVERLAP_PX``."""
    if not mask.any():
        return mask
    labels, _ = ndimage.label(mask)
    near = ndimage.binary_dilation(seed, iterations=OVERLAP_PX) if OVERLAP_PX else seed
    touched = np.unique(labels[near & mask])
    return np.isin(labels, touched[touched > 0])


def follow(
    segment_boxes: SegmentBoxes, boxes: Sequence[Sequence[Box]], guarded: np.ndarray, anatomy: Anatomy,
    guard: GuardOptions, options: FollowOptions = DEFAULT_FOLLOWING,
) -> Followed:
    """From every slice with guarded blood, up and down into slices without a box, while the segmenter continues it.

    Down first, then up; each way, every finding takes its next step together (one batch of crops per step: two
    findings going the same way never reach the same slice, as each starts on a slice with a box). A slice is followed
    into once: the first side that finds blood there gives its box; a failed try leaves it to the other side.
    """
    followed = Followed(options)
    if options.slices <= 0 or not guard.enabled:
        return followed
    covered = [bool(found) for found in boxes]
    seeds = np.flatnonzero(guarded.reshape(len(guarded), -1).any(axis=1))
    for direction in (-1, 1):
        ends = [(int(start), guarded[start]) for start in seeds]  # (slice reached, its blood)
        for _ in range(options.slices):
            steps = [(index + direction, blood) for index, blood in ends
                     if 0 <= index + direction < len(boxes) and not covered[index + direction]]
            if not steps:
                break
            crops = [(index, grown_box(blood)) for index, blood in steps]
            ends = []
            for (index, seed), (_, box), mask in zip(steps, crops, segment_boxes(crops), strict=True):
                kept = touching(mask, seed)
                blood = _dense(kept, anatomy, index, guard)
                if blood.any():
                    covered[index] = True
                    followed.boxes[index], followed.masks[index] = box, kept
                    ends.append((index, blood))
    return followed


def _dense(mask: np.ndarray, anatomy: Anatomy, index: int, guard: GuardOptions) -> np.ndarray:
    """The part of one slice's mask the guard's cavity and density rules keep."""
    one = anatomy.cut((slice(index, index + 1), slice(None), slice(None)))
    return cavity_and_density(mask[None], one, guard.margin_mm, guard.blood_range(one))[1][0]
