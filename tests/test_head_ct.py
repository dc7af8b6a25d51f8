"""The head-CT check: series that are not a head CT are refused (exit 3, a message saying why, no output).

Body phantoms (chest, abdomen, pelvis, thighs, a water phantom) are drawn here from ellipses with typical HU
values and written as real DICOM files; the head studies come from the project's generator.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ichseg import cli, head_ct
from ichseg.dicom_series import DicomInputError, load_single_series
from ichseg.settings import Settings

MATRIX = 512


# --- body phantoms -------------------------------------------------------------------------------------------

def _grid(pixel_mm: float, matrix: int = MATRIX) -> tuple[np.ndarray, np.ndarray]:
    """Patient x (left →) and y (posterior ↓) of every pixel centre, mm, image centre at 0."""
    axis = (np.arange(matrix, dtype=np.float32) - (matrix - 1) / 2) * np.float32(pixel_mm)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x, y


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0


def _ring(x, y, cx, cy, a, b, thickness) -> np.ndarray:
    return _ellipse(x, y, cx, cy, a, b) & ~_ellipse(x, y, cx, cy, a - thickness, b - thickness)


def _spine(hu: np.ndarray, x: np.ndarray, y: np.ndarray, cy: float) -> None:
    """Vertebral body (cortex and cancellous bone), spinal canal with cord, posterior arch."""
    hu[_ellipse(x, y, 0, cy, 20, 17)] = 750
    hu[_ellipse(x, y, 0, cy, 17, 14)] = 250
    hu[_ring(x, y, 0, cy + 27, 14, 12, 5)] = 700
    hu[_ellipse(x, y, 0, cy + 27, 9, 7)] = 25
    hu[_ellipse(x, y, 0, cy + 45, 5, 9)] = 700  # spinous process


def _table(hu: np.ndarray, x: np.ndarray, y: np.ndarray, top: float) -> None:
    """The CT couch: a thin carbon-fibre shell around a foam core, a gap below the patient."""
    hu[(y > top) & (y < top + 3) & (np.abs(x) < 200)] = 150
    hu[(y >= top + 3) & (y < top + 30) & (np.abs(x) < 200)] = -850
    hu[(y >= top + 30) & (y < top + 33) & (np.abs(x) < 200)] = 150


def chest_slice(x: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
    """Axial chest at height t in 0..1 (lung apex → base): body 320 × 230 mm, lungs −850, ribs, spine."""
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    hu[_ellipse(x, y, 0, 0, 160, 115)] = -100  # subcutaneous fat
    hu[_ellipse(x, y, 0, 0, 150, 105)] = 45  # chest wall muscle
    lung_scale = 0.75 + 0.25 * np.sin(np.pi * (0.3 + 0.6 * t))
    for side in (-1, 1):
        hu[_ellipse(x, y, side * 72, 0, 55 * lung_scale, 82 * lung_scale)] = -850
    hu[_ellipse(x, y, 8, -20, 42, 50)] = 40  # mediastinum, heart
    hu[_ellipse(x, y, 15, 50, 12, 12)] = 45  # descending aorta
    for angle in np.radians(np.arange(-150, 151, 20)):  # ribs along the chest wall, none over the spine
        cx, cy = 142 * np.sin(angle), -98 * np.cos(angle)
        hu[_ellipse(x, y, cx, cy, 7, 5)] = 700
    hu[_ellipse(x, y, 0, -100, 14, 6)] = 450  # sternum
    _spine(hu, x, y, 62)
    _table(hu, x, y, 118)
    return hu


def abdomen_slice(x: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
    """Axial upper abdomen: body 340 × 250 mm, liver, kidneys, bowel with gas, spine; no lungs."""
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    hu[_ellipse(x, y, 0, 0, 170, 125)] = -100
    hu[_ellipse(x, y, 0, 0, 150, 105)] = 45
    hu[_ellipse(x, y, 0, 5, 140, 95)] = -80  # intra-abdominal fat
    hu[_ellipse(x, y, -70, -15, 70 - 20 * t, 60)] = 60  # liver
    hu[_ellipse(x, y, 65, -25, 45, 35)] = 40  # stomach / spleen
    for side in (-1, 1):
        hu[_ellipse(x, y, side * 62, 45, 22, 28)] = 35  # kidneys
    for cx, cy in ((20, -50), (-20, 20), (50, 10), (0, -70)):
        hu[_ellipse(x, y, cx, cy, 16, 14)] = 30  # bowel loops
        hu[_ellipse(x, y, cx, cy - 6, 8, 5)] = -950  # gas
    hu[_ellipse(x, y, 15, 30, 11, 11)] = 45  # aorta
    for angle in np.radians([-130, -110, 110, 130]):  # lowest ribs
        hu[_ellipse(x, y, 152 * np.sin(angle), -108 * np.cos(angle), 6, 4)] = 650
    _spine(hu, x, y, 60)
    _table(hu, x, y, 128)
    return hu


def pelvis_slice(x: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
    """Axial pelvis: body 360 × 240 mm around a closed bony pelvic ring of head size (≈ 150 × 125 mm inside)."""
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    hu[_ellipse(x, y, 0, 0, 180, 120)] = -100
    hu[_ellipse(x, y, 0, 0, 165, 105)] = 45
    hu[_ring(x, y, 0, 5, 85, 72, 9)] = 650  # ilium, ischium, pubis, sacrum: one ring in this phantom
    hu[_ellipse(x, y, 0, -15, 35, 28)] = 8  # bladder
    hu[_ellipse(x, y, 0, 35, 20, 16)] = 35  # rectum
    for side in (-1, 1):
        hu[_ellipse(x, y, side * 120, 10, 24, 24)] = 700  # femoral heads
        hu[_ellipse(x, y, side * 120, 10, 20, 20)] = 280
    _table(hu, x, y, 122)
    return hu


def thighs_slice(x: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
    """Both thighs, 150 mm across each, femur cortex ring with fatty marrow."""
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    for side in (-1, 1):
        cx = side * 90
        hu[_ellipse(x, y, cx, 0, 75, 72)] = -100
        hu[_ellipse(x, y, cx, 0, 65, 62)] = 50
        hu[_ellipse(x, y, cx - side * 12, 10, 15, 15)] = 1200
        hu[_ellipse(x, y, cx - side * 12, 10, 9, 9)] = -60
    _table(hu, x, y, 80)
    return hu


def water_phantom_slice(x: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
    """QA water phantom: 200 mm water cylinder in a 6 mm acrylic wall."""
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    hu[_ellipse(x, y, 0, 0, 106, 106)] = 120
    hu[_ellipse(x, y, 0, 0, 100, 100)] = 0
    return hu


PHANTOMS = {"chest": chest_slice, "abdomen": abdomen_slice, "pelvis": pelvis_slice, "thighs": thighs_slice,
            "water phantom": water_phantom_slice}


def body_volume(kind: str, slices: int = 20, pixel_mm: float = 0.7, seed: int = 0) -> np.ndarray:
    """HU volume of one phantom, with the correlated noise of a CT image."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x, y = _grid(pixel_mm)
    volume = np.stack([PHANTOMS[kind](x, y, i / max(1, slices - 1)) for i in range(slices)])
    volume = ndimage.gaussian_filter(volume, sigma=(0, 0.7, 0.7))
    volume += ndimage.gaussian_filter(rng.normal(size=volume.shape).astype(np.float32), (0, 0.6, 0.6)) * 25.0
    return volume


def write_series(hu: np.ndarray, folder: Path, pixel_mm: float, slice_mm: float = 5.0, body_part: str | None = None,
                 description: str = "Chest 5mm", modality: str = "CT") -> list[Path]:
    """A CT Image Storage series, one file per slice (unsigned, intercept −1024), optional BodyPartExamined."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    origin = -(hu.shape[1] - 1) / 2 * pixel_mm
    paths = []
    for index, slice_hu in enumerate(hu):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.ImageType, ds.ConvolutionKernel = modality, ["ORIGINAL", "PRIMARY", "AXIAL"], "STANDARD"
        ds.SeriesDescription, ds.PatientID, ds.PatientName = description, "PHANTOM", "Phantom^Body"
        ds.StudyDate = ds.SeriesDate = dt.date(2026, 1, 1).strftime("%Y%m%d")
        if body_part is not None:
            ds.BodyPartExamined = body_part
        ds.InstanceNumber = index + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [f"{origin:.3f}", f"{origin:.3f}", f"{index * slice_mm:.3f}"]
        ds.SliceThickness, ds.PixelSpacing = f"{slice_mm:.3f}", [f"{pixel_mm:.4f}"] * 2
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = np.clip(np.rint(slice_hu + 1024), 0, 4095).astype(np.uint16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# --- the check on volumes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(PHANTOMS))
def test_body_phantoms_are_not_head(kind: str) -> None:
    result = head_ct.check_volume(body_volume(kind), (0.7, 0.7))
    assert not result.is_head, result.summary()
    assert result.head_slices == 0, [f for f in result.findings if f.head]
    if kind in ("chest", "abdomen", "pelvis"):
        assert result.body_slices == result.examined, "every trunk slice is a body cross-section"


def test_pelvic_ring_of_head_size_is_refused_as_body() -> None:
    """The bony pelvis is a ring of head size around soft tissue: only the body-size outline tells it apart."""
    result = head_ct.check_volume(body_volume("pelvis", slices=6), (0.7, 0.7))
    ring = [f for f in result.findings if f.ring_coverage >= head_ct.MIN_RING_COVERAGE]
    assert ring and all(head_ct.SKULL_LENGTH_MM[0] <= f.length_mm <= head_ct.SKULL_LENGTH_MM[1] for f in ring)
    assert all(f.body and not f.head for f in result.findings)
    assert "body cross-section" in result.summary()


THIN_STUDY = (11, 0)  # (seed, study number) the generator draws as a thin-slice series (1.25 mm, 768², 119 slices)


@pytest.fixture(scope="module")
def thin_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic.__main__ import main

    root = tmp_path_factory.mktemp("thin")
    seed, number = THIN_STUDY
    main(["--out", str(root), "--studies", "1", "--first", str(number), "--seed", str(seed), "--workers", "1"])
    return root / f"study_{seed:03d}_{number:05d}" / "ct"


def test_head_studies_pass(positive_study: Path, negative_study: Path, thin_study: Path) -> None:
    """The generator's studies pass, with a good share of their slices seen as head slices."""
    for folder in (positive_study / "ct", negative_study / "ct", thin_study):
        series = load_single_series(folder)
        result = head_ct.check_series(series, str(folder))
        print(f"{folder.parent.name}: {series.hu.shape}, {series.slice_spacing:.2f} mm slices: {result.summary()}")
        assert result.is_head and result.body_slices == 0
        assert result.head_slices >= 0.3 * result.examined, result.summary()


def test_partial_thin_and_noisy_head_volumes_pass(positive_study: Path) -> None:
    """Series that cover only the upper, lower or middle part of the head; more slices than are examined; the
    noise of thin slices with a sharp kernel."""
    series = load_single_series(positive_study / "ct")
    hu, spacing = series.hu, series.pixel_spacing
    half = hu.shape[0] // 2
    for part in (hu[:half], hu[half:], hu[half - 2 : half + 2]):
        assert head_ct.check_volume(part, spacing).is_head, head_ct.check_volume(part, spacing).summary()
    thin = np.repeat(hu, 8, axis=0)  # 8 × the slices (same anatomy): only MAX_EXAMINED_SLICES are examined
    result = head_ct.check_volume(thin, spacing)
    assert result.is_head and result.examined == head_ct.MAX_EXAMINED_SLICES and result.slices == thin.shape[0]
    noise = np.random.default_rng(0).normal(0.0, 30.0, hu.shape).astype(np.float32)  # σ 30 HU: 0.625 mm, sharp
    assert head_ct.check_volume(hu + noise, spacing).is_head


def test_hemicraniectomy_passes(positive_study: Path) -> None:
    """150° of the skull removed on one side over the upper 60 % of the slices (a decompressive craniectomy)."""
    series = load_single_series(positive_study / "ct")
    hu = series.hu.copy()
    rows, cols = np.mgrid[: hu.shape[1], : hu.shape[2]]
    for image in hu[int(0.35 * len(hu)) : int(0.95 * len(hu))]:
        centre_row, centre_col = np.argwhere(image > -300).mean(axis=0)
        angle = np.degrees(np.arctan2(rows - centre_row, cols - centre_col))
        radius = np.hypot(rows - centre_row, cols - centre_col) * series.pixel_spacing[0]
        image[(np.abs(angle) < 75) & (radius > 40) & (image > 250)] = 35.0  # the bone flap is gone
    result = head_ct.check_volume(hu, series.pixel_spacing)
    assert result.is_head, result.summary()


def _finding(index: int, kind: str) -> head_ct.SliceFinding:
    if kind == "head":
        return head_ct.SliceFinding(index, 180.0, 0.0, 1.0, 160.0, 125.0, 31.0, 1.0)
    if kind == "body":
        return head_ct.SliceFinding(index, 330.0, 120.0, 0.4, 270.0, 150.0, 30.0, 0.55)
    return head_ct.SliceFinding(index, 90.0, 0.0, 0.0, 0.0, 0.0, float("nan"), 0.0)  # vertex, neck, ...


@pytest.mark.parametrize("kinds, is_head, says", [
    ({"head": 20, "other": 10}, True, "on 20 of 30 slices"),
    ({"head": 3, "other": 37}, True, "on 3 of 40 slices"),  # a few head slices suffice ...
    ({"head": 2, "other": 38}, False, "fewer than the 3 needed"),
    ({"head": 1, "other": 3}, True, "on 1 of 4 slices"),  # ... or 15 % of a short series
    ({"head": 12, "body": 24, "other": 12}, False, "24 of 48 slices show a body cross-section"),  # whole-body CT
    ({"head": 16, "body": 6, "other": 8}, True, "on 16 of 30 slices"),  # head and neck CT down to the shoulders
    ({"other": 20}, False, "no skull ring enclosing brain at head size"),
])
def test_series_verdict(kinds: dict[str, int], is_head: bool, says: str) -> None:
    order = [kind for kind, count in kinds.items() for _ in range(count)]
    result = head_ct.HeadCheck(len(order), [_finding(i, kind) for i, kind in enumerate(order)])
    assert result.is_head is is_head and says in result.summary(), result.summary()


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_body_part_examined() -> None:
    def header(value: str | None) -> Dataset:
        ds = Dataset()
        if value is not None:
            ds.BodyPartExamined = value
        return ds

    for value in (None, "", "HEAD", "head", "BRAIN", "SKULL", "HEADNECK", "Head_Neck", "KOPF", "CTA", "SINUS"):
        assert head_ct.body_part_refusal(header(value)) is None, value
    for value in ("CHEST", "chest", "ABDOMEN", "PELVIS", "ABDOMENPELVIS", "CHEST_ABD_PELVIS", "LUNG", "EXTREMITY",
                  "KNEE", "LSPINE", "WHOLEBODY", "NECK"):
        assert head_ct.body_part_refusal(header(value)) == f"not a head CT: BodyPartExamined {value!r}", value


def test_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    def enabled(value: str | None) -> bool:
        if value is None:
            monkeypatch.delenv(head_ct.ENV_SWITCH, raising=False)
        else:
            monkeypatch.setenv(head_ct.ENV_SWITCH, value)
        return Settings.from_env().head_check

    assert enabled(None) and enabled("1")
    assert not enabled("0") and not enabled("false")
    with pytest.raises(ValueError, match="ICH_HEAD_CHECK"):
        enabled("maybe")


def test_check_cost_is_small(positive_study: Path, record_property) -> None:
    """Measured, not asserted against a clock: the time goes into the test report (`-rP` or junit)."""
    series = load_single_series(positive_study / "ct")
    started = time.perf_counter()
    result = head_ct.check_volume(series.hu, series.pixel_spacing)
    seconds = time.perf_counter() - started
    record_property("head_check_seconds", round(seconds, 4))
    print(f"head CT check: {seconds * 1000:.0f} ms for {series.hu.shape[0]} slices of {series.hu.shape[1]}²")
    assert result.is_head


def test_head_series_is_chosen_over_a_chest_series(negative_study: Path, tmp_path: Path) -> None:
    """A study with a chest series (more slices) and a head series: the body part steers the choice."""
    from ichseg.series_selection import load_chosen_series

    folder = tmp_path / "study"
    write_series(body_volume("chest", slices=40)[:, ::2, ::2], folder / "chest", 1.4, body_part="CHEST")
    for path in (negative_study / "ct").glob("*.dcm"):
        (folder / "head").mkdir(exist_ok=True)
        (folder / "head" / path.name).write_bytes(path.read_bytes())
    head_uid = str(pydicom.dcmread(next((folder / "head").iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    selection, series = load_chosen_series(folder, _rules(), head_check=True)
    assert selection.series_uid == head_uid and series.series_uid == head_uid
    assert any("BodyPartExamined 'CHEST'" in why for why in selection.rejected.values())
    assert "head CT check" in selection.reason


def test_loader_refuses_a_chest_unless_switched_off(tmp_path: Path) -> None:
    from ichseg.series_selection import load_chosen_series

    chest = body_volume("chest", slices=4)[:, ::2, ::2]
    write_series(chest, tmp_path / "labelled", 1.4, body_part="CHEST")
    write_series(chest, tmp_path / "unlabelled", 1.4)
    with pytest.raises(head_ct.NotHeadCTError, match="BodyPartExamined 'CHEST'"):
        load_chosen_series(tmp_path / "labelled", _rules(), head_check=True)
    with pytest.raises(
        head_ct.NotHeadCTError, match=f"in {tmp_path / 'unlabelled'}: not a head CT: 4 of 4 slices show a body"
    ):
        load_chosen_series(tmp_path / "unlabelled", _rules(), head_check=True)
    for folder in ("labelled", "unlabelled"):
        selection, series = load_chosen_series(tmp_path / folder, _rules(), head_check=False)
        assert series.hu.shape[0] == 4 and "head CT check" not in selection.reason


def test_refusal_lists_every_series(tmp_path: Path) -> None:
    """No candidate left: the message says why each series was not taken, body part included."""
    from ichseg.series_selection import load_chosen_series

    small = body_volume("chest", slices=3)[:, ::2, ::2]
    write_series(small, tmp_path / "chest", 1.4, body_part="CHEST")
    write_series(small, tmp_path / "mr", 1.4, description="T1", modality="MR")
    with pytest.raises(DicomInputError) as refused:
        load_chosen_series(tmp_path, _rules(), head_check=True)
    assert "fails modality is CT" in str(refused.value) and "BodyPartExamined 'CHEST'" in str(refused.value)


# --- the application -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app_environment(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config")))
        patch.delenv("ICH_HEAD_CHECK", raising=False)
        yield patch


def run_app(input_folder: Path, output_folder: Path) -> int:
    from test_app import run_app as run_bundled_app

    return run_bundled_app(input_folder, output_folder)


def nothing_written(output_folder: Path) -> bool:
    from test_app import nothing_written as nothing_in

    return nothing_in(output_folder)


@pytest.mark.parametrize("kind", ["chest", "abdomen"])
def test_app_refuses_body_ct(kind: str, tmp_path: Path, app_environment, capfd: pytest.CaptureFixture[str]) -> None:

    folder = tmp_path / kind
    write_series(body_volume(kind), folder, 0.7, description=f"{kind} 5mm")  # no BodyPartExamined
    assert run_app(folder, tmp_path / "out") == cli.EXIT_INPUT
    err = capfd.readouterr().err
    assert "input refused" in err and "not a head CT" in err and "body cross-section" in err
    assert f"{kind} 5mm" in err and str(folder) in err and "ICH_HEAD_CHECK=0" in err
    assert nothing_written(tmp_path / "out"), "no SEG, no report, no staging folder"


def test_app_refuses_head_study_labelled_chest(negative_study: Path, tmp_path: Path, app_environment,
                                              capfd: pytest.CaptureFixture[str]) -> None:

    folder = tmp_path / "labelled"
    folder.mkdir()
    for path in (negative_study / "ct").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = "CHEST"
        ds.save_as(folder / path.name)
    assert run_app(folder, tmp_path / "out") == cli.EXIT_INPUT
    assert "not a head CT: BodyPartExamined 'CHEST'" in capfd.readouterr().err
    assert nothing_written(tmp_path / "out")


@pytest.mark.parametrize("value, expected", [("", True), ("1", True), ("0", False), ("no", False)])
def test_switch_reaches_the_loader(value: str, expected: bool, tmp_path: Path, app_environment) -> None:
    from app import ICHSegmentationApp

    app_environment.setenv("ICH_HEAD_CHECK", value)
    try:
        application = ICHSegmentationApp(
            ["python", "app.py", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(tmp_path)]
        )
        application.compose()
    finally:
        app_environment.delenv("ICH_HEAD_CHECK")
    (loader,) = [node for node in application.graph.get_nodes() if node.name == "dicom_series_loader"]
    assert loader.head_check is expected


def test_bad_switch_is_a_usage_error(tmp_path: Path, app_environment, capfd: pytest.CaptureFixture[str]) -> None:

    app_environment.setenv("ICH_HEAD_CHECK", "maybe")
    try:
        assert run_app(tmp_path, tmp_path / "out") == cli.EXIT_USAGE
    finally:
        app_environment.delenv("ICH_HEAD_CHECK")
    assert "ICH_HEAD_CHECK='maybe'" in capfd.readouterr().err
    assert nothing_written(tmp_path / "out")


def _rules():
    from ichseg.series_selection import SelectionRules

    return SelectionRules.load(Path(__file__).resolve().parents[1] / "series_selection_rules.json")
