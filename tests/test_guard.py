"""The anatomical guard on generated studies (real DICOM read back): what it removes, what it keeps, and why.

Predicted blobs are placed by the phantom's tissue map (``labels.npz``: ``tissues``), so each test knows where a
blob lies; "blood density" is made by writing blood HU into the series' HU volume under the blob.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ichseg import pipeline
from ichseg.dicom_series import CTSeries, load_single_series
from ichseg.guard import BONE_HU, GuardOptions, GuardReport, apply_guard, read_anatomy
from synthetic.anatomy import TISSUES

BLOOD = 65.0  # HU of an acute clot
DEFAULTS = GuardOptions()
NO_SIZE_RULE = GuardOptions(min_ml=0.0)


def tissue(study: Path) -> np.ndarray:
    return np.load(study / "labels.npz")["tissues"]


@pytest.fixture()
def negative(negative_study: Path) -> tuple[CTSeries, np.ndarray]:
    """A fresh copy per test: tests write blood HU into it."""
    return load_single_series(negative_study / "ct"), tissue(negative_study)


def middle_slice(series: CTSeries) -> int:
    """The slice with most brain-sized cavity, where the skull ring is closed."""
    anatomy = read_anatomy(series.hu, series.pixel_spacing, series.slice_spacing, calibration_hu=0.0)
    return int(anatomy.inside.reshape(len(series.hu), -1).sum(axis=1).argmax())


def guarded(
    mask: np.ndarray, series: CTSeries, options: GuardOptions = DEFAULTS
) -> tuple[np.ndarray, GuardReport]:
    """The guard as the app runs it: the anatomy read with the windowing's calibration offset."""
    anatomy = pipeline.anatomy_of(series, pipeline.window_series(series)) if options.enabled else None
    return pipeline.guard(mask, series, options, anatomy)


def square_on(where: np.ndarray, index: int, side: int) -> np.ndarray:
    """A side×side blob on slice ``index`` lying wholly in ``where`` (the first such place in raster order)."""
    from scipy import ndimage

    fits = ndimage.binary_erosion(where[index], structure=np.ones((side, side), dtype=bool))
    rows, columns = np.nonzero(fits)
    assert len(rows), "the phantom has room for the blob"
    middle = len(rows) // 2
    row, column = rows[middle] - side // 2, columns[middle] - side // 2
    blob = np.zeros(where.shape, dtype=bool)
    blob[index, row:row + side, column:column + side] = True
    return blob


def ball(series: CTSeries, centre: tuple[int, int, int], radius_mm: float) -> np.ndarray:
    """A ball of ``radius_mm`` in patient millimetres (spans fewer slices than pixels on thick-slice series)."""
    n, rows, columns = series.hu.shape
    z, y, x = np.ogrid[:n, :rows, :columns]
    dz, dy, dx = series.slice_spacing, *series.pixel_spacing
    return ((z - centre[0]) * dz) ** 2 + ((y - centre[1]) * dy) ** 2 + ((x - centre[2]) * dx) ** 2 <= radius_mm**2


def deep_brain_point(series: CTSeries, offset_mm: float = 0.0) -> tuple[int, int, int]:
    """The point of the middle slice farthest from bone, shifted ``offset_mm`` to the patient's left."""
    index = middle_slice(series)
    anatomy = read_anatomy(series.hu, series.pixel_spacing, series.slice_spacing, calibration_hu=0.0)
    distance = np.where(anatomy.inside[index], anatomy.bone_distance_mm[index], 0.0)
    row, column = np.unravel_index(int(distance.argmax()), distance.shape)
    return index, int(row), int(column + round(offset_mm / series.pixel_spacing[1]))


def make_blood(series: CTSeries, blob: np.ndarray) -> None:
    """Blood density under the blob and one pixel around it, with a little noise as in CT."""
    from scipy import ndimage

    region = ndimage.binary_dilation(blob, structure=np.ones((1, 3, 3), dtype=bool))
    noise = np.random.default_rng(0).normal(0.0, 3.0, size=int(region.sum()))
    series.hu[region] = (BLOOD + noise).astype(np.float32)


def test_blob_in_the_scalp_at_blood_density_is_removed(negative) -> None:
    series, tissues = negative
    index = middle_slice(series)
    scalp = np.isin(tissues, [TISSUES["skin"], TISSUES["fat"]])
    blob = square_on(scalp, index, 3)
    make_blood(series, blob)  # a scalp haematoma: blood HU, outside the skull
    kept, report = guarded(blob, series, NO_SIZE_RULE)
    assert not kept.any()
    assert report.removed_voxels["cavity"] == blob.sum()


def test_blob_in_bone_is_removed(negative) -> None:
    series, tissues = negative
    index = middle_slice(series)
    bone = np.isin(tissues, [TISSUES["cortical bone"], TISSUES["diploe"]]) & (series.hu > BONE_HU)
    blob = square_on(bone, index, 3)
    kept, report = guarded(blob, series, NO_SIZE_RULE)
    assert not kept.any() and report.removed_voxels["cavity"] == blob.sum()


def test_blob_in_air_is_removed(negative) -> None:
    series, tissues = negative
    index = middle_slice(series)
    blob = square_on(tissues == TISSUES["air"], index, 5)
    kept, _ = guarded(blob, series, NO_SIZE_RULE)
    assert not kept.any()
    sinus = np.isin(tissues, [TISSUES["sinus air"], TISSUES["mastoid air cells"]]) & (series.hu < -500)
    slices = np.flatnonzero(sinus.reshape(len(sinus), -1).sum(axis=1) > 25)
    if len(slices):  # air enclosed by bone may lie inside the filled ring: the density rule takes it
        blob = square_on(sinus, int(slices[0]), 3)
        kept, _ = guarded(blob, series, NO_SIZE_RULE)
        assert not kept.any()


def test_blob_in_brain_at_blood_density_is_kept(negative) -> None:
    series, _ = negative
    blob = ball(series, deep_brain_point(series), radius_mm=5.0)
    make_blood(series, blob)
    kept, report = guarded(blob, series)  # the defaults, size rule included (a 5 mm ball is 0.52 mL)
    assert np.array_equal(kept, blob)
    assert report.voxels_in == report.voxels_out == blob.sum() and not any(report.removed_voxels.values())


def test_brain_blob_at_brain_density_is_removed(negative) -> None:
    """Where the segmenter marks normal brain (white matter ≈ 25 HU), the density rule removes it."""
    series, tissues = negative
    index = middle_slice(series)
    blob = square_on(tissues == TISSUES["white matter"], index, 9)
    series.hu[blob] = 25.0
    kept, report = guarded(blob, series, NO_SIZE_RULE)
    assert not kept.any() and report.removed_voxels["density"] == blob.sum()


def test_components_below_the_minimum_volume_are_dropped(negative) -> None:
    series, _ = negative
    big = ball(series, deep_brain_point(series), radius_mm=5.0)  # 0.52 mL
    centre = deep_brain_point(series, offset_mm=25.0)
    small = np.zeros_like(big)
    small[centre[0], centre[1]:centre[1] + 2, centre[2]:centre[2] + 2] = True  # 4 voxels, ≤ 0.01 mL
    make_blood(series, big | small)
    kept, report = guarded(big | small, series, GuardOptions(min_ml=0.05))
    assert np.array_equal(kept, big)
    assert report.removed_voxels == {"cavity": 0, "density": 0, "size": int(small.sum())}
    kept, _ = guarded(big | small, series, GuardOptions(min_ml=1.0))
    assert not kept.any(), "a 0.52 mL component is below 1 mL"


def test_guard_off_changes_nothing(negative) -> None:
    series, tissues = negative
    blob = square_on(tissues == TISSUES["air"], middle_slice(series), 5)
    kept, report = guarded(blob, series, GuardOptions(enabled=False))
    assert np.array_equal(kept, blob)
    assert report.to_json()["applied"] is False and report.to_json()["removed"] == {}


def test_open_skull_ring_falls_back_without_reaching_the_scalp(negative) -> None:
    """A 40 mm defect in the ring (craniectomy): the slice borrows its neighbour's cavity, clipped to its own hull."""
    series, tissues = negative
    index = middle_slice(series)
    before = read_anatomy(series.hu, series.pixel_spacing, series.slice_spacing, calibration_hu=0.0)
    rows, columns = series.hu.shape[1:]
    y, x = np.ogrid[:rows, :columns]
    centre = np.argwhere(before.inside[index]).mean(axis=0)
    half_width = 20.0 / series.pixel_spacing[1]
    wedge = (np.abs(x - centre[1]) < half_width) & (y < centre[0])  # anterior band across the frontal bone
    bone = series.hu[index] > BONE_HU
    series.hu[index][wedge & bone] = 30.0
    after = read_anatomy(series.hu, series.pixel_spacing, series.slice_spacing, calibration_hu=0.0)
    assert before.method[index] == "ring" and after.method[index] in ("wide closing", "neighbour", "hull")
    old, new = before.inside[index], after.inside[index]
    assert (old & new).sum() / (old | new).sum() > 0.9, "still the same brain"
    scalp = np.isin(tissues[index], [TISSUES["skin"], TISSUES["fat"]])
    assert not (after.inside[index] & scalp).any()


def test_true_hemorrhage_is_mostly_kept(positive_study: Path) -> None:
    """The phantom's own hemorrhage passes (the partial-volume rim at bone is the price of the margin)."""
    series = load_single_series(positive_study / "ct")
    truth = np.load(positive_study / "labels.npz")["labels"] > 0
    kept, report = guarded(truth, series)
    assert kept.sum() >= 0.7 * truth.sum(), report.to_json()


def test_report_is_json_ready(negative) -> None:
    import json

    series, tissues = negative
    blob = square_on(tissues == TISSUES["air"], middle_slice(series), 5)
    anatomy = read_anatomy(series.hu, series.pixel_spacing, series.slice_spacing, calibration_hu=0.0)
    _, report = apply_guard(blob, anatomy)
    data = json.loads(json.dumps(report.to_json()))
    assert data["applied"] and data["voxels_before"] == 25 and data["voxels_after"] == 0
    assert set(data["removed"]) == {"cavity", "density", "size"}
    assert data["removed"]["cavity"]["ml"] == pytest.approx(25 * series.voxel_volume_ml, abs=1e-3)
    assert data["settings"]["hu_range"] == list(GuardOptions().hu_range)


def test_sweep_gives_what_the_guard_gives(negative) -> None:
    """``--choose-guard`` scores each option from one labelling per HU range and margin, on a cropped volume, from
    per-component slice counts: the masks must be those ``apply_guard`` gives, the scores those the evaluation gives
    them (MONAI's Dice) on the whole volume."""
    from evaluation.evaluate import Scores
    from evaluation.guard_choice import crop_to, guarded_scores, sweep_guard, sweep_options

    series, tissues = negative
    big = ball(series, deep_brain_point(series), radius_mm=5.0)
    small = ball(series, deep_brain_point(series, offset_mm=25.0), radius_mm=2.0)
    make_blood(series, big | small)
    mask = big | small | square_on(tissues == TISSUES["air"], middle_slice(series), 5)
    truth = ball(series, deep_brain_point(series, offset_mm=3.0), radius_mm=5.0)  # overlaps the big blob in part
    anatomy = read_anatomy(series.hu, series.pixel_spacing, series.slice_spacing, calibration_hu=0.0)
    options = sweep_options()[::7]
    cropped, box = crop_to(anatomy, [mask, truth])
    empty = len(mask) - len(cropped.inside)
    assert empty > 0, "slices without any mask are cut away"
    swept = {option: components.mask_of(kept)  # the components each option keeps, as masks
             for components, group in sweep_guard(mask[box], cropped, options) for option, kept in group.items()}
    scored = guarded_scores(mask[box], truth[box], cropped, options, empty)
    for option in options:
        expected, _ = apply_guard(mask, anatomy, option)
        assert expected[box].sum() == expected.sum(), "nothing guarded lies outside the crop"
        np.testing.assert_array_equal(swept[option], expected[box], err_msg=str(option))
        full, cut = Scores(), Scores()  # the cut-away slices are counted: the scores equal those of the whole volume
        full.add(expected, truth, series.voxel_volume_ml, 0.0)
        cut.record(scored[option])
        assert 0 < full.summary()["slice_dice"] < 1 or not expected.any()
        assert cut.summary() == pytest.approx(full.summary(), nan_ok=True), str(option)


def test_the_density_rule_follows_the_series_calibration(negative: tuple[CTSeries, np.ndarray]) -> None:
    """A scanner that reads every HU 6 lower: the windowing measures the offset once, and the guard that takes it
    keeps the same low-density blood it kept before, where a fixed range drops it. The report says what was applied."""
    series, tissues = negative
    index = middle_slice(series)
    brain = np.isin(tissues, [TISSUES["white matter"], TISSUES["grey matter"]])
    blob = square_on(brain, index, 12)
    series.hu[blob] = 44.0  # hyperacute blood, just over the 40 HU bound
    reference = pipeline.window_series(series).calibration_hu
    assert abs(reference) < 4, "the phantoms' brain reads about the reference"
    before = pipeline.anatomy_of(series, pipeline.window_series(series))
    shifted = dataclasses.replace(series, hu=series.hu - 6.0)  # the same head on a scanner reading 6 HU low
    windowed = pipeline.window_series(shifted)
    assert windowed.calibration_hu == pytest.approx(reference - 6.0, abs=0.6)
    after = pipeline.anatomy_of(shifted, windowed)
    assert after.calibration_hu == windowed.calibration_hu, "one measurement, handed from the windowing"
    uncalibrated = pipeline.anatomy_of(shifted, pipeline.window_series(shifted, calibrate=False))
    assert uncalibrated.calibration_hu == 0.0
    kept_before, _ = apply_guard(blob, before, NO_SIZE_RULE)
    kept_after, report = apply_guard(blob, after, NO_SIZE_RULE)
    fixed, _ = apply_guard(blob, uncalibrated, NO_SIZE_RULE)
    assert np.array_equal(kept_before, kept_after), "calibrated: the same blood kept"
    assert kept_before.sum() > blob.sum() / 2, "all but the edges the 3x3 mean blurs into the brain"
    assert fixed.sum() < kept_before.sum() / 4, "a fixed 40 HU bound drops it at 38 HU"
    summary = report.to_json()
    assert summary["calibration_offset_hu"] == pytest.approx(windowed.calibration_hu, abs=0.05)
    assert summary["blood_hu_applied"][0] == pytest.approx(40.0 + windowed.calibration_hu, abs=0.05)
