"""DICOM SEG (highdicom, uncompressed BINARY) for hemorrhage masks, written atomically.

One builder for the ground-truth SEGs of the synthetic studies and the application's output, so both carry
the same coding: segmented property category "Morphologically abnormal structure", type "Hemorrhage"
(SNOMED CT 50960005); subtypes are named in the segment label and the anatomic region, because subtype
SNOMED codes found in third-party code contradict each other. Frames are kept for every source slice
(``omit_empty_frames=False``): viewers have misplaced SEGs with omitted frames. The source is either single-frame
images or one multi-frame image (``dicom_series.FrameHeader``); then each SEG frame references its source frame
by ReferencedFrameNumber.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ichseg.atomic_file import atomic_path
from ichseg.dicom_series import FrameHeader
from ichseg.subtypes import SUBTYPES

#: Recommended display colour of hemorrhage (sRGB; stored as CIELab), shared by all segments.
HEMORRHAGE_RGB = (220, 30, 30)

#: Functional groups highdicom reads from a multi-frame source's shared groups only.
SHARED_GEOMETRY = ("PlaneOrientationSequence", "PixelMeasuresSequence")

#: Region key of a segment holding hemorrhage of every subtype (the application's single segment).
ANY_HEMORRHAGE = "any"

ANATOMIC_REGION: dict[str, Code] = {
    "intraparenchymal": codes.SCT.Brain,
    "intraventricular": codes.SCT.BrainVentricle,
    "subarachnoid": codes.SCT.SubarachnoidSpace,
    "subdural": codes.SCT.DuraMater,
    "epidural": codes.SCT.DuraMater,
    ANY_HEMORRHAGE: codes.SCT.Brain,
}


@dataclass
class SegmentMask:
    """One segment: a label for people, the anatomic region key and a (slices, rows, cols) boolean mask."""

    label: str
    region: str
    mask: np.ndarray


@dataclass
class SegAuthor:
    """Who made the masks: an algorithm (name + version) or a manual reference standard."""

    name: str
    version: str
    automatic: bool
    manufacturer: str


def segment_description(number: int, segment: SegmentMask, author: SegAuthor) -> hd.seg.SegmentDescription:
    """Coded description of one segment (numbers start at 1)."""
    algorithm = None
    algorithm_types = hd.seg.SegmentAlgorithmTypeValues
    if author.automatic:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=author.name, version=author.version, family=codes.cid7162.ArtificialIntelligence
        )
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Hemorrhage,
        algorithm_type=algorithm_types.AUTOMATIC if author.automatic else algorithm_types.MANUAL,
        algorithm_identification=algorithm,
        anatomic_regions=[ANATOMIC_REGION[segment.region]],
        tracking_uid=hd.UID(),
        tracking_id=f"{segment.label} {number}",
        display_color=hd.color.CIELabColor.from_rgb(*HEMORRHAGE_RGB),
    )
    return description


def build_seg(
    source_headers: Sequence[Dataset],
    segments: Sequence[SegmentMask],
    author: SegAuthor,
    series_description: str,
    series_number: int = 300,
) -> hd.seg.Segmentation:
    """A BINARY SEG over all source slices (ascending along the normal, same order as the masks)."""
    source_images, pixel_array = _highdicom_sources(
        source_headers, np.stack([s.mask.astype(bool) for s in segments], axis=-1)
    )
    return hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(i + 1, s, author) for i, s in enumerate(segments)],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=author.manufacturer,
        manufacturer_model_name=author.name,
        software_versions=author.version,
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=False,
    )


def _highdicom_sources(headers: Sequence[Dataset], pixel_array: np.ndarray) -> tuple[list[Dataset], np.ndarray]:
    """What highdicom takes: single-frame images with the masks in the same order, or the one multi-frame image
    with the masks in its frame order (highdicom pairs mask i with frame i + 1)."""
    frames = [h for h in headers if isinstance(h, FrameHeader)]
    if not frames:
        return list(headers), pixel_array
    image = frames[0].multiframe
    numbers = [h.frame_number for h in frames]
    if len(frames) != len(headers) or any(h.multiframe is not image for h in frames) or sorted(numbers) != list(
        range(1, int(image.NumberOfFrames) + 1)
    ):
        raise ValueError("a SEG references single-frame images or every frame of one multi-frame image, once")
    in_frame_order = np.empty_like(pixel_array)
    in_frame_order[np.asarray(numbers) - 1] = pixel_array
    return [_with_shared_geometry(image)], in_frame_order


def _with_shared_geometry(image: Dataset) -> Dataset:
    """``image``, or a copy with orientation and pixel measures in its shared functional groups, where highdicom
    reads them; an image may repeat them in each frame instead (the loader checked that the orientations agree)."""
    shared = (image.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    missing = [keyword for keyword in SHARED_GEOMETRY if keyword not in shared]
    if not missing:
        return image
    image = copy.deepcopy(image)
    shared = copy.deepcopy(shared)
    for keyword in missing:
        shared[keyword] = copy.deepcopy(image.PerFrameFunctionalGroupsSequence[0][keyword])
    image.SharedFunctionalGroupsSequence = [shared]
    return image


def subtype_segments(labels: np.ndarray) -> list[SegmentMask]:
    """One segment per subtype present in a label volume (0 background, k+1 subtype k)."""
    return [
        SegmentMask(name.capitalize() + " hemorrhage", name, labels == index + 1)
        for index, name in enumerate(SUBTYPES)
        if np.any(labels == index + 1)
    ]


def write_atomically(dataset: Dataset, path: Path) -> None:
    """Save through a temporary file renamed into place, so a reader never sees a half-written SEG."""
    with atomic_path(path) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)
