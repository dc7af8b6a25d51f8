"""PNG preview: the key slices (most hemorrhage, or spread evenly if none) with the mask outlined.

For a quick look without a DICOM viewer; drawn on the source-grid windowed slices the SEG describes. The boxes each
slice was segmented in (one per cluster in ``cluster`` merge mode) are drawn as thin white frames, the final
(guarded) mask as a red outline, so a reader sees where the detector looked and what the guard kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ichseg import pipeline
from ichseg.boxes import Box, outline
from ichseg.preview import key_slices, save_montage
from ichseg.report import PREVIEW_NAME
from ichseg.sdk import Fragment, Operator, OperatorSpec
from ichseg.stage_clock import StageClock

KEY_SLICES = 8
FRAME_GREY = 255


class PreviewOperator(Operator):
    """``windowed`` + ``boxes`` + ``mask`` → the preview PNG in ``output_folder``; emits its path as ``preview``."""

    def __init__(self, fragment: Fragment, *args: Any, output_folder: Path, clock: StageClock, **kwargs: Any):
        self.output_folder = Path(output_folder)
        self.clock = clock
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("windowed")
        spec.input("boxes")
        spec.input("mask")
        spec.output("preview")

    def compute(self, op_input, op_output, context) -> None:
        windowed: pipeline.WindowedSeries = op_input.receive("windowed")
        boxes: list[list[Box]] = op_input.receive("boxes")
        mask: np.ndarray = op_input.receive("mask")
        with self.clock.stage("preview"):
            framed = windowed.source.copy()
            for index, slice_boxes in enumerate(boxes):
                framed[index][outline(framed.shape[1:], slice_boxes)] = FRAME_GREY
            path = save_montage(framed, mask, key_slices(mask, KEY_SLICES), self.output_folder / PREVIEW_NAME)
        op_output.emit(path, "preview")
