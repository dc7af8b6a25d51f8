"""The app's SEG opens where clinicians look: dcmqi (3D Slicer's converter) and dcmjs (the parser OHIF uses).

Why: a SEG can pass dciodvfy and still be misplaced, flipped or dropped by a viewer. Each study (a positive one and
the negative one, whose SEG has every frame empty) is run through the app once; the real readers then read its
``ich_seg.dcm`` and what they load is compared voxel for voxel with the pipeline's mask (``ich_mask.npz``).
dcmjs runs under Node from ``tests/viewers`` (pinned in its package-lock.json, installed by scripts/run_tests.sh).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from ichseg.dicom_seg import HEMORRHAGE_RGB
from ichseg.report import SEG_NAME
from operators.seg_writer_operator import SEGMENT_LABEL

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
VIEWERS = Path(__file__).resolve().parent / "viewers"
SEGIMAGE2ITKIMAGE = Path(sys.executable).parent / "segimage2itkimage"  # dcmqi's console script, in the venv
DCMJS_VERSION = "0.52.2"
#: NIfTI affines map voxels to RAS; DICOM positions are LPS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class AppRun:
    """One app run: the CT folder it read, its SEG, and the pipeline's mask in the order of ``headers``."""

    ct: Path
    seg: Path
    mask: np.ndarray
    headers: list[Dataset]

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(h.SOPInstanceUID) for h in self.headers]


@pytest.fixture(scope="module", params=["positive", "negative"])
def app_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AppRun:
    """The app run once per study and shared by the module's tests; the negative study takes the no-finding path."""
    import app

    study: Path = request.getfixturevalue(f"{request.param}_study")
    output = tmp_path_factory.mktemp(f"viewers_{request.param}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config")))
        patch.setenv("ICH_SAVE_MASK", "1")
        if request.param == "negative":  # no box passes, whatever the weights: every SEG frame empty
            patch.setenv("ICH_CONFIDENCE", "0.999")
            patch.setenv("ICH_GUARD", "0")
        status = app.main(["python", "app.py", "-i", str(study / "ct"), "-o", str(output), "-m", str(MODELS)])
    assert status == 0
    saved = np.load(output / "ich_mask.npz")
    headers = {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(path, stop_before_pixels=True) for path in (study / "ct").iterdir())
    }
    run = AppRun(study / "ct", output / SEG_NAME, saved["mask"],
                 [headers[str(uid)] for uid in saved["sop_instance_uids"]])
    assert len(run.headers) == len(headers), "the mask covers every CT image"
    assert run.mask.any() == (request.param == "positive"), "a hemorrhage mask to find, or none at all"
    return run


def nifti_on_source_grid(image: nib.Nifti1Image, headers: Sequence[Dataset]) -> np.ndarray:
    """The NIfTI's voxels at the source pixels' centres, looked up by patient position, one slice per header.

    Why by position: no axis order or flip is assumed; each CT pixel centre (LPS) goes through the inverse affine
    to a voxel index, which must be a whole number (same grid), and every NIfTI voxel must be hit exactly once.
    """
    data = np.asarray(image.dataobj)
    assert data.ndim == 3, data.shape
    lps_to_voxel = np.linalg.inv(image.affine) @ LPS_TO_RAS
    hits = np.zeros(data.shape, dtype=np.int32)
    slices = []
    for header in headers:
        row_cosines, column_cosines = np.asarray(header.ImageOrientationPatient, dtype=float).reshape(2, 3)
        row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)  # between rows, between columns
        rows, columns = np.meshgrid(np.arange(header.Rows), np.arange(header.Columns), indexing="ij")
        centres = (np.asarray(header.ImagePositionPatient, dtype=float)
                   + columns[..., None] * column_spacing * row_cosines
                   + rows[..., None] * row_spacing * column_cosines)
        continuous = centres @ lps_to_voxel[:3, :3].T + lps_to_voxel[:3, 3]
        index = np.rint(continuous).astype(int)
        assert np.abs(continuous - index).max() < 0.01, "NIfTI voxels off the source pixel centres"
        assert (index >= 0).all() and (index < data.shape).all(), "source pixel outside the NIfTI"
        i, j, k = np.moveaxis(index, -1, 0)
        slices.append(data[i, j, k])
        hits[i, j, k] += 1
    assert (hits == 1).all(), "every NIfTI voxel is exactly one source pixel"
    return np.stack(slices)


def test_dcmqi_converts_the_seg_voxel_for_voxel(app_run: AppRun, tmp_path: Path) -> None:
    """segimage2itkimage (dcmqi 1.5.7) also converts the all-empty SEG: an all-zero volume on the full grid."""
    result = subprocess.run(
        [str(SEGIMAGE2ITKIMAGE), "--inputDICOM", str(app_run.seg), "--outputDirectory", str(tmp_path),
         "--outputType", "nifti"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.nii.gz", "meta.json"], "one volume for segment 1"
    (segments,) = json.loads((tmp_path / "meta.json").read_text())["segmentAttributes"]
    (segment,) = segments
    assert segment["labelID"] == 1 and segment["SegmentLabel"] == SEGMENT_LABEL
    assert segment["recommendedDisplayRGBValue"] == list(HEMORRHAGE_RGB), "dcmqi's CIELab -> RGB round-trips"

    voxels = nifti_on_source_grid(nib.load(tmp_path / "1.nii.gz"), app_run.headers)
    assert set(np.unique(voxels)) <= {0, 1}
    np.testing.assert_array_equal(voxels == 1, app_run.mask)


def test_dcmjs_loads_the_segment_onto_the_ct_images(app_run: AppRun, tmp_path: Path) -> None:
    """dcmjs's Cornerstone adapter puts every SEG frame on the CT image it references, with our mask on it."""
    assert shutil.which("node"), "Node.js missing: scripts/run_tests.sh installs it"
    assert (VIEWERS / "node_modules" / "dcmjs").is_dir(), "run `npm ci --prefix tests/viewers` (run_tests.sh does)"
    labelmap_path = tmp_path / "labelmap.u16"
    result = subprocess.run(
        ["node", str(VIEWERS / "read_seg.mjs"), str(app_run.seg), str(app_run.ct), str(labelmap_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    read = json.loads(result.stdout)
    assert read["dcmjs"] == DCMJS_VERSION
    assert read["warnings"] == [], "no frame left out (dcmjs warns when it cannot place one)"

    seg = pydicom.dcmread(app_run.seg, stop_before_pixels=True)
    (segment,) = read["segments"]
    assert segment["number"] == 1 and segment["label"] == SEGMENT_LABEL
    assert segment["cielab"] == [int(v) for v in seg.SegmentSequence[0].RecommendedDisplayCIELabValue]
    # dcmjs 0.52.2 reads DICOM CIELab against D50 (ICC PCS), highdicom writes against D65: (216, 28, 32) is shown
    assert all(abs(shown - meant) <= 6 for shown, meant in zip(segment["rgb"], HEMORRHAGE_RGB, strict=True))

    uids = app_run.sop_instance_uids
    referenced = [str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                  for frame in seg.PerFrameFunctionalGroupsSequence]
    assert read["number_of_frames"] == seg.NumberOfFrames == len(uids), "one frame per CT image"
    assert read["frame_sources"] == referenced, "each frame placed on the image it references, in frame order"
    assert sorted(read["frame_sources"]) == sorted(uids), "every CT image of the input series gets one frame"
    assert sorted(read["stack"]) == sorted(uids)

    assert read["labelmaps"] == 1, "one non-overlapping labelmap"
    labelmap = np.fromfile(labelmap_path, dtype="<u2").reshape(len(uids), *app_run.mask.shape[1:])
    on_source = labelmap[[read["stack"].index(uid) for uid in uids]]
    np.testing.assert_array_equal(on_source, app_run.mask.astype(np.uint16))
    painted = [[1] if app_run.mask[uids.index(uid)].any() else [] for uid in read["stack"]]
    assert read["segments_on_frame"] == painted, "segment 1 listed on exactly the images it covers"
