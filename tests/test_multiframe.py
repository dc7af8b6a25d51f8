"""Multi-frame CT (Legacy Converted Enhanced CT, Enhanced CT: one file, one frame per slice) is read, segmented
and referenced exactly like the single-frame series it was made from, and a damaged one is refused naming the file.

The multi-frame files are made from the synthetic single-frame studies with highdicom's legacy converter; the
Enhanced CT variant also has its frames shuffled and its orientation, pixel measures and rescale repeated in each
frame instead of shared (both legal), so that frame order and per-frame functional groups are exercised. The app
runs in-process (``test_app.run_app``), once per positive-study variant, shared by the tests of this module.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.legacy import LegacyConvertedEnhancedCTImage
from pydicom.dataset import Dataset
from test_app import run_app

from ichseg import cli
from ichseg.dicom_series import CTSeries, FrameHeader, load_single_series
from ichseg.series_selection import BUNDLED_RULES, SelectionRules, load_chosen_series

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
PER_FRAME_IN_ENHANCED = ("PlaneOrientationSequence", "PixelMeasuresSequence", "PixelValueTransformationSequence")
MULTIFRAME = "multiframe.dcm"
VARIANTS = ("legacy", "enhanced")


def legacy_converted(study_ct: Path, folder: Path) -> Path:
    """The series as one Legacy Converted Enhanced CT file in ``folder``.

    The converter gives a frame whose source slice has no window a full-range one (centre 32768, width 65536);
    the reader takes such a width for no window (``ichseg.windowing.WIDEST_WINDOW``) and falls back to the brain
    window, as for a single-frame slice without one, so both series say the same.
    """
    sources = [pydicom.dcmread(path) for path in sorted(study_ct.glob("*.dcm"))]
    image = LegacyConvertedEnhancedCTImage(
        sources, series_instance_uid=hd.UID(), series_number=3, sop_instance_uid=hd.UID(), instance_number=1
    )
    folder.mkdir()
    image.save_as(folder / MULTIFRAME, enforce_file_format=True)
    return folder


def enhanced(legacy: Path, folder: Path) -> Path:
    """The legacy-converted file as an Enhanced CT with shuffled frames and per-frame geometry and rescale."""
    image = pydicom.dcmread(legacy / MULTIFRAME)
    image.SOPClassUID = image.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    image.SOPInstanceUID = image.file_meta.MediaStorageSOPInstanceUID = hd.UID()
    image.SeriesInstanceUID = hd.UID()
    order = np.random.default_rng(0).permutation(int(image.NumberOfFrames))
    frames = [image.PerFrameFunctionalGroupsSequence[i] for i in order]
    shared = image.SharedFunctionalGroupsSequence[0]
    for keyword in PER_FRAME_IN_ENHANCED:
        for frame in frames:
            frame[keyword] = copy.deepcopy(shared[keyword])
        del shared[keyword]
    image.PerFrameFunctionalGroupsSequence = frames
    image.PixelData = np.ascontiguousarray(image.pixel_array[order]).tobytes()
    folder.mkdir()
    image.save_as(folder / MULTIFRAME, enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def folders(positive_study: Path, negative_study: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Single-frame ('single') and multi-frame folders of the positive study; 'negative legacy' of the negative."""
    root = tmp_path_factory.mktemp("multiframe")
    legacy = legacy_converted(positive_study / "ct", root / "legacy")
    return {
        "single": positive_study / "ct",
        "legacy": legacy,
        "enhanced": enhanced(legacy, root / "enhanced"),
        "negative single": negative_study / "ct",
        "negative legacy": legacy_converted(negative_study / "ct", root / "negative_legacy"),
    }


@pytest.fixture(scope="module")
def outputs(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The app's output folder for the single-frame positive study and each multi-frame variant of it."""
    root = tmp_path_factory.mktemp("multiframe_runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YOLO_CONFIG_DIR", str(root / "yolo_config"))
        patch.setenv("ICH_SAVE_MASK", "1")
        for name in ("single", *VARIANTS):
            assert run_app(folders[name], root / name) == cli.EXIT_OK, name
    return {name: root / name for name in ("single", *VARIANTS)}


def assert_same_series(multiframe: CTSeries, single: CTSeries) -> None:
    """Same HU voxels, geometry and windows, slice by slice."""
    np.testing.assert_array_equal(multiframe.hu, single.hu)
    np.testing.assert_array_equal(multiframe.positions, single.positions)
    np.testing.assert_array_equal(multiframe.orientation, single.orientation)
    assert multiframe.windows == single.windows
    assert multiframe.pixel_spacing == single.pixel_spacing
    assert multiframe.slice_spacing == pytest.approx(single.slice_spacing, abs=1e-9)


@pytest.mark.parametrize("name, single", [("legacy", "single"), ("enhanced", "single"),
                                          ("negative legacy", "negative single")])
def test_multiframe_series_equals_the_single_frame_one(name: str, single: str, folders: dict[str, Path]) -> None:
    series = load_single_series(folders[name])
    assert_same_series(series, load_single_series(folders[single]))
    assert set(series.files) == {folders[name] / MULTIFRAME}
    assert all(isinstance(h, FrameHeader) for h in series.headers)
    image = series.headers[0].multiframe
    assert "PixelData" not in image and {str(h.SOPInstanceUID) for h in series.headers} == {image.SOPInstanceUID}
    numbers = [h.frame_number for h in series.headers]
    assert sorted(numbers) == list(range(1, int(image.NumberOfFrames) + 1))
    in_order = numbers in (sorted(numbers), sorted(numbers, reverse=True))  # the converter stacks head first
    assert in_order == (name != "enhanced"), "shuffled frames come sorted along the normal"


def test_selection_counts_frames_as_slices(folders: dict[str, Path], tmp_path: Path) -> None:
    """Beside three single-frame slices of another series, the multi-frame file is the series with most slices."""
    shutil.copy(folders["legacy"] / MULTIFRAME, tmp_path / MULTIFRAME)
    for path in sorted(folders["single"].glob("*.dcm"))[:3]:
        shutil.copy(path, tmp_path / path.name)
    selection, series = load_chosen_series(tmp_path, SelectionRules.load(BUNDLED_RULES), head_check=True)
    frames = len(series.headers)
    assert selection.series_uid == series.series_uid == series.headers[0].multiframe.SeriesInstanceUID
    assert f"(CT, {frames} frames in 1 file(s))" in selection.description
    assert "soft-tissue reconstruction kernel" in selection.reason and f"{frames} slices" in selection.reason
    assert "head CT check" in selection.reason
    (rejected,) = selection.rejected.values()
    assert "(CT, 3 files)" in rejected and "below the chosen series on 'most slices'" in rejected


def dciodvfy_errors(path: Path) -> list[str]:
    validator = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (validator.stdout + validator.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("name", VARIANTS)
def test_seg_references_the_source_frames(name: str, folders: dict[str, Path], outputs: dict[str, Path]) -> None:
    series = load_single_series(folders[name])
    image = series.headers[0].multiframe
    seg = hd.seg.segread(outputs[name] / "ich_seg.dcm")
    mask = np.load(outputs[name] / "ich_mask.npz")["mask"]
    assert seg.NumberOfFrames == len(series.headers) and mask.shape == series.hu.shape
    numbers = [h.frame_number for h in series.headers]
    pixels = seg.get_pixels_by_source_frame(image.SOPInstanceUID, numbers, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), mask)
    positions = dict(zip(numbers, series.positions, strict=True))
    referenced = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (source,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert source.ReferencedSOPInstanceUID == image.SOPInstanceUID
        referenced.append(int(source.ReferencedFrameNumber))
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, positions[referenced[-1]], atol=1e-3)
    assert sorted(referenced) == sorted(numbers), "each source frame referenced by exactly one SEG frame"
    (instance,) = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert instance.ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == image.FrameOfReferenceUID
    assert not dciodvfy_errors(outputs[name] / "ich_seg.dcm")


@pytest.mark.parametrize("name", VARIANTS)
def test_results_equal_the_single_frame_run(name: str, outputs: dict[str, Path]) -> None:
    single_mask = np.load(outputs["single"] / "ich_mask.npz")["mask"]
    assert single_mask.any(), "the positive study gives a mask to compare"
    np.testing.assert_array_equal(np.load(outputs[name] / "ich_mask.npz")["mask"], single_mask)
    single = json.loads((outputs["single"] / "ich_report.json").read_text())
    report = json.loads((outputs[name] / "ich_report.json").read_text())
    for key in ("result", "hemorrhage_voxels", "hemorrhage_volume_ml", "voxel_volume_ml", "subtypes_detected",
                "guard"):
        assert report[key] == single[key], key
    for key in ("slices", "matrix", "pixel_spacing_mm", "slice_spacing_mm"):
        assert report["series"][key] == pytest.approx(single["series"][key]), key
    assert [{k: v for k, v in e.items() if k != "sop_instance_uid"} for e in report["slices"]] == [
        {k: v for k, v in e.items() if k != "sop_instance_uid"} for e in single["slices"]
    ]
    assert (outputs[name] / "ich_preview.png").read_bytes() == (outputs["single"] / "ich_preview.png").read_bytes()


def _damage(image: Dataset, case: str) -> str:
    """Damage ``image`` in place; returns what the refusal must say."""
    frames = image.PerFrameFunctionalGroupsSequence
    if case == "frame position missing":
        del frames[5].PlanePositionSequence
        return f"{MULTIFRAME} frame 6: ImagePositionPatient missing"
    if case == "duplicate frame position":
        frames[5].PlanePositionSequence = copy.deepcopy(frames[6].PlanePositionSequence)
        return "duplicate slice position"
    if case == "missing frame":
        keep = [i for i in range(len(frames)) if i != 5]
        image.PixelData = np.ascontiguousarray(image.pixel_array[keep]).tobytes()
        image.PerFrameFunctionalGroupsSequence = [frames[i] for i in keep]
        image.NumberOfFrames = len(keep)
        return "missing slice(s)"
    if case == "frame count mismatch":
        image.NumberOfFrames = len(frames) + 1
        return f"{len(frames)} per-frame functional groups for NumberOfFrames {len(frames) + 1}"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["frame position missing", "duplicate frame position", "missing frame",
                                  "frame count mismatch", "two multi-frame files in one series"])
def test_damaged_multiframe_is_refused(case: str, folders: dict[str, Path], tmp_path: Path,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    image = pydicom.dcmread(folders["legacy"] / MULTIFRAME)
    if case == "two multi-frame files in one series":
        image.save_as(folder / "a.dcm")
        image.SOPInstanceUID = image.file_meta.MediaStorageSOPInstanceUID = hd.UID()
        image.save_as(folder / MULTIFRAME)
        expected = "multi-frame image in a series of 2 files"
    else:
        expected = _damage(image, case)
        image.save_as(folder / MULTIFRAME)
    assert run_app(folder, tmp_path / "out") == cli.EXIT_INPUT
    error = capfd.readouterr().err
    assert "input refused" in error and str(folder) in error and expected in error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
