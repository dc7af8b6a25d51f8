"""The MAP end to end on generated studies: SEG valid and aligned, report consistent, bad inputs refused cleanly.

Runs the application in-process with an explicit argv (program name first). Tests that run the networks need
trained models under ``models/`` and skip until ``models/detector/manifest.json`` exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from ichseg import __version__, cli
from ichseg.dicom_series import DicomInputError, load_single_series
from ichseg.follow import FOLLOW_SLICES

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
OUTPUTS = {"ich_seg.dcm", "ich_report.json", "ich_preview.png", "ich_mask.npz"}


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory: pytest.TempPathFactory):
    """ultralytics settings in a temporary folder; the mask saved for comparison with the SEG."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config")))
        patch.setenv("ICH_SAVE_MASK", "1")
        yield patch


def nothing_written(output_folder: Path) -> bool:
    """A refused run leaves no output: the folder is absent (refused before the SDK made it) or empty."""
    return not output_folder.exists() or not any(output_folder.iterdir())


def run_app(input_folder: Path, output_folder: Path, models: Path = MODELS) -> int:
    import app

    return app.main(["python", "app.py", "-i", str(input_folder), "-o", str(output_folder), "-m", str(models)])


def check_outputs(study_ct: Path, output: Path) -> tuple[dict, np.ndarray, hd.seg.Segmentation]:
    """Assertions every successful run must pass; returns the report, the pipeline's mask and the SEG."""
    assert {p.name for p in output.iterdir()} == OUTPUTS, "exactly the outputs, no staging folder left"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in output.iterdir()}
    assert modes == dict.fromkeys(OUTPUTS, "0o644"), "readable by a forwarder running as another user"
    report = json.loads((output / "ich_report.json").read_text())
    saved = np.load(output / "ich_mask.npz")
    mask = saved["mask"]
    series = load_single_series(study_ct)
    assert list(saved["sop_instance_uids"]) == [str(h.SOPInstanceUID) for h in series.headers]
    assert mask.shape == series.hu.shape, "mask on the source grid"

    seg = hd.seg.segread(output / "ich_seg.dcm")
    assert seg.NumberOfFrames == len(series.headers), "one frame per source slice, empty ones kept"
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(saved["sop_instance_uids"]), segment_numbers=[1]
    )
    np.testing.assert_array_equal(frames[..., 0].astype(bool), mask)
    headers = {str(h.SOPInstanceUID): h for h in series.headers}
    referenced = []
    # highdicom may store frames in another order: match by reference
    for frame in seg.PerFrameFunctionalGroupsSequence:
        header = headers[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        referenced.append(str(header.SOPInstanceUID))
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in position], [float(v) for v in header.ImagePositionPatient], atol=1e-3
        )
    assert sorted(referenced) == sorted(headers), "each source slice referenced by exactly one frame"
    assert seg.FrameOfReferenceUID == series.headers[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.StudyInstanceUID == series.headers[0].StudyInstanceUID
    (segment,) = seg.SegmentSequence
    assert segment.SegmentNumber == 1 and segment.SegmentLabel == "Intracranial hemorrhage"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == __version__ and algorithm.AlgorithmName == segment.SegmentAlgorithmName

    validator = subprocess.run(["dciodvfy", str(output / "ich_seg.dcm")], capture_output=True, text=True)
    errors = [line for line in (validator.stdout + validator.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors

    voxels = int(mask.sum())
    assert report["hemorrhage_voxels"] == voxels
    assert report["hemorrhage_volume_ml"] == pytest.approx(voxels * series.voxel_volume_ml, abs=1e-3)
    assert report["hemorrhage_detected"] == (voxels > 0)
    assert report["result"] == ("hemorrhage detected" if voxels else "no hemorrhage detected")
    assert "not for clinical use" in report["notice"]
    assert report["series"]["series_instance_uid"] == series.series_uid and report["series"]["why_chosen"]
    assert set(report["models"]) == {"detector", "segmenter"} and all(m["version"] for m in report["models"].values())
    assert {"load DICOM series", "YOLO detection", "TransDeepLab segmentation", "anatomical guard",
            "DICOM SEG writing"} <= set(report["timings_s"])
    for entry in report["slices"]:
        assert entry["mask_voxels"] == int(mask[entry["slice"]].sum())
        assert entry["merged_boxes"] or entry["mask_voxels"] == 0, "voxels only inside a box"
        assert entry["mask_voxels"] <= entry["mask_voxels_before_guard"], "the guard only removes"
    guard = report["guard"]
    assert guard["voxels_after"] == voxels and guard["voxels_before"] >= voxels
    assert guard["voxels_before"] - sum(rule["voxels"] for rule in guard["removed"].values()) == voxels
    assert Image.open(output / "ich_preview.png").size[0] > 0
    return report, mask, seg


def test_graph_is_wired_as_designed(tmp_path: Path) -> None:
    from app import ICHSegmentationApp

    application = ICHSegmentationApp(
        ["python", "app.py", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(tmp_path)]
    )
    application.compose()
    graph = application.graph
    edges = {
        (node.name, following.name): {out: set(ins) for out, ins in graph.get_port_map(node, following).items()}
        for node in graph.get_nodes()
        for following in graph.get_next_nodes(node)
    }
    assert [node.name for node in graph.get_root_nodes()] == ["dicom_series_loader"]
    assert edges == {
        ("dicom_series_loader", "windowing"): {"series": {"series"}},
        ("windowing", "yolo_detector"): {"windowed": {"windowed"}},
        ("yolo_detector", "box_merger"): {"detections": {"detections"}},
        ("dicom_series_loader", "box_merger"): {"series": {"series"}},
        ("box_merger", "transdeeplab_segmenter"): {"boxes": {"boxes"}},
        ("windowing", "transdeeplab_segmenter"): {"windowed": {"windowed"}},
        ("transdeeplab_segmenter", "anatomical_guard"): {"mask": {"mask"}},
        ("dicom_series_loader", "anatomical_guard"): {"series": {"series"}},
        ("windowing", "anatomical_guard"): {"windowed": {"windowed"}},
        ("anatomical_guard", "finding_follower"): {"mask": {"mask"}, "guard": {"guard"}, "anatomy": {"anatomy"}},
        ("transdeeplab_segmenter", "finding_follower"): {"mask": {"unguarded"}},
        ("box_merger", "finding_follower"): {"boxes": {"boxes"}},
        ("windowing", "finding_follower"): {"windowed": {"windowed"}},
        ("dicom_series_loader", "finding_follower"): {"series": {"series"}},
        ("dicom_series_loader", "dicom_seg_writer"): {"series": {"series"}},
        ("finding_follower", "dicom_seg_writer"): {"mask": {"mask"}},
        ("windowing", "preview"): {"windowed": {"windowed"}},
        ("finding_follower", "preview"): {"boxes": {"boxes"}, "mask": {"mask"}},
        ("dicom_series_loader", "report"): {"series": {"series"}, "selection": {"selection"}},
        ("yolo_detector", "report"): {"detections": {"detections"}, "thresholds": {"thresholds"}},
        ("finding_follower", "report"): {"boxes": {"boxes"}, "unguarded": {"unguarded"}, "mask": {"mask"},
                                         "guard": {"guard"}, "follow": {"follow"}},
        ("dicom_seg_writer", "report"): {"seg": {"seg"}},
        ("preview", "report"): {"preview": {"preview"}},
    }


def _header(description: str, modality: str = "CT", kernel: str = "STANDARD",
            image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
            orientation: tuple[int, ...] = (1, 0, 0, 0, 1, 0)) -> Dataset:
    header = Dataset()
    header.SeriesDescription, header.Modality, header.ConvolutionKernel = description, modality, kernel
    header.ImageType = list(image_type)
    header.ImageOrientationPatient = list(orientation)
    return header


def test_series_selection_follows_the_rules() -> None:
    from ichseg.series_selection import SelectionRules, select_series

    rules = SelectionRules.load(REPO / "series_selection_rules.json")
    series = {
        "scout": _header("Scout", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        "mr": _header("T1", modality="MR"),
        "sagittal": _header("Sag MPR", orientation=(0, 1, 0, 0, 0, -1)),
        "bone": _header("Head bone", kernel="BONE"),
        "soft": _header("Head 5mm", kernel="H31s"),
        "soft reformat": _header("Head 5mm MPR", kernel="H31s", image_type=("DERIVED", "SECONDARY", "AXIAL")),
    }
    slices = {"scout": 2, "mr": 60, "sagittal": 300, "bone": 200, "soft": 32, "soft reformat": 40}
    groups = {uid: [(Path(f"{uid}-{i}.dcm"), header) for i in range(slices[uid])] for uid, header in series.items()}
    selection = select_series(groups, rules, Path("study"))
    assert selection.series_uid == "soft"
    assert "32 slices" in selection.reason
    assert "not a localizer" in selection.rejected["scout"]
    assert "modality is CT" in selection.rejected["mr"]
    assert "axial" in selection.rejected["sagittal"]
    assert "soft-tissue" in selection.rejected["bone"]
    assert "original" in selection.rejected["soft reformat"]
    with pytest.raises(DicomInputError, match="no series meets the selection rules"):
        select_series({"mr": groups["mr"]}, rules, Path("study"))


def test_missing_model_fails_first_with_exit_status(tmp_path: Path) -> None:
    """``python <app folder>`` (what the MAP runs) refuses to start without models, before reading any DICOM."""

    (tmp_path / "no_models").mkdir()
    result = subprocess.run(
        [sys.executable, str(REPO), "-i", str(tmp_path), "-o", str(tmp_path / "out"),
         "-m", str(tmp_path / "no_models")],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == cli.EXIT_MODEL
    assert "model problem" in result.stderr and str(tmp_path / "no_models" / "detector") in result.stderr
    assert nothing_written(tmp_path / "out"), "nothing written"


@pytest.mark.parametrize("variable, value", [
    ("ICH_CONFIDENCE", "2"), ("ICH_EXTEND_CONFIDENCE", "0"), ("ICH_SELECTION_RULES", "/missing/rules.json"),
    ("ICH_MERGE", "union"),
    ("ICH_GUARD", "maybe"), ("ICH_GUARD_HU", "100,40"), ("ICH_GUARD_MIN_ML", "-1"), ("ICH_FOLLOW_SLICES", "-1"),
    ("ICH_FOLLOW_SLICES", "³"), ("ICH_CALIBRATE", "yes please"),
])
def test_bad_setting_is_a_usage_error(variable: str, value: str, tmp_path: Path, environment: pytest.MonkeyPatch,
                                      capfd: pytest.CaptureFixture[str]) -> None:

    environment.setenv(variable, value)
    try:
        assert run_app(tmp_path, tmp_path / "out", models=tmp_path) == cli.EXIT_USAGE
    finally:
        environment.delenv(variable)
    assert value in capfd.readouterr().err
    assert nothing_written(tmp_path / "out")


def test_help_explains_inputs_outputs_and_options() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO), "--help"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0
    for text in ("--input", "--output", "--model", "ICH_CONFIDENCE", "ICH_MERGE", "ICH_GUARD", "ICH_FOLLOW_SLICES",
                 "ICH_CALIBRATE", "ich_seg.dcm",
                 "ich_report.json", "exit status"):
        assert text in result.stdout


def test_positive_study(positive_study: Path, tmp_path: Path) -> None:
    assert run_app(positive_study / "ct", tmp_path / "out") == 0
    report, mask, _ = check_outputs(positive_study / "ct", tmp_path / "out")
    truth = np.load(positive_study / "labels.npz")["labels"] > 0
    assert report["hemorrhage_detected"] and report["subtypes_detected"]
    assert (mask & truth).sum() > 0, "the mask overlaps the true hemorrhage"
    manifest = json.loads((MODELS / "detector" / "manifest.json").read_text())
    assert report["settings"]["confidence"] == manifest["operating_confidence"], (
        "no ICH_CONFIDENCE: the threshold used is the manifest's"
    )
    assert report["settings"]["extend_confidence"] == manifest["extend_confidence"] < manifest["operating_confidence"]
    guard = report["guard"]
    assert guard["applied"] and report["settings"]["guard"] and report["settings"]["merge"] == "slice"
    assert guard["settings"]["hu_range"] == report["settings"]["guard_hu"]
    assert set(guard["removed"]) == {"cavity", "density", "size"}
    assert all(len(entry["merged_boxes"]) <= 1 for entry in report["slices"]), "slice merge: one box per slice"
    follow = report["follow"]
    assert follow["settings"]["slices"] == report["settings"]["follow_slices"] == FOLLOW_SLICES
    followed = [entry for entry in report["slices"] if entry["followed"]]
    assert [entry["slice"] for entry in followed] == follow["slices"]
    assert all(entry["merged_boxes"] and not any(d["confidence"] >= report["settings"]["confidence"]
                                                 for d in entry["detections"]) for entry in followed)


def test_negative_result_still_writes_an_empty_seg(
    negative_study: Path, tmp_path: Path, environment: pytest.MonkeyPatch
) -> None:
    environment.setenv("ICH_CONFIDENCE", "0.999")  # no box passes: the no-finding path, whatever the weights
    environment.setenv("ICH_GUARD", "0")
    try:
        assert run_app(negative_study / "ct", tmp_path / "out") == 0
    finally:
        environment.delenv("ICH_CONFIDENCE")
        environment.delenv("ICH_GUARD")
    report, mask, seg = check_outputs(negative_study / "ct", tmp_path / "out")
    assert not mask.any() and report["result"] == "no hemorrhage detected" and report["hemorrhage_volume_ml"] == 0
    assert report["settings"]["confidence"] == 0.999
    assert report["guard"]["applied"] is False and report["guard"]["removed"] == {}
    assert not seg.pixel_array.any()


def test_non_512_matrix_gives_seg_on_source_grid(
    positive_study: Path, tmp_path: Path, environment: pytest.MonkeyPatch
) -> None:
    """A 256² series, merged per cluster: detector on 512, boxes and masks on the source grid."""
    small = tmp_path / "ct256"
    small.mkdir()
    for path in (positive_study / "ct").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::2, ::2]).tobytes()
        ds.Rows, ds.Columns = 256, 256
        ds.PixelSpacing = [f"{float(v) * 2:.6f}" for v in ds.PixelSpacing]
        ds.save_as(small / path.name)
    environment.setenv("ICH_MERGE", "cluster")
    try:
        assert run_app(small, tmp_path / "out") == 0
    finally:
        environment.delenv("ICH_MERGE")
    report, mask, _ = check_outputs(small, tmp_path / "out")
    assert mask.shape[1:] == (256, 256)
    assert report["settings"]["merge"] == "cluster"
    for entry in report["slices"]:  # merged boxes on the source grid, none overlapping another of its slice
        boxes = entry["merged_boxes"]
        assert all(0 <= v <= 256 + 1 for box in boxes for v in box)
        assert all(
            a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1] for a, b in zip(boxes, boxes[1:], strict=False)
        )


def _missing_slice(study_ct: Path, folder: Path) -> str:
    """Copy a study without one inner slice; returns the file name removed."""
    series = load_single_series(study_ct)
    removed = series.files[len(series.files) // 2]
    for path in series.files:
        if path != removed:
            (folder / path.name).write_bytes(path.read_bytes())
    return removed.name


@pytest.mark.parametrize("case", ["empty folder", "non-DICOM files", "missing slice"])
def test_bad_input_is_refused_without_output(
    case: str, positive_study: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:

    folder = tmp_path / "in"
    folder.mkdir()
    expected = "no DICOM files found"
    if case == "non-DICOM files":
        (folder / "notes.txt").write_text("not an image")
        (folder / "scan.dcm").write_bytes(b"\0" * 200)
    elif case == "missing slice":
        _missing_slice(positive_study / "ct", folder)
        expected = "missing slice"
    status = run_app(folder, tmp_path / "out")
    assert status == cli.EXIT_INPUT
    assert expected in capfd.readouterr().err
    assert nothing_written(tmp_path / "out"), "no SEG, no report, no staging folder"


def test_exit_status_of_the_process(positive_study: Path, tmp_path: Path) -> None:
    """``python <app folder>`` (what the MAP runs) exits non-zero with the problem on stderr."""

    folder = tmp_path / "in"
    folder.mkdir()
    _missing_slice(positive_study / "ct", folder)
    result = subprocess.run(
        [sys.executable, str(REPO), "-i", str(folder), "-o", str(tmp_path / "out"), "-m", str(MODELS)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == cli.EXIT_INPUT
    assert "input refused" in result.stderr and "missing slice" in result.stderr
    assert nothing_written(tmp_path / "out")
