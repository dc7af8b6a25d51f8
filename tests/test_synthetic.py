"""The synthetic studies are real, valid DICOM with ground truth that agrees with the images."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from scipy import ndimage
from torchvision.ops import masks_to_boxes
import torch

from ichseg.boxes import merge_boxes
from ichseg.dicom_series import load_single_series
from ichseg.subtypes import SUBTYPES, subtype_index
from synthetic.anatomy import TISSUES

# Median HU of each tissue on generated studies, noise included, must fall in these ranges. Medians are taken
# over voxels at least one pixel inside their tissue (in-plane), where a tissue is thick enough to have any, so
# that the blur at tissue borders (partial volume, e.g. CSF next to bone) does not decide the figure.
TISSUE_MEDIAN_RANGES = {
    "air": (-1024, -950),
    "fat": (-120, -60),
    "skin": (0, 80),
    "cortical bone": (700, 1500),
    "diploe": (200, 700),
    "grey matter": (35, 45),
    "white matter": (22, 32),
    "csf": (0, 15),
    "falx": (40, 90),
    "oedema": (12, 28),
    "blood": (45, 90),
}
SUBTYPE_MEDIAN_RANGE = (45, 90)  # acute blood


def _labels(study: Path) -> np.lib.npyio.NpzFile:
    return np.load(study / "labels.npz")


def test_series_reads_back_as_ct_with_realistic_header(positive_study: Path) -> None:
    files = sorted((positive_study / "ct").glob("*.dcm"))
    assert 24 <= len(files) <= 36
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert (ds.Rows, ds.Columns) == (512, 512)
        assert float(ds.RescaleIntercept) == -1024.0
        assert float(ds.SliceThickness) == 5.0
        assert ds.pixel_array.shape == (512, 512)
    names = [p.stem for p in files]
    instance_order = sorted(files, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    assert [p.stem for p in instance_order] != names, "file names must not give the slice order"


def test_geometry_sorted_along_normal_when_files_shuffled(positive_study: Path, tmp_path: Path) -> None:
    reference = load_single_series(positive_study / "ct")
    files = list((positive_study / "ct").glob("*.dcm"))
    rng = np.random.default_rng(0)
    for index in rng.permutation(len(files)):
        shutil.copy(files[index], tmp_path / f"{rng.integers(1 << 30):09d}.dcm")
    shuffled = load_single_series(tmp_path)
    z = shuffled.positions[:, 2]
    assert np.all(np.diff(z) == pytest.approx(5.0, abs=1e-3))
    np.testing.assert_array_equal(shuffled.hu, reference.hu)
    assert [h.SOPInstanceUID for h in shuffled.headers] == list(_labels(positive_study)["sop_instance_uids"])


@pytest.mark.parametrize("study_fixture", ["positive_study", "negative_study"])
def test_tissue_hu_in_range(study_fixture: str, request: pytest.FixtureRequest) -> None:
    study = request.getfixturevalue(study_fixture)
    hu = load_single_series(study / "ct").hu
    tissues = _labels(study)["tissues"]
    seen = 0
    for name, (low, high) in TISSUE_MEDIAN_RANGES.items():
        region = tissues == TISSUES[name]
        interior = ndimage.binary_erosion(region, structure=np.ones((1, 3, 3), dtype=bool))
        voxels = hu[interior] if interior.sum() >= 200 else hu[region]
        if voxels.size < 200:
            continue
        seen += 1
        assert low <= np.median(voxels) <= high, f"{name}: median {np.median(voxels):.1f} HU outside {low}..{high}"
    assert seen >= 9


def test_subtype_hu_and_image_noise(positive_study: Path) -> None:
    hu = load_single_series(positive_study / "ct").hu
    labels = _labels(positive_study)["labels"]
    present = [k for k in range(1, 6) if (labels == k).sum() > 100]
    assert len(present) >= 3
    for k in present:
        low, high = SUBTYPE_MEDIAN_RANGE
        assert low <= np.median(hu[labels == k]) <= high, SUBTYPES[k - 1]
    # Noise: air far from the head but inside the reconstruction circle is constant −1000 HU before noise.
    air = ndimage.binary_erosion(_labels(positive_study)["tissues"] == TISSUES["air"], iterations=8)
    rows, cols = np.ogrid[:512, :512]
    air &= ((rows - 255.5) ** 2 + (cols - 255.5) ** 2 < 240**2)[None]
    assert 2.5 <= hu[air].std() <= 10.5


def test_boxes_csv_equals_masks_to_boxes(positive_study: Path) -> None:
    labels = _labels(positive_study)
    sop_to_slice = {uid: index for index, uid in enumerate(labels["sop_instance_uids"])}
    with (positive_study.parent / "boxes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    by_slice_subtype: dict[tuple[int, int], list] = {}
    for row in rows:
        x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
        key = (sop_to_slice[row["SOPInstanceUID"]], subtype_index(row["labelName"]) + 1)
        by_slice_subtype.setdefault(key, []).append((x, y, x + w, y + h))
    expected_keys = {(i, int(k)) for i in range(len(labels["labels"])) for k in np.unique(labels["labels"][i]) if k}
    assert set(by_slice_subtype) == expected_keys
    for (index, label), boxes in by_slice_subtype.items():
        mask = torch.from_numpy(labels["labels"][index] == label)[None]
        x0, y0, x1, y1 = masks_to_boxes(mask)[0].tolist()
        assert merge_boxes(boxes) == pytest.approx((x0, y0, x1 + 1, y1 + 1))


@pytest.mark.parametrize("study_fixture", ["positive_study", "negative_study"])
def test_ground_truth_seg_matches_mask_frame_by_frame(study_fixture: str, request: pytest.FixtureRequest) -> None:
    study = request.getfixturevalue(study_fixture)
    labels = _labels(study)
    seg = hd.seg.segread(study / "ground_truth_seg.dcm")
    uids = [str(u) for u in labels["sop_instance_uids"]]
    assert seg.SeriesInstanceUID != load_single_series(study / "ct").series_uid
    for number in seg.get_segment_numbers():
        description = seg.get_segment_description(number)
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number])[..., 0]
        name = description.SegmentLabel.split()[0].lower()
        expected = labels["labels"] == (SUBTYPES.index(name) + 1) if name in SUBTYPES else labels["labels"] > 0
        for index in range(len(uids)):
            np.testing.assert_array_equal(pixels[index] > 0, expected[index], err_msg=f"segment {number}, slice {index}")


def _dciodvfy(path: Path) -> str:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


@pytest.mark.parametrize("study_fixture", ["positive_study", "negative_study"])
def test_dciodvfy_reports_no_errors(study_fixture: str, request: pytest.FixtureRequest) -> None:
    study = request.getfixturevalue(study_fixture)
    files = sorted((study / "ct").glob("*.dcm"))[:3] + [study / "ground_truth_seg.dcm"]
    for path in files:
        report = _dciodvfy(path)
        assert "Error" not in report, f"{path}:\n{report}"
