"""After stage 2: the anatomical guard (``ichseg.guard``) keeps only voxels inside the skull at blood density.

Its report (what was applied, what each rule removed) goes into the JSON report; ``ICH_GUARD=0`` passes the
segmenter's mask through unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ichseg import pipeline
from ichseg.dicom_series import CTSeries
from ichseg.guard import GuardOptions
from ichseg.pipeline import WindowedSeries
from ichseg.sdk import Fragment, Operator, OperatorSpec
from ichseg.stage_clock import StageClock

logger = logging.getLogger("ichseg.app")


class GuardOperator(Operator):
    """``series`` (HU) + ``windowed`` (its calibration offset) + ``mask`` (segmenter's) → ``mask`` (guarded), ``guard``
    (GuardReport) and ``anatomy`` (what it read of the HU volume, for following findings; None when off)."""

    def __init__(self, fragment: Fragment, *args: Any, options: GuardOptions, clock: StageClock, **kwargs: Any):
        self.options = options
        self.clock = clock
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("series")
        spec.input("windowed")
        spec.input("mask")
        spec.output("mask")
        spec.output("guard")
        spec.output("anatomy")

    def compute(self, op_input, op_output, context) -> None:
        series: CTSeries = op_input.receive("series")
        windowed: WindowedSeries = op_input.receive("windowed")
        unguarded: np.ndarray = op_input.receive("mask")
        with self.clock.stage("anatomical guard"):
            anatomy = pipeline.anatomy_of(series, windowed) if self.options.enabled else None
            mask, report = pipeline.guard(unguarded, series, self.options, anatomy)
            if self.options.enabled:
                logger.info(
                    "guard kept %d of %d voxels (removed: %s)", report.voxels_out, report.voxels_in,
                    ", ".join(f"{rule} {voxels}" for rule, voxels in report.removed_voxels.items()),
                )
            else:
                logger.info("guard off (ICH_GUARD=0)")
        op_output.emit(mask, "mask")
        op_output.emit(report, "guard")
        op_output.emit(anatomy, "anatomy")
