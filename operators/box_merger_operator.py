"""Between the stages: the boxes of a slice become the one smallest box enclosing them all (the paper's rule)."""

from __future__ import annotations

import logging
from typing import Any

from ichseg.boxes import merge_boxes
from ichseg.detector import Detection
from monai.deploy.core import Fragment, Operator, OperatorSpec
from operators.stage import StageClock

logger = logging.getLogger("ichseg.app")


class BoxMergerOperator(Operator):
    """``detections`` (per slice) → ``boxes`` (one merged Box or None per slice, source grid)."""

    def __init__(self, fragment: Fragment, *args: Any, clock: StageClock, **kwargs: Any):
        self.clock = clock
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("detections")
        spec.output("boxes")

    def compute(self, op_input, op_output, context) -> None:
        detections: list[list[Detection]] = op_input.receive("detections")
        with self.clock.stage("box merging"):
            boxes = [merge_boxes(d.box for d in slice_detections) for slice_detections in detections]
            logger.info("%d slices to segment", sum(box is not None for box in boxes))
        op_output.emit(boxes, "boxes")
