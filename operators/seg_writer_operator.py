"""DICOM SEG of the hemorrhage mask: one segment "Intracranial hemorrhage", on the source series' grid.

Built by ``ichseg.dicom_seg`` (highdicom, uncompressed BINARY): segment algorithm type AUTOMATIC with the
application's name and version, FrameOfReferenceUID and ReferencedSeriesSequence taken from the source series,
one frame per source slice in the source's order along the normal (empty frames kept: viewers have misplaced
SEGs whose empty frames were omitted).

A study with no hemorrhage still gets a SEG, with the segment present and every frame empty, and the report
says "no hemorrhage detected". Why: a downstream PACS/worklist rule can then tell "analysed, nothing found"
from "not analysed" (no SEG at all), and a viewer shows the empty result on the right series.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg import __version__
from ichseg.dicom_seg import ANY_HEMORRHAGE, SegAuthor, SegmentMask, build_seg, write_atomically
from ichseg.dicom_series import CTSeries
from ichseg.report import SEG_NAME
from ichseg.sdk import Fragment, Operator, OperatorSpec
from ichseg.stage_clock import StageClock

logger = logging.getLogger("ichseg.app")

SEGMENT_LABEL = "Intracranial hemorrhage"
AUTHOR = SegAuthor(
    "ICH two-stage segmentation (YOLO + TransDeepLab)", __version__, automatic=True, manufacturer="ICH-MAP"
)
SERIES_DESCRIPTION = "ICH segmentation (demo, not for clinical use)"


class SegWriterOperator(Operator):
    """``series`` + ``mask`` → the SEG file in ``output_folder``; emits its path as ``seg``."""

    def __init__(self, fragment: Fragment, *args: Any, output_folder: Path, clock: StageClock, **kwargs: Any):
        self.output_folder = Path(output_folder)
        self.clock = clock
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("series")
        spec.input("mask")
        spec.output("seg")

    def compute(self, op_input, op_output, context) -> None:
        series: CTSeries = op_input.receive("series")
        mask: np.ndarray = op_input.receive("mask")
        with self.clock.stage("DICOM SEG writing"):
            if mask.shape != series.hu.shape:
                raise ValueError(f"mask shape {mask.shape} differs from the series {series.hu.shape}")
            segment = SegmentMask(SEGMENT_LABEL, ANY_HEMORRHAGE, mask)
            seg = build_seg(series.headers, [segment], AUTHOR, SERIES_DESCRIPTION)
            path = self.output_folder / SEG_NAME
            write_atomically(seg, path)
            found = "hemorrhage" if mask.any() else "empty segment"
            logger.info("SEG %s: %d frames, %s", SEG_NAME, len(series.headers), found)
        op_output.emit(path, "seg")
