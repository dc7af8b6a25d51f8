"""Make one synthetic study on disk: CT series, label volume, BHX-style boxes and a ground-truth SEG."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichseg.boxes import lesion_boxes, lesion_gap_pixels
from ichseg.dicom_seg import SegAuthor, SegmentMask, build_seg, subtype_segments, write_atomically
from ichseg.dicom_series import load_single_series
from ichseg.subtypes import SUBTYPES
from synthetic.ct_writer import StudyIdentity, write_ct_series
from synthetic.volume import SyntheticHead

SPLITS = ("train",) * 14 + ("val",) * 3 + ("test",) * 3  # study number modulo 20 → split (70/15/15)
BOX_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "labelName", "x", "y", "width", "height")
GROUND_TRUTH_AUTHOR = SegAuthor("Synthetic phantom ground truth", "1", automatic=False, manufacturer="ICH-MAP")


def split_of(number: int) -> str:
    """Study-level split, fixed by the study number so that adding studies never moves old ones."""
    return SPLITS[number % len(SPLITS)]


def study_id(seed: int, number: int) -> str:
    """The study's folder name: unique across sets, since the seed is part of it."""
    return f"study_{seed:03d}_{number:05d}"


@dataclass
class StudyRecord:
    """What the manifest and the box CSV need to know about one generated study."""

    study_id: str
    split: str
    slices: int
    subtypes: list[str]
    hemorrhage_ml: float
    box_rows: list[tuple[str, ...]]


def make_study(number: int, seed: int, root: Path, max_slices: int | None = None) -> StudyRecord:
    """Render study ``number`` of the set ``seed`` into ``root/<study_id>/`` and return its record.

    ``max_slices`` caps the series length: a thin-slice acquisition that would exceed it is drawn at the
    thinnest listed thickness whose full head coverage fits (None: no cap).
    """
    rng = np.random.default_rng([seed, number])
    head = SyntheticHead.sample(rng, max_slices)
    hu, labels, tissues = head.render(rng)
    identity = StudyIdentity(number, seed)
    name = study_id(seed, number)
    folder = root / name
    shutil.rmtree(folder / "ct", ignore_errors=True)  # regenerated: no slice of an earlier draw beside the new ones
    write_ct_series(hu, head.acquisition, identity, folder / "ct", rng)

    series = load_single_series(folder / "ct")  # read back: the ground truth is aligned to what readers see
    np.savez_compressed(
        folder / "labels.npz", labels=labels, tissues=tissues,
        sop_instance_uids=[str(h.SOPInstanceUID) for h in series.headers],
    )
    segments = subtype_segments(labels) or [SegmentMask("Intracranial hemorrhage", "any", labels > 0)]
    seg = build_seg(series.headers, segments, GROUND_TRUTH_AUTHOR, "Ground truth (synthetic)")
    write_atomically(seg, folder / "ground_truth_seg.dcm")

    sop_uids = [str(h.SOPInstanceUID) for h in series.headers]
    rows = lesion_box_rows(identity.study_uid, identity.series_uid, sop_uids, labels, series.pixel_spacing)
    present = sorted({SUBTYPES[v - 1] for v in np.unique(labels) if v})
    return StudyRecord(name, split_of(number), len(series.headers), present,
                       float((labels > 0).sum() * series.voxel_volume_ml), rows)


def lesion_box_rows(study_uid: str, series_uid: str, sop_uids: list[str], labels: np.ndarray,
                    pixel_spacing: tuple[float, float]) -> list[tuple[str, ...]]:
    """BHX-style rows (``BOX_COLUMNS``) of a labelled series: one box per lesion (``lesion_boxes``, fragments within
    ``LESION_GAP_MM`` grouped) per slice."""
    rows: list[tuple[str, ...]] = []
    gap = lesion_gap_pixels(pixel_spacing)
    for sop_uid, label_slice in zip(sop_uids, labels, strict=True):
        for subtype, (x0, y0, x1, y1) in lesion_boxes(label_slice, gap):
            rows.append((
                study_uid, series_uid, sop_uid, SUBTYPES[subtype].capitalize(),
                f"{x0:.1f}", f"{y0:.1f}", f"{x1 - x0:.1f}", f"{y1 - y0:.1f}",
            ))
    return rows
