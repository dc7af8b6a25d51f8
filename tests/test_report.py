"""``ichseg.report.build_report`` on a small hand-made series: volumes, slices, settings and outputs, no app run."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from pydicom.dataset import Dataset

from ichseg.detector import Detection
from ichseg.dicom_series import CTSeries
from ichseg.guard import GuardOptions, GuardReport
from ichseg.model_manifest import ModelManifest
from ichseg.report import MASK_NAME, REPORT_NAME, build_report, mask_archive, report_bytes
from ichseg.series_selection import Selection
from ichseg.subtypes import SUBTYPES


def choice() -> Selection:
    return Selection("1.2.3", "'Head 5mm' (CT, 4 files)", "the only series")


def _series(slices: int = 4, size: int = 8) -> CTSeries:
    headers = []
    for index in range(slices):
        header = Dataset()
        header.SOPInstanceUID = f"1.2.3.{index + 1}"
        header.StudyInstanceUID, header.SeriesInstanceUID = "1.2", "1.2.3"
        headers.append(header)
    return CTSeries(
        hu=np.zeros((slices, size, size), np.float32), headers=headers, files=[], windows=[(40.0, 80.0)] * slices,
        pixel_spacing=(0.5, 0.5), slice_spacing=5.0, orientation=np.array([1, 0, 0, 0, 1, 0], float),
        positions=np.zeros((slices, 3)),
    )


def _manifest(name: str, task: str) -> ModelManifest:
    return ModelManifest(name, "1.0", f"{name} architecture", 224, ["a"], task)


FOLLOWED = {"settings": {"slices": 3, "overlap_px": 2, "box_growth": 0.1}, "slices": [3], "voxels_before_guard": 0,
            "ml_before_guard": 0.0}


@pytest.fixture
def report() -> dict:
    series = _series()
    unguarded = np.zeros(series.hu.shape, bool)
    unguarded[1, 2:5, 2:5] = True  # 9 voxels, of which the guard keeps 4
    mask = np.zeros_like(unguarded)
    mask[1, 2:4, 2:4] = True
    detections: list[list[Detection]] = [
        [], [Detection(0, 0.8766, (1.04, 1.0, 6.0, 6.0)), Detection(3, 0.2, (2.0, 2.0, 5.0, 5.0))], [], []
    ]  # the second box continues the first (extend confidence 0.1): listed, but it names no subtype
    boxes = [[], [(1.04, 1.0, 6.0, 6.0)], [], [(0.0, 0.0, 2.0, 2.0)]]  # slice 3's from following a finding
    guard = GuardReport(
        GuardOptions(), voxels_in=9, voxels_out=4, removed_voxels={"density": 5}, voxel_volume_ml=1.25e-3
    )
    return build_report(
        series=series, selection=choice(), detections=detections, boxes=boxes, unguarded=unguarded, mask=mask,
        guard=guard, follow=FOLLOWED,
        models={"detector": _manifest("yolo", "detection"), "segmenter": _manifest("tdl", "segmentation")},
        settings={"confidence": None, "extend_confidence": None, "iou": 0.6, "merge": "slice"},
        thresholds={"confidence": 0.42, "extend_confidence": 0.1},
        outputs={"seg": "ich_seg.dcm", "preview": "ich_preview.png"}, timings_s={"YOLO detection": 1.5},
    )


def test_result_and_volume_are_of_the_guarded_mask(report: dict) -> None:
    assert report["result"] == "hemorrhage detected" and report["hemorrhage_detected"] is True
    assert report["hemorrhage_voxels"] == 4
    assert report["voxel_volume_ml"] == pytest.approx(1.25e-3)
    assert report["hemorrhage_volume_ml"] == 0.005
    assert report["subtypes_detected"] == [SUBTYPES[0]], "only boxes at the operating confidence name subtypes"
    assert report["guard"]["voxels_before"] == 9 and report["guard"]["removed"]["density"]["voxels"] == 5


def test_settings_record_the_confidence_actually_used(report: dict) -> None:
    """A ``None`` setting (manifest operating point) is replaced by the threshold the detector resolved."""
    assert report["settings"] == {"confidence": 0.42, "extend_confidence": 0.1, "iou": 0.6, "merge": "slice"}


def test_slices_series_models_outputs(report: dict) -> None:
    assert report["slices"] == [
        {
            "slice": 1, "sop_instance_uid": "1.2.3.2",
            "detections": [{"subtype": SUBTYPES[0], "confidence": 0.877, "box": [1.0, 1.0, 6.0, 6.0]},
                           {"subtype": SUBTYPES[3], "confidence": 0.2, "box": [2.0, 2.0, 5.0, 5.0]}],
            "merged_boxes": [[1.0, 1.0, 6.0, 6.0]], "followed": False, "mask_voxels_before_guard": 9, "mask_voxels": 4,
        },
        {
            "slice": 3, "sop_instance_uid": "1.2.3.4", "detections": [], "merged_boxes": [[0.0, 0.0, 2.0, 2.0]],
            "followed": True, "mask_voxels_before_guard": 0, "mask_voxels": 0,
        },
    ]
    assert report["series"]["series_instance_uid"] == "1.2.3" and report["series"]["matrix"] == [8, 8]
    assert report["series"]["why_chosen"] == "the only series" and report["series"]["slices"] == 4
    assert report["models"]["detector"] == {"name": "yolo", "version": "1.0", "architecture": "yolo architecture",
                                            "input": "header-window"}
    assert report["outputs"] == {"seg": "ich_seg.dcm", "preview": "ich_preview.png", "report": REPORT_NAME}
    assert report["timings_s"] == {"YOLO detection": 1.5}
    assert report["follow"] == FOLLOWED
    assert "not for clinical use" in report["notice"]


def test_report_serialises_and_empty_mask_reads_no_hemorrhage(report: dict) -> None:
    assert json.loads(report_bytes(report)) == report
    series = _series()
    empty = np.zeros(series.hu.shape, bool)
    nothing = build_report(
        series=series, selection=choice(), detections=[[]] * 4, boxes=[[]] * 4, unguarded=empty, mask=empty,
        guard=GuardReport.unchanged(empty, GuardOptions(enabled=False), 1.25e-3), follow={}, models={}, settings={},
        thresholds={"confidence": 0.999, "extend_confidence": 0.999}, outputs={}, timings_s={},
    )
    assert nothing["result"] == "no hemorrhage detected" and nothing["hemorrhage_volume_ml"] == 0
    assert nothing["slices"] == [] and nothing["subtypes_detected"] == []


def test_mask_archive_round_trips() -> None:
    series = _series()
    mask = np.zeros(series.hu.shape, bool)
    mask[2, 0, 0] = True
    saved = np.load(io.BytesIO(mask_archive(series, mask)))
    np.testing.assert_array_equal(saved["mask"], mask)
    assert list(saved["sop_instance_uids"]) == ["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"]
    assert MASK_NAME.endswith(".npz")
