"""Boxes on a slice: from label masks (training, ground truth) and merged per slice (inference).

Convention everywhere: ``(x0, y0, x1, y1)`` in pixel-edge coordinates, float, ``x1``/``y1`` exclusive — a box
covering pixel columns 10..20 is ``x0=10, x1=21``. This is what YOLO predicts and what BHX's
``x, y, width, height`` describe (the paper derives boxes with ``torchvision.ops.masks_to_boxes``, whose inclusive
maxima are one less). numpy only: the app imports this before deciding whether to load torch at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from scipy import ndimage

Box = tuple[float, float, float, float]

MERGE_MODES = ("slice", "cluster")
DEFAULT_MERGE = "slice"  # the paper's one enclosing box per slice; "cluster" stays selectable until validation decides
CLUSTER_MARGIN_MM = 10.0  # boxes closer than this (or overlapping) form one cluster, cropped as one
LESION_GAP_MM = 5.0  # label fragments of one subtype closer than this are one lesion with one box, as a reader draws it


class LabelledBox(NamedTuple):
    """One box of one subtype on one slice (``subtype`` is the detector class index)."""

    subtype: int
    box: Box


def box_of_mask(mask: np.ndarray) -> Box:
    """Tight box of a non-empty binary 2D mask: first and one-past-last occupied column and row."""
    rows, columns = np.flatnonzero(np.any(mask, axis=1)), np.flatnonzero(np.any(mask, axis=0))
    if rows.size == 0:
        raise ValueError("box_of_mask: empty mask")
    return (float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1))


def lesion_boxes(label_slice: np.ndarray, gap: float | None = None) -> list[LabelledBox]:
    """One box per lesion per subtype of a label slice (0 background, k+1 subtype k).

    A lesion is a connected component (8-connectivity: touching diagonally counts) or, with ``gap`` (pixels), a
    group of components of the same subtype whose boxes overlap or lie within ``gap`` of each other
    (``cluster_boxes``). Why: at 5 mm slices a thin subdural crescent or sulcal blood breaks into many fragments of a
    few pixels; a reader draws one box around the lesion, and a detector cannot learn one box per fragment.
    """
    boxes: list[LabelledBox] = []
    for label in np.unique(label_slice):
        if label == 0:
            continue
        components, count = ndimage.label(label_slice == label, structure=np.ones((3, 3), dtype=bool))
        found = [box_of_mask(components == component) for component in range(1, count + 1)]
        if gap is not None:
            found = cluster_boxes(found, gap)
        boxes += [LabelledBox(int(label) - 1, box) for box in found]
    return boxes


def mm_to_pixels(distance_mm: float, pixel_spacing: tuple[float, float]) -> float:
    """An in-plane distance in pixels of a slice with this (row, column) spacing (their mean)."""
    return distance_mm / float(np.mean(pixel_spacing))


def lesion_gap_pixels(pixel_spacing: tuple[float, float], gap_mm: float = LESION_GAP_MM) -> float:
    """``LESION_GAP_MM`` in pixels: the gap the generator's boxes and the evaluation's ground truth both use."""
    return mm_to_pixels(gap_mm, pixel_spacing)


def merge_boxes(boxes: Iterable[Box]) -> Box | None:
    """The smallest box enclosing all boxes of a slice (None when the slice has no box)."""
    boxes = list(boxes)
    if not boxes:
        return None
    array = np.asarray(boxes, dtype=np.float64)
    return (float(array[:, 0].min()), float(array[:, 1].min()), float(array[:, 2].max()), float(array[:, 3].max()))


def _near(a: Box, b: Box, margin: float) -> bool:
    """Boxes overlap, touch or have a gap of at most ``margin`` pixels along both axes."""
    gap_x = max(a[0], b[0]) - min(a[2], b[2])
    gap_y = max(a[1], b[1]) - min(a[3], b[3])
    return gap_x <= margin and gap_y <= margin


def cluster_boxes(boxes: Iterable[Box], margin: float) -> list[Box]:
    """One enclosing box per cluster of boxes that overlap or lie within ``margin`` pixels of each other.

    Why: two lesions far apart on one slice (bilateral subdurals, a clot plus ventricular blood) merged into one
    box make a crop of most of the brain, and the 224×224 segmenter input loses their detail. Merging repeats until
    no two cluster boxes are near, because a grown box can reach a third one. Sorted by (y0, x0) for a stable order.
    """
    clusters = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                if _near(clusters[i], clusters[j], margin):
                    clusters[i] = merge_boxes((clusters[i], clusters[j]))  # type: ignore[assignment]
                    del clusters[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(clusters, key=lambda box: (box[1], box[0]))


def merge_slice(boxes: Iterable[Box], mode: str = DEFAULT_MERGE, margin: float = 0.0) -> list[Box]:
    """The boxes a slice is segmented in: ``slice`` one enclosing box (the paper), ``cluster`` one per cluster.

    Empty when the slice has no box; ``margin`` (pixels) only matters for ``cluster``.
    """
    if mode == "slice":
        merged = merge_boxes(boxes)
        return [] if merged is None else [merged]
    if mode == "cluster":
        return cluster_boxes(boxes, margin)
    raise ValueError(f"unknown merge mode {mode!r}; expected one of {', '.join(MERGE_MODES)}")


def outline(shape: tuple[int, int], boxes: Iterable[Box], width: int = 2) -> np.ndarray:
    """Bool (rows, columns) image of the boxes' edges, ``width`` pixels thick inside each box (for previews)."""
    image = np.zeros(shape, dtype=bool)
    for box in boxes:
        row0, row1, col0, col1 = pixel_bounds(box, *shape)
        image[row0:row1, col0:col1] = True
        image[row0 + width:row1 - width, col0 + width:col1 - width] = False
    return image


def pixel_bounds(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer crop bounds (row0, row1, col0, col1) covering the box, clipped to the slice, at least 1 pixel."""
    x0, y0, x1, y1 = box
    col0 = int(np.clip(np.floor(x0), 0, width - 1))
    row0 = int(np.clip(np.floor(y0), 0, height - 1))
    col1 = int(np.clip(np.ceil(x1), col0 + 1, width))
    row1 = int(np.clip(np.ceil(y1), row0 + 1, height))
    return row0, row1, col0, col1
