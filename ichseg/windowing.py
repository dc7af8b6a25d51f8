"""Display windowing of HU slices to 0-255, the intensity scale both networks are trained on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from scipy import ndimage

BRAIN_WINDOW: tuple[float, float] = (40.0, 80.0)  # (centre/level, width) used when the header has none
SUBDURAL_WINDOW: tuple[float, float] = (80.0, 200.0)
STROKE_WINDOW: tuple[float, float] = (40.0, 40.0)
SLAB_HALF_MM = 3.0  # the slab channel averages the slices whose centres lie within this distance of the slice

#: What a network's three input channels hold (its manifest's ``training.input``; absent = the first).
#: ``header-window``: the header-windowed slice in all three (the paper; the detector up to v0.4.1, the segmenter
#: up to v0.2.0).
#: ``header+brain+subdural``: the header window, then the fixed brain (40/80) and subdural (80/200) windows. Blood
#: above a header window's upper limit is as white as bone (80 HU in 40/80; all blood in a stroke 40/40 window),
#: and a bone-window header hides blood altogether; the subdural window keeps blood (≈ 110–140) apart from bone (255)
#: and both fixed windows keep the input the same whatever display preset the scanner wrote.
#: ``stroke+brain+subdural``: three fixed windows, the first the narrow stroke window (40/40, 20–60 HU). Hyperacute
#: and mixed blood (35–50 HU) differs from grey matter by a few HU; the stroke window doubles that contrast in the
#: first channel while the other two keep clotted blood and bone apart. No channel depends on the header.
#: ``slab+brain+subdural``: the first channel is the brain window of a thin slab, the mean HU of the slices within
#: ±``SLAB_HALF_MM`` (the slice alone at spacings over 3 mm). Blood continues across thin slices while noise does not:
#: on the validation phantoms the slab doubles the contrast-to-noise of low-density blood (median 0.36 → 0.65) and of
#: clotted blood (1.8 → 3.4). The other two channels are the slice's own brain and subdural windows.
HEADER_INPUT = "header-window"
MULTI_WINDOW_INPUT = "header+brain+subdural"
STROKE_INPUT = "stroke+brain+subdural"
SLAB_INPUT = "slab+brain+subdural"
INPUT_KINDS = (HEADER_INPUT, MULTI_WINDOW_INPUT, STROKE_INPUT, SLAB_INPUT)


@dataclass(frozen=True)
class Channel:
    """One input channel: the header-windowed slice (``window`` None), or a fixed window of the slice's HU, or of the
    mean HU of the slices within ±``slab_half_mm`` (> 0)."""

    window: tuple[float, float] | None = None
    slab_half_mm: float = 0.0


FIXED_CHANNELS = (Channel(BRAIN_WINDOW), Channel(SUBDURAL_WINDOW))
#: The channels of each multi-window kind.
CHANNELS: dict[str, tuple[Channel, ...]] = {
    MULTI_WINDOW_INPUT: (Channel(), *FIXED_CHANNELS),
    STROKE_INPUT: (Channel(STROKE_WINDOW), *FIXED_CHANNELS),
    SLAB_INPUT: (Channel(BRAIN_WINDOW, SLAB_HALF_MM), *FIXED_CHANNELS),
}


def input_planes(kind: str) -> tuple[int, ...]:
    """The per-slice axes before (rows, columns) in ``kind`` slices: () grey, (3,) channels."""
    if kind not in INPUT_KINDS:
        raise ValueError(f"unknown network input {kind!r}")
    return () if kind == HEADER_INPUT else (len(CHANNELS[kind]),)


def _first_value(value: object) -> float:
    """WindowCenter/Width may be multi-valued (several presets); the first is the primary one."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


WIDEST_WINDOW = 4096.0  # wider than CT's whole HU range: a placeholder (converters write 32768/65536), not a window


def window_from_header(dataset: Dataset) -> tuple[float, float]:
    """(centre, width) from a slice's VOI LUT module, or the brain window 40/80 when absent or unusable."""
    try:
        centre = _first_value(dataset.WindowCenter)
        width = _first_value(dataset.WindowWidth)
    except (AttributeError, IndexError, TypeError, ValueError, KeyError):
        return BRAIN_WINDOW
    if not np.isfinite(centre) or not np.isfinite(width) or width <= 1 or width > WIDEST_WINDOW:
        return BRAIN_WINDOW
    return centre, width


def apply_window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Linear window (DICOM PS3.3 C.11.2.1.2.1 without the half-pixel offset) scaled to uint8 0-255."""
    low = centre - width / 2.0
    scaled = (hu.astype(np.float32) - low) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def window_volume(hu: np.ndarray, windows: Sequence[tuple[float, float]]) -> np.ndarray:
    """(N, H, W) HU → (N, H, W) uint8, each slice with its own (centre, width): the one path to network input."""
    return np.stack(
        [apply_window(slice_hu, centre, width) for slice_hu, (centre, width) in zip(hu, windows, strict=True)]
    )


def slab_mean(hu: np.ndarray, slice_spacing: float, half_mm: float) -> np.ndarray:
    """(N, H, W) HU → the mean HU of each slice and its neighbours within ±``half_mm`` (slice centres at
    ``slice_spacing``); the end slices repeat beyond the series' ends. The volume itself when no neighbour is that
    close."""
    reach = int(half_mm / slice_spacing + 1e-6) if slice_spacing > 0 else 0
    if reach == 0 or len(hu) < 2:
        return hu
    return ndimage.uniform_filter1d(hu.astype(np.float32), size=2 * reach + 1, axis=0, mode="nearest")


def channel_input(
    header_windowed: np.ndarray, hu: np.ndarray, kind: str, slice_spacing: float, offset_hu: float = 0.0
) -> np.ndarray:
    """(N, H, W) header-windowed slices and their HU (slices ``slice_spacing`` mm apart, in order) → (N, 3, H, W)
    uint8 channels of a multi-window ``kind``; the fixed windows move up by ``offset_hu`` (the series' calibration
    offset: the same pixels as windowing ``hu - offset_hu``, without a second HU volume)."""
    if kind not in CHANNELS:
        raise ValueError(f"unknown multi-window network input {kind!r}")
    planes = []
    for channel in CHANNELS[kind]:
        if channel.window is None:
            planes.append(header_windowed)
        else:  # slab_mean is the HU itself for a channel without a slab
            centre, width = channel.window
            planes.append(apply_window(slab_mean(hu, slice_spacing, channel.slab_half_mm), centre + offset_hu, width))
    return np.stack(planes, axis=1)
