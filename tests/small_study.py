"""Small synthetic studies for tests that need many or fast app runs (a few slices, a smaller matrix)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

from synthetic.ct_writer import StudyIdentity, write_ct_series
from synthetic.volume import SyntheticHead

SEED, NUMBER = 7, 5  # the head of conftest's positive study: intraparenchymal + epidural, 5 mm, no motion
MATRIX = 256


def generated_study(folder: Path, matrix: int = MATRIX, slices: int = 8) -> Path:
    """Synthetic study (SEED, NUMBER) scanned at ``matrix``² over the same field of view, cut to the ``slices``
    slices around its largest lesion and written as the generator writes a study (``ct/`` and ``labels.npz``)."""
    rng = np.random.default_rng([SEED, NUMBER])
    head = SyntheticHead.sample(rng)
    scanned = head.acquisition
    acquisition = dataclasses.replace(
        scanned, matrix=matrix, pixel_spacing=scanned.pixel_spacing * scanned.matrix / matrix
    )
    hu, labels, _ = dataclasses.replace(head, acquisition=acquisition).render(rng)
    centre = int((labels > 0).reshape(len(labels), -1).sum(axis=1).argmax())
    start = max(0, min(centre - slices // 2, len(labels) - slices))
    cut = dataclasses.replace(acquisition, slice_count=slices,
                              first_slice_w=acquisition.first_slice_w + start * acquisition.slice_thickness)
    write_ct_series(hu[start:start + slices], cut, StudyIdentity(NUMBER, SEED), folder / "ct", rng)
    np.savez_compressed(folder / "labels.npz", labels=labels[start:start + slices])
    return folder


def copy_as_new_study(series: Path, target: Path, patient_id: str, decompress: bool = False) -> tuple[str, str]:
    """Copy a CT series folder with new Study, Series and SOP Instance UIDs (a distinct study for a PACS),
    ``decompress``ed on request (what a PACS usually sends); returns (StudyInstanceUID, SeriesInstanceUID)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(series.iterdir()):
        ds = dcmread(path)
        if decompress:
            ds.decompress()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = patient_id
        ds.save_as(target / path.name, enforce_file_format=True)
    return study_uid, series_uid
