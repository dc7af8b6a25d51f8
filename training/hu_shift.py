"""Calibration-shift augmentation: a training image as if the scanner had read every HU a few units higher or lower.

Why: CT numbers differ between scanners, kVp and calibrations (water is accepted within ±4 HU; brain and blood
read several HU apart between vendors), while the phantoms all share one calibration. Without this, moving every
HU of the validation studies by +6 took the product's study sensitivity from 0.87 to 0.67 and its slice Dice from
0.53 to 0.40 (``benchmarks/robustness.py``, detector v0.6.0). Both networks read windowed 8-bit channels, so the
shift is applied there: ``offset`` HU move a channel of window width ``w`` by ``offset · 255 / w`` grey levels. A
pixel at 0 or at full scale was clipped by its window (its HU lies outside it) and stays where it is. The header
channel counts as a brain window (80 HU wide), the preset most series carry. One implementation for the detector
(an ultralytics transform) and the segmenter (``training.segmenter_data``).

The same path adds noise (``noise_field``): correlated Gaussian noise of up to ``max_noise_hu`` standard deviation,
as a lower dose, a sharper kernel or another scanner's noise texture would add. Why: with 8 HU of noise added to the
validation studies, detector v0.6.0 boxed mimics in two hemorrhage-free studies (specificity 1.00 → 0.78, 21 → 49
false-positive slices; ``benchmarks/robustness.py``), while the phantoms' own noise (3–20 HU) has one texture.
Clipped pixels get no noise either (their HU is unknown): near a window's edge the noise is a little one-sided.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ichseg.windowing import BRAIN_WINDOW, CHANNELS, HEADER_INPUT

MAX_HU_SHIFT = 40.0  # HU: beyond this it is no longer a calibration (the brain window is 80 HU wide)
MAX_HU_NOISE = 30.0  # HU standard deviation: beyond this a head CT is no longer read
NOISE_CORRELATION_PX = (0.0, 1.5)  # Gaussian smoothing of the white noise: sharp (0) to soft-kernel grain
HU_CHANGES = {"hu_shift": MAX_HU_SHIFT, "hu_noise": MAX_HU_NOISE}  # each training option and its largest value


def channel_widths(kind: str) -> tuple[float, ...]:
    """Window width (HU) of each input channel of ``kind``, in the networks' channel order."""
    if kind == HEADER_INPUT:
        return (BRAIN_WINDOW[1],)
    return tuple((channel.window or BRAIN_WINDOW)[1] for channel in CHANNELS[kind])


def noise_field(shape: tuple[int, int], sigma_hu: float, correlation_px: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 Gaussian noise of standard deviation ``sigma_hu``, smoothed over ``correlation_px`` pixels."""
    white = rng.standard_normal(shape).astype(np.float32)
    if correlation_px > 0:
        white = cv2.GaussianBlur(white, (0, 0), correlation_px, borderType=cv2.BORDER_REFLECT)
    spread = float(white.std())
    return white * np.float32(sigma_hu / spread) if spread > 0 else white * 0


def shift_windowed(image: np.ndarray, offset_hu: float | np.ndarray, widths: Sequence[float], channel_axis: int,
                   full_scale: float) -> np.ndarray:
    """A copy of ``image`` (channels of 0–``full_scale``) with every HU ``offset_hu`` higher (a number, or a field of
    the image's height and width); one width applies to every channel of a grey image. Integer images stay integers
    (rounded)."""
    shifted = image.astype(np.float32)
    planes = np.moveaxis(shifted, channel_axis, 0)  # a view: writing a plane writes ``shifted``
    if len(widths) not in (1, len(planes)):
        raise ValueError(f"{len(widths)} window widths for an image of {len(planes)} channels")
    for index, plane in enumerate(planes):
        width = widths[index] if len(widths) > 1 else widths[0]
        inside = (plane > 0) & (plane < full_scale)
        moved = offset_hu[inside] if isinstance(offset_hu, np.ndarray) else offset_hu
        plane[inside] = np.clip(plane[inside] + moved * full_scale / width, 0.0, full_scale)
    if np.issubdtype(image.dtype, np.integer):
        return np.rint(shifted).astype(image.dtype)
    return shifted.astype(image.dtype)


def hu_change(shape: tuple[int, int], max_shift_hu: float, max_noise_hu: float,
              rng: np.random.Generator) -> float | np.ndarray:
    """One training image's HU change: a calibration shift of up to ±``max_shift_hu`` plus, when ``max_noise_hu``,
    noise of a standard deviation up to it and a random grain (``NOISE_CORRELATION_PX``)."""
    offset = rng.uniform(-max_shift_hu, max_shift_hu) if max_shift_hu > 0 else 0.0
    if max_noise_hu <= 0:
        return offset
    return offset + noise_field(shape, rng.uniform(0.0, max_noise_hu), rng.uniform(*NOISE_CORRELATION_PX), rng)


class UltralyticsHuShift:
    """ultralytics training transform: one random HU change per image (``hu_change``), seeded from ``random`` as
    ultralytics' own augmentations are (seeded per worker). Images arrive as loaded, 8-bit BGR (the dataset writes
    RGB channels as BGR), so the widths are reversed."""

    def __init__(self, max_hu: float, kind: str, max_noise_hu: float = 0.0) -> None:
        self.max_hu = max_hu
        self.max_noise_hu = max_noise_hu
        self.widths = tuple(reversed(channel_widths(kind)))

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        rng = np.random.default_rng(random.getrandbits(64))
        change = hu_change(labels["img"].shape[:2], self.max_hu, self.max_noise_hu, rng)
        labels["img"] = shift_windowed(labels["img"], change, self.widths, -1, 255.0)  # a copy: the RAM cache stays
        return labels
