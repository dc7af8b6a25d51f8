"""A labelled study on disk, as training and evaluation read it (the synthetic generator's layout, or real data
laid out the same way):

    <data>/studies.csv               study_id, split (train / val / test), …
    <data>/<study_id>/ct/            the CT series (DICOM files)
    <data>/<study_id>/labels.npz     ``labels``: (N, rows, columns) uint8, 0 background, k+1 subtype k, in the
                                     slice order of ``load_single_series``

Here, not in ``training``, because the evaluation reads the same studies and must not depend on the training code.
The slices are windowed by ``ichseg.pipeline.window_series``, the app's own function, so both see served pixels.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichseg.boxes import Box, lesion_boxes, merge_boxes
from ichseg.dicom_series import CTSeries, load_single_series
from ichseg.pipeline import WindowedSeries, window_series

STUDIES_CSV = "studies.csv"
SERIES_FOLDER = "ct"
LABELS_FILE = "labels.npz"


@dataclass
class Study:
    """One labelled study: the series, its slices windowed as the app windows them, and the ground-truth labels."""

    study_id: str
    series: CTSeries
    windowed: WindowedSeries  # source grid (segmenter) and 512 grid (detector)
    labels: np.ndarray  # (N, rows, columns) uint8, 0 background, k+1 subtype k


def study_ids(data: Path, split: str) -> list[str]:
    """Study ids of one split from ``studies.csv``, in file order."""
    with (Path(data) / STUDIES_CSV).open(newline="") as handle:
        return [row["study_id"] for row in csv.DictReader(handle) if row["split"] == split]


def load_study(folder: Path, calibrate: bool = True) -> Study:
    """Read a study folder; refuses labels that do not match the series slice for slice. ``calibrate``: windowed
    at the reference calibration, as the app windows (``ichseg.pipeline.window_series``)."""
    folder = Path(folder)
    series = load_single_series(folder / SERIES_FOLDER)
    labels = np.load(folder / LABELS_FILE)["labels"]
    if labels.shape != series.hu.shape:
        raise ValueError(f"{folder}: labels {labels.shape} do not match the series {series.hu.shape}")
    return Study(folder.name, series, window_series(series, calibrate), labels)


def ground_truth_box(label_slice: np.ndarray) -> Box | None:
    """The merged box of all lesions of a slice — what inference builds from the detector's boxes."""
    return merge_boxes(labelled.box for labelled in lesion_boxes(label_slice))
