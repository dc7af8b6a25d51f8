"""Stage 2: TransDeepLab inside each slice's merged box(es) (``ichseg.pipeline.segment``), mask on the source grid.

The weights load in ``start()``, before any DICOM is read, so a missing model fails fast with a ModelError.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ichseg import model_cache, pipeline
from ichseg.boxes import Box
from ichseg.sdk import Fragment, Operator, OperatorSpec
from ichseg.segmenter import HemorrhageSegmenter
from ichseg.stage_clock import StageClock

logger = logging.getLogger("ichseg.app")


class SegmenterOperator(Operator):
    """``windowed`` (WindowedSeries) + ``boxes`` (a list of Box per slice) → ``mask`` ((N, rows, columns) bool)."""

    def __init__(
        self, fragment: Fragment, *args: Any, model_dir: Path, device: str | None, clock: StageClock,
        precision: str = "auto", **kwargs: Any
    ):
        self.model_dir = Path(model_dir)
        self.device = device
        self.precision = precision
        self.clock = clock
        self.segmenter: HemorrhageSegmenter | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("windowed")
        spec.input("boxes")
        spec.output("mask")

    def start(self) -> None:
        with self.clock.stage("load segmenter model"):
            self.segmenter = model_cache.segmenter(self.model_dir, self.device, self.precision)
            manifest = self.segmenter.manifest
            logger.info("segmenter %s %s on %s, %s", manifest.name, manifest.version, self.segmenter.device,
                        self.segmenter.autocast_dtype or "fp32")

    def compute(self, op_input, op_output, context) -> None:
        windowed: pipeline.WindowedSeries = op_input.receive("windowed")
        boxes: list[list[Box]] = op_input.receive("boxes")
        assert self.segmenter is not None, "start() loads the model"
        with self.clock.stage("TransDeepLab segmentation"):
            mask = pipeline.segment(self.segmenter, windowed, boxes)
            logger.info("%d hemorrhage voxels on %d slices", int(mask.sum()), int(mask.any(axis=(1, 2)).sum()))
        op_output.emit(mask, "mask")
