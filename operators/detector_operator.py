"""Stage 1: YOLO hemorrhage boxes per slice (``ichseg.pipeline.detect``), mapped to source-grid pixel coordinates.

The weights load in ``start()``, before any DICOM is read, so missing or mismatching models fail fast with a
ModelError naming the folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ichseg import model_cache, pipeline
from ichseg.detector import HemorrhageDetector
from ichseg.sdk import Fragment, Operator, OperatorSpec
from ichseg.stage_clock import StageClock
from ichseg.subtypes import SUBTYPES

logger = logging.getLogger("ichseg.app")


class DetectorOperator(Operator):
    """``windowed`` (WindowedSeries) → ``detections`` (one list of Detection per slice, source grid) and
    ``thresholds``, the confidence and extend confidence used (the settings, else the manifest's operating point) for
    the report: a box at ``confidence`` starts a finding, one at the extend confidence continues it across slices."""

    def __init__(
        self, fragment: Fragment, *args: Any, model_dir: Path, confidence: float | None, iou: float, device: str | None,
        clock: StageClock, extend: float | None = None, **kwargs: Any,
    ):
        self.model_dir = Path(model_dir)
        self.confidence, self.extend, self.iou, self.device = confidence, extend, iou, device
        self.clock = clock
        self.detector: HemorrhageDetector | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("windowed")
        spec.output("detections")
        spec.output("thresholds")

    def start(self) -> None:
        with self.clock.stage("load detector model"):
            self.detector = model_cache.detector(self.model_dir, self.confidence, self.iou, self.device, self.extend)
            logger.info(
                "detector %s %s on %s, confidence threshold %.3f (continued across slices down to %.3f)",
                self.detector.manifest.name, self.detector.manifest.version, self.detector.device,
                self.detector.confidence, self.detector.extend_confidence,
            )

    def compute(self, op_input, op_output, context) -> None:
        windowed: pipeline.WindowedSeries = op_input.receive("windowed")
        assert self.detector is not None, "start() loads the model"
        with self.clock.stage("YOLO detection"):
            detections = pipeline.detect(self.detector, windowed)
            found = sorted({SUBTYPES[d.subtype] for slice_detections in detections for d in slice_detections})
            logger.info(
                "%d boxes on %d of %d slices%s", sum(map(len, detections)), sum(map(bool, detections)), len(detections),
                f" ({', '.join(found)})" if found else "",
            )
        op_output.emit(detections, "detections")
        op_output.emit(
            {"confidence": self.detector.confidence, "extend_confidence": self.detector.extend_confidence},
            "thresholds",
        )
