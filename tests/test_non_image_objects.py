"""What a PACS or a CD export puts beside the images — a DICOMDIR, a structured report — is skipped, never fatal."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ichseg.dicom_series import group_series, load_single_series
from ichseg.series_selection import BUNDLED_RULES, SelectionRules, load_chosen_series

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def text_report(like: Dataset, path: Path) -> None:
    """A Basic Text SR in the same study (what a PACS often pushes along), written as a Part-10 file."""
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    report.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.SOPClassUID, report.SOPInstanceUID = BASIC_TEXT_SR, report.file_meta.MediaStorageSOPInstanceUID
    report.StudyInstanceUID, report.SeriesInstanceUID = like.StudyInstanceUID, generate_uid()
    report.PatientID, report.Modality, report.ValueType = like.PatientID, "SR", "CONTAINER"
    report.save_as(path, enforce_file_format=True)


@pytest.fixture()
def cd_export(positive_study: Path, tmp_path: Path) -> Path:
    """The positive study as a CD export: files renamed by pydicom's FileSet, a DICOMDIR, plus a text SR."""
    files = sorted((positive_study / "ct").glob("*.dcm"))
    fileset = FileSet()
    for path in files:
        fileset.add(str(path))
    export = tmp_path / "cd"
    fileset.write(export)
    text_report(load_single_series(positive_study / "ct").headers[0], export / "REPORT.dcm")
    return export


def test_dicomdir_and_report_are_skipped(cd_export: Path, positive_study: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    assert (cd_export / "DICOMDIR").is_file()
    caplog.set_level("INFO")
    groups = group_series(cd_export)
    assert len(groups) == 1, "only the CT series: the DICOMDIR and the SR are not series to choose from"
    assert len(next(iter(groups.values()))) == len(list((positive_study / "ct").glob("*.dcm")))
    assert "DICOMDIR: Media Storage Directory Storage, not an image" in caplog.text
    assert "REPORT.dcm: Basic Text SR Storage, not an image" in caplog.text
    rules = SelectionRules.load(BUNDLED_RULES)
    _, series = load_chosen_series(cd_export, rules, head_check=True)
    assert series.hu.shape == load_single_series(positive_study / "ct").hu.shape


def test_a_folder_of_only_non_images_is_refused_as_no_dicom(cd_export: Path, tmp_path: Path) -> None:
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(cd_export / "REPORT.dcm", only / "REPORT.dcm")
    with pytest.raises(Exception, match="no DICOM files found"):
        group_series(only)
