"""Between the stages: each slice's boxes merged into the boxes it is segmented in (``ichseg.pipeline.merge``).

``slice`` mode is the paper's one smallest box enclosing every box of a slice; ``cluster`` mode keeps distant
groups of boxes apart (one enclosing box per cluster), so that two lesions far apart are cropped separately.
"""

from __future__ import annotations

import logging
from typing import Any

from ichseg import pipeline
from ichseg.boxes import CLUSTER_MARGIN_MM, DEFAULT_MERGE, Box
from ichseg.detector import Detection
from ichseg.dicom_series import CTSeries
from ichseg.sdk import Fragment, Operator, OperatorSpec
from ichseg.stage_clock import StageClock

logger = logging.getLogger("ichseg.app")


class BoxMergerOperator(Operator):
    """``detections`` (per slice, source grid) + ``series`` (pixel spacing) → ``boxes`` (a list of Box per slice)."""

    def __init__(
        self, fragment: Fragment, *args: Any, clock: StageClock, mode: str = DEFAULT_MERGE,
        margin_mm: float = CLUSTER_MARGIN_MM, **kwargs: Any,
    ):
        self.clock = clock
        self.mode = mode
        self.margin_mm = margin_mm
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("detections")
        spec.input("series")
        spec.output("boxes")

    def compute(self, op_input, op_output, context) -> None:
        detections: list[list[Detection]] = op_input.receive("detections")
        series: CTSeries = op_input.receive("series")
        with self.clock.stage("box merging"):
            margin = pipeline.cluster_margin_px(series.pixel_spacing, self.margin_mm)
            boxes: list[list[Box]] = pipeline.merge(detections, self.mode, margin)
            logger.info(
                "%s merge: %d boxes on %d slices to segment", self.mode, sum(map(len, boxes)), sum(map(bool, boxes))
            )
        op_output.emit(boxes, "boxes")
