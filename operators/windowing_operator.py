"""Windowing: HU → uint8 with each slice's header window, on the source grid and on the detector's 512 grid.

The detector always sees 512×512 (``ichseg.detector.resize_to_input``, the function its training images were
made with); the segmenter crops the source-grid slices (as in its training), so its masks come out on the
source grid the SEG must use, whatever the input matrix. The logic is ``ichseg.pipeline.window_series``.
"""

from __future__ import annotations

from typing import Any

from ichseg.dicom_series import CTSeries
from ichseg.pipeline import WindowedSeries, window_series
from ichseg.sdk import Fragment, Operator, OperatorSpec
from ichseg.stage_clock import StageClock

__all__ = ["WindowedSeries", "WindowingOperator"]


class WindowingOperator(Operator):
    """``series`` (CTSeries) → ``windowed`` (WindowedSeries)."""

    def __init__(self, fragment: Fragment, *args: Any, clock: StageClock, **kwargs: Any):
        self.clock = clock
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("series")
        spec.output("windowed")

    def compute(self, op_input, op_output, context) -> None:
        series: CTSeries = op_input.receive("series")
        with self.clock.stage("windowing"):
            windowed = window_series(series)
        op_output.emit(windowed, "windowed")
