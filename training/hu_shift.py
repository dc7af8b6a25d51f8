"""Calibration-shift augmentation: a training image as if the scanner had read every HU a few units higher or lower.

Why: CT numbers differ between scanners, kVp and calibrations (water is accepted within ±4 HU; brain and blood
read several HU apart between vendors), while the phantoms all share one calibration. Without this, moving every
HU of the validation studies by +6 took the product's study sensitivity from 0.87 to 0.67 and its slice Dice from
0.53 to 0.40 (``benchmarks/robustness.py``, detector v0.6.0). Both networks read windowed 8-bit channels, so the
shift is applied there: ``offset`` HU move a channel of window width ``w`` by ``offset · 255 / w`` grey levels. A
pixel at 0 or at full scale was clipped by its window (its HU lies outside it) and stays where it is. The header
channel counts as a brain window (80 HU wide), the preset most series carry. One implementation for the detector
(an ultralytics transform) and the segmenter (``training.segmenter_data``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from ichseg.windowing import BRAIN_WINDOW, CHANNELS, HEADER_INPUT

MAX_HU_SHIFT = 40.0  # HU: beyond this it is no longer a calibration (the brain window is 80 HU wide)


def channel_widths(kind: str) -> tuple[float, ...]:
    """Window width (HU) of each input channel of ``kind``, in the networks' channel order."""
    if kind == HEADER_INPUT:
        return (BRAIN_WINDOW[1],)
    return tuple((channel.window or BRAIN_WINDOW)[1] for channel in CHANNELS[kind])


def shift_windowed(image: np.ndarray, offset_hu: float, widths: Sequence[float], channel_axis: int,
                   full_scale: float) -> np.ndarray:
    """A copy of ``image`` (channels of 0–``full_scale``) with every HU ``offset_hu`` higher; one width applies to
    every channel of a grey image. Integer images stay integers (rounded)."""
    shifted = image.astype(np.float32)
    planes = np.moveaxis(shifted, channel_axis, 0)  # a view: writing a plane writes ``shifted``
    if len(widths) not in (1, len(planes)):
        raise ValueError(f"{len(widths)} window widths for an image of {len(planes)} channels")
    for index, plane in enumerate(planes):
        width = widths[index] if len(widths) > 1 else widths[0]
        inside = (plane > 0) & (plane < full_scale)
        plane[inside] = np.clip(plane[inside] + offset_hu * full_scale / width, 0.0, full_scale)
    if np.issubdtype(image.dtype, np.integer):
        return np.rint(shifted).astype(image.dtype)
    return shifted.astype(image.dtype)


class UltralyticsHuShift:
    """ultralytics training transform: one random offset per image, drawn from ``random`` as ultralytics' own
    augmentations are (seeded per worker). Images arrive as loaded, 8-bit BGR (the dataset writes RGB channels
    as BGR), so the widths are reversed."""

    def __init__(self, max_hu: float, kind: str) -> None:
        self.max_hu = max_hu
        self.widths = tuple(reversed(channel_widths(kind)))

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        offset = random.uniform(-self.max_hu, self.max_hu)
        labels["img"] = shift_windowed(labels["img"], offset, self.widths, -1, 255.0)  # a copy: the RAM cache stays
        return labels
