"""Windowing: HU → uint8 with each slice's header window, on the source grid and on the detector's 512 grid.

The detector always sees 512×512 (``ichseg.detector.detector_input``, the function its training images were
made with); the segmenter crops the source-grid slices (as in its training), so its masks come out on the
source grid the SEG must use, whatever the input matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ichseg.detector import INPUT_SIZE, detector_input
from ichseg.dicom_series import CTSeries
from ichseg.windowing import window_volume
from monai.deploy.core import Fragment, Operator, OperatorSpec
from operators.stage import StageClock


@dataclass
class WindowedSeries:
    source: np.ndarray  # (N, rows, columns) uint8, the source grid
    detector: np.ndarray  # (N, 512, 512) uint8, the detector grid (the same array when the source is 512²)

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from detector-grid to source-grid pixel coordinates."""
        return self.source.shape[2] / self.detector.shape[2], self.source.shape[1] / self.detector.shape[1]


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
            source = window_volume(series.hu, series.windows)
            detector = source if source.shape[1:] == (INPUT_SIZE, INPUT_SIZE) else detector_input(series)
        op_output.emit(WindowedSeries(source, detector), "windowed")
