"""Read a CT series into a HU volume sorted along the slice normal, refusing geometry we cannot trust.

Used by the inference loader, the dataset converter and the evaluation, so that every stage sees slices in
the same order and the same HU scale. Problems are raised as ``DicomInputError`` naming the file and the
problem: a wrong SEG is worse than no SEG.

A series arrives as single-frame images (one file per slice) or as one multi-frame image (Enhanced CT, Legacy
Converted Enhanced CT: one file, one frame per slice, geometry and HU scale in functional groups). Each frame of
a multi-frame image becomes a ``FrameHeader``: a single-frame header made of the file's top-level attributes and
the frame's functional groups, so that the selection rules, the geometry checks, HU conversion and windowing read
both kinds the same way, by the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ichseg.windowing import window_from_header

logger = logging.getLogger(__name__)

AIR_HU = -1024.0
MAX_HU = 3071.0
TILT_TOLERANCE_DEGREES = 1.0
SPACING_TOLERANCE = 0.1  # relative deviation of one gap from the median gap
#: Functional groups (PS3.3 C.7.6.16, C.8.15.3) whose attributes a single-frame CT image holds at its top level:
#: position, orientation, pixel spacing and slice thickness, rescale, window, kernel, and what a legacy converter
#: kept of the source images' other attributes. A frame's own groups come before the shared ones; an attribute
#: the image holds at its top level is never replaced.
FRAME_GROUPS = (
    "PlanePositionSequence",
    "PlaneOrientationSequence",
    "PixelMeasuresSequence",
    "PixelValueTransformationSequence",
    "FrameVOILUTSequence",
    "CTReconstructionSequence",
    "UnassignedPerFrameConvertedAttributesSequence",
    "UnassignedSharedConvertedAttributesSequence",
)
MULTIFRAME_ONLY = ("NumberOfFrames", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


class DicomInputError(ValueError):
    """An input the pipeline must not process; the message names the file or series and the problem."""


@dataclass
class CTSeries:
    """One CT series as a HU volume, slices ascending along the normal of their orientation."""

    hu: np.ndarray  # (slices, rows, columns) float32 Hounsfield units
    headers: list[Dataset]  # one per slice, same order, pixel data removed (a FrameHeader per multi-frame frame)
    files: list[Path]  # the file of each slice (a multi-frame file once per frame)
    windows: list[tuple[float, float]]  # (centre, width) per slice, header or the brain-window fallback
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    slice_spacing: float  # mm between consecutive slice centres along the normal
    orientation: np.ndarray = field(repr=False)  # ImageOrientationPatient (6,)
    positions: np.ndarray = field(repr=False)  # ImagePositionPatient per slice (slices, 3)

    @property
    def series_uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)

    @property
    def voxel_volume_ml(self) -> float:
        return self.pixel_spacing[0] * self.pixel_spacing[1] * self.slice_spacing / 1000.0


class FrameHeader(Dataset):
    """One frame of a multi-frame image as a single-frame header (see the module's docstring).

    ``multiframe``: the image's header without pixel data, which a SEG references; ``frame_number``: 1-based, as
    DICOM counts frames (ReferencedFrameNumber).
    """

    def __init__(self, multiframe: Dataset, frame_number: int) -> None:
        super().__init__()
        self.multiframe = multiframe
        self.frame_number = frame_number


def is_multiframe(dataset: Dataset) -> bool:
    """Enhanced and Legacy Converted Enhanced images describe their frames in per-frame functional groups."""
    return "PerFrameFunctionalGroupsSequence" in dataset


def frame_headers(image: Dataset, path: Path) -> list[FrameHeader]:
    """One ``FrameHeader`` per frame of a multi-frame image, in frame order (elements shared with ``image``:
    read them, do not change them)."""
    frames = image.PerFrameFunctionalGroupsSequence
    if len(frames) != int(image.get("NumberOfFrames") or 0):
        raise DicomInputError(
            f"{path}: {len(frames)} per-frame functional groups for NumberOfFrames {image.get('NumberOfFrames')}"
        )
    shared = (image.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    top_level = [element for element in image if element.keyword not in MULTIFRAME_ONLY]
    headers = []
    for number, own in enumerate(frames, 1):
        header = FrameHeader(image, number)
        for element in top_level:
            header.add(element)
        for groups in (own, shared):
            for keyword in FRAME_GROUPS:
                for element in (groups.get(keyword) or [Dataset()])[0]:
                    if element.tag not in header:
                        header.add(element)
        headers.append(header)
    return headers


def slice_headers(dataset: Dataset, path: Path) -> Sequence[Dataset]:
    """The header of each slice a file holds: itself, or one per frame of a multi-frame image."""
    return frame_headers(dataset, path) if is_multiframe(dataset) else [dataset]


def slice_name(path: Path, header: Dataset) -> str:
    """How messages name a slice: its file, and its frame in a multi-frame file."""
    return f"{path} frame {header.frame_number}" if isinstance(header, FrameHeader) else str(path)


def read_header(path: Path) -> Dataset:
    """DICOM header of one file (no pixel data); DicomInputError naming the file if it is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DicomInputError(f"{path}: not a readable DICOM file ({error})") from error


def group_series(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """All DICOM files under ``folder`` grouped by SeriesInstanceUID (headers only, recursive).

    Files that are not DICOM at all (no DICM preamble) are skipped; so are DICOM objects that are not images
    (a DICOMDIR, structured reports, key-object selections, presentation states: no Rows), which a PACS or a CD
    export often puts beside the images, each with a log line. A file that claims to be DICOM but cannot be parsed
    is an error, because silently dropping a slice would leave a gap. A multi-frame image gives one entry per
    frame (its ``FrameHeader``), so a series has as many entries as slices whichever way it was sent.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomInputError(f"{folder}: input folder does not exist")
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if not _looks_like_dicom(path):
            continue
        header = read_header(path)
        if "Rows" not in header:
            logger.info("skipped %s: %s, not an image", path, _sop_class_name(header))
            continue
        uid = str(header.get("SeriesInstanceUID", ""))
        if not uid:
            raise DicomInputError(f"{path}: DICOM file without SeriesInstanceUID")
        series.setdefault(uid, []).extend((path, h) for h in slice_headers(header, path))
    if not series:
        raise DicomInputError(f"{folder}: no DICOM files found")
    return series


def _sop_class_name(header: Dataset) -> str:
    """The object's SOP class by name (a DICOMDIR names it in its file meta only)."""
    uid = header.get("SOPClassUID") or getattr(header, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
    return str(getattr(uid, "name", uid) or "no SOP class")


def _looks_like_dicom(path: Path) -> bool:
    """Part-10 files carry 'DICM' at byte 128; DICOMDIR-less raw datasets are not supported."""
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal of the slice plane: row direction × column direction."""
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def read_slices(path: Path) -> list[tuple[Dataset, np.ndarray]]:
    """Each slice of one file as (header without pixel data, HU image), in ``slice_headers`` order."""
    try:
        dataset = pydicom.dcmread(path)
    except Exception as error:
        raise DicomInputError(f"{path}: not a readable DICOM file ({error})") from error
    try:
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for truncated or undecodable pixel data
        raise DicomInputError(f"{path}: pixel data cannot be decoded ({error})") from error
    del dataset.PixelData
    headers = slice_headers(dataset, path)
    shape = (int(dataset.Rows), int(dataset.Columns))
    if stored.shape != (shape if len(headers) == 1 else (len(headers), *shape)):
        raise DicomInputError(
            f"{path}: expected {len(headers)} monochrome frame(s), got pixel array of shape {stored.shape}"
        )
    frames = stored.reshape(len(headers), *shape)
    return [(header, hu_image(frame, header)) for header, frame in zip(headers, frames, strict=True)]


def hu_image(stored: np.ndarray, header: Dataset) -> np.ndarray:
    """Stored pixel values → HU (rescale slope/intercept); padding and out-of-field pixels become air."""
    padding = np.zeros(stored.shape, dtype=bool)
    if "PixelPaddingValue" in header:
        low = int(header.PixelPaddingValue)
        high = int(header.get("PixelPaddingRangeLimit", low))
        padding = (stored >= min(low, high)) & (stored <= max(low, high))
    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    hu = stored.astype(np.float32) * slope + intercept
    hu[padding] = AIR_HU
    return np.clip(hu, AIR_HU, MAX_HU, out=hu)


def _vector(header: Dataset, keyword: str, size: int, where: str) -> np.ndarray:
    value = header.get(keyword)
    if value is None or len(value) != size:
        raise DicomInputError(f"{where}: {keyword} missing or malformed")
    return np.asarray([float(v) for v in value], dtype=np.float64)


def check_geometry(files: Sequence[Path], headers: Sequence[Dataset]) -> tuple[list[int], float, np.ndarray]:
    """Order of the slices along the normal, their spacing and orientation — or a DicomInputError.

    Refuses: mixed matrix sizes, mixed orientation, gantry tilt, duplicate positions, missing slices and
    uneven spacing; each message names the files (and frames) involved.
    """
    if len(headers) < 3:
        raise DicomInputError(f"series {headers[0].get('SeriesInstanceUID', '?')}: only {len(headers)} slice(s)")
    shapes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(shapes) > 1:
        raise DicomInputError(f"{files[0].parent}: mixed matrix sizes in one series: {sorted(shapes)}")
    names = [slice_name(p, h) for p, h in zip(files, headers, strict=True)]
    orientations = [_vector(h, "ImageOrientationPatient", 6, n) for n, h in zip(names, headers, strict=True)]
    for name, orientation in zip(names, orientations, strict=True):
        if not np.allclose(orientation, orientations[0], atol=1e-3):
            raise DicomInputError(f"{name}: ImageOrientationPatient differs from {names[0]} (mixed orientation)")
    normal = slice_normal(orientations[0])
    positions = np.stack([_vector(h, "ImagePositionPatient", 3, n) for n, h in zip(names, headers, strict=True)])
    distances = positions @ normal
    order = list(np.argsort(distances, kind="stable"))
    gaps = np.diff(distances[order])
    for index, gap in enumerate(gaps):
        if gap < 1e-3:
            raise DicomInputError(
                f"{names[order[index]]} and {names[order[index + 1]]}: "
                f"duplicate slice position {distances[order[index]]:.2f} mm"
            )
    spacing = float(np.median(gaps))
    for index, gap in enumerate(gaps):
        if abs(gap - spacing) > SPACING_TOLERANCE * spacing:
            kind = "missing slice(s)" if gap > spacing else "uneven spacing"
            raise DicomInputError(
                f"{names[order[index]]} → {names[order[index + 1]]}: "
                f"gap {gap:.2f} mm vs median {spacing:.2f} mm ({kind})"
            )
    steps = np.diff(positions[order], axis=0)
    cosines = np.abs(steps @ normal) / np.linalg.norm(steps, axis=1)
    tilt = float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
    if tilt > TILT_TOLERANCE_DEGREES:
        raise DicomInputError(
            f"{files[order[0]].parent}: slices are stacked {tilt:.1f}° off the slice normal (gantry tilt); "
            "reconstruct without tilt before sending"
        )
    return order, spacing, orientations[0]


def check_seg_sources(files: Sequence[Path], headers: Sequence[Dataset]) -> None:
    """A SEG references single-frame images or the frames of one multi-frame image, not a mix (highdicom's rule):
    refuse such a series before any model runs."""
    multiframe = sorted({str(p) for p, h in zip(files, headers, strict=True) if isinstance(h, FrameHeader)})
    count = len(set(files))
    if multiframe and count > 1:
        raise DicomInputError(
            f"{multiframe[0]}: multi-frame image in a series of {count} files; one series must be one multi-frame "
            "file or single-frame files"
        )


def _index_in_file(header: Dataset) -> int:
    """Where a slice's header stands in ``read_slices`` of its file."""
    return header.frame_number - 1 if isinstance(header, FrameHeader) else 0


def load_series(entries: Sequence[tuple[Path, Dataset]]) -> CTSeries:
    """Headers of one series (any order) → CTSeries with pixel data read, HU converted, geometry checked."""
    files = [Path(p) for p, _ in entries]
    headers = [h for _, h in entries]
    check_seg_sources(files, headers)
    order, spacing, orientation = check_geometry(files, headers)
    read = {path: read_slices(path) for path in dict.fromkeys(files)}  # each file once, all its frames
    files = [files[i] for i in order]
    slices = [read[path][_index_in_file(headers[i])] for path, i in zip(files, order, strict=True)]
    full_headers = [header for header, _ in slices]
    names = [slice_name(p, h) for p, h in zip(files, full_headers, strict=True)]
    pixel_spacing = _vector(full_headers[0], "PixelSpacing", 2, names[0])
    return CTSeries(
        hu=np.stack([hu for _, hu in slices]),
        headers=full_headers,
        files=files,
        windows=[window_from_header(h) for h in full_headers],
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
        slice_spacing=spacing,
        orientation=orientation,
        positions=np.stack(
            [_vector(h, "ImagePositionPatient", 3, n) for n, h in zip(names, full_headers, strict=True)]
        ),
    )


def load_single_series(folder: Path) -> CTSeries:
    """The one series of a folder (training and evaluation data: one series per study folder)."""
    series = group_series(folder)
    if len(series) != 1:
        raise DicomInputError(f"{folder}: expected one series, found {len(series)}")
    return load_series(next(iter(series.values())))
