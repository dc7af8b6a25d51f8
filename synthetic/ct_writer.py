"""Write a synthetic HU volume as a CT Image Storage series that passes dciodvfy.

Variation a PACS shows: WindowCenter/Width of several presets (brain, subdural, stroke, bone; one value or
brain plus a second preset), absent in some files or in a whole series; slice thickness, matrix and
reconstruction kernel as the acquisition drew them; signed or unsigned pixel
data (signed series carry a PixelPaddingValue outside the circular field of view); file names that do not
give the slice order; instance numbers ascending or descending.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from synthetic.volume import Acquisition

INTERCEPT = -1024.0
PADDING_STORED = -2000  # signed series: stored value of pixels outside the reconstruction circle


@dataclass
class StudyIdentity:
    """Patient/study/series identifiers of one synthetic study, deterministic from its seed."""

    number: int
    seed: int

    def uid(self, *parts: object) -> str:
        return generate_uid(entropy_srcs=["ich-map-synthetic", str(self.seed), str(self.number), *map(str, parts)])

    @property
    def study_uid(self) -> str:
        return self.uid("study")

    @property
    def series_uid(self) -> str:
        return self.uid("series")

    @property
    def frame_of_reference_uid(self) -> str:
        return self.uid("frame-of-reference")

    @property
    def patient_id(self) -> str:
        return f"SYN{self.seed:03d}{self.number:05d}"


def _base_dataset(identity: StudyIdentity, acquisition: Acquisition, when: dt.datetime) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = f"A{identity.number:07d}"
    ds.Modality = "CT"
    ds.Manufacturer = "ICH-MAP synthetic phantom"
    ds.InstitutionName = "Synthetic data, not a patient"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD WO CONTRAST"
    ds.SeriesDescription = f"Head {acquisition.slice_thickness:g}mm {acquisition.kernel.capitalize()}"
    ds.ManufacturerModelName = "Phantom generator"
    ds.PatientName = f"Synthetic^Head^{identity.number:05d}"
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = f"{acquisition.slice_thickness:g}"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "250"
    ds.ReconstructionDiameter = f"{acquisition.matrix * acquisition.pixel_spacing:.2f}"
    ds.GantryDetectorTilt = "0"
    ds.ConvolutionKernel = acquisition.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = identity.study_uid
    ds.SeriesInstanceUID = identity.series_uid
    ds.StudyID = str(identity.number)
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = acquisition.matrix
    ds.PixelSpacing = [f"{acquisition.pixel_spacing:.6f}"] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.RescaleIntercept = f"{INTERCEPT:.0f}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def write_ct_series(
    hu: np.ndarray, acquisition: Acquisition, identity: StudyIdentity, folder: Path, rng: np.random.Generator
) -> list[Path]:
    """Write one file per slice into ``folder`` (random names); returns the paths in ascending-z order."""
    folder.mkdir(parents=True, exist_ok=True)
    when = dt.datetime(2026, 1, 1, 8) + dt.timedelta(minutes=int(rng.integers(0, 60 * 24 * 300)))
    signed = bool(rng.random() < 0.3)
    descending = bool(rng.random() < 0.3)
    window_missing = np.asarray(rng.random(hu.shape[0]) < 0.15)
    windows = acquisition.windows
    x0, y0 = acquisition.first_pixel_xy
    field_of_view = _outside_circle(acquisition.matrix)
    paths = []
    for index, slice_hu in enumerate(hu):
        ds = _base_dataset(identity, acquisition, when)
        ds.SOPInstanceUID = identity.uid("instance", index)
        ds.InstanceNumber = (hu.shape[0] - index) if descending else (index + 1)
        z = acquisition.slice_z(index)
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{z:.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        if windows and not window_missing[index]:
            if len(windows) == 1:
                ds.WindowCenter, ds.WindowWidth = f"{windows[0][0]:g}", f"{windows[0][1]:g}"
            else:
                ds.WindowCenter = [f"{centre:g}" for centre, _ in windows]
                ds.WindowWidth = [f"{width:g}" for _, width in windows]
        stored = np.clip(np.rint(slice_hu - INTERCEPT), 0, 4095)
        if signed:
            ds.PixelRepresentation = 1
            stored = stored.astype(np.int16)
            stored[field_of_view] = PADDING_STORED
            ds.PixelPaddingValue = PADDING_STORED
        else:
            ds.PixelRepresentation = 0
            stored = stored.astype(np.uint16)
            stored[field_of_view] = 0
        ds.PixelData = stored.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = folder / f"{rng.integers(0, 2**63):016x}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _outside_circle(matrix: int) -> np.ndarray:
    """Pixels outside the reconstruction circle inscribed in the matrix."""
    centre = (matrix - 1) / 2.0
    rows, cols = np.ogrid[:matrix, :matrix]
    return (rows - centre) ** 2 + (cols - centre) ** 2 > (matrix / 2.0) ** 2
