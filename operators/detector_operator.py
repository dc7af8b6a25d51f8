"""Stage 1: YOLO hemorrhage boxes per slice (``ichseg.detector``), mapped to source-grid pixel coordinates.

The weights load in ``start()``, before any DICOM is read, so missing or mismatching models fail fast with a
ModelError naming the folder.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ichseg.detector import Detection, HemorrhageDetector
from ichseg.subtypes import SUBTYPES
from monai.deploy.core import Fragment, Operator, OperatorSpec
from operators.stage import StageClock
from operators.windowing_operator import WindowedSeries

logger = logging.getLogger("ichseg.app")


def to_source_grid(detection: Detection, scale: tuple[float, float]) -> Detection:
    """A detection on the 512 detector grid → the same detection in source-grid pixel coordinates."""
    x0, y0, x1, y1 = detection.box
    sx, sy = scale
    return dataclasses.replace(detection, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))


class DetectorOperator(Operator):
    """``windowed`` (WindowedSeries) → ``detections`` (one list of Detection per slice, source grid)."""

    def __init__(
        self, fragment: Fragment, *args: Any, model_dir: Path, confidence: float, iou: float, device: str | None,
        clock: StageClock, **kwargs: Any,
    ):
        self.model_dir = Path(model_dir)
        self.settings = {"confidence": confidence, "iou": iou, "device": device}
        self.clock = clock
        self.detector: HemorrhageDetector | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("windowed")
        spec.output("detections")

    def start(self) -> None:
        with self.clock.stage("load detector model"):
            self.detector = HemorrhageDetector(self.model_dir, **self.settings)
            logger.info(
                "detector %s %s on %s, confidence threshold %.3f", self.detector.manifest.name,
                self.detector.manifest.version, self.detector.device, self.detector.confidence,
            )

    def compute(self, op_input, op_output, context) -> None:
        windowed: WindowedSeries = op_input.receive("windowed")
        with self.clock.stage("YOLO detection"):
            per_slice = self.detector.detect(windowed.detector)
            detections = [[to_source_grid(d, windowed.scale) for d in slice_detections] for slice_detections in per_slice]
            found = sorted({SUBTYPES[d.subtype] for slice_detections in detections for d in slice_detections})
            logger.info(
                "%d boxes on %d of %d slices%s", sum(map(len, detections)), sum(map(bool, detections)), len(detections),
                f" ({', '.join(found)})" if found else "",
            )
        op_output.emit(detections, "detections")
