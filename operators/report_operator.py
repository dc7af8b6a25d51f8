"""The JSON report (``ichseg.report``): what was found, on which series and why, by which models, how long it took.

Last operator of the graph, so every earlier stage's timing is known. With ``save_mask`` it also writes the
mask as ``ich_mask.npz`` for QA and tests. Both files are replaced atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ichseg.atomic_file import write_bytes_atomically
from ichseg.model_manifest import ModelManifest
from ichseg.report import MASK_NAME, REPORT_NAME, build_report, mask_archive, report_bytes
from ichseg.sdk import Fragment, Operator, OperatorSpec
from ichseg.stage_clock import StageClock

logger = logging.getLogger("ichseg.app")

class ReportOperator(Operator):
    """All results → ``ich_report.json`` (and optionally ``ich_mask.npz``) in ``output_folder``."""

    INPUTS = (
        "series", "selection", "detections", "thresholds", "boxes", "unguarded", "mask", "guard", "follow", "seg",
        "preview",
    )

    def __init__(
        self, fragment: Fragment, *args: Any, output_folder: Path, model_dirs: dict[str, Path],
        settings: dict[str, Any], save_mask: bool, clock: StageClock, **kwargs: Any,
    ):
        self.output_folder = Path(output_folder)
        self.model_dirs = model_dirs
        self.settings = settings
        self.save_mask = save_mask
        self.clock = clock
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        for name in self.INPUTS:
            spec.input(name)

    def compute(self, op_input, op_output, context) -> None:
        received = {name: op_input.receive(name) for name in self.INPUTS}
        series, mask = received["series"], received["mask"]
        with self.clock.stage("report"):
            outputs = {"seg": received["seg"].name, "preview": received["preview"].name}
            if self.save_mask:
                write_bytes_atomically(self.output_folder / MASK_NAME, mask_archive(series, mask))
                outputs["mask"] = MASK_NAME
            report = build_report(
                series=series, selection=received["selection"], detections=received["detections"],
                boxes=received["boxes"], unguarded=received["unguarded"], mask=mask,
                guard=received["guard"], follow=received["follow"], thresholds=received["thresholds"],
                settings=self.settings,
                models={role: ModelManifest.load(folder) for role, folder in self.model_dirs.items()},
                outputs=outputs, timings_s=self.clock.seconds,
            )
            write_bytes_atomically(self.output_folder / REPORT_NAME, report_bytes(report))
            logger.info("%s: %s, %.2f mL", REPORT_NAME, report["result"], report["hemorrhage_volume_ml"])
