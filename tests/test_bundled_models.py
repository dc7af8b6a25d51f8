"""The weights committed under models/ load, find the demo study's hemorrhage and leave a negative study empty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichseg.boxes import merge_boxes
from ichseg.detector import HemorrhageDetector, detector_input
from ichseg.dicom_series import load_single_series
from ichseg.model_manifest import ModelManifest
from ichseg.segmenter import HemorrhageSegmenter
from ichseg.subtypes import SUBTYPES

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[HemorrhageDetector, HemorrhageSegmenter]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config")))
        return HemorrhageDetector(MODELS / "detector"), HemorrhageSegmenter(MODELS / "segmenter")


def test_manifests_describe_the_bundled_weights() -> None:
    detector = ModelManifest.load(MODELS / "detector")
    segmenter = ModelManifest.load(MODELS / "segmenter")
    assert detector.classes == list(SUBTYPES) and detector.input_size == 512
    assert segmenter.input_size == 224 and segmenter.classes == ["background", "hemorrhage"]
    for manifest in (detector, segmenter):
        assert "synthetic" in manifest.notice and "not for clinical use" in manifest.notice
    for folder in ("detector", "segmenter"):
        assert (MODELS / folder / "model.pt").stat().st_size < 50 * 2**20, "small enough for the repository"


def _pipeline(models: tuple[HemorrhageDetector, HemorrhageSegmenter], windowed: np.ndarray) -> np.ndarray:
    detector, segmenter = models
    boxes = [merge_boxes(d.box for d in slice_detections) for slice_detections in detector.detect(windowed)]
    return segmenter.segment(windowed, boxes)


def test_positive_demo_slice_gives_mask_on_the_hemorrhage(models) -> None:
    labels = np.load(REPO / "demo" / "ground_truth" / "labels.npz")["labels"] > 0
    index = int(labels.reshape(len(labels), -1).sum(axis=1).argmax())
    windowed = detector_input(load_single_series(REPO / "demo" / "study"))[index : index + 1]
    mask = _pipeline(models, windowed)[0]
    assert mask.any(), "non-empty mask on the demo's largest hemorrhage slice"
    assert (mask & labels[index]).sum() > 0.3 * mask.sum(), "mostly on the true hemorrhage"


def test_negative_slices_stay_empty(models, negative_study: Path) -> None:
    windowed = detector_input(load_single_series(negative_study / "ct"))
    middle = len(windowed) // 2
    mask = _pipeline(models, windowed[middle - 2 : middle + 2])
    assert not mask.any()
