"""The weights committed under models/ load, find the demo study's hemorrhage and leave a negative study empty.

Both run ``ichseg.pipeline.run``, the two-stage core the app and the evaluation use (anatomical guard included).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from evaluation.evaluate import pooled_dice
from ichseg import pipeline
from ichseg.detector import HemorrhageDetector
from ichseg.dicom_series import CTSeries, load_single_series
from ichseg.model_manifest import ModelManifest
from ichseg.segmenter import HemorrhageSegmenter
from ichseg.subtypes import SUBTYPES

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory, study_root: Path
) -> tuple[HemorrhageDetector, HemorrhageSegmenter]:
    """Loaded after the studies are generated: the generator forks worker processes, which must happen before
    torch and OpenCV start their thread pools (a fork then can deadlock the child)."""
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


def slices_of(series: CTSeries, start: int, stop: int) -> CTSeries:
    """Consecutive slices of a series (a smaller input for a quicker test)."""
    return dataclasses.replace(
        series, hu=series.hu[start:stop], headers=series.headers[start:stop], files=series.files[start:stop],
        windows=series.windows[start:stop], positions=series.positions[start:stop],
    )


def test_positive_demo_slices_give_mask_on_the_hemorrhage(models) -> None:
    labels = np.load(REPO / "demo" / "ground_truth" / "labels.npz")["labels"] > 0
    index = int(labels.reshape(len(labels), -1).sum(axis=1).argmax())
    series = slices_of(load_single_series(REPO / "demo" / "study"), index - 1, index + 2)
    result = pipeline.run(series, models[1], models[0])
    mask, truth = result.mask[1], labels[index]
    assert mask.any(), "non-empty mask on the demo's largest hemorrhage slice"
    assert (mask & truth).sum() > 0.3 * mask.sum(), "mostly on the true hemorrhage"
    assert result.guard.voxels_in >= result.guard.voxels_out == int(result.mask.sum())


def test_negative_slices_stay_empty(models, negative_study: Path) -> None:
    series = load_single_series(negative_study / "ct")
    middle = len(series.hu) // 2
    result = pipeline.run(slices_of(series, middle - 2, middle + 2), models[1], models[0])
    assert not result.mask.any()


def test_positive_study_dice_floor(models, positive_study: Path) -> None:
    """Product Dice (detector → merge → segmenter → guard → following, the app's defaults) of the whole positive study.

    Measured 0.955 with detector v0.7.0 (0.4 continued ≥ 0.1) + segmenter v0.4.0, calibration, the guard defaults
    chosen on validation and following (2 slices followed); 0.951 with v0.6.0 (0.950 before calibration; 0.952
    without following); 0.959 with segmenter v0.3.0 (0.935 with detector
    v0.5.0 at 0.3313 continued ≥ 0.05, 0.923 with v0.4.1 and with v0.4.0 at 0.2; 0.909 with segmenter v0.2.0; 0.928
    with detector v0.3.0 at 0.0901 + segmenter v0.2.0; 0.531 with both at v0.2.0 and the earlier guard). The floor,
    about 80 % of it, fails on a real regression (weights, preprocessing, box mapping, guard), not on numeric noise;
    re-measure after retraining.
    """
    series = load_single_series(positive_study / "ct")
    truth = np.load(positive_study / "labels.npz")["labels"] > 0
    mask = pipeline.run(series, models[1], models[0]).mask
    dice = pooled_dice(int((mask & truth).sum()), int(mask.sum()), int(truth.sum()))
    assert dice >= 0.75, f"Dice {dice:.3f} on the positive study (measured 0.955)"


def test_bf16_segmentation_matches_fp32_within_the_stated_tolerance(models, positive_study: Path) -> None:
    """``ICH_PRECISION=auto`` runs the segmenter under bf16 autocast where the hardware has it: the masks must stay
    those of fp32 — the same slices non-empty and Dice ≥ 0.98 (measured 0.998 on the demo study)."""
    series = load_single_series(positive_study / "ct")
    windowed = pipeline.window_series(series)
    boxes = pipeline.merge(pipeline.detect(models[0], windowed))
    assert any(boxes), "the positive study gives the segmenter work"
    fp32 = pipeline.segment(HemorrhageSegmenter(MODELS / "segmenter", precision="fp32"), windowed, boxes)
    bf16 = pipeline.segment(HemorrhageSegmenter(MODELS / "segmenter", precision="bf16"), windowed, boxes)
    assert fp32.any()
    np.testing.assert_array_equal(fp32.any(axis=(1, 2)), bf16.any(axis=(1, 2)))
    dice = pooled_dice(int((fp32 & bf16).sum()), int(fp32.sum()), int(bf16.sum()))
    assert dice >= 0.98, f"bf16 vs fp32 mask Dice {dice:.4f}"
