"""Evaluate on the held-out test split, in the structure of the paper's Tables 1/2 → JSON + Markdown.

    python -m evaluation.evaluate --data data/synthetic --detector models/detector --segmenter models/segmenter \
        --single-stage models/single-stage --baseline models/baseline-unet --out results/

Every row runs ``ichseg.pipeline.run``, the app's own two-stage core (detections at the product's confidence,
merge, crop, segment, paste, anatomical guard). Rows (a row whose models are missing is skipped):
* GT boxes + TransDeepLab (oracle): the crop segmenter on the ground-truth lesion boxes, merged like detections;
* YOLO + TransDeepLab (product): the crop segmenter on the merged detector boxes (confidence ≥ --confidence, and
  boxes ≥ --extend-confidence that continue them on adjacent slices);
* single-stage TransDeepLab and the MONAI baseline: whole-slice models on every slice.
The two-stage rows come once per merge mode (``slice``: the paper's one enclosing box per slice; ``cluster``: one
box per group of nearby boxes), and every row once without and once with the anatomical guard (``+ guard``); the
product's ``+ guard`` rows also follow their guarded findings into adjacent slices without a box, as the app does
(``ichseg.follow``, ``--follow-slices``; 0 measures the product without it).

Metrics, all on the full-resolution pasted masks against the full ground-truth masks (any subtype = hemorrhage):
* slice Dice / IoU: mean over the slices whose ground truth has hemorrhage (the paper's per-slice Dice and IoU;
  a slice the pipeline leaves empty scores 0), computed with
  ``monai.metrics.compute_dice`` (IoU = Dice / (2 − Dice), equal to ``compute_iou``);
* pooled Dice: 2·Σ|P∩G| / (Σ|P| + Σ|G|) over every voxel of every test study;
* study sensitivity / specificity: a study is called positive when any voxel is predicted;
* FP slices: slices without hemorrhage in the ground truth that get any predicted voxel;
* volume error: mean and median over studies of |predicted − true| hemorrhage volume in mL
  (CTSeries.voxel_volume_ml; the issue's target is the median);
* s/slice: wall time of the row's models over all slices of the study (the product includes the detector, the
  guard rows the guard).
The same masks are also tallied by subtype (``evaluation.by_subtype``: slice Dice, voxel recall, lesions found),
and by blood density (``evaluation.by_density``: hyperacute or anaemic blood near grey matter's HU against clotted
blood), shown for the guarded two-stage rows, to say which blood is missed, and by study (``studies`` in the JSON:
true and predicted mL, FP slices, slice Dice of every row; the guarded product's missed and over-called studies named
under the table).
Detector mAP@0.5 and mAP@0.5:0.95 (and AP@0.5 per subtype) are computed on the same test studies from detections
at confidence ``ichseg.detector.KEEP_EVERY_BOX`` and the detector's NMS IoU, matched to the per-lesion ground-truth
boxes (``ichseg.boxes.lesion_boxes``: fragments of one subtype within ``LESION_GAP_MM`` form one lesion, as in the
generator's ``boxes.csv``) as ultralytics' validator does and averaged with ultralytics' ``ap_per_class``; the
figures in the detector's manifest (from its training run) are shown beside.

``--choose-guard`` instead sweeps detector confidences and extend confidences (``ichseg.z_continuity``), both merge
modes and the guard's settings over the *validation* split's product masks (``evaluation.guard_choice``) and writes
the best by ``--objective`` to ``guard_choice.json``: the detector manifest's ``operating_confidence`` and
``extend_confidence`` and the defaults of ``ichseg.guard`` and ``ichseg.boxes`` are to be set from it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice
from tqdm import tqdm

from evaluation.by_box_size import BoxSizeRecall, box_overlaps, box_size_markdown
from evaluation.by_density import DensityScores
from evaluation.by_subtype import SubtypeScores, study_lesions
from ichseg import pipeline
from ichseg.blood_density import DENSITY_CLASSES, slice_contrasts, slice_densities
from ichseg.boxes import DEFAULT_MERGE, LESION_GAP_MM, MERGE_MODES, lesion_boxes, lesion_gap_pixels
from ichseg.detector import KEEP_EVERY_BOX, NMS_IOU, Detection, HemorrhageDetector, operating_point
from ichseg.follow import DEFAULT_FOLLOWING, FOLLOW_SLICES, NO_FOLLOWING, FollowOptions
from ichseg.guard import BLOOD_HU, CAVITY_MARGIN_MM, MIN_COMPONENT_ML, Anatomy, GuardOptions
from ichseg.labelled_study import Study, load_study, study_ids
from ichseg.model_manifest import MANIFEST_NAME, portable_path
from ichseg.runtime import configure_threads
from ichseg.segmenter import CROP_MODE, HemorrhageSegmenter
from ichseg.settings import Settings
from ichseg.subtypes import ABBREVIATIONS, SUBTYPES

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
ROWS = {  # model key: (label, paper Dice, paper IoU) — the paper's figures are on real CT, for orientation only
    "oracle": ("GT boxes + TransDeepLab (oracle)", 0.769, 0.657),
    "product": ("YOLO + TransDeepLab (product)", 0.605, 0.478),
    "single-stage": ("single-stage TransDeepLab (whole slice)", 0.566, 0.446),
    "baseline": ("MONAI baseline (whole slice)", 0.458, None),  # the paper's U-Net (Dice only)
}
TWO_STAGE = ("oracle", "product")
OBJECTIVES = {  # --objective: what --choose-guard maximises over the validation studies
    "balanced": ("slice_dice", "pooled_dice", "study_sensitivity", "study_specificity"),
    "pooled_dice": ("pooled_dice",),
    "slice_dice": ("slice_dice",),
}


def row_key(model: str, merge: str | None, guarded: bool) -> str:
    """``product``, ``product-cluster+guard``, ``single-stage+guard`` …: the paper's configuration has no suffix."""
    return model + (f"-{merge}" if merge not in (None, "slice") else "") + ("+guard" if guarded else "")


def row_label(model: str, merge: str | None, guarded: bool) -> str:
    label = ROWS[model][0]
    if merge is not None:
        label += f", {merge} merge"
    return label + (" + guard" if guarded else "")


def slice_dice_iou(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice Dice and IoU of (N, H, W) binary masks; NaN where the ground-truth slice is empty. IoU follows from
    Dice (IoU = D / (2 − D) for sets): one MONAI pass instead of two."""
    p = torch.from_numpy(np.ascontiguousarray(predicted, dtype=bool))[:, None].float()
    g = torch.from_numpy(np.ascontiguousarray(truth, dtype=bool))[:, None].float()
    dice = compute_dice(p, g, include_background=True, ignore_empty=True)[:, 0].numpy()
    return dice, dice / (2.0 - dice)


def pooled_dice(intersection: int, predicted: int, truth: int) -> float:
    """Dice of all voxels pooled; 1 when both are empty (nothing to find, nothing found)."""
    total = predicted + truth
    return 2.0 * intersection / total if total else 1.0


def sensitivity_specificity(truth: list[bool], predicted: list[bool]) -> tuple[float, float]:
    """Study-level sensitivity and specificity; NaN when the test set has no positive (negative) study."""
    t, p = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
    sensitivity = (t & p).sum() / t.sum() if t.any() else math.nan
    specificity = (~t & ~p).sum() / (~t).sum() if (~t).any() else math.nan
    return float(sensitivity), float(specificity)


@dataclass(frozen=True)
class StudyScore:
    """What one study adds to a row; measured once and reused where masks are identical (``--choose-guard``)."""

    slice_dice: list[float]  # the slices with hemorrhage
    slice_iou: list[float]
    intersection: int
    predicted: int
    truth: int
    has_truth: bool
    has_prediction: bool
    fp_slices: int
    negative_slices: int
    volume_error_ml: float
    slices: int
    voxel_ml: float

    @classmethod
    def measure(cls, predicted: np.ndarray, truth: np.ndarray, voxel_ml: float, empty_slices: int = 0) -> StudyScore:
        """``empty_slices``: further slices of the study, cut away, with nothing predicted and nothing true."""
        dice, iou = slice_dice_iou(predicted, truth)
        positive = truth.any(axis=(1, 2))
        return cls._from_slices(
            predicted.sum(axis=(1, 2)), truth.sum(axis=(1, 2)), (predicted & truth).sum(axis=(1, 2)), voxel_ml,
            empty_slices, dice[positive].tolist(), iou[positive].tolist(),
        )

    @classmethod
    def from_counts(
        cls, predicted: np.ndarray, truth: np.ndarray, intersection: np.ndarray, voxel_ml: float, empty_slices: int = 0
    ) -> StudyScore:
        """The same from per-slice voxel counts (predicted, true, both): what ``--choose-guard`` adds up per component
        to score thousands of guard settings (tests/test_guard.py checks it equals ``measure``)."""
        positive = truth > 0
        p, t, i = (np.asarray(a, dtype=np.float64)[positive] for a in (predicted, truth, intersection))
        return cls._from_slices(
            predicted, truth, intersection, voxel_ml, empty_slices, (2.0 * i / (p + t)).tolist(),
            (i / (p + t - i)).tolist(),
        )

    @classmethod
    def _from_slices(
        cls, predicted: np.ndarray, truth: np.ndarray, intersection: np.ndarray, voxel_ml: float, empty_slices: int,
        slice_dice: list[float], slice_iou: list[float],
    ) -> StudyScore:
        """From per-slice voxel counts and the Dice/IoU of the slices with hemorrhage."""
        positive = truth > 0
        predicted_voxels, truth_voxels = int(predicted.sum()), int(truth.sum())
        return cls(
            slice_dice=slice_dice, slice_iou=slice_iou, intersection=int(intersection.sum()),
            predicted=predicted_voxels, truth=truth_voxels, has_truth=bool(positive.any()),
            has_prediction=predicted_voxels > 0, fp_slices=int((predicted[~positive] > 0).sum()),
            negative_slices=int((~positive).sum()) + empty_slices,
            volume_error_ml=abs(predicted_voxels - truth_voxels) * voxel_ml, slices=len(truth) + empty_slices,
            voxel_ml=voxel_ml,
        )

    def describe(self, study_id: str) -> dict[str, Any]:
        """The study's line in ``evaluation.json``'s ``studies``: which study a row gets wrong, and by how much."""
        return {
            "study": study_id, "positive": self.has_truth, "called": self.has_prediction,
            "true_ml": round(self.truth * self.voxel_ml, 3),
            "predicted_ml": round(self.predicted * self.voxel_ml, 3), "fp_slices": self.fp_slices,
            "slice_dice": round(float(np.mean(self.slice_dice)), 4) if self.slice_dice else None,
        }


@dataclass
class Scores:
    """Running totals of one row over the test studies."""

    slice_dice: list[float] = field(default_factory=list)
    slice_iou: list[float] = field(default_factory=list)
    intersection: int = 0
    predicted: int = 0
    truth: int = 0
    study_truth: list[bool] = field(default_factory=list)
    study_predicted: list[bool] = field(default_factory=list)
    fp_slices: int = 0
    negative_slices: int = 0
    volume_errors: list[float] = field(default_factory=list)
    seconds: float = 0.0
    slices: int = 0
    guard_removed_ml: dict[str, float] = field(default_factory=dict)
    studies: list[dict[str, Any]] = field(default_factory=list)  # ``StudyScore.describe`` of the studies given an id

    def add(self, predicted: np.ndarray, truth: np.ndarray, voxel_ml: float, seconds: float) -> None:
        """One study's masks."""
        self.record(StudyScore.measure(predicted, truth, voxel_ml), seconds)

    def record(self, study: StudyScore, seconds: float = 0.0, study_id: str | None = None) -> None:
        """One study, measured already; with ``study_id`` its own figures are kept too."""
        if study_id is not None:
            self.studies.append(study.describe(study_id))
        self.slice_dice += study.slice_dice
        self.slice_iou += study.slice_iou
        self.intersection += study.intersection
        self.predicted += study.predicted
        self.truth += study.truth
        self.study_truth.append(study.has_truth)
        self.study_predicted.append(study.has_prediction)
        self.fp_slices += study.fp_slices
        self.negative_slices += study.negative_slices
        self.volume_errors.append(study.volume_error_ml)
        self.seconds += seconds
        self.slices += study.slices

    def summary(self) -> dict[str, Any]:
        sensitivity, specificity = sensitivity_specificity(self.study_truth, self.study_predicted)
        return {
            "slice_dice": float(np.mean(self.slice_dice)) if self.slice_dice else math.nan,
            "slice_iou": float(np.mean(self.slice_iou)) if self.slice_iou else math.nan,
            "positive_slices": len(self.slice_dice),
            "pooled_dice": pooled_dice(self.intersection, self.predicted, self.truth),
            "study_sensitivity": sensitivity,
            "study_specificity": specificity,
            "fp_slices": self.fp_slices,
            "negative_slices": self.negative_slices,
            "volume_error_ml": float(np.mean(self.volume_errors)) if self.volume_errors else math.nan,
            "median_volume_error_ml": float(np.median(self.volume_errors)) if self.volume_errors else math.nan,
            "seconds_per_slice": self.seconds / self.slices if self.slices else math.nan,
            **({"guard_removed_ml": {k: round(v, 3) for k, v in self.guard_removed_ml.items()}}
               if self.guard_removed_ml else {}),
        }


def match_detections(iou: np.ndarray, pred_classes: np.ndarray, true_classes: np.ndarray) -> np.ndarray:
    """(n_pred, 10) bool: detection is a true positive at IoU 0.5…0.95 (ultralytics' greedy one-to-one matching);
    ``iou``: (n_true, n_pred) (``box_overlaps``)."""
    correct = np.zeros((len(pred_classes), len(IOU_THRESHOLDS)), dtype=bool)
    if not len(pred_classes) or not len(true_classes):
        return correct
    iou = iou * (true_classes[:, None] == pred_classes[None, :])
    for level, threshold in enumerate(IOU_THRESHOLDS):
        matches = np.argwhere(iou >= threshold)  # (true index, predicted index)
        if len(matches) > 1:
            matches = matches[iou[matches[:, 0], matches[:, 1]].argsort()[::-1]]
            matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
            matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        correct[matches[:, 1], level] = True
    return correct


@dataclass
class DetectionRecords:
    """Every test detection and ground-truth box, for mAP over the whole test set."""

    correct: list[np.ndarray] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    pred_classes: list[int] = field(default_factory=list)
    true_classes: list[int] = field(default_factory=list)
    sizes: BoxSizeRecall = field(default_factory=BoxSizeRecall)

    def add_slice(self, detections: list, label_slice: np.ndarray, gap: float | None = None,
                  pixel_mm: float = 1.0) -> None:
        """One slice's detections against its lesion boxes (fragments within ``gap`` pixels grouped; pixels of
        ``pixel_mm`` for the recall by box size)."""
        truth = lesion_boxes(label_slice, gap)
        true_boxes = np.asarray([t.box for t in truth], dtype=np.float64).reshape(-1, 4)
        true_classes = np.asarray([t.subtype for t in truth], dtype=np.int64)
        pred_boxes = np.asarray([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
        pred_classes = np.asarray([d.subtype for d in detections], dtype=np.int64)
        iou = box_overlaps(true_boxes, pred_boxes)
        self.correct.append(match_detections(iou, pred_classes, true_classes))
        confidences = [d.confidence for d in detections]
        self.confidence += confidences
        self.pred_classes += pred_classes.tolist()
        self.true_classes += true_classes.tolist()
        self.sizes.add_slice(true_boxes, iou, np.asarray(confidences), pixel_mm)

    def mean_ap(self) -> tuple[float, float]:
        """(mAP@0.5, mAP@0.5:0.95) over the subtypes present in the ground truth."""
        if not self.true_classes:
            return math.nan, math.nan
        ap, _ = self._ap_per_class()
        return float(ap[:, 0].mean()), float(ap.mean())

    def ap50_by_subtype(self) -> dict[str, float]:
        """AP@0.5 of each subtype present in the ground truth, by subtype name."""
        if not self.true_classes:
            return {}
        ap, classes = self._ap_per_class()
        return {SUBTYPES[c]: float(ap[i, 0]) for i, c in enumerate(classes)}

    def _ap_per_class(self) -> tuple[np.ndarray, np.ndarray]:
        """ultralytics' (classes, 10) AP at IoU 0.5…0.95 and the class index of each line."""
        import ichseg.ultralytics_offline  # noqa: F401  (ultralytics' network switches, before its first import)

        # isort: split
        from ultralytics.utils.metrics import ap_per_class

        result = ap_per_class(np.concatenate(self.correct), np.asarray(self.confidence),
                              np.asarray(self.pred_classes), np.asarray(self.true_classes))
        return result[5], result[6]


def optional_model(folder: Path | None, role: str) -> Path | None:
    """The folder when it holds a manifest, else None with a note that its rows are skipped."""
    if folder is not None and (folder / MANIFEST_NAME).is_file():
        return folder
    print(f"skipping {role}: no model at {folder}")
    return None


def truth_detections(labels: np.ndarray, gap: float | None = None) -> list[list[Detection]]:
    """The per-lesion ground-truth boxes of each slice as detections (confidence 1): the oracle's "detector"."""
    return [[Detection(box.subtype, 1.0, box.box) for box in lesion_boxes(label_slice, gap)] for label_slice in labels]


@dataclass
class Models:
    """What ``evaluate`` runs: crop segmenter (oracle and product rows), whole-slice models, detector."""

    segmenters: dict[str, HemorrhageSegmenter]  # model key → segmenter
    detector: HemorrhageDetector | None = None  # at KEEP_EVERY_BOX (mAP); the product keeps ≥ ``confidence``
    confidence: float | None = None  # the product's detector confidence
    extend_confidence: float | None = None  # and the confidence that continues its findings (ichseg.z_continuity)

    @classmethod
    def load(cls, args: argparse.Namespace) -> Models:
        segmenters: dict[str, HemorrhageSegmenter] = {}
        if optional_model(args.segmenter, "oracle and product rows"):
            segmenters["oracle"] = HemorrhageSegmenter(args.segmenter)
            if segmenters["oracle"].whole_slice:
                raise SystemExit(f"{args.segmenter}: --segmenter must be a crop model (manifest mode {CROP_MODE!r})")
        for key, folder in (("single-stage", args.single_stage), ("baseline", args.baseline)):
            if optional_model(folder, f"{key} row"):
                segmenters[key] = HemorrhageSegmenter(folder)
        if not optional_model(args.detector, "product row and detector mAP"):
            if not segmenters:
                raise SystemExit("no model found: nothing to evaluate")
            return cls(segmenters)
        detector = HemorrhageDetector(args.detector, confidence=KEEP_EVERY_BOX)
        # the product's own operating point, as the app uses it, unless given
        confidence, extend = operating_point(detector.manifest, args.confidence, args.extend_confidence)
        if "oracle" in segmenters:
            segmenters["product"] = segmenters["oracle"]
        return cls(segmenters, detector, confidence, extend)

    def provenance(self) -> dict[str, str]:
        """Which weights gave the figures: each model's name and version (its manifest) and folder."""
        roles: dict[str, HemorrhageDetector | HemorrhageSegmenter] = {} if self.detector is None else {
            "detector": self.detector}
        roles |= {"segmenter" if key == "oracle" else key: model for key, model in self.segmenters.items()
                  if key != "product"}  # the product row runs the oracle's segmenter
        return {role: f"{model.manifest.label} ({portable_path(model.model_dir)})" for role, model in roles.items()}


def guard_options(args: argparse.Namespace) -> GuardOptions:
    return GuardOptions(True, tuple(args.guard_hu), args.guard_min_ml, args.guard_margin_mm)  # type: ignore[arg-type]


RowMask = tuple[np.ndarray, float, dict[str, int]]  # mask, seconds, voxels removed per guard rule
Source = tuple["list[list[Detection]] | None", float, "float | None", "float | None"]  # detections, seconds, confidence
# and extend confidence they are kept at (``ichseg.pipeline.keep_findings``)


def detection_sources(study: Study, models: Models, records: DetectionRecords | None) -> dict[str, Source]:
    """Where each two-stage row's boxes come from: the ground truth (oracle) and, if loaded, the detector (product).

    The detector runs on the study's 512 grid and its boxes come back on the source grid (``pipeline.detect``),
    the grid of the labels they are matched to in ``records``.
    """
    gap = lesion_gap_pixels(study.series.pixel_spacing)  # the lesion boxes of the data's boxes.csv
    sources: dict[str, Source] = {"oracle": (truth_detections(study.labels, gap), 0.0, None, None)}
    if models.detector is not None:
        started = time.perf_counter()
        detections = pipeline.detect(models.detector, study.windowed)
        sources["product"] = (detections, time.perf_counter() - started, models.confidence, models.extend_confidence)
        if records is not None:
            for slice_detections, label_slice in zip(detections, study.labels, strict=True):
                records.add_slice(slice_detections, label_slice, gap, min(study.series.pixel_spacing))
    return sources


def study_masks(
    study: Study, models: Models, merges: tuple[str, ...], guard: GuardOptions,
    records: DetectionRecords | None = None, anatomy: Anatomy | None = None, follow: FollowOptions = DEFAULT_FOLLOWING,
) -> dict[str, RowMask]:
    """Every row's mask of one study, by row key, each from one ``pipeline.run`` (unguarded and guarded). The product
    follows its guarded findings (``follow``; ``ichseg.follow``); the oracle does not, as its boxes are on every
    slice with blood already."""
    started = time.perf_counter()
    anatomy = anatomy if anatomy is not None else pipeline.anatomy_of(study.series, study.windowed)
    anatomy_seconds = time.perf_counter() - started
    sources = detection_sources(study, models, records)
    masks: dict[str, RowMask] = {}
    for model, segmenter in models.segmenters.items():
        found, detect_seconds, confidence, extend = sources.get(model, (None, 0.0, None, None))
        for merge in (None,) if model not in TWO_STAGE else merges:
            options = pipeline.PipelineOptions(merge=merge or DEFAULT_MERGE, confidence=confidence,
                                               extend_confidence=extend, guard=guard,
                                               follow=follow if model == "product" else NO_FOLLOWING)
            result = pipeline.run(study.series, segmenter, options=options, windowed=study.windowed,
                                  detections=found, anatomy=anatomy)
            seconds = detect_seconds + result.seconds["segment"]
            masks[row_key(model, merge, False)] = (result.unguarded, seconds, {})
            masks[row_key(model, merge, True)] = (
                result.mask, seconds + anatomy_seconds + result.seconds["guard"] + result.seconds["follow"],
                result.guard.removed_voxels,
            )
    return masks


def add_study(scores: dict[str, Scores], study: Study, masks: dict[str, RowMask],
              by_subtype: dict[str, SubtypeScores] | None = None,
              by_density: dict[str, DensityScores] | None = None) -> None:
    """Score one study's masks of every row against its ground truth (any subtype = hemorrhage) and, if given, tally
    them by subtype and by blood density too."""
    truth = study.labels > 0
    series = study.series
    voxel_ml = series.voxel_volume_ml
    spacing = (series.slice_spacing, *series.pixel_spacing)
    lesions = study_lesions(study.labels, voxel_ml, spacing) if by_subtype is not None else {}
    blood = (slice_densities(series.hu, truth), slice_contrasts(series.hu, truth)) if by_density is not None else None
    for key, (mask, seconds, removed) in masks.items():
        measured = StudyScore.measure(mask, truth, voxel_ml)
        row = scores.setdefault(key, Scores())
        row.record(measured, seconds, study.study_id)
        if by_subtype is not None:
            by_subtype.setdefault(key, SubtypeScores()).add(mask, lesions, measured.slice_dice)
        if by_density is not None and blood is not None:
            by_density.setdefault(key, DensityScores()).add(mask, truth, *blood, measured.slice_dice)
        for rule, voxels in removed.items():
            row.guard_removed_ml[rule] = row.guard_removed_ml.get(rule, 0.0) + voxels * voxel_ml


def row_labels(merges: tuple[str, ...]) -> dict[str, str]:
    """Row key → label for every row that can be evaluated, in table order."""
    return {
        row_key(model, merge, guarded): row_label(model, merge, guarded)
        for model in ROWS
        for merge in ((None,) if model not in TWO_STAGE else merges)
        for guarded in (False, True)
    }


def detector_results(
    detector: HemorrhageDetector, product_confidence: float | None, records: DetectionRecords, model_dir: Path,
    product_extend: float | None = None,
) -> dict[str, Any]:
    """The detector's test mAP beside its manifest's figures, and the product's confidence and extend confidence."""
    map50, map50_95 = records.mean_ap()
    manifest = detector.manifest
    recall_confidence = product_confidence or KEEP_EVERY_BOX  # boxes the product keeps (every box without one)
    return {
        "model": str(model_dir),
        "product_confidence": product_confidence,
        "product_extend_confidence": product_extend,
        "nms_iou": NMS_IOU,
        "lesion_gap_mm": LESION_GAP_MM,
        "test_mAP50": map50,
        "test_mAP50_95": map50_95,
        "test_AP50_by_subtype": records.ap50_by_subtype(),
        "test_recall_by_box_size": records.sizes.recall(recall_confidence),
        "recall_by_box_size_confidence": recall_confidence,
        "manifest_mAP50": manifest.training.get("mAP50"),
        "manifest_mAP50_95": manifest.training.get("mAP50_95"),
    }


def evaluate(args: argparse.Namespace) -> dict:
    """Run every available row over the test studies and return the results as a JSON-ready dict."""
    models = Models.load(args)
    guard = guard_options(args)
    follow = FollowOptions(args.follow_slices)
    merges = tuple(args.merge)
    ids = study_ids(args.data, "test")[: args.limit]
    scores: dict[str, Scores] = {}
    by_subtype: dict[str, SubtypeScores] = {}
    by_density: dict[str, DensityScores] = {}
    records = DetectionRecords()
    for study_id in tqdm(ids, desc="test studies", unit="study"):
        study = load_study(args.data / study_id, args.calibrate)
        add_study(scores, study, study_masks(study, models, merges, guard, records, follow=follow), by_subtype,
                  by_density)
    labels = row_labels(merges)
    results: dict = {
        "data": str(args.data),
        "test_studies": len(ids),
        "models": {key: str(segmenter.model_dir) for key, segmenter in models.segmenters.items()},
        "model_versions": models.provenance(),
        "calibrate": args.calibrate,
        "guard": guard.describe(),
        "follow": follow.describe(),
        "rows": {key: {"label": labels[key], **scores[key].summary()} for key in labels if key in scores},
        "by_subtype": {key: by_subtype[key].summary() for key in labels if key in by_subtype},
        "by_density": {key: by_density[key].summary() for key in labels if key in by_density},
        "studies": {key: scores[key].studies for key in labels if key in scores},
    }
    if models.detector is not None:
        results["detector"] = detector_results(
            models.detector, models.confidence, records, args.detector, models.extend_confidence
        )
    return results


def cell(value: float | int | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def provenance_lines(results: dict) -> list[str]:
    """'Models: …' and a blank line, for results that record them (files written before they did, none)."""
    versions = results.get("model_versions")
    if not versions:
        return []
    return ["Models: " + "; ".join(f"{role} {label}" for role, label in versions.items()) + ".", ""]


def markdown(results: dict) -> str:
    """The results as a Markdown table in the structure of the paper's Tables 1/2."""
    lines = [
        f"# ICH segmentation — held-out test split ({results['test_studies']} studies, {results['data']})",
        "",
        *provenance_lines(results),
        "| method | slice Dice | slice IoU | pooled Dice | study sens. | study spec. | FP slices | "
        "volume error mean / median (mL) | s/slice | paper Dice / IoU (real CT) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in results["rows"].items():
        _, paper_dice, paper_iou = ROWS[key] if key in ROWS else (None, None, None)
        lines.append(
            f"| {row['label']} | {cell(row['slice_dice'])} | {cell(row['slice_iou'])} | {cell(row['pooled_dice'])} "
            f"| {cell(row['study_sensitivity'], 2)} | {cell(row['study_specificity'], 2)} "
            f"| {row['fp_slices']} / {row['negative_slices']} | {cell(row['volume_error_ml'], 2)} / "
            f"{cell(row.get('median_volume_error_ml'), 2)} "
            f"| {cell(row['seconds_per_slice'], 3)} | {cell(paper_dice)} / {cell(paper_iou)} |"
        )
    if results["rows"]:
        positives = next(iter(results["rows"].values()))["positive_slices"]
        lines += ["", f"Slice Dice/IoU: mean over the {positives} test slices whose ground truth has hemorrhage."]
    lines += subtype_markdown(results)
    lines += density_markdown(results)
    lines += wrong_studies_markdown(results)
    if "detector" in results:
        d = results["detector"]
        by_subtype = d.get("test_AP50_by_subtype") or {}
        per_subtype = ", ".join(f"{ABBREVIATIONS[name]} {cell(ap)}" for name, ap in by_subtype.items())
        lines += [
            "",
            f"Detector ({d['model']}): test mAP@0.5 {cell(d['test_mAP50'])}, mAP@0.5:0.95 {cell(d['test_mAP50_95'])} "
            f"(these studies, confidence {KEEP_EVERY_BOX}, NMS IoU {d['nms_iou']}, lesion boxes grouping fragments "
            f"within {d.get('lesion_gap_mm', LESION_GAP_MM):g} mm); manifest figures (its training run's own boxes) "
            f"{cell(d['manifest_mAP50'])} / {cell(d['manifest_mAP50_95'])}; paper 0.974 / 0.794. "
            + (f"AP@0.5 by subtype: {per_subtype}. " if per_subtype else "")
            + f"Product boxes: confidence ≥ {d['product_confidence']}"
            + (f", continued across slices down to {d['product_extend_confidence']} (`ichseg.z_continuity`)."
               if d.get("product_extend_confidence") not in (None, d["product_confidence"]) else "."),
        ]
        if d.get("test_recall_by_box_size"):
            lines[-1] += " " + box_size_markdown(d["test_recall_by_box_size"], d["recall_by_box_size_confidence"])
    if "guard" in results:
        g = results["guard"]
        lines += ["", f"Guard (`+ guard` rows): inside the skull at least {g['cavity_margin_mm']:g} mm from bone, "
                      f"{g['hu_range'][0]:g}–{g['hu_range'][1]:g} HU on the 3×3 mean, 3D components ≥ "
                      f"{g['min_component_ml']:g} mL"
                      + _following(results.get("follow"))
                      + ". Paper figures are for its configuration (slice merge, no guard)."]
    lines += ["", "Definitions: see `evaluation/evaluate.py`. "
                  "Synthetic phantoms: not comparable with the paper's figures."]
    return "\n".join(lines) + "\n"


def _following(follow: dict | None) -> str:
    """The guard note's clause on following (results written before following existed have none)."""
    if not follow or not follow["slices"]:
        return "; the product's guarded findings not followed into slices without a box"
    return (f"; the product's guarded findings then followed up to {follow['slices']} slices each way into slices "
            "without a box (`ichseg.follow`; not the oracle's)")


def guarded_rows(tallies: dict[str, Any]) -> dict[str, Any]:
    """Of per-row ``tallies``: the guarded two-stage rows, each in the default merge mode where it was run."""
    rows = {}
    for model in TWO_STAGE:
        key = next((k for k in (row_key(model, m, True) for m in (DEFAULT_MERGE, *MERGE_MODES)) if k in tallies), None)
        if key is not None:
            rows[key] = tallies[key]
    return rows


def subtype_markdown(results: dict) -> list[str]:
    """The by-subtype table of the guarded two-stage rows, in the default merge mode where it was run."""
    rows = guarded_rows(results.get("by_subtype", {}))
    if not rows:
        return []
    lines = [
        "", "By subtype (a slice counts under each subtype it holds; the masks are class-agnostic, so slice Dice is "
        f"against all blood; a lesion — voxels of one subtype within {LESION_GAP_MM:g} mm of each other — is found "
        "when any predicted voxel touches it):", "",
        "| subtype | method | slices | slices touched | slice Dice (all blood) | voxel recall | lesions found "
        "| median missed lesion (mL) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SUBTYPES:
        for key, row in rows.items():
            if name in row:
                s = row[name]
                missed = "none" if s["lesions_found"] == s["lesions"] else cell(s["median_missed_ml"], 2)
                lines.append(
                    f"| {ABBREVIATIONS[name]} | {results['rows'][key]['label']} | {s['slices']} "
                    f"| {cell(s['slices_touched'], 2)} | {cell(s['slice_dice'])} | {cell(s['voxel_recall'], 2)} "
                    f"| {s['lesions_found']} / {s['lesions']} | {missed} |"
                )
    return lines


def density_markdown(results: dict) -> list[str]:
    """The by-density table of the guarded two-stage rows (``evaluation.by_density``)."""
    rows = guarded_rows(results.get("by_density", {}))
    if not rows:
        return []
    lines = [
        "", "By blood density (a slice is classed by the median HU of its ground-truth blood; slice Dice against all "
        "blood; contrast: the median of blood minus the soft tissue just around it, a property of the data):", "",
        "| blood density | contrast (HU) | method | slices (studies) | slices touched | slice Dice | voxel recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, _, _ in DENSITY_CLASSES:
        for key, row in rows.items():
            if label in row:
                s = row[label]
                contrast = "—" if s.get("median_contrast_hu") is None else f"{s['median_contrast_hu']:.0f}"
                lines.append(
                    f"| {label} | {contrast} | {results['rows'][key]['label']} | {s['slices']} ({s['studies']}) "
                    f"| {cell(s['slices_touched'], 2)} "
                    f"| {cell(s['slice_dice'])} | {cell(s['voxel_recall'], 2)} |"
                )
    return lines


def wrong_studies(studies: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Of ``Scores.studies``: the positive studies left empty and the negative studies given any voxel."""
    missed = [s for s in studies if s["positive"] and not s["called"]]  # as study sensitivity and specificity
    called = [s for s in studies if not s["positive"] and s["called"]]  # count them (not the rounded volumes)
    return missed, called


def wrong_studies_markdown(results: dict) -> list[str]:
    """The test studies the guarded product (default merge) gets wrong, by name: what to open in a viewer first."""
    key = row_key("product", DEFAULT_MERGE, True)
    studies = results.get("studies", {}).get(key)
    if not studies:
        return []
    missed, called = wrong_studies(studies)
    return ["", f"Studies {results['rows'][key]['label']} gets wrong: "
                f"{len(missed)} positive missed" + "".join(f", {s['study']} ({s['true_ml']:g} mL)" for s in missed)
            + f"; {len(called)} negative called positive"
            + "".join(f", {s['study']} ({s['predicted_ml']:g} mL)" for s in called)
            + ". Every study's volumes: `studies` in the JSON."]


def json_ready(value: object) -> object:
    """NaN → null, recursively: the evaluation's results as strict JSON (every results file goes through it)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluation.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="synthetic data folder with studies.csv")
    parser.add_argument("--detector", type=Path, default=Path("models/detector"))
    parser.add_argument("--segmenter", type=Path, default=Path("models/segmenter"), help="crop (two-stage) model")
    parser.add_argument("--single-stage", type=Path, default=None, help="whole-slice TransDeepLab model")
    parser.add_argument("--baseline", type=Path, default=None, help="whole-slice MONAI baseline model")
    parser.add_argument("--confidence", type=_confidence, default=None,
                        help="detector confidence for the product row "
                             "(default: the manifest's operating point, as the app)")
    parser.add_argument("--extend-confidence", type=_confidence, default=None,
                        help="product row: boxes this sure or more are kept where they continue a box at --confidence "
                             "on the same or an adjacent slice (default: the manifest's, as the app)")
    parser.add_argument("--merge", type=_merges, default=MERGE_MODES,
                        help=f"comma-separated merge modes of the two-stage rows (default {','.join(MERGE_MODES)})")
    parser.add_argument("--guard-hu", type=_hu_range, default=BLOOD_HU, help="guard rows: blood HU range LOW,HIGH")
    parser.add_argument("--guard-min-ml", type=float, default=MIN_COMPONENT_ML,
                        help="guard rows: smallest component (mL)")
    parser.add_argument("--guard-margin-mm", type=float, default=CAVITY_MARGIN_MM,
                        help="guard rows: distance from bone (mm)")
    parser.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=Settings.calibrate,
                        help="take each series' calibration offset off the HU the networks see and add it to the "
                             "guard's blood range (ichseg.calibration; default on, as the app)")
    parser.add_argument("--follow-slices", type=_slices, default=FOLLOW_SLICES,
                        help="product + guard rows: follow guarded findings this many slices each way into slices "
                             f"without a box (ichseg.follow; 0: off; default {FOLLOW_SLICES}, as the app)")
    parser.add_argument("--choose-guard", action="store_true",
                        help="sweep detector confidences and extend confidences, merge modes and guard settings on "
                             "the validation split; "
                             "write guard_choice.json")
    parser.add_argument("--confidences", type=_confidences, default=None,
                        help="--choose-guard: comma-separated detector confidences to try (default: a grid from "
                             "0.05 to 0.4), each alone and continued down to 0.05 and 0.1; the manifest's operating "
                             "point is always tried")
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="balanced",
                        help="what --choose-guard maximises")
    parser.add_argument("--limit", type=int, default=None, help="use the first N studies of the split only")
    parser.add_argument("--out", type=Path, default=Path("results"))
    return parser.parse_args(argv)


def _merges(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes or any(m not in MERGE_MODES for m in modes):
        raise argparse.ArgumentTypeError(f"expected merge modes from {', '.join(MERGE_MODES)}")
    return modes


def _slices(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError("expected a whole number ≥ 0")
    return int(text)


def _confidence(text: str) -> float:
    values = _confidences(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError("expected one confidence between 0 and 1")
    return values[0]


def _confidences(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError("expected comma-separated numbers") from error
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError("expected confidences between 0 and 1")
    return values


def _hu_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError("expected LOW,HIGH") from error
    return low, high


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_threads()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.choose_guard:
        from evaluation.guard_choice import choose_guard, guard_choice_markdown

        choice = choose_guard(args)
        (args.out / "guard_choice.json").write_text(json.dumps(json_ready(choice), indent=2) + "\n")
        table = guard_choice_markdown(choice)
        (args.out / "guard_choice.md").write_text(table)
        print(table)
        return
    results = evaluate(args)
    (args.out / "evaluation.json").write_text(json.dumps(json_ready(results), indent=2) + "\n")
    table = markdown(results)
    (args.out / "evaluation.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
