"""The transforms shared by training and inference: windowing, series geometry, boxes, crop and paste-back."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from ichseg.boxes import LESION_GAP_MM, box_of_mask, lesion_boxes, lesion_gap_pixels, merge_boxes
from ichseg.crops import CROP_SIZE, crop_mask_to_target, crop_to_input, paste_probability
from ichseg.dicom_series import DicomInputError, load_single_series
from ichseg.pipeline import window_series
from ichseg.windowing import (
    BRAIN_WINDOW,
    SLAB_INPUT,
    SUBDURAL_WINDOW,
    apply_window,
    channel_input,
    slab_mean,
    window_from_header,
)


def test_window_from_header_and_fallback() -> None:
    ds = pydicom.Dataset()
    assert window_from_header(ds) == BRAIN_WINDOW
    ds.WindowCenter, ds.WindowWidth = ["40", "300"], ["80", "1500"]  # multi-valued: the first is primary
    assert window_from_header(ds) == (40.0, 80.0)
    ds.WindowWidth = "0"
    assert window_from_header(ds) == BRAIN_WINDOW
    ds.WindowCenter, ds.WindowWidth = "32768", "65536"  # highdicom's legacy converter fills missing windows so
    assert window_from_header(ds) == BRAIN_WINDOW  # (full range): a placeholder, not a window
    ds.WindowCenter, ds.WindowWidth = "500", "3000"  # a real bone window stays
    assert window_from_header(ds) == (500.0, 3000.0)


def test_apply_window_maps_level_and_edges() -> None:
    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 1000.0])
    assert apply_window(hu, 40, 80).tolist() == [0, 0, 128, 255, 255]


def test_slab_averages_the_slices_within_three_mm() -> None:
    """±3 mm: two neighbours each way at 1.25 mm, one at 3 mm, none at 5 mm; the end slices repeat past the ends."""
    hu = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), dtype=np.float32) * 10
    assert slab_mean(hu, 1.25, 3.0)[:, 0, 0].tolist() == pytest.approx([6, 12, 20, 28, 34])
    assert slab_mean(hu, 3.0, 3.0)[:, 0, 0].tolist() == pytest.approx([10 / 3, 10, 20, 30, 110 / 3])
    assert slab_mean(hu, 5.0, 3.0) is hu


def test_slab_channel_lifts_faint_blood_above_noise() -> None:
    """Blood 6 HU above grey matter on every 1.25 mm slice under 15 HU of noise: the slab channel separates it at
    least twice as well as the slice's own brain window; the other two channels are the slice's windows."""
    rng = np.random.default_rng(0)
    hu = 40.0 + rng.normal(0, 15, (9, 64, 64)).astype(np.float32)
    hu[:, :, 32:] += 6.0
    channels = channel_input(apply_window(hu, *BRAIN_WINDOW), hu, SLAB_INPUT, 1.25).astype(float)
    assert channels.shape == (9, 3, 64, 64)

    def separation(plane: np.ndarray) -> float:
        return float((plane[:, 32:].mean() - plane[:, :32].mean()) / plane[:, :32].std())

    slab, brain = separation(channels[4, 0]), separation(channels[4, 1])
    assert brain > 0 and slab > 2 * brain
    assert np.array_equal(channels[:, 1], apply_window(hu, *BRAIN_WINDOW))
    assert np.array_equal(channels[:, 2], apply_window(hu, *SUBDURAL_WINDOW))


def test_pipeline_slab_uses_the_series_slice_spacing(positive_study: Path) -> None:
    """The pipeline builds the slab from the series' own spacing: its first channel is the brain window of
    ``slab_mean`` over the series at that spacing, and differs from the slice's own where neighbours are averaged."""
    series = load_single_series(positive_study / "ct")
    windowed = window_series(series)
    slab = windowed.source_input(SLAB_INPUT)[:, 0]
    centre, width = BRAIN_WINDOW  # moved by the series' calibration offset, as the networks see it
    expected = apply_window(slab_mean(series.hu, series.slice_spacing, 3.0), centre + windowed.calibration_hu, width)
    assert np.array_equal(slab, expected)
    assert (series.slice_spacing <= 3.0) == (not np.array_equal(slab, windowed.source_input(SLAB_INPUT)[:, 1]))


def test_windows_come_from_headers_with_fallback(positive_study: Path, negative_study: Path) -> None:
    for study in (positive_study, negative_study):
        series = load_single_series(study / "ct")
        for header, window in zip(series.headers, series.windows, strict=True):
            if "WindowCenter" in header:  # several presets: the first is the primary one
                centre, width = (v[0] if header[k].VM > 1 else v for k, v in
                                 (("WindowCenter", header.WindowCenter), ("WindowWidth", header.WindowWidth)))
                assert window == (float(centre), float(width))
            else:
                assert window == BRAIN_WINDOW


def test_padding_and_rescale_give_air_outside_field_of_view(positive_study: Path, negative_study: Path) -> None:
    for study in (positive_study, negative_study):
        series = load_single_series(study / "ct")
        assert series.hu.min() >= -1024.0
        assert series.hu[:, 0, 0].max() == -1024.0  # corner is outside the reconstruction circle


def test_merge_boxes_is_smallest_enclosing_box() -> None:
    assert merge_boxes([]) is None
    assert merge_boxes([(10, 20, 30, 40), (5, 25, 12, 60)]) == (5, 20, 30, 60)


def test_lesion_boxes_one_per_component() -> None:
    label = np.zeros((64, 64), dtype=np.uint8)
    label[10:20, 5:15] = 4
    label[40:42, 40:50] = 4
    label[30:35, 30:33] = 1
    boxes = sorted(lesion_boxes(label))
    assert boxes == [(0, (30.0, 30.0, 33.0, 35.0)), (3, (5.0, 10.0, 15.0, 20.0)), (3, (40.0, 40.0, 50.0, 42.0))]


def test_lesion_boxes_group_fragments_of_one_subtype() -> None:
    """A subdural broken into fragments 3 px apart is one lesion box at a 5 px gap; a clot of another subtype beside
    it and a fragment 20 px away keep their own boxes; without a gap every component has its box."""
    label = np.zeros((64, 64), dtype=np.uint8)
    label[10:12, 5:15] = 4
    label[14:16, 12:20] = 4  # 2 rows below the first fragment
    label[12:14, 22:26] = 4  # 2 columns right of the second fragment's box, overlapping it in rows
    label[40:42, 40:50] = 4  # 24 rows further down
    label[16:20, 16:20] = 1  # IPH touching the second fragment's box: another subtype, another lesion
    assert len(lesion_boxes(label)) == 5
    grouped = sorted(lesion_boxes(label, gap=5.0))
    assert grouped == [(0, (16.0, 16.0, 20.0, 20.0)), (3, (5.0, 10.0, 26.0, 16.0)), (3, (40.0, 40.0, 50.0, 42.0))]
    assert lesion_gap_pixels((0.5, 0.5)) == pytest.approx(LESION_GAP_MM / 0.5)


#: Bound on crop → 224×224 → paste-back of a ground-truth mask: the two masks differ only on the lesion's
#: boundary (within 1 pixel of it), and Dice ≥ 0.9 for lesions of at least 50 pixels.
def test_crop_paste_back_is_identity_up_to_resampling(positive_study: Path) -> None:
    labels = np.load(positive_study / "labels.npz")["labels"] > 0
    checked = 0
    for mask in labels:
        if mask.sum() < 50:
            continue
        box = merge_boxes(box for _, box in lesion_boxes(mask.astype(np.uint8)))
        target = crop_mask_to_target(mask, box)
        assert target.shape == (CROP_SIZE, CROP_SIZE)
        pasted = paste_probability(target.float(), box, mask.shape)
        difference = pasted ^ mask
        boundary = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
        assert not (difference & ~boundary).any()
        dice = 2 * (pasted & mask).sum() / (pasted.sum() + mask.sum())
        assert dice >= 0.9
        checked += 1
    assert checked >= 3


def test_crop_to_input_shape_and_range() -> None:
    windowed = (np.arange(512 * 512) % 256).astype(np.uint8).reshape(512, 512)
    crop = crop_to_input(windowed, (100.0, 120.0, 180.0, 150.0))
    assert crop.shape == (3, CROP_SIZE, CROP_SIZE)
    assert 0.0 <= float(crop.min()) and float(crop.max()) <= 1.0
    assert bool((crop[0] == crop[1]).all() and (crop[1] == crop[2]).all())
    mask = np.zeros((512, 512), bool)
    mask[130:140, 110:170] = True
    assert box_of_mask(mask) == (110.0, 130.0, 170.0, 140.0)


def _copy_series(study: Path, destination: Path) -> list[Path]:
    destination.mkdir()
    for path in (study / "ct").glob("*.dcm"):
        shutil.copy(path, destination / path.name)
    return sorted(
        destination.glob("*.dcm"),
        key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]),
    )


def test_missing_slice_is_refused_naming_files(negative_study: Path, tmp_path: Path) -> None:
    files = _copy_series(negative_study, tmp_path / "ct")
    files[10].unlink()
    with pytest.raises(DicomInputError, match="missing slice") as error:
        load_single_series(tmp_path / "ct")
    assert files[9].name in str(error.value)


def test_duplicate_position_is_refused(negative_study: Path, tmp_path: Path) -> None:
    files = _copy_series(negative_study, tmp_path / "ct")
    ds = pydicom.dcmread(files[5])
    ds.ImagePositionPatient = pydicom.dcmread(files[6]).ImagePositionPatient
    ds.save_as(files[5])
    with pytest.raises(DicomInputError, match="duplicate slice position"):
        load_single_series(tmp_path / "ct")


def test_gantry_tilt_is_refused(negative_study: Path, tmp_path: Path) -> None:
    files = _copy_series(negative_study, tmp_path / "ct")
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + index * 5.0 * np.tan(np.radians(15)), z]
        ds.save_as(path)
    with pytest.raises(DicomInputError, match="tilt"):
        load_single_series(tmp_path / "ct")


def test_truncated_file_is_refused_naming_it(negative_study: Path, tmp_path: Path) -> None:
    files = _copy_series(negative_study, tmp_path / "ct")
    files[3].write_bytes(files[3].read_bytes()[:5000])
    with pytest.raises(DicomInputError, match=files[3].name):
        load_single_series(tmp_path / "ct")


def test_box_of_mask_matches_torchvision_masks_to_boxes() -> None:
    """The paper derives boxes with torchvision's masks_to_boxes (inclusive maxima): ours are the same, +1 exclusive."""
    import torch
    from torchvision.ops import masks_to_boxes

    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = np.zeros((64, 80), dtype=bool)
        y, x = rng.integers(0, 50), rng.integers(0, 60)
        mask[y:y + rng.integers(1, 14), x:x + rng.integers(1, 20)] = True
        mask[rng.integers(0, 64), rng.integers(0, 80)] = True  # a stray pixel widens the box
        x0, y0, x1, y1 = masks_to_boxes(torch.from_numpy(mask)[None])[0].tolist()
        assert box_of_mask(mask) == (x0, y0, x1 + 1.0, y1 + 1.0)
