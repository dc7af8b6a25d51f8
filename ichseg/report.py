"""The JSON report of one run, built from the pipeline's results by pure functions (no SDK, no files).

Kept apart from the operator so the report's content can be tested without running the application graph.
Volumes and voxel counts are of the final (guarded) mask; the ``guard`` entry says what the anatomical guard
applied and removed, rule by rule, and each slice entry also gives the segmenter's voxel count before the guard.
``settings.confidence`` and ``settings.extend_confidence`` are the detector thresholds actually used, also when they
came from the model manifest.
"""

from __future__ import annotations

import io
import json
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from ichseg import __version__
from ichseg.boxes import Box
from ichseg.detector import Detection
from ichseg.dicom_series import CTSeries
from ichseg.guard import GuardReport
from ichseg.model_manifest import ModelManifest
from ichseg.series_selection import Selection
from ichseg.subtypes import SUBTYPES

REPORT_NAME = "ich_report.json"
SEG_NAME = "ich_seg.dcm"  # the app's outputs, named once: the operators write them, the gateway sends them
PREVIEW_NAME = "ich_preview.png"
MASK_NAME = "ich_mask.npz"
NOTICE = "Synthetic-trained demo weights, not for clinical use."


def _box(box: Box) -> list[float]:
    return [round(v, 1) for v in box]


def slice_entries(
    series: CTSeries, detections: list[list[Detection]], boxes: list[list[Box]], unguarded: np.ndarray,
    mask: np.ndarray, followed: Collection[int] = (),
) -> list[dict[str, Any]]:
    """One entry per slice with a box, or mask voxels before or after the guard (slice index along the normal);
    ``followed``: slices whose box came from following a finding (``ichseg.follow``), not from the detector."""
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
            "followed": index in followed,
            "mask_voxels_before_guard": int(before[index]),
            "mask_voxels": int(voxels[index]),
        }
        for index in range(len(mask))
        if detections[index] or boxes[index] or before[index] or voxels[index]
    ]


def build_report(
    *,
    series: CTSeries,
    selection: Selection,
    detections: list[list[Detection]],
    boxes: list[list[Box]],
    unguarded: np.ndarray,
    mask: np.ndarray,
    guard: GuardReport,
    follow: Mapping[str, Any],
    models: Mapping[str, ModelManifest],
    settings: Mapping[str, Any],
    thresholds: Mapping[str, float],
    outputs: Mapping[str, str],
    timings_s: Mapping[str, float],
) -> dict[str, Any]:
    """The report as JSON-ready data; ``thresholds`` (the detector's resolved confidence and extend confidence)
    replace the settings."""
    voxels = int(mask.sum())
    return {
        "application": {"name": "ICH segmentation MAP", "version": __version__},
        "notice": NOTICE,
        "result": "hemorrhage detected" if voxels else "no hemorrhage detected",
        "hemorrhage_detected": bool(voxels),
        "hemorrhage_voxels": voxels,
        "voxel_volume_ml": series.voxel_volume_ml,
        "hemorrhage_volume_ml": round(voxels * series.voxel_volume_ml, 3),
        # named by boxes at the operating confidence: a weak box continuing a finding extends it, it names nothing
        "subtypes_detected": sorted({SUBTYPES[d.subtype] for found in detections for d in found
                                     if d.confidence >= thresholds["confidence"]}),
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
        "models": {
            role: {"name": m.name, "version": m.version, "architecture": m.architecture,
                   "input": m.input}  # which windows the network was trained on
            for role, m in models.items()
        },
        "settings": {**settings, **thresholds},
        "guard": guard.to_json(),
        "follow": dict(follow),
        "slices": slice_entries(series, detections, boxes, unguarded, mask, set(follow.get("slices", ()))),
        "outputs": {**outputs, "report": REPORT_NAME},
        "timings_s": dict(timings_s),
    }


def report_bytes(report: Mapping[str, Any]) -> bytes:
    """The report file's content: indented JSON with a final newline."""
    return (json.dumps(report, indent=2) + "\n").encode()


def mask_archive(series: CTSeries, mask: np.ndarray) -> bytes:
    """``ich_mask.npz``: ``mask`` (N, rows, columns) bool + ``sop_instance_uids``, for QA and tests."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, mask=mask, sop_instance_uids=[str(h.SOPInstanceUID) for h in series.headers])
    return buffer.getvalue()
