"""Hemorrhage-free crops for the segmenter: the boxes a detector draws where there is no blood.

The paper trains the segmenter on crops of ground-truth boxes, so it only ever sees crops that hold blood. In the
product it also gets the detector's boxes on mimics (calcifications, dense sinuses, the skull base, streaks) and,
never having been shown an empty crop, paints them. These samples are the segmenter's counterpart of the
detector's mined hard negatives (``training.hard_negatives``): the boxes a detector puts on the hemorrhage-free
slices of the training studies, found and merged as the app finds and merges them (``ichseg.pipeline``), with
empty masks; the ones it is surest of come first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ichseg.boxes import DEFAULT_MERGE
from ichseg.detector import HemorrhageDetector
from ichseg.labelled_study import Study
from ichseg.pipeline import cluster_margin_px, merge, to_source_grid
from training.segmenter_data import SliceSample, region_sample


class NegativeCrops:
    """Callable for ``load_samples(negative_crops=...)``: a study → its hemorrhage-free crops, scored.

    A crop is the merge of a slice's boxes at the detector's extend confidence or above: every box the app could keep
    (at its operating point, or continuing a surer box on an adjacent slice), none weaker, so that the crops are sized
    as served crops are; its score is the slice's strongest box.
    """

    def __init__(self, detector_dir: Path, input_kind: str, jitter: float) -> None:
        self.detector = HemorrhageDetector(detector_dir)  # detect() returns the boxes at its extend confidence or above
        self.input_kind = input_kind
        self.jitter = jitter

    @property
    def description(self) -> str:
        """Which detector drew the boxes, and from which confidence."""
        return f"{self.detector.manifest.label}, boxes ≥ {self.detector.extend_confidence:g}"

    def __call__(self, study: Study) -> list[SliceSample]:
        free = [index for index, label_slice in enumerate(study.labels) if not label_slice.any()]
        if not free:
            return []
        windowed = study.windowed
        found = self.detector.detect(windowed.detector_input(self.detector.input)[free])
        on_source = [[to_source_grid(d, windowed.scale) for d in slice_found] for slice_found in found]
        boxes = merge(on_source, DEFAULT_MERGE, cluster_margin_px(study.series.pixel_spacing))  # as the app merges
        source = windowed.source_input(self.input_kind)
        return [
            region_sample(source[index], study.labels[index], box, self.jitter,
                          score=max(d.confidence for d in slice_found))
            for index, slice_found, slice_boxes in zip(free, on_source, boxes, strict=True)
            for box in slice_boxes
        ]


def hardest_crops(samples: Iterable[SliceSample], count: int) -> list[SliceSample]:
    """The ``count`` hemorrhage-free crops the detector was surest of (stable order among ties)."""
    scored = [sample for sample in samples if sample.score is not None]
    return sorted(scored, key=lambda sample: -(sample.score or 0.0))[:count]
