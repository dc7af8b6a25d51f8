"""The JSON report: what was found, on which series and why that series, by which models, how long it took.

Last operator of the graph, so every earlier stage's timing is known. Volumes and voxel counts are of the final
(guarded) mask; the ``guard`` entry says what the anatomical guard applied and removed, rule by rule, and each
slice entry also gives the segmenter's voxel count before the guard. With ``save_mask`` it also writes the
mask as ``ich_mask.npz`` (``mask`` (N, rows, columns) bool + ``sop_instance_uids``) for QA and tests.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg import __version__
from ichseg.atomic_file import atomic_path
from ichseg.boxes import Box
from ichseg.detector import Detection
from ichseg.dicom_series import CTSeries
from ichseg.guard import GuardReport
from ichseg.model_manifest import ModelManifest
from ichseg.subtypes import SUBTYPES
from monai.deploy.core import Fragment, Operator, OperatorSpec
from operators.ct_series_loader_operator import Selection
from operators.stage import StageClock

logger = logging.getLogger("ichseg.app")

REPORT_NAME = "ich_report.json"
MASK_NAME = "ich_mask.npz"
NOTICE = "Synthetic-trained demo weights, not for clinical use."


def _box(box: Box) -> list[float]:
    return [round(v, 1) for v in box]


def slice_entries(
    series: CTSeries, detections: list[list[Detection]], boxes: list[list[Box]], unguarded: np.ndarray, mask: np.ndarray
) -> list[dict[str, Any]]:
    """One entry per slice with a box, or mask voxels before or after the guard (slice index along the normal)."""
    voxels = mask.reshape(len(mask), -1).sum(axis=1)
    before = unguarded.reshape(len(unguarded), -1).sum(axis=1)
    return [
        {
            "slice": index,
            "sop_instance_uid": str(series.headers[index].SOPInstanceUID),
            "detections": [
                {"subtype": SUBTYPES[d.subtype], "confidence": round(d.confidence, 3), "box": _box(d.box)}
                for d in detections[index]
            ],
            "merged_boxes": [_box(box) for box in boxes[index]],
            "mask_voxels_before_guard": int(before[index]),
            "mask_voxels": int(voxels[index]),
        }
        for index in range(len(mask))
        if detections[index] or boxes[index] or before[index] or voxels[index]
    ]


def _replace_atomically(path: Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


class ReportOperator(Operator):
    """All results → ``ich_report.json`` (and optionally ``ich_mask.npz``) in ``output_folder``."""

    INPUTS = ("series", "selection", "detections", "boxes", "unguarded", "mask", "guard", "seg", "preview")

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
        series: CTSeries = received["series"]
        selection: Selection = received["selection"]
        mask: np.ndarray = received["mask"]
        guard: GuardReport = received["guard"]
        with self.clock.stage("report"):
            voxels = int(mask.sum())
            subtypes = sorted({SUBTYPES[d.subtype] for found in received["detections"] for d in found})
            report: dict[str, Any] = {
                "application": {"name": "ICH segmentation MAP", "version": __version__},
                "notice": NOTICE,
                "result": "hemorrhage detected" if voxels else "no hemorrhage detected",
                "hemorrhage_detected": bool(voxels),
                "hemorrhage_voxels": voxels,
                "voxel_volume_ml": series.voxel_volume_ml,
                "hemorrhage_volume_ml": round(voxels * series.voxel_volume_ml, 3),
                "subtypes_detected": subtypes,
                "series": {
                    "study_instance_uid": str(series.headers[0].StudyInstanceUID),
                    "series_instance_uid": series.series_uid,
                    "description": selection.description,
                    "slices": len(series.headers),
                    "matrix": list(mask.shape[1:]),
                    "pixel_spacing_mm": list(series.pixel_spacing),
                    "slice_spacing_mm": series.slice_spacing,
                    "why_chosen": selection.reason,
                    "not_chosen": selection.rejected,
                },
                "models": {role: _model_entry(folder) for role, folder in self.model_dirs.items()},
                "settings": self.settings,
                "guard": guard.to_json(),
                "slices": slice_entries(series, received["detections"], received["boxes"], received["unguarded"], mask),
                "outputs": {"seg": received["seg"].name, "preview": received["preview"].name, "report": REPORT_NAME},
                "timings_s": dict(self.clock.seconds),
            }
            if self.save_mask:
                buffer = io.BytesIO()
                uids = [str(h.SOPInstanceUID) for h in series.headers]
                np.savez_compressed(buffer, mask=mask, sop_instance_uids=uids)
                _replace_atomically(self.output_folder / MASK_NAME, buffer.getvalue())
                report["outputs"]["mask"] = MASK_NAME
            _replace_atomically(self.output_folder / REPORT_NAME, (json.dumps(report, indent=2) + "\n").encode())
            logger.info("%s: %s, %.2f mL", REPORT_NAME, report["result"], report["hemorrhage_volume_ml"])


def _model_entry(folder: Path) -> dict[str, str]:
    manifest = ModelManifest.load(folder)
    return {"name": manifest.name, "version": manifest.version, "architecture": manifest.architecture}
