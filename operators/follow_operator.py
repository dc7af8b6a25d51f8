"""After the guard: each guarded finding followed into adjacent slices the detector left without a box
(``ichseg.pipeline.follow_findings``); the union guarded again. ``ICH_FOLLOW_SLICES=0`` (or ``ICH_GUARD=0``) passes
everything through.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg import model_cache, pipeline
from ichseg.boxes import Box
from ichseg.dicom_series import CTSeries
from ichseg.follow import FollowOptions
from ichseg.guard import Anatomy, GuardOptions, GuardReport
from ichseg.sdk import Fragment, Operator, OperatorSpec
from ichseg.stage_clock import StageClock

logger = logging.getLogger("ichseg.app")


class FollowOperator(Operator):
    """``windowed``, ``boxes``, ``unguarded`` (segmenter's mask), ``mask`` + ``guard`` + ``anatomy`` (the guard's),
    ``series`` → ``boxes``, ``unguarded``, ``mask``, ``guard`` with the followed slices, and ``follow`` (JSON)."""

    def __init__(
        self, fragment: Fragment, *args: Any, model_dir: Path, device: str | None, precision: str,
        guard: GuardOptions, options: FollowOptions, clock: StageClock, **kwargs: Any
    ):
        self.model_dir = Path(model_dir)
        self.device = device
        self.precision = precision
        self.guard_options = guard
        self.options = options
        self.clock = clock
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        for name in ("windowed", "boxes", "unguarded", "mask", "guard", "anatomy", "series"):
            spec.input(name)
        for name in ("boxes", "unguarded", "mask", "guard", "follow"):
            spec.output(name)

    def compute(self, op_input, op_output, context) -> None:
        windowed: pipeline.WindowedSeries = op_input.receive("windowed")
        boxes: list[list[Box]] = op_input.receive("boxes")
        unguarded: np.ndarray = op_input.receive("unguarded")
        mask: np.ndarray = op_input.receive("mask")
        report: GuardReport = op_input.receive("guard")
        anatomy: Anatomy | None = op_input.receive("anatomy")
        series: CTSeries = op_input.receive("series")
        with self.clock.stage("follow findings"):
            segmenter = model_cache.segmenter(self.model_dir, self.device, self.precision)  # the segmenter stage's
            followed = pipeline.follow_findings(segmenter, windowed, boxes, mask, anatomy, self.guard_options,
                                                self.options)
            boxes, unguarded = followed.add_to(boxes, unguarded)
            mask, report = pipeline.guard_followed(followed, unguarded, mask, report, series, self.guard_options,
                                                   anatomy)
            logger.info("followed findings into %d slices without a box", len(followed.boxes))
        op_output.emit(boxes, "boxes")
        op_output.emit(unguarded, "unguarded")
        op_output.emit(mask, "mask")
        op_output.emit(report, "guard")
        op_output.emit(followed.to_json(series.voxel_volume_ml), "follow")
