"""Windowing: HU → uint8 with each slice's header window, on the source grid and on the detector's 512 grid.

The detector always sees 512×512 (``ichseg.detector.resize_to_input``, the function its training images were
made with); the segmenter crops the source-grid slices (as in its training), so its masks come out on the
source grid the SEG must use, whatever the input matrix. The series' calibration offset is taken off first
(``ICH_CALIBRATE``). The logic is ``ichseg.pipeline.window_series``.
"""

from __future__ import annotations

import logging
from typing import Any

from ichseg.dicom_series import CTSeries
from ichseg.pipeline import WindowedSeries, window_series
from ichseg.sdk import Fragment, Operator, OperatorSpec
from ichseg.stage_clock import StageClock

__all__ = ["WindowedSeries", "WindowingOperator"]
logger = logging.getLogger(__name__)


class WindowingOperator(Operator):
    """``series`` (CTSeries) → ``windowed`` (WindowedSeries)."""

    def __init__(self, fragment: Fragment, *args: Any, clock: StageClock, calibrate: bool = True, **kwargs: Any):
        self.clock = clock
        self.calibrate = calibrate
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("series")
        spec.output("windowed")

    def compute(self, op_input, op_output, context) -> None:
        series: CTSeries = op_input.receive("series")
        with self.clock.stage("windowing"):
            windowed = window_series(series, self.calibrate)
        logger.info("calibration offset %+.1f HU taken off before windowing", windowed.calibration_hu)
        op_output.emit(windowed, "windowed")
