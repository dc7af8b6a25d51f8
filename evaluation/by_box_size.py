"""Detector recall by lesion-box size: where a detector's misses are.

mAP says how much is lost, not where. On the synthetic validation slices the bundled detector found 1 % of the
lesion boxes whose shortest side is under 8 px of its 512 grid and 83 % of those over 64 px. A stride-4 level did not
find more of the small ones: on these phantoms most are 1–3 px slivers (crescent ends on the inner table, fragments
under the noise) with nothing to see (models/README.md). A crescent's box is as long as its arc however thin the
blood, so a large box is not always visible blood either. This table keeps it measured for any detector: each
ground-truth lesion box counts as found at the highest confidence of a detection of any subtype overlapping it at
IoU ≥ 0.5 (the product crops whatever it boxes, whatever the subtype), bucketed by its shortest side in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou

SIZE_EDGES_MM = (4.0, 8.0, 16.0, 32.0)  # bucket edges of the shortest box side (≈ 9, 18, 36, 71 px at 0.45 mm)
FOUND_IOU = 0.5


def box_overlaps(true_boxes: np.ndarray, pred_boxes: np.ndarray) -> np.ndarray:
    """(n, m) IoU of n ground-truth and m predicted boxes (x0, y0, x1, y1), computed once per slice for both the
    evaluation's one-to-one matching and this recall."""
    if not len(true_boxes) or not len(pred_boxes):
        return np.zeros((len(true_boxes), len(pred_boxes)))
    return box_iou(torch.as_tensor(true_boxes, dtype=torch.float64),
                   torch.as_tensor(pred_boxes, dtype=torch.float64)).numpy()


def size_buckets() -> list[str]:
    """Bucket labels, smallest first: "< 4 mm", "4–8 mm", …, "≥ 32 mm"."""
    edges = SIZE_EDGES_MM
    between = (f"{a:g}–{b:g} mm" for a, b in zip(edges[:-1], edges[1:], strict=True))
    return [f"< {edges[0]:g} mm", *between, f"≥ {edges[-1]:g} mm"]


@dataclass
class BoxSizeRecall:
    """Every ground-truth lesion box: its shortest side and the best confidence it was found at (0: never)."""

    shortest_side_mm: list[float] = field(default_factory=list)
    found_confidence: list[float] = field(default_factory=list)

    def add_slice(self, true_boxes: np.ndarray, iou: np.ndarray, confidences: np.ndarray, pixel_mm: float) -> None:
        """One slice's lesion boxes (n, 4, pixels of ``pixel_mm``) against its m detections: their (n, m) IoU
        (``box_overlaps``) and m confidences."""
        if not len(true_boxes):
            return
        sides = np.minimum(true_boxes[:, 2] - true_boxes[:, 0], true_boxes[:, 3] - true_boxes[:, 1]) * pixel_mm
        found = np.zeros(len(true_boxes))
        if iou.shape[1]:
            found = np.where(iou >= FOUND_IOU, np.asarray(confidences, dtype=np.float64)[None, :], 0.0).max(axis=1)
        self.shortest_side_mm += sides.tolist()
        self.found_confidence += found.tolist()

    def recall(self, confidence: float) -> dict[str, dict[str, float | int | None]]:
        """Per size bucket: lesion boxes and the share found at ``confidence`` or above (None: no boxes)."""
        sides, found = np.asarray(self.shortest_side_mm), np.asarray(self.found_confidence) >= confidence
        bucket = np.searchsorted(SIZE_EDGES_MM, sides, side="right")
        table: dict[str, dict[str, float | int | None]] = {}
        for index, label in enumerate(size_buckets()):
            inside = bucket == index
            table[label] = {"boxes": int(inside.sum()),
                            "recall": round(float(found[inside].mean()), 3) if inside.any() else None}
        return table


def box_size_markdown(recall: dict[str, dict[str, float | int | None]], confidence: float) -> str:
    """One sentence for the evaluation report."""
    cells = ", ".join(f"{label} {'–' if row['recall'] is None else format(row['recall'], '.2f')} ({row['boxes']})"
                      for label, row in recall.items())
    return (f"Lesion boxes found by size (shortest side; a detection of any subtype at IoU ≥ {FOUND_IOU:g} and "
            f"confidence ≥ {confidence:g}; boxes in brackets): {cells}.")
