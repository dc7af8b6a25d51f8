"""The benchmark scripts' pure parts (no timing assertions) and the README's performance block against the results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from benchmarks import readme_table
from benchmarks.common import (
    PAPER,
    cpu_model,
    linear_fit,
    median_stages,
    paper_comparison,
    pipeline_seconds,
    report_summary,
    summarise,
)

ROOT = Path(__file__).resolve().parents[1]

MACHINE = {"device": "cpu", "gpu": None, "cpu_model": "Test CPU 9000", "cpu_cores": 2, "torch_threads": 2}
STAGES = {"load detector model": 0.2, "load DICOM series": 0.1, "YOLO detection": 2.5,
          "TransDeepLab segmentation": 4.0, "DICOM SEG writing": 0.5}
APP = {
    "study": "demo/study", "machine": MACHINE,
    "cold": {"slices": 31, "wall_s": {"best": 17.5, "median": 18.25, "worst": 19.0, "n": 5},
             "peak_rss_mib": {"best": 1900.0, "median": 1950.0, "worst": 1985.4, "n": 5},
             "s_per_slice_end_to_end": 0.5887, "median_stage_s": STAGES},
    "refused": {"exit_statuses": [3], "expected_exit_status": 3, "as_expected": True,
                "wall_s": {"median": 1.2}, "peak_rss_mib": {"worst": 564.1}},
    "warm": {"second_call_possible": True, "first_call_s": 10.1, "second_call_s": 9.4,
             "second_call_s_per_slice": 0.3032, "import_s": 4.0, "process": {"peak_rss_mib": 2228.9}},
}
POINT_60 = {"head": "extensive", "slices": 60, "confidence": None, "wall_s": 30.0, "s_per_slice": 0.5,
            "peak_rss_mib": 2100.0, "slices_with_box": 12, "ground_truth_positive_share": 0.4833}
SCALING = {
    "machine": MACHINE,
    "slice_counts": {"head": "extensive", "points": [
        {"head": "extensive", "slices": 30, "confidence": None, "wall_s": 20.0, "s_per_slice": 0.6667,
         "peak_rss_mib": 1900.0, "slices_with_box": 7, "ground_truth_positive_share": 0.4667},
        POINT_60,
    ], "fits_per_slice": {"wall_s": {"fixed_s": 10.0, "per_unit_s": 0.3333}}},
    "positive_share": {"slices": 60, "points": [
        {"head": "negative", "slices": 60, "confidence": None, "wall_s": 22.0, "s_per_slice": 0.3667,
         "peak_rss_mib": 1800.0, "slices_with_box": 2, "ground_truth_positive_share": 0.0},
        POINT_60,
        {"head": "extensive", "slices": 60, "confidence": 0.001, "exit_status": 1},
    ]},
}
DETECTORS = {
    "machine": MACHINE, "device": "cpu", "settings": {"imgsz": 512}, "app_detector": "yolov5n.yaml",
    "paper_detector": "yolov5l.yaml",
    "sizes": [{"model": "yolov5n.yaml", "parameters": 2_509_439, "gflops_per_image": 4.6, "batch": 8,
               "predict_s_per_slice": 0.1812, "forward_s_per_slice": 0.1644},
              {"model": "yolov5l.yaml", "parameters": 46_000_000, "gflops_per_image": None, "batch": 8,
               "predict_s_per_slice": 1.5, "forward_s_per_slice": 1.4}],
}


def test_readme_performance_block_matches_committed_results() -> None:
    """README.md's block between the performance markers is what benchmarks/results/*.json give."""
    assert readme_table.main(["--check", str(ROOT / "README.md")]) == 0


def test_render_from_small_results() -> None:
    text = readme_table.render({"app": APP, "scaling": SCALING, "detectors": DETECTORS})
    lines = text.splitlines()
    assert lines[0] == "Measured on Test CPU 9000, 2 cores, 2 torch threads."
    assert f"{PAPER['s_per_slice']} s per slice on an NVIDIA A100" in lines[1]
    assert ("| demo/study, 31 slices: cold `python app.py` (median of 5; best) | 18.2 s (17.5 s) | 0.589 | 1,985 MiB "
            "| TransDeepLab segmentation 4.0 s, YOLO detection 2.5 s, DICOM SEG writing 0.5 s |") in lines
    assert ("| same, second `app.main` call in one process | 9.4 s | 0.303 | 2,229 MiB (process) "
            "| first call 10.1 s, imports 4.0 s |") in lines
    assert "| refused input (empty folder → exit 3) | 1.2 s | — | 564 MiB | the documented status |" in lines
    assert ("| phantom, 60 slices (extensive hemorrhage) | 30.0 s | 0.500 | 2,100 MiB "
            "| 12 / 60 slices with a box (ground truth 29) |") in lines
    assert "| fit over the slice counts: fixed + per slice | 10.0 s | 0.333 | — | least squares, wall time |" in lines
    assert ("| phantom, 60 slices, no hemorrhage | 22.0 s | 0.367 | 1,800 MiB "
            "| 2 / 60 slices with a box (ground truth 0) |") in lines
    assert "| phantom, 60 slices, extensive hemorrhage, confidence 0.001 | exit 1 | — | — | — |" in lines
    assert sum("60 slices" in line and "extensive" in line and "confidence" not in line for line in lines) == 1
    assert "| yolov5n (the app's) | 2.5 M | 4.6 | 0.181 | 0.164 |" in lines
    assert "| yolov5l (the paper's) | 46.0 M | — | 1.500 | 1.400 |" in lines
    assert all(line.count("|") == 6 for line in lines if line.startswith("|"))  # 5 columns everywhere


def test_render_without_a_second_call_and_with_missing_files() -> None:
    app = json.loads(json.dumps(APP))
    app["warm"] = {"second_call_possible": False, "failure": {"error": "RuntimeError: one App | per process\nmore"}}
    text = readme_table.render({"app": app, "scaling": None, "detectors": None})
    assert ("| same, second `app.main` call in one process | not possible | — | — "
            "| RuntimeError: one App \\| per process |") in text.splitlines()
    assert "phantom" not in text and "detector" not in text
    assert readme_table.render({"app": None, "scaling": None, "detectors": None}).startswith("The paper:")


def test_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "app.json").write_text(json.dumps(APP))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n## Performance\n\n{readme_table.START}\nold table\n{readme_table.END}\n\nrest\n")
    assert readme_table.main(["--results", str(results), "--check", str(readme)]) == 1
    assert "+| demo/study" in capsys.readouterr().err
    assert readme_table.main(["--results", str(results), "--write", str(readme)]) == 0
    assert readme_table.main(["--results", str(results), "--check", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n") and text.endswith(f"{readme_table.END}\n\nrest\n") and "old table" not in text
    readme.write_text(text.replace("18.2 s", "18.3 s") + "   \n")
    assert readme_table.main(["--results", str(results), "--check", str(readme)]) == 1
    readme.write_text("no markers\n")
    assert readme_table.main(["--results", str(results), "--check", str(readme)]) == 2
    assert readme_table.main(["--results", str(results), "--write", str(readme)]) == 2


def test_report_summary_counts_boxes() -> None:
    report = {"series": {"slices": 10}, "timings_s": {"YOLO detection": 1.0}, "hemorrhage_volume_ml": 2.5,
              "result": "hemorrhage detected",
              "slices": [{"slice": 1, "detections": [{}], "merged_boxes": 1},
                         {"slice": 2, "detections": [{}, {}], "merged_boxes": 1},
                         {"slice": 3, "detections": [], "merged_boxes": 0}]}
    summary = report_summary(report)
    assert summary["slices_with_box"] == 2 and summary["box_share"] == 0.2 and summary["slices_segmented"] == 2
    assert summary["stages_s"] == {"YOLO detection": 1.0} and summary["hemorrhage_volume_ml"] == 2.5


def test_statistics_helpers() -> None:
    assert summarise([3.0, 1.0, 2.0]) == {"best": 1.0, "median": 2.0, "worst": 3.0, "n": 3}
    runs = [{"stages_s": {"a": 1.0, "b": 4.0}}, {"stages_s": {"a": 3.0}}, {"stages_s": {"a": 2.0, "b": 2.0}}]
    assert median_stages(runs) == {"a": 2.0, "b": 3.0}
    assert pipeline_seconds(STAGES) == pytest.approx(0.1 + 2.5 + 4.0 + 0.5)  # model loading left out
    assert linear_fit([30, 60, 120], [20.0, 30.0, 50.0]) == {"fixed_s": 10.0, "per_unit_s": 0.3333}
    assert linear_fit([60, 60], [1.0, 2.0]) is None
    block = paper_comparison(1.04, "test")
    assert block["paper"]["s_per_slice"] == 0.52 and block["ratio_ours_to_paper"] == 2.0
    assert paper_comparison(None, "test")["ratio_ours_to_paper"] is None


def test_cpu_model(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example CPU @ 2.0GHz\n\nprocessor\t: 1\n")
    assert cpu_model(cpuinfo) == "Example CPU @ 2.0GHz"
    assert cpu_model(tmp_path / "missing")  # falls back to platform


def test_run_process_measures_each_child_on_its_own() -> None:
    """Exit status and peak RSS are the child's own: a small child after a big one is not charged the big one's.

    Measured from a small parent, as the benchmark scripts are (this test process is large: Linux reports a child's
    peak RSS as at least its parent's resident size at the start)."""
    script = """
import json, sys
from benchmarks.common import run_process
big = run_process([sys.executable, "-c", "import sys; block = b'x' * (300 * 2**20); sys.exit(3)"])
small = run_process([sys.executable, "-c", "print('hello')"])
print(json.dumps([big, small]))
"""
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    big, small = json.loads(found.stdout)
    assert big["exit_status"] == 3 and big["peak_rss_mib"] >= 300
    assert small["exit_status"] == 0 and small["peak_rss_mib"] < 150 and "hello" in small["log_tail"]


def test_scaling_study_has_exactly_the_slices(tmp_path: Path) -> None:
    from benchmarks.scaling import build_study, fits

    meta = build_study("negative", 3, tmp_path)
    files = sorted((tmp_path / "negative_0003" / "ct").glob("*.dcm"))
    assert meta["slices"] == 3 and len(files) == 3 and meta["ground_truth_positive_share"] == 0.0
    datasets = sorted((pydicom.dcmread(p) for p in files), key=lambda d: float(d.ImagePositionPatient[2]))
    z = np.array([float(d.ImagePositionPatient[2]) for d in datasets])
    assert np.allclose(np.diff(z), meta["slice_thickness_mm"], atol=1e-3)
    assert len({d.SOPInstanceUID for d in datasets}) == 3 and {int(d.Rows) for d in datasets} == {512}
    assert build_study("negative", 3, tmp_path) == meta  # cached: read back, not regenerated
    points = [{"slices": 30, "wall_s": 20.0, "pipeline_s": 5.0, "peak_rss_mib": 1000.0, "stages_s": {"x": 1.0}},
              {"slices": 60, "wall_s": 30.0, "pipeline_s": 8.0, "peak_rss_mib": 1100.0, "stages_s": {"x": 2.0}},
              {"slices": 90, "exit_status": 1}]
    fitted = fits(points, "slices")
    assert fitted["wall_s"] == {"fixed_s": 10.0, "per_unit_s": 0.3333} and fitted["x"]["per_unit_s"] == 0.0333


def test_detector_batch_from_the_demo_study() -> None:
    from benchmarks.detector_sizes import demo_batch

    batch = demo_batch(ROOT / "demo" / "study", 2)
    assert batch.shape == (2, 512, 512) and batch.dtype == np.uint8 and batch.max() > 0


def test_robustness_copies_move_every_hu_or_add_noise_and_keep_the_labels(positive_study: Path, tmp_path: Path) -> None:
    """The perturbed copies are real DICOM read back by the app's loader: a calibration offset moves every HU inside
    the head by exactly that much, added noise has the stated spread, and the labels are the original ones under a
    "test" split (what ``evaluation.evaluate`` reads)."""
    import csv

    from benchmarks.robustness import PERTURBATIONS, perturbed_copy
    from ichseg.dicom_series import load_single_series

    data = positive_study.parent
    with (data / "studies.csv").open(newline="") as handle:
        split = next(row["split"] for row in csv.DictReader(handle) if row["study_id"] == positive_study.name)
    original = load_single_series(positive_study / "ct").hu
    by_name = {p.name: p for p in PERTURBATIONS}
    head = original > -500
    for name, check in (("hu+6", "offset"), ("noise+8", "noise")):
        copy = perturbed_copy(data, split, by_name[name], tmp_path / name, seed=0)
        changed = load_single_series(copy / positive_study.name / "ct").hu
        assert changed.shape == original.shape
        difference = (changed - original)[head]
        if check == "offset":
            assert np.all(difference == 6.0)
        else:
            assert abs(float(difference.mean())) < 0.2 and 7.5 < float(difference.std()) < 8.5
        assert (copy / positive_study.name / "labels.npz").resolve() == (positive_study / "labels.npz").resolve()
        assert (copy / "studies.csv").read_text().splitlines() == ["study_id,split", f"{positive_study.name},test"]
