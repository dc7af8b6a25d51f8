"""Hemorrhage-free crops for the segmenter: the boxes a detector draws where there is no blood.

The paper trains the segmenter on crops of ground-truth boxes, so it only ever sees crops that hold blood. In the
product it also gets the detector's boxes on mimics (calcifications, dense sinuses, the skull base, streaks) and,
never having been shown an empty crop, paints them. These samples are the segmenter's counterpart of the
detector's mined hard negatives (``training.hard_negatives``): the boxes a detector puts on the hemorrhage-free
slices of the training studies, found and merged as the app finds and merges them (``ichseg.pipeline``), with
empty masks; the ones it is surest of come first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ichseg.atomic_file import write_bytes_atomically
from ichseg.boxes import DEFAULT_MERGE
from ichseg.detector import HemorrhageDetector
from ichseg.labelled_study import Study
from ichseg.pipeline import cluster_margin_px, merge, to_source_grid
from training.segmenter_data import CropOrigin, SliceSample, region_sample

RECORD_NAME = "negative_crops.json"  # in the run folder: the crops chosen, so that --resume cuts them again

Recorded = dict[str, list[tuple[CropOrigin, float]]]  # study id → (where, score) of each chosen crop


class NegativeCrops:
    """Callable for ``load_samples(negative_crops=...)``: a study → its hemorrhage-free crops, scored.

    A crop is the merge of a slice's boxes at the detector's extend confidence or above: every box the app could keep
    (at its operating point, or continuing a surer box on an adjacent slice), none weaker, so that the crops are sized
    as served crops are; its score is the slice's strongest box. With ``recorded`` set (a resumed run's choice,
    ``read_record``, which needs ``description`` and so the loaded detector) it cuts those crops again instead of
    running the detector.
    """

    def __init__(self, detector_dir: Path, input_kind: str, jitter: float) -> None:
        self.detector = HemorrhageDetector(detector_dir)  # detect() returns the boxes at its extend confidence or above
        self.input_kind = input_kind
        self.jitter = jitter
        self.recorded: Recorded | None = None
        self.cut_studies: set[str] = set()  # the recorded studies cut so far

    @property
    def description(self) -> str:
        """Which detector drew the boxes, and from which confidence."""
        return f"{self.detector.manifest.label}, boxes ≥ {self.detector.extend_confidence:g}"

    def __call__(self, study: Study) -> list[SliceSample]:
        if self.recorded is not None:
            crops = self.recorded.get(study.study_id, [])
            if any(not 0 <= origin.slice_index < len(study.labels) or study.labels[origin.slice_index].any()
                   for origin, _ in crops):
                raise SystemExit(f"{RECORD_NAME}: a recorded crop of {study.study_id} is not on a blood-free slice of "
                                 "it: the data changed since the run began; start a new run")
            self.cut_studies.add(study.study_id)
            return self.cut(study, crops)
        free = [index for index, label_slice in enumerate(study.labels) if not label_slice.any()]
        if not free:
            return []
        windowed = study.windowed
        found = self.detector.detect(windowed.detector_input(self.detector.input)[free])
        on_source = [[to_source_grid(d, windowed.scale) for d in slice_found] for slice_found in found]
        boxes = merge(on_source, DEFAULT_MERGE, cluster_margin_px(study.series.pixel_spacing))  # as the app merges
        return self.cut(study, [
            (CropOrigin(study.study_id, index, box), max(d.confidence for d in slice_found))
            for index, slice_found, slice_boxes in zip(free, on_source, boxes, strict=True)
            for box in slice_boxes
        ])

    def check_all_recorded_were_cut(self) -> None:
        """After loading: a recorded study that was not loaded means the training set changed since the record."""
        missing = sorted(set(self.recorded or {}) - self.cut_studies)
        if missing:
            raise SystemExit(f"{RECORD_NAME}: recorded crops of {len(missing)} studies not in this training set "
                             f"({', '.join(missing[:3])}): the data changed since the run began; start a new run")

    def cut(self, study: Study, crops: list[tuple[CropOrigin, float]]) -> list[SliceSample]:
        """The samples of these crops of ``study``, with empty masks (their slices hold no blood)."""
        source = study.windowed.source_input(self.input_kind)
        return [region_sample(source[origin.slice_index], study.labels[origin.slice_index], origin.box, self.jitter,
                              score=score, origin=origin) for origin, score in crops]


def hardest_crops(samples: Iterable[SliceSample], count: int) -> list[SliceSample]:
    """The ``count`` hemorrhage-free crops the detector was surest of (stable order among ties)."""
    scored = [sample for sample in samples if sample.score is not None]
    return sorted(scored, key=lambda sample: -(sample.score or 0.0))[:count]


def write_record(folder: Path, detector: str, share: float, chosen: list[SliceSample]) -> None:
    """The chosen crops (study, slice, box, score) and what chose them, so that ``--resume`` needs no detector pass
    and trains on the same crops."""
    crops = [{"study": s.origin.study_id, "slice": s.origin.slice_index, "box": list(s.origin.box), "score": s.score}
             for s in chosen if s.origin is not None]
    record = {"detector": detector, "share": share, "crops": crops}
    write_bytes_atomically(folder / RECORD_NAME, (json.dumps(record, indent=1) + "\n").encode())


def read_record(folder: Path, detector: str, share: float) -> Recorded | None:
    """A run folder's chosen crops, when it has a record (runs from before the record have none: they detect
    again); a record made by another detector or share stops the run."""
    path = folder / RECORD_NAME
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if (record["detector"], record["share"]) != (detector, share):
        raise SystemExit(f"{path}: trained with --negative-crops from {record['detector']} --negative-share "
                         f"{record['share']}, not {detector} {share}")
    recorded: Recorded = {}
    for crop in record["crops"]:
        origin = CropOrigin(crop["study"], int(crop["slice"]), tuple(crop["box"]))  # type: ignore[arg-type]
        recorded.setdefault(origin.study_id, []).append((origin, float(crop["score"])))
    return recorded
