"""The two-stage core, once: window → detect → merge → crop, segment, paste → anatomical guard → follow findings.

The app's operators call the stage functions one by one (each stage is a node of the SDK graph); the evaluation and
the tests call ``run`` on a whole series. Both go through the same functions, so what is measured is what ships.

Grids: the detector sees 512×512 slices (``ichseg.detector``); everything after it (detections, boxes, masks) is on
the series' own (source) grid, which is what the segmenter crops and what the SEG describes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ichseg.boxes import CLUSTER_MARGIN_MM, DEFAULT_MERGE, Box, merge_slice, mm_to_pixels
from ichseg.calibration import series_offset
from ichseg.detector import INPUT_SIZE, Detection, extend_confidence, resize_to_input
from ichseg.dicom_series import CTSeries
from ichseg.follow import Followed, FollowOptions, follow
from ichseg.guard import Anatomy, GuardOptions, GuardReport, apply_guard, read_anatomy
from ichseg.windowing import HEADER_INPUT, channel_input, window_volume
from ichseg.z_continuity import continue_findings

if TYPE_CHECKING:  # the networks are imported by whoever loads them; the geometry here stays light
    from ichseg.detector import HemorrhageDetector
    from ichseg.segmenter import HemorrhageSegmenter


@dataclass
class WindowedSeries:
    """A series windowed for both stages."""

    source: np.ndarray  # (N, rows, columns) uint8 in the header windows, the source grid (segmenter input, SEG grid)
    detector: np.ndarray  # (N, 512, 512) uint8, the detector grid (the same array when the source is 512²)
    hu: np.ndarray  # (N, rows, columns) the series' own HU (not copied), which the fixed windows are made from
    slice_spacing: float  # mm between slice centres: how many neighbours a slab channel averages
    calibration_hu: float = 0.0  # the series' calibration offset (``ichseg.calibration``): every window moves up by it
    _channels: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def source_input(self, kind: str) -> np.ndarray:
        """The source-grid slices a network with manifest input ``kind`` takes (the segmenter crops them): (N, rows,
        columns) grey or (N, 3, rows, columns) channels (``ichseg.windowing.INPUT_KINDS``); made once, when a
        network first asks."""
        if kind == HEADER_INPUT:
            return self.source
        if (kind, "source") not in self._channels:
            self._channels[kind, "source"] = channel_input(self.source, self.hu, kind, self.slice_spacing,
                                                          self.calibration_hu)
        return self._channels[kind, "source"]

    def detector_input(self, kind: str) -> np.ndarray:
        """The same on the detector's 512 grid: (N, 512, 512) grey or (N, 3, 512, 512) channels."""
        if kind == HEADER_INPUT:
            return self.detector
        channels = self.source_input(kind)
        if self.detector is self.source:
            return channels
        if (kind, "detector") not in self._channels:
            self._channels[kind, "detector"] = np.stack(
                [[resize_to_input(plane) for plane in planes] for planes in channels]
            )
        return self._channels[kind, "detector"]

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from detector-grid to source-grid pixel coordinates."""
        return self.source.shape[2] / self.detector.shape[2], self.source.shape[1] / self.detector.shape[1]


def window_series(series: CTSeries, calibrate: bool = True) -> WindowedSeries:
    """Each slice windowed with its own header window (paper), and resized to 512 for the detector; the fixed
    windows follow when a network that takes them asks (``WindowedSeries.source_input``). With ``calibrate`` the
    series' calibration offset is taken off its HU first (``ichseg.calibration``; done by moving every window up by
    it, so no calibrated copy of the volume is held): training, evaluation and the app all window here, so the
    networks see every scanner at the calibration they were trained at."""
    offset = series_offset(series.hu) if calibrate else 0.0
    source = window_volume(series.hu, [(centre + offset, width) for centre, width in series.windows])
    native = source.shape[1:] == (INPUT_SIZE, INPUT_SIZE)
    detector = source if native else np.stack([resize_to_input(plane) for plane in source])
    return WindowedSeries(source, detector, series.hu, series.slice_spacing, offset)


def to_source_grid(detection: Detection, scale: tuple[float, float]) -> Detection:
    """A detection on the 512 detector grid → the same detection in source-grid pixel coordinates."""
    x0, y0, x1, y1 = detection.box
    sx, sy = scale
    return dataclasses.replace(detection, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))


def detect(detector: HemorrhageDetector, windowed: WindowedSeries) -> list[list[Detection]]:
    """Stage 1: the detections of each slice at the detector's confidence, and those at its extend confidence that
    continue them (``keep_findings``), in source-grid pixels."""
    found_512 = detector.detect(windowed.detector_input(detector.input))
    found = [[to_source_grid(d, windowed.scale) for d in slice_found] for slice_found in found_512]
    return keep_findings(found, detector.confidence, detector.extend_confidence)  # on the grid the evaluation uses


def keep_findings(
    detections: Sequence[Sequence[Detection]], confidence: float, extend: float | None = None
) -> list[list[Detection]]:
    """Each slice's detections at ``confidence`` or above, and those at ``extend`` or above that overlap a kept box
    on the same or an adjacent slice (``ichseg.z_continuity``; None: the plain threshold; capped at ``confidence``)."""
    return continue_findings(detections, confidence, extend_confidence(confidence, extend))


def cluster_margin_px(pixel_spacing: tuple[float, float], margin_mm: float = CLUSTER_MARGIN_MM) -> float:
    """The cluster margin in source-grid pixels."""
    return mm_to_pixels(margin_mm, pixel_spacing)


def merge(
    detections: Sequence[Sequence[Detection]], mode: str = DEFAULT_MERGE, margin_px: float = 0.0
) -> list[list[Box]]:
    """Between the stages: each slice's boxes merged by ``mode``."""
    return [merge_slice((d.box for d in found), mode, margin_px) for found in detections]


def segment(segmenter: HemorrhageSegmenter, windowed: WindowedSeries, boxes: Sequence[Sequence[Box]]) -> np.ndarray:
    """Stage 2: (N, rows, columns) bool mask on the source grid, the union of each slice's box masks."""
    return segmenter.segment(windowed.source_input(segmenter.input), boxes)


def anatomy_of(series: CTSeries, windowed: WindowedSeries) -> Anatomy:
    """The guard's view of the series' HU volume (cavity, smoothed HU), reusable across masks; its blood range moves
    by the calibration offset the windowing measured (one measurement for the networks and the guard)."""
    return read_anatomy(series.hu, series.pixel_spacing, series.slice_spacing, calibration_hu=windowed.calibration_hu)


def guard(
    mask: np.ndarray, series: CTSeries, options: GuardOptions, anatomy: Anatomy | None
) -> tuple[np.ndarray, GuardReport]:
    """The anatomical guard (``ichseg.guard``); ``anatomy`` (``anatomy_of``) is needed only when the guard is on."""
    if not options.enabled:
        return mask.copy(), GuardReport.unchanged(mask, options, series.voxel_volume_ml)
    if anatomy is None:
        raise ValueError("the guard is on but no anatomy was read (pipeline.anatomy_of)")
    return apply_guard(mask, anatomy, options)


def follow_findings(
    segmenter: HemorrhageSegmenter, windowed: WindowedSeries, boxes: Sequence[Sequence[Box]], guarded: np.ndarray,
    anatomy: Anatomy | None, guard_options: GuardOptions, options: FollowOptions,
) -> Followed:
    """After the guard: each guarded finding followed into the adjacent slices without a box (``ichseg.follow``);
    nothing when following or the guard is off, or for a whole-slice model (it has no boxes to follow)."""
    if anatomy is None or options.slices <= 0 or not guard_options.enabled or segmenter.whole_slice:
        return Followed(options)
    source = windowed.source_input(segmenter.input)
    return follow(lambda crops: segmenter.crop_masks(source, crops), boxes, guarded, anatomy, guard_options, options)


def guard_followed(
    followed: Followed, painted: np.ndarray, mask: np.ndarray, report: GuardReport, series: CTSeries,
    guard_options: GuardOptions, anatomy: Anatomy | None,
) -> tuple[np.ndarray, GuardReport]:
    """The guarded mask and guard report of ``painted`` (the segmenter's mask with the followed slices added,
    ``Followed.add_to``) guarded again; ``mask`` and ``report`` themselves when nothing was followed."""
    if not followed.boxes:
        return mask, report
    return guard(painted, series, guard_options, anatomy)


@dataclass(frozen=True)
class PipelineOptions:
    """How ``run`` merges and guards; the defaults are the app's."""

    merge: str = DEFAULT_MERGE
    cluster_margin_mm: float = CLUSTER_MARGIN_MM
    confidence: float | None = None  # None: keep every detection passed in (the detector already thresholded)
    extend_confidence: float | None = None  # hysteresis down to this (``keep_findings``); only with ``confidence``
    guard: GuardOptions = field(default_factory=GuardOptions)
    follow: FollowOptions = field(default_factory=FollowOptions)  # needs the guard


@dataclass
class PipelineResult:
    """Every intermediate of one run, for reports and for scoring with and without the guard."""

    windowed: WindowedSeries
    detections: list[list[Detection]]  # source grid
    boxes: list[list[Box]]  # per slice, after merging (``followed`` has the boxes of followed slices)
    unguarded: np.ndarray  # the segmenter's mask in those boxes
    mask: np.ndarray  # after the guard and following (== unguarded when the guard is off)
    guard: GuardReport  # of guarding ``unguarded`` and the followed slices' masks together
    followed: Followed
    seconds: dict[str, float]  # wall time per stage run here: "detect", "segment", "guard", "follow"


def run(
    series: CTSeries, segmenter: HemorrhageSegmenter, detector: HemorrhageDetector | None = None,
    options: PipelineOptions = PipelineOptions(), *, windowed: WindowedSeries | None = None,
    detections: Sequence[Sequence[Detection]] | None = None, anatomy: Anatomy | None = None,
) -> PipelineResult:
    """The whole two-stage pipeline on one series.

    ``detections`` (source grid) replace the detector: ground-truth boxes for the oracle, or detections computed once
    and reused across merge modes. ``windowed`` and ``anatomy`` may likewise be passed in when computed already. A
    whole-slice segmenter needs neither detector nor detections.
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    windowed = windowed if windowed is not None else window_series(series)
    if detections is None:
        if detector is not None:
            detections = detect(detector, windowed)
            seconds["detect"] = time.perf_counter() - clock
        elif segmenter.whole_slice:
            detections = [[] for _ in range(len(series.hu))]
        else:
            raise ValueError("a crop segmenter needs a detector or detections")
    found = (
        [list(d) for d in detections] if options.confidence is None
        else keep_findings(detections, options.confidence, options.extend_confidence)
    )
    boxes = merge(found, options.merge, cluster_margin_px(series.pixel_spacing, options.cluster_margin_mm))
    clock = time.perf_counter()
    unguarded = segment(segmenter, windowed, boxes)
    seconds["segment"] = time.perf_counter() - clock
    clock = time.perf_counter()
    if options.guard.enabled and anatomy is None:
        anatomy = anatomy_of(series, windowed)
    if anatomy is not None and anatomy.calibration_hu != windowed.calibration_hu:
        raise ValueError("the anatomy passed in was read with another calibration offset than the windowing's")
    mask, report = guard(unguarded, series, options.guard, anatomy)
    seconds["guard"] = time.perf_counter() - clock
    clock = time.perf_counter()
    followed = follow_findings(segmenter, windowed, boxes, mask, anatomy, options.guard, options.follow)
    mask, report = guard_followed(followed, followed.add_to(boxes, unguarded)[1], mask, report, series, options.guard,
                                  anatomy)
    seconds["follow"] = time.perf_counter() - clock
    return PipelineResult(windowed, found, boxes, unguarded, mask, report, followed, seconds)
