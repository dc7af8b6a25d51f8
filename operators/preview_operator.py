"""PNG preview: the key slices (most hemorrhage, or spread evenly if none) with the mask outlined.

For a quick look without a DICOM viewer; drawn on the source-grid windowed slices the SEG describes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ichseg.preview import key_slices, save_montage
from monai.deploy.core import Fragment, Operator, OperatorSpec
from operators.stage import StageClock
from operators.windowing_operator import WindowedSeries

PREVIEW_NAME = "ich_preview.png"
KEY_SLICES = 8


class PreviewOperator(Operator):
    """``windowed`` + ``mask`` → the preview PNG in ``output_folder``; emits its path as ``preview``."""

    def __init__(self, fragment: Fragment, *args: Any, output_folder: Path, clock: StageClock, **kwargs: Any):
        self.output_folder = Path(output_folder)
        self.clock = clock
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("windowed")
        spec.input("mask")
        spec.output("preview")

    def compute(self, op_input, op_output, context) -> None:
        windowed: WindowedSeries = op_input.receive("windowed")
        mask: np.ndarray = op_input.receive("mask")
        with self.clock.stage("preview"):
            path = save_montage(windowed.source, mask, key_slices(mask, KEY_SLICES), self.output_folder / PREVIEW_NAME)
        op_output.emit(path, "preview")
