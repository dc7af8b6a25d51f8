"""The two-stage core (``ichseg.pipeline``): per-cluster box merging and the source/detector grids (the evaluation
on a series that is not 512×512: ``test_evaluation.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ichseg import pipeline
from ichseg.boxes import cluster_boxes, merge_slice, pixel_bounds
from ichseg.detector import Detection
from ichseg.dicom_series import load_single_series
from ichseg.segmenter import HemorrhageSegmenter
from ichseg.windowing import window_volume

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def test_cluster_merge_keeps_distant_boxes_apart() -> None:
    left, right = (100.0, 200.0, 140.0, 260.0), (380.0, 210.0, 420.0, 250.0)
    assert cluster_boxes([left, right], margin=20.0) == [left, right]
    assert merge_slice([left, right], "slice") == [(100.0, 200.0, 420.0, 260.0)]
    overlapping = (130.0, 240.0, 180.0, 300.0)
    assert cluster_boxes([left, overlapping], margin=0.0) == [(100.0, 200.0, 180.0, 300.0)]
    near = (150.0, 200.0, 170.0, 230.0)  # 10 px gap
    assert len(cluster_boxes([left, near], margin=20.0)) == 1 and len(cluster_boxes([left, near], margin=5.0)) == 2
    # a merged box can reach a third box that neither part reached alone
    a, b, c = (0.0, 0.0, 10.0, 10.0), (0.0, 30.0, 10.0, 40.0), (25.0, 15.0, 35.0, 25.0)
    assert cluster_boxes([a, c, b], margin=15.0) == [(0.0, 0.0, 35.0, 40.0)]
    assert merge_slice([], "cluster") == [] and merge_slice([], "slice") == []
    with pytest.raises(ValueError, match="merge mode"):
        merge_slice([left], "union")


def test_merge_uses_confidence_and_mode() -> None:
    found = [[Detection(0, 0.9, (100.0, 200.0, 140.0, 260.0)), Detection(3, 0.8, (380.0, 210.0, 420.0, 250.0)),
              Detection(1, 0.05, (10.0, 10.0, 20.0, 20.0))], []]
    kept = pipeline.keep_findings(found, 0.1)
    assert pipeline.merge(kept, "cluster", 20.0) == [[(100.0, 200.0, 140.0, 260.0), (380.0, 210.0, 420.0, 250.0)], []]
    assert pipeline.merge(kept, "slice") == [[(100.0, 200.0, 420.0, 260.0)], []]
    assert pipeline.merge(found, "slice")[0] == [(10.0, 10.0, 420.0, 260.0)]


def test_weak_boxes_are_kept_only_where_they_continue_a_sure_one() -> None:
    """Hysteresis across slices (``ichseg.z_continuity``): a clot's weak top and bottom slices follow its sure middle
    slice, transitively; a weak box elsewhere (a mimic) and one that only touches an edge do not."""
    clot = (100.0, 100.0, 140.0, 140.0)
    found = [
        [Detection(0, 0.08, (110.0, 110.0, 130.0, 130.0))],  # two slices from the seed, through the next one
        [Detection(0, 0.12, (105.0, 105.0, 135.0, 135.0)), Detection(2, 0.09, (300.0, 300.0, 320.0, 320.0))],
        [Detection(0, 0.6, clot), Detection(3, 0.07, (140.0, 100.0, 160.0, 140.0))],  # touching edge only
        [],
        [Detection(0, 0.09, (100.0, 100.0, 140.0, 140.0))],  # a gap slice breaks the chain
    ]
    kept = pipeline.keep_findings(found, confidence=0.5, extend=0.05)
    assert kept == [[found[0][0]], [found[1][0]], [found[2][0]], [], []]
    assert pipeline.keep_findings(found, confidence=0.5) == [[], [], [found[2][0]], [], []], "plain threshold"
    assert pipeline.keep_findings(found, confidence=0.5, extend=0.1) == [[], [found[1][0]], [found[2][0]], [], []]
    assert pipeline.keep_findings(found, confidence=0.05, extend=0.5) == [
        [d for d in s if d.confidence >= 0.05] for s in found], "an extend above the confidence is the plain threshold"
    assert pipeline.keep_findings([[]] * 3, 0.5, 0.05) == [[], [], []]
    # upward from the first slice, and on the seed's own slice: an overlapping weak box joins, a distant one does not
    upward = [
        [Detection(0, 0.9, clot), Detection(1, 0.06, (120.0, 120.0, 180.0, 180.0)),
         Detection(2, 0.06, (400.0, 400.0, 420.0, 420.0))],
        [Detection(0, 0.07, (170.0, 170.0, 200.0, 200.0))],  # overlaps only the joined same-slice box
        [Detection(0, 0.07, (190.0, 190.0, 210.0, 210.0))],
    ]
    assert pipeline.keep_findings(upward, 0.5, 0.05) == [upward[0][:2], upward[1], upward[2]]


@pytest.fixture(scope="module")
def segmenter() -> HemorrhageSegmenter:
    return HemorrhageSegmenter(MODELS / "segmenter")


def crops_run(segmenter: HemorrhageSegmenter, windowed: pipeline.WindowedSeries, boxes: list) -> tuple[np.ndarray, int]:
    """Segment and count the crops the network saw."""
    seen: list[int] = []
    handle = segmenter.network.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    try:
        return pipeline.segment(segmenter, windowed, boxes), sum(seen)
    finally:
        handle.remove()


def test_cluster_mode_crops_each_cluster_and_unions_the_masks(segmenter, positive_study: Path) -> None:
    series = load_single_series(positive_study / "ct")
    labels = np.load(positive_study / "labels.npz")["labels"]
    index = int((labels > 0).reshape(len(labels), -1).sum(axis=1).argmax())
    windowed = pipeline.window_series(series)
    one = pipeline.WindowedSeries(
        windowed.source[index:index + 1], windowed.detector[index:index + 1], windowed.hu[index:index + 1],
        series.slice_spacing, windowed.calibration_hu,
    )
    left, right = (120.0, 180.0, 200.0, 260.0), (320.0, 240.0, 400.0, 330.0)
    margin = pipeline.cluster_margin_px(series.pixel_spacing)
    found = [[Detection(3, 0.9, left), Detection(3, 0.9, right)]]

    clustered, crops = crops_run(segmenter, one, pipeline.merge(found, "cluster", margin))
    assert crops == 2, "two distant boxes: two crops"
    inside = np.zeros(clustered.shape[1:], dtype=bool)
    for box in (left, right):
        row0, row1, col0, col1 = pixel_bounds(box, *inside.shape)
        inside[row0:row1, col0:col1] = True
    assert not (clustered[0] & ~inside).any(), "each mask stays in its own box"
    for box in (left, right):  # the union: each crop's mask is the mask of that crop alone
        alone, _ = crops_run(segmenter, one, [[box]])
        row0, row1, col0, col1 = pixel_bounds(box, *inside.shape)
        np.testing.assert_array_equal(clustered[0, row0:row1, col0:col1], alone[0, row0:row1, col0:col1])

    _, crops = crops_run(segmenter, one, pipeline.merge(found, "slice"))
    assert crops == 1, "the paper's merge: one enclosing crop"
    overlapping = [[Detection(3, 0.9, left), Detection(0, 0.8, (180.0, 200.0, 240.0, 280.0))]]
    _, crops = crops_run(segmenter, one, pipeline.merge(overlapping, "cluster", margin))
    assert crops == 1, "overlapping boxes: one crop"


def downsampled_series(study: Path, folder: Path, slices: int) -> Path:
    """The study's series at 256×256 (every second pixel, spacing doubled), ``slices`` slices around the largest
    lesion."""
    series = load_single_series(study / "ct")
    labels = np.load(study / "labels.npz")["labels"]
    centre = int((labels > 0).reshape(len(labels), -1).sum(axis=1).argmax())
    start = max(0, min(centre - slices // 2, len(labels) - slices))
    (folder / "ct").mkdir(parents=True)
    for path in series.files[start:start + slices]:
        ds = pydicom.dcmread(path)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::2, ::2]).tobytes()
        ds.Rows, ds.Columns = ds.Rows // 2, ds.Columns // 2
        ds.PixelSpacing = [f"{float(v) * 2:.6f}" for v in ds.PixelSpacing]
        ds.save_as(folder / "ct" / path.name)
    return folder / "ct"


def test_windowing_gives_both_grids(positive_study: Path, tmp_path: Path) -> None:
    small = load_single_series(downsampled_series(positive_study, tmp_path / "s", slices=3))
    windowed = pipeline.window_series(small)
    assert windowed.source.shape[1:] == (256, 256) and windowed.detector.shape[1:] == (512, 512)
    assert windowed.scale == (0.5, 0.5)
    moved = pipeline.to_source_grid(Detection(2, 0.5, (100.0, 50.0, 200.0, 150.0)), windowed.scale)
    assert moved.box == (50.0, 25.0, 100.0, 75.0) and moved.subtype == 2 and moved.confidence == 0.5


def test_windowing_takes_the_series_calibration_offset_off(positive_study: Path) -> None:
    """The same head on a scanner that reads every HU 6 higher: the offset is measured from its soft tissue and
    taken off, so both networks see (within a grey level) what they see at the reference calibration; with
    calibration off they see the brighter slices, and an offset beyond a calibration's is clipped."""
    import dataclasses

    from ichseg.calibration import MAX_OFFSET_HU, REFERENCE_SOFT_TISSUE_HU, soft_tissue_median

    series = load_single_series(positive_study / "ct")
    reference = pipeline.window_series(series)
    assert abs(reference.calibration_hu) < 4, "the phantoms are calibrated about like the reference"
    assert abs(soft_tissue_median(series.hu) - REFERENCE_SOFT_TISSUE_HU) < 4
    brighter = dataclasses.replace(series, hu=series.hu + np.float32(6.0))
    shifted = pipeline.window_series(brighter)
    assert shifted.calibration_hu == pytest.approx(reference.calibration_hu + 6.0, abs=0.6)
    assert shifted.hu is brighter.hu, "no calibrated copy of the volume: the windows move instead"
    copy = window_volume(brighter.hu - np.float32(shifted.calibration_hu), brighter.windows)
    assert np.abs(copy.astype(int) - shifted.source.astype(int)).max() <= 1, "the same as windowing a calibrated copy"
    for kind in ("header+brain+subdural",):
        same = np.abs(shifted.detector_input(kind).astype(int) - reference.detector_input(kind).astype(int))
        assert np.percentile(same, 99) <= 2, "calibrated: the same input within rounding"
        raw = pipeline.window_series(brighter, calibrate=False)
        assert raw.calibration_hu == 0.0
        moved = raw.detector_input(kind).astype(int) - reference.detector_input(kind).astype(int)
        assert np.median(moved[moved != 0]) >= 10, "uncalibrated: 6 HU brighter, ≈ 19 grey levels in the brain window"
    far = pipeline.window_series(dataclasses.replace(series, hu=series.hu + np.float32(40.0)))
    assert far.calibration_hu == pytest.approx(MAX_OFFSET_HU)
