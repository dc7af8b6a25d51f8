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
import torch
from scipy import ndimage
from torchvision.ops import masks_to_boxes

from ichseg.boxes import merge_boxes
from ichseg.dicom_series import load_single_series
from ichseg.subtypes import SUBTYPES, subtype_index
from synthetic.anatomy import TISSUES

# Median HU of each tissue on generated studies, noise included, must fall in these ranges. Medians are taken
# over voxels at least one pixel inside their tissue (in-plane and, where the tissue is thick enough, in the
# neighbouring slices too), so that the blur and the slice-thickness averaging at tissue borders (partial
# volume, e.g. CSF next to bone, skin at the oblique vertex) do not decide the figure.
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
    "oedema": (12, 35),  # a 2–6 mm rim: through-plane partial volume with the clot lifts it above 28
    "blood": (35, 90),
    "petrous bone": (1300, 2500),
    "brainstem": (22, 40),
    "globe": (-5, 30),
    "muscle": (35, 70),
    "venous sinus": (35, 75),
}
SUBTYPE_MEDIAN_RANGE = (35, 90)  # acute blood, hyperacute (35–50 HU) included


def _labels(study: Path) -> np.lib.npyio.NpzFile:
    return np.load(study / "labels.npz")


def test_series_reads_back_as_ct_with_realistic_header(positive_study: Path) -> None:
    files = sorted((positive_study / "ct").glob("*.dcm"))
    assert 24 <= len(files) <= 40
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert (ds.Rows, ds.Columns) == (512, 512)
        assert float(ds.RescaleIntercept) == -1024.0
        assert float(ds.SliceThickness) == 5.0
        assert ds.BodyPartExamined == "HEAD"
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
        interior = ndimage.binary_erosion(region, structure=np.ones((3, 3, 3), dtype=bool))  # also through-plane
        if interior.sum() < 100:
            interior = ndimage.binary_erosion(region, structure=np.ones((1, 3, 3), dtype=bool))
        voxels = hu[interior] if interior.sum() >= 100 else hu[region]
        if voxels.size < 200:
            continue
        seen += 1
        assert low <= np.median(voxels) <= high, f"{name}: median {np.median(voxels):.1f} HU outside {low}..{high}"
    assert seen >= 9


def test_subtype_hu_and_image_noise(positive_study: Path) -> None:
    hu = load_single_series(positive_study / "ct").hu
    labels = _labels(positive_study)["labels"]
    present = [k for k in range(1, 6) if (labels == k).sum() > 100]
    assert len(present) >= 2
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
            np.testing.assert_array_equal(
                pixels[index] > 0, expected[index], err_msg=f"segment {number}, slice {index}"
            )


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


# --- the wider phantom family: anatomy of the skull base, mimics, acquisitions, harder lesions ---------------

from ichseg.windowing import window_from_header  # noqa: E402
from synthetic.anatomy import MIMICS, HeadAnatomy  # noqa: E402
from synthetic.ct_writer import StudyIdentity, write_ct_series  # noqa: E402
from synthetic.hemorrhage import NEGATIVE_FRACTION, Lesion, sample_lesion  # noqa: E402
from synthetic.mimics import Calcification, Mimics, ScalpCollection  # noqa: E402
from synthetic.volume import THICKNESSES, WINDOW_PRESETS, SyntheticHead  # noqa: E402


def _upright_head(number: int, lesions: list | None = None, mimics: Mimics | None = None) -> SyntheticHead:
    """A sampled head scanned without tilt or offset, so that slice index ↔ head height w is simple."""
    head = SyntheticHead.sample(np.random.default_rng([99, number]))
    head.acquisition.rotation = np.eye(3)
    head.acquisition.offset = np.zeros(3)
    head.acquisition.motion = {}
    if lesions is not None:
        head.lesions = lesions
    if mimics is not None:
        head.mimics = mimics
    return head


def _index_at(head: SyntheticHead, w: float) -> int:
    acq = head.acquisition
    return int(np.clip(round((w - acq.first_slice_w) / acq.slice_thickness), 0, acq.slice_count - 1))


def test_negative_fraction_and_mimic_rich_negatives() -> None:
    heads = [SyntheticHead.sample(np.random.default_rng([1234, n])) for n in range(300)]
    negatives = [h for h in heads if not h.lesions]
    assert NEGATIVE_FRACTION >= 0.4
    assert 0.4 <= len(negatives) / len(heads) <= 0.6  # half expected (≥ 40 % asked); binomial spread over 300 draws
    rich = [h for h in negatives if len(h.mimics.names) >= 2]
    assert len(rich) / len(negatives) >= 0.5, "most negative studies carry several mimics"
    thicknesses = {h.acquisition.slice_thickness for h in heads}
    assert {5.0, 0.625} <= thicknesses and thicknesses <= set(THICKNESSES)
    assert sum(h.acquisition.slice_thickness == 5.0 for h in heads) > len(heads) / 2, "5 mm stays the usual case"
    assert {h.acquisition.matrix for h in heads} == {256, 512, 768}
    assert {h.acquisition.kernel for h in heads} == {"SOFT", "STANDARD", "SHARP"}
    assert any(h.acquisition.windows == () for h in heads)
    first_windows = {h.acquisition.windows[0] for h in heads if h.acquisition.windows}
    assert first_windows >= {WINDOW_PRESETS["stroke"], WINDOW_PRESETS["bone"]}


def test_same_seed_same_head() -> None:
    first, second = (SyntheticHead.sample(np.random.default_rng([5, 17])) for _ in range(2))
    assert first.acquisition.slice_count == second.acquisition.slice_count
    assert [(a.subtype, a.blood_hu) for a in first.lesions] == [(b.subtype, b.blood_hu) for b in second.lesions]
    assert first.mimics.names == second.mimics.names
    index = first.acquisition.slice_count // 2
    one = first.render(np.random.default_rng(0), [index])
    two = second.render(np.random.default_rng(0), [index])
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


def test_max_slices_caps_thin_series() -> None:
    for n in range(60):
        head = SyntheticHead.sample(np.random.default_rng([3, n]), max_slices=64)
        assert head.acquisition.slice_count <= 64


def test_skull_base_anatomy_present_at_the_lowest_slices() -> None:
    head = _upright_head(1, lesions=[], mimics=Mimics())
    base = head.anatomy.skull_base_height
    indices = [_index_at(head, base - 14.0), _index_at(head, base - 11.0), _index_at(head, base + 4.0)]
    hu, labels, tissues = head.render(np.random.default_rng(0), indices)
    low = set(np.unique(tissues[:2]).tolist())
    for name in ("petrous bone", "mastoid air cells", "globe", "sinus air", "skull base"):
        assert TISSUES[name] in low, f"{name} missing at the skull base"
    assert TISSUES["lens"] in set(np.unique(tissues[:2]).tolist()) or head.acquisition.slice_thickness < 2.5
    petrous = ndimage.binary_erosion(tissues[1] == TISSUES["petrous bone"], iterations=2)
    assert petrous.sum() > 30 and np.median(hu[1][petrous]) > 1500, "petrous bone is denser than 1500 HU"
    posterior = set(np.unique(tissues[2]).tolist())
    assert {TISSUES["brainstem"], TISSUES["grey matter"], TISSUES["csf"]} <= posterior
    assert not labels.any()


def test_mimics_are_where_asked_and_labelled_zero() -> None:
    probe = _upright_head(2, lesions=[])
    anatomy = probe.anatomy
    mimics = Mimics(
        calcifications=[
            Calcification("pineal calcification", anatomy.pineal(), np.full(3, 3.0), 400.0),
            Calcification("choroid plexus calcification", anatomy.atrium(1.0), np.array([2.5, 4.0, 2.5]), 300.0),
            Calcification("basal ganglia calcification", anatomy.globus_pallidus(-1.0), np.full(3, 3.0), 250.0),
            Calcification(
                "dural calcification", np.array([0.0, 10.0, anatomy.vertex - 25.0]), np.array([1.2, 8.0, 6.0]), 500.0
            ),
        ],
        scalp=[
            ScalpCollection("scalp haematoma", np.array([anatomy.semi_axes[0] * 0.95, 0.0, 25.0]), 40.0, 12.0, 65.0)
        ],
    )
    head = _upright_head(2, lesions=[], mimics=mimics)
    for mimic in mimics.calcifications:
        index = _index_at(head, float(mimic.centre[2]))
        hu, labels, tissues = head.render(np.random.default_rng(0), [index])
        region = tissues[0] == TISSUES[mimic.name]
        assert region.sum() > 5, mimic.name
        assert np.median(hu[0][region]) > 100, mimic.name
        assert not labels.any(), "mimics are not hemorrhage"
    index = _index_at(head, 25.0)
    hu, labels, tissues = head.render(np.random.default_rng(0), [index])
    haematoma = tissues[0] == TISSUES["scalp haematoma"]
    assert haematoma.sum() > 200 and not labels.any()
    assert 45 <= np.median(hu[0][ndimage.binary_erosion(haematoma, iterations=2)]) <= 85
    # outside the skull: no cavity or bone voxel is haematoma, and bone lies between it and the brain
    acq = head.acquisition
    x0, y0 = acq.first_pixel_xy
    axis = np.arange(acq.matrix, dtype=np.float32) * np.float32(acq.pixel_spacing)
    y, x = np.meshgrid(y0 + axis, x0 + axis, indexing="ij")
    fields, _ = head._plane(x, y, acq.slice_z(index))
    assert not (haematoma & fields["cavity"]).any()
    assert (fields["depth"][haematoma] < anatomy.scalp_thickness).all()
    assert set(MIMICS) <= set(TISSUES)


def test_venous_sinuses_and_tentorium_are_dense_but_not_labelled() -> None:
    head = _upright_head(3, lesions=[], mimics=Mimics())
    base = head.anatomy.skull_base_height
    indices = sorted({_index_at(head, base + 8.0), _index_at(head, head.anatomy.vertex - 30.0)})
    hu, labels, tissues = head.render(np.random.default_rng(0), indices)
    sinus = tissues == TISSUES["venous sinus"]
    assert sinus[0].sum() > 20 and sinus[-1].sum() > 20
    assert TISSUES["tentorium"] in np.unique(tissues[0])
    assert not labels.any()


@pytest.mark.parametrize("thickness,matrix", [(0.625, 512), (1.25, 256), (2.5, 768)])
def test_acquisition_geometry_reads_back(thickness: float, matrix: int, tmp_path: Path) -> None:
    head = _upright_head(4, lesions=[], mimics=Mimics())
    acq = head.acquisition
    acq.slice_thickness, acq.matrix, acq.slice_count = thickness, matrix, 4
    acq.pixel_spacing = 230.0 / matrix
    acq.slice_noise = None
    hu, _, _ = head.render(np.random.default_rng(0))
    write_ct_series(hu, acq, StudyIdentity(4, 99), tmp_path, np.random.default_rng(0))
    series = load_single_series(tmp_path)
    assert series.hu.shape == (4, matrix, matrix)
    assert series.slice_spacing == pytest.approx(thickness, abs=1e-3)
    assert series.pixel_spacing[0] == pytest.approx(230.0 / matrix, abs=1e-5)
    assert all(float(h.SliceThickness) == thickness for h in series.headers)


@pytest.mark.parametrize("windows", [
    (),
    ((40.0, 80.0), WINDOW_PRESETS["bone"]),
    ((75.0, 200.0),),
    (WINDOW_PRESETS["stroke"],),
])
def test_header_window_presets(windows: tuple, tmp_path: Path) -> None:
    head = _upright_head(5, lesions=[], mimics=Mimics())
    acq = head.acquisition
    acq.slice_count, acq.windows = 3, windows
    hu = np.zeros((3, acq.matrix, acq.matrix), np.float32)
    paths = write_ct_series(hu, acq, StudyIdentity(5, 99), tmp_path, np.random.default_rng(1))
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if not windows:
            assert "WindowCenter" not in ds and "WindowWidth" not in ds
        elif "WindowCenter" in ds:  # a few files of a series may lack the VOI LUT
            assert window_from_header(ds) == windows[0]


def test_harder_hemorrhages() -> None:
    anatomy = HeadAnatomy.sample(np.random.default_rng(8))
    rng = np.random.default_rng(9)
    drawn: dict[str, list[Lesion]] = {}
    for _ in range(400):
        subtype = int(rng.integers(len(SUBTYPES)))
        lesion = sample_lesion(anatomy, rng, subtype)
        drawn.setdefault(f"{lesion.name}/{lesion.variant}", []).append(lesion)
    assert {"subdural/thin", "subarachnoid/sulcal", "intraparenchymal/tiny", "intraventricular/layering"} <= set(drawn)
    assert all(2.0 <= lesion.thickness <= 4.0 for lesion in drawn["subdural/thin"])
    lesions = [lesion for group in drawn.values() for lesion in group]
    assert any(lesion.mix == "swirl" for lesion in lesions) and any(lesion.mix == "level" for lesion in lesions)
    assert any(35 <= lesion.blood_hu <= 50 for lesion in lesions), "hyperacute blood"
    # a fluid level: the dependent (posterior, +v) part is denser than the non-dependent part
    level = next(lesion for lesion in lesions if lesion.mix == "level")
    v = np.array([level.centre[1] - 3.0, level.centre[1] + 3.0], np.float32)
    zeros = np.zeros(2, np.float32)
    front, back = level.density(zeros, zeros + level.centre[0], v, zeros + level.centre[2])
    assert back > front
    # tiny clots stay under 0.5 mL: count the voxels of the region on a fine 3D grid
    tiny = drawn["intraparenchymal/tiny"][0]
    grid = np.arange(-8.0, 8.0, 0.5, dtype=np.float32)
    du, dv, dw = np.meshgrid(grid, grid, grid, indexing="ij")
    u, v, w = du + tiny.centre[0], dv + tiny.centre[1], dw + tiny.centre[2]
    fields = {"brain": np.ones(u.shape, bool), "csf_spaces": np.zeros(u.shape, bool), "cavity": np.ones(u.shape, bool),
              "inner_depth": np.full(u.shape, 50.0, np.float32)}
    volume_ml = tiny.region(fields, u, v, w).sum() * 0.5**3 / 1000.0
    assert 0.01 < volume_ml < 0.5


def test_ivh_layering_is_dependent() -> None:
    anatomy = HeadAnatomy.sample(np.random.default_rng(10))
    rng = np.random.default_rng(11)
    candidates = (sample_lesion(anatomy, rng, SUBTYPES.index("intraventricular")) for _ in range(50))
    lesion = next(candidate for candidate in candidates if candidate.variant == "layering")
    head = _upright_head(6, lesions=[lesion], mimics=Mimics())
    head.anatomy = anatomy
    head.lesions = [lesion]
    index = _index_at(head, anatomy.ventricle_height - 2.0)
    acq = head.acquisition
    x0, y0 = acq.first_pixel_xy
    axis = np.arange(acq.matrix, dtype=np.float32) * np.float32(acq.pixel_spacing)
    y, x = np.meshgrid(y0 + axis, x0 + axis, indexing="ij")
    fields, labels = head._plane(x, y, acq.slice_z(index))
    blood = labels == SUBTYPES.index("intraventricular") + 1
    assert blood.sum() > 20
    assert (y[blood] > lesion.centre[1] - 1e-3).all(), "blood lies posterior (dependent) to the fluid level"
    assert not (fields["ventricles"] & blood & (y < lesion.centre[1])).any()


def _render_one(head: SyntheticHead, index: int, **settings: object) -> tuple[np.ndarray, np.ndarray]:
    """One slice (HU, tissues) under the given acquisition settings, same noise draw each time."""
    for key, value in settings.items():
        setattr(head.acquisition, key, value)
    hu, _, tissues = head.render(np.random.default_rng(0), [index])
    return hu[0], tissues[0]


def test_artefacts_kernels_cupping_and_streaks() -> None:
    head = _upright_head(7, lesions=[], mimics=Mimics())
    acq = head.acquisition
    acq.slice_noise, acq.matrix, acq.pixel_spacing, acq.slice_thickness = None, 512, 0.45, 5.0
    plain = dict(noise_sigma=0.0, edge_gain=0.0, blur_sigma=0.6, cupping_hu=0.0, streak_hu=0.0)
    # cupping: brain within 3 mm of the inner table is denser than without it, deep brain unchanged
    index = _index_at(head, head.anatomy.ventricle_height + 20.0)
    flat, tissues = _render_one(head, index, **plain)
    cupped, _ = _render_one(head, index, **{**plain, "cupping_hu": 12.0, "cupping_mm": 4.0})
    acq_x0, acq_y0 = acq.first_pixel_xy
    axis = np.arange(512, dtype=np.float32) * np.float32(0.45)
    y, x = np.meshgrid(acq_y0 + axis, acq_x0 + axis, indexing="ij")
    fields, _ = head._plane(x, y, acq.slice_z(index))
    near = fields["cavity"] & (fields["inner_depth"] > 1.0) & (fields["inner_depth"] < 3.0)
    deep = fields["cavity"] & (fields["inner_depth"] > 40.0)
    assert 5.0 <= np.median((cupped - flat)[near]) <= 12.0
    assert np.abs(np.median((cupped - flat)[deep])) < 0.5
    # Hounsfield bar: darker between the petrous bones
    index = _index_at(head, head.anatomy.skull_base_height - 11.0)
    clean, tissues = _render_one(head, index, **plain)
    streaked, _ = _render_one(head, index, **{**plain, "streak_hu": 40.0, "streak_mm": 3.0})
    assert (streaked - clean).min() < -20.0 and (streaked - clean).max() > 5.0
    # sharp kernel: more noise than a soft one in the air of the same slice
    air = ndimage.binary_erosion(tissues == TISSUES["air"], iterations=10)
    soft, _ = _render_one(head, index, noise_sigma=5.0 * 0.8, noise_correlation=0.9, blur_sigma=0.9, edge_gain=0.0,
                          streak_hu=0.0)
    sharp, _ = _render_one(head, index, noise_sigma=5.0 * 1.4, noise_correlation=0.4, blur_sigma=0.4, edge_gain=0.6,
                           streak_hu=0.0)
    assert sharp[air].std() > 1.3 * soft[air].std()
    # motion: a ghost of the head shifted by a few pixels, on the moved slice only
    still, _ = _render_one(head, index, **plain)
    moved, _ = _render_one(head, index, **{**plain, "motion": {index: (3.0, -2.0, 0.3)}})
    assert np.abs(moved - still).max() > 100.0
    head.acquisition.motion = {}


def test_bone_dominated_blood_is_not_labelled(positive_study: Path) -> None:
    maps = _labels(positive_study)
    hu = load_single_series(positive_study / "ct").hu
    labelled = maps["labels"] > 0
    assert labelled.any()
    assert np.percentile(hu[labelled], 99) < 400, "labelled voxels look like blood, not like bone"


def test_generating_into_a_folder_keeps_the_other_studies_rows(tmp_path: Path) -> None:
    from synthetic.__main__ import STUDY_COLUMNS, kept_rows, main

    def generate(number: int) -> None:
        main(["--out", str(tmp_path), "--studies", "1", "--first", str(number), "--seed", "9",
              "--max-slices", "40", "--workers", "1"])

    def read(name: str) -> list[dict[str, str]]:
        with (tmp_path / name).open(newline="") as handle:
            return list(csv.DictReader(handle))

    generate(1)  # epidural + intraparenchymal
    boxes_of_one = read("boxes.csv")
    assert boxes_of_one
    generate(0)  # hemorrhage-free: adds a row, keeps study 1's row and boxes
    assert [r["study_id"] for r in read("studies.csv")] == ["study_009_00000", "study_009_00001"]
    assert read("boxes.csv") == boxes_of_one
    generate(1)  # regenerated: its rows replaced, not doubled
    assert len(read("studies.csv")) == 2
    assert read("boxes.csv") == boxes_of_one
    (tmp_path / "studies.csv").write_text("StudyInstanceUID,x\n1.2.3,4\n")
    with pytest.raises(SystemExit, match="studies.csv: columns StudyInstanceUID, x are not study_id"):
        kept_rows(tmp_path / "studies.csv", STUDY_COLUMNS, "study_id", set())
