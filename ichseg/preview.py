"""PNG previews: windowed slices with mask outlines, for a quick look without a DICOM viewer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ichseg.atomic_file import atomic_path

OUTLINE_RGB = (255, 40, 40)


def outlined(windowed: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = OUTLINE_RGB) -> np.ndarray:
    """Grey uint8 slice → RGB with the one-pixel outline of ``mask`` drawn in ``colour``."""
    rgb = np.repeat(windowed[..., None], 3, axis=-1)
    mask = mask.astype(bool)
    rgb[mask & ~ndimage.binary_erosion(mask)] = colour
    return rgb


def key_slices(masks: np.ndarray, count: int) -> list[int]:
    """The ``count`` slices with the most mask pixels (in slice order), or evenly spread ones if all are empty."""
    areas = masks.reshape(masks.shape[0], -1).sum(axis=1)
    if not areas.any():
        return sorted(set(np.linspace(0, masks.shape[0] - 1, count).round().astype(int).tolist()))
    best = np.argsort(-areas, kind="stable")[:count]
    return sorted(int(i) for i in best if areas[i] > 0)


def save_montage(
    windowed: np.ndarray, masks: np.ndarray, indices: Sequence[int], path: Path, columns: int = 4, tile: int = 256
) -> Path:
    """Tile the outlined slices ``indices`` into one PNG (written to a temporary name, then renamed)."""
    tiles = [
        Image.fromarray(outlined(windowed[i], masks[i])).resize((tile, tile), Image.Resampling.BILINEAR)
        for i in indices
    ]
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, max(rows, 1) * tile))
    for position, image in enumerate(tiles):
        sheet.paste(image, ((position % columns) * tile, (position // columns) * tile))
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")
    return Path(path)
