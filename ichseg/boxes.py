"""Boxes on a slice: from label masks (training, ground truth) and merged per slice (inference).

Convention everywhere: ``(x0, y0, x1, y1)`` in pixel-edge coordinates, float, ``x1``/``y1`` exclusive — a box
covering pixel columns 10..20 is ``x0=10, x1=21``. This is what YOLO predicts and what BHX's
``x, y, width, height`` describe; ``torchvision.ops.masks_to_boxes`` gives inclusive maxima, so add 1.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np
import torch
from scipy import ndimage
from torchvision.ops import masks_to_boxes

Box = tuple[float, float, float, float]


class LabelledBox(NamedTuple):
    """One box of one subtype on one slice (``subtype`` is the detector class index)."""

    subtype: int
    box: Box


def box_of_mask(mask: np.ndarray) -> Box:
    """Tight box of a non-empty binary 2D mask, via torchvision's ``masks_to_boxes`` (as the paper does)."""
    x0, y0, x1, y1 = masks_to_boxes(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None])[0].tolist()
    return (x0, y0, x1 + 1.0, y1 + 1.0)


def lesion_boxes(label_slice: np.ndarray) -> list[LabelledBox]:
    """One box per connected component per subtype of a label slice (0 background, k+1 subtype k).

    Components touching diagonally count as one (8-connectivity), like a reader drawing one box around them.
    """
    boxes: list[LabelledBox] = []
    for label in np.unique(label_slice):
        if label == 0:
            continue
        components, count = ndimage.label(label_slice == label, structure=np.ones((3, 3), dtype=bool))
        for component in range(1, count + 1):
            boxes.append(LabelledBox(int(label) - 1, box_of_mask(components == component)))
    return boxes


def merge_boxes(boxes: Iterable[Box]) -> Box | None:
    """The smallest box enclosing all boxes of a slice (None when the slice has no box)."""
    boxes = list(boxes)
    if not boxes:
        return None
    array = np.asarray(boxes, dtype=np.float64)
    return (float(array[:, 0].min()), float(array[:, 1].min()), float(array[:, 2].max()), float(array[:, 3].max()))


def pixel_bounds(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer crop bounds (row0, row1, col0, col1) covering the box, clipped to the slice, at least 1 pixel."""
    x0, y0, x1, y1 = box
    col0 = int(np.clip(np.floor(x0), 0, width - 1))
    row0 = int(np.clip(np.floor(y0), 0, height - 1))
    col1 = int(np.clip(np.ceil(x1), col0 + 1, width))
    row1 = int(np.clip(np.ceil(y1), row0 + 1, height))
    return row0, row1, col0, col1
