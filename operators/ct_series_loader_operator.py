"""Source operator: pick one CT series from the input folder by readable JSON rules and load it as HU.

Why not the SDK's ``DICOMDataLoaderOperator`` + ``DICOMSeriesSelectorOperator``: the loader's default input
folder is fixed when the module is imported, it skips unreadable files with only a warning (a dropped slice
would leave a silent gap in the SEG), it reads every pixel of every series, and the selector takes the first
match rather than ranking candidates. Here ``ichseg.series_selection`` chooses the series (from this app's rules
or a selection file in the SDK selector's format) and says why, ``ichseg.dicom_series`` refuses corrupt files,
missing slices and bad geometry with a message naming the file, and only the chosen series is decoded.

Only head CT is segmented (``ichseg.head_ct``): series whose BodyPartExamined names another body region are
not candidates, and the chosen series must show a skull ring around brain at head size, or the input is
refused. ``ICH_HEAD_CHECK=0`` (or ``head_check=False``) skips both.

The app loads the series before the graph starts (``ichseg.cli.prepare``: a refused input is answered before torch
and the SDK are imported) and hands it over as ``loaded``; this operator then only emits it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ichseg.dicom_series import CTSeries
from ichseg.sdk import Fragment, Operator, OperatorSpec
from ichseg.series_selection import BUNDLED_RULES, Selection, SelectionRules, load_chosen_series
from ichseg.stage_clock import StageClock

__all__ = ["CTSeriesLoaderOperator"]


class CTSeriesLoaderOperator(Operator):
    """Input folder → ``series`` (ichseg CTSeries, HU sorted along the normal) and ``selection`` (why it).

    ``rules``: selection rules (``SelectionRules.load``, which refuses a malformed file before any DICOM is read).
    ``head_check``: refuse input that is not a head CT. ``loaded``: the (selection, series) already read from
    ``input_folder`` with these rules, emitted as they are.
    """

    def __init__(self, fragment: Fragment, *args: Any, input_folder: Path, rules: SelectionRules | Path,
                 clock: StageClock, head_check: bool = True,
                 loaded: tuple[Selection, CTSeries] | None = None, **kwargs: Any):
        self.input_folder = Path(input_folder)
        self.rules = rules if isinstance(rules, SelectionRules) else SelectionRules.load(
            rules, preferences_from=BUNDLED_RULES)
        self.clock = clock
        self.head_check = head_check
        self.loaded = loaded
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("series")
        spec.output("selection")

    def compute(self, op_input, op_output, context) -> None:
        if self.loaded is None:
            self.loaded = load_chosen_series(self.input_folder, self.rules, self.head_check, self.clock.stage)
        selection, series = self.loaded
        op_output.emit(series, "series")
        op_output.emit(selection, "selection")
