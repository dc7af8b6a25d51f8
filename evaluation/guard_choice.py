"""``python -m evaluation.evaluate --choose-guard``: the product's operating point — detector confidence, extend
confidence (``ichseg.z_continuity``), merge mode and guard — chosen on validation.

Each validation study is detected once (every box kept); for each confidence of ``CONFIDENCE_SWEEP``, each extend
confidence of ``EXTEND_SWEEP`` below it (and the plain threshold) and each merge mode the product runs with the
guard off (``ichseg.pipeline.run``; a crop shared by several of them is segmented once), and every guard setting of
``GUARD_SWEEP`` is applied to those masks and scored like the evaluation's rows. The confidences are chosen here,
with the guard, because the F1 maximum of the detector alone (the manifest's starting point) does not know what the
guard will remove. The volumes are cut to the 3D box of prediction and truth first (the guard only removes, so
nothing outside can change), and components are labelled once per HU range and margin: the guard sweep adds seconds,
not minutes, per study. Following guarded findings (``ichseg.follow``) depends on the guard, so it is swept at the
guard's defaults only: each (confidence, extend confidence, merge) is also run as the app runs it, guard defaults
and ``FOLLOW_SLICES`` of following (``pipeline.run``; masks shared by several thresholds are run once).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from evaluation.evaluate import OBJECTIVES, Models, Scores, StudyScore, cell, provenance_lines, wrong_studies
from ichseg import pipeline
from ichseg.boxes import DEFAULT_MERGE
from ichseg.follow import FOLLOW_SLICES, NO_FOLLOWING, FollowOptions
from ichseg.guard import Anatomy, Components, GuardOptions, cavity_and_density
from ichseg.labelled_study import Study, load_study, study_ids
from ichseg.segmenter import Crop, HemorrhageSegmenter

GUARD_SWEEP = {  # --choose-guard grid
    "hu_low": (25.0, 30.0, 35.0, 40.0),
    "hu_high": (100.0, 130.0, 160.0, 200.0),
    "margin_mm": (0.0, 0.5, 1.0),
    "min_ml": (0.0, 0.02, 0.05, 0.1, 0.2, 0.5),
}
SWEEP_ROWS_SAVED = 200  # of the thousands of rows, the best ones go into guard_choice.json (a tracked result)
CONFIDENCE_SWEEP = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)  # detector confidences tried, and the manifest's own
EXTEND_SWEEP = (0.05, 0.1)  # extend confidences tried below each confidence, and the manifest's own

Thresholds = tuple[float, float]  # (confidence, extend confidence); equal: the plain threshold


def sweep_confidences(current: float, grid: tuple[float, ...] | None = None) -> list[float]:
    """The confidence grid (default ``CONFIDENCE_SWEEP``) and the detector's current operating point, ascending."""
    return sorted({*(CONFIDENCE_SWEEP if grid is None else grid), round(current, 4)})


def sweep_thresholds(current: Thresholds, grid: tuple[float, ...] | None = None) -> list[Thresholds]:
    """Each confidence of ``sweep_confidences`` alone and with each lower extend confidence of ``EXTEND_SWEEP`` (and
    the current one), ascending."""
    extends = {*EXTEND_SWEEP, round(current[1], 4)}
    return sorted({(c, e) for c in sweep_confidences(current[0], grid) for e in (c, *extends) if e <= c})


def sweep_options() -> list[GuardOptions]:
    """Every guard setting of the --choose-guard grid, and the current defaults."""
    grid = GUARD_SWEEP
    product = itertools.product(grid["hu_low"], grid["hu_high"], grid["margin_mm"], grid["min_ml"])
    options = [GuardOptions(True, (low, high), min_ml, margin) for low, high, margin, min_ml in product]
    return options if GuardOptions() in options else [*options, GuardOptions()]


def sweep_guard(
    mask: np.ndarray, anatomy: Anatomy, options: list[GuardOptions]
) -> Iterator[tuple[Components, dict[GuardOptions, np.ndarray]]]:
    """Per (margin, HU range): the components of the mask's dense, intracranial part, and for each option which of
    them it keeps (``Components.kept``): every guard setting from one labelling."""
    for (margin, blood_range), group in itertools.groupby(options,
                                                          key=lambda o: (o.margin_mm, o.blood_range(anatomy))):
        _, dense = cavity_and_density(mask, anatomy, margin, blood_range)
        components = Components(dense)
        yield components, {option: components.kept(option.min_ml / anatomy.voxel_volume_ml) for option in group}


def slice_counts(components: Components, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per component label and slice: its voxels, and those of them in ``truth``; (labels, slices) arrays each. Any
    union of components then has its per-slice counts as a sum of rows."""
    where = np.nonzero(components.labels)
    index = components.labels[where] * len(truth) + where[0]
    size = len(components.sizes) * len(truth)
    voxels = np.bincount(index, minlength=size).reshape(len(components.sizes), len(truth))
    overlap = np.bincount(index[truth[where]], minlength=size).reshape(len(components.sizes), len(truth))
    return voxels, overlap


def guarded_scores(
    mask: np.ndarray, truth: np.ndarray, anatomy: Anatomy, options: list[GuardOptions], empty_slices: int
) -> dict[GuardOptions, StudyScore]:
    """Each option's score of the guarded ``mask`` against ``truth``, from per-component slice counts: no mask is
    built, and options keeping the same components share one score."""
    truth_counts = truth.sum(axis=(1, 2))
    out: dict[GuardOptions, StudyScore] = {}
    for components, group in sweep_guard(mask, anatomy, options):
        voxels, overlap = slice_counts(components, truth)
        by_kept: dict[bytes, StudyScore] = {}
        for option, kept in group.items():
            key = kept.tobytes()
            if key not in by_kept:
                by_kept[key] = StudyScore.from_counts(
                    voxels[kept].sum(axis=0), truth_counts, overlap[kept].sum(axis=0), anatomy.voxel_volume_ml,
                    empty_slices,
                )
            out[option] = by_kept[key]
    return out


def objective(summary: dict, name: str) -> float:
    """Mean of the objective's metrics that are defined (specificity is not on a split without negatives)."""
    values = [summary[metric] for metric in OBJECTIVES[name]]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


SweepKey = tuple[float, float, str, GuardOptions, int]  # confidence, extend, merge, guard, slices followed
SweepScores = dict[SweepKey, Scores]


class CropMemo(HemorrhageSegmenter):
    """The segmenter, each (slice, box) crop of one study segmented once: the sweep's confidences and merge modes
    share most of their crops. ``forget`` before the next study."""

    def __init__(self, segmenter: HemorrhageSegmenter) -> None:  # the same network and settings, not reloaded
        vars(self).update(vars(segmenter))
        self.memo: dict[Crop, np.ndarray] = {}

    def forget(self) -> None:
        self.memo.clear()

    def crop_masks(self, windowed: np.ndarray, crops: Sequence[Crop], batch_size: int = 8) -> Iterator[np.ndarray]:
        new = [crop for crop in dict.fromkeys(crops) if crop not in self.memo]
        self.memo.update(zip(new, super().crop_masks(windowed, new, batch_size), strict=True))
        return (self.memo[crop] for crop in crops)


def crop_to(anatomy: Anatomy, masks: list[np.ndarray]) -> tuple[Anatomy, tuple[slice, slice, slice]]:
    """The anatomy cut to the 3D box of all ``masks`` (and that box): every guarded mask lies inside the unguarded
    one, so the sweep scores the same on the box, ~10× faster. The slices cut away are empty in every mask and in the
    truth; the caller counts them (``StudyScore.measure(empty_slices=…)``)."""
    footprint = np.logical_or.reduce([mask.any(axis=0) for mask in masks])
    rows, columns = np.flatnonzero(footprint.any(axis=1)), np.flatnonzero(footprint.any(axis=0))
    slices = np.flatnonzero(np.logical_or.reduce([mask.any(axis=(1, 2)) for mask in masks]))
    if len(rows):
        box = (slice(slices[0], slices[-1] + 1), slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
    else:
        box = (slice(0, 1),) * 3
    return anatomy.cut(box), box


def followed_scores(
    study: Study, segmenter: HemorrhageSegmenter, runs: dict[tuple[float, float, str], pipeline.PipelineResult],
    anatomy: Anatomy,
) -> dict[tuple[float, float, str], StudyScore]:
    """Per (confidence, extend, merge), the score of the app's mask — guard defaults, then ``FOLLOW_SLICES`` of
    following — from the guard-off ``runs``; runs with the same segmenter mask and the same slices boxed share one."""
    truth, voxel_ml = study.labels > 0, study.series.voxel_volume_ml
    options = pipeline.PipelineOptions(follow=FollowOptions(FOLLOW_SLICES))
    shared: dict[bytes, StudyScore] = {}
    out: dict[tuple[float, float, str], StudyScore] = {}
    for key, run in runs.items():
        boxed = np.asarray([bool(found) for found in run.boxes])
        digest = hashlib.blake2b(np.packbits(run.unguarded).tobytes() + np.packbits(boxed).tobytes()).digest()
        if digest not in shared:
            mask, report = pipeline.guard(run.unguarded, study.series, options.guard, anatomy)
            followed = pipeline.follow_findings(segmenter, study.windowed, run.boxes, mask, anatomy, options.guard,
                                                options.follow)
            mask, _ = pipeline.guard_followed(followed, followed.add_to(run.boxes, run.unguarded)[1], mask, report,
                                              study.series, options.guard, anatomy)
            shared[digest] = StudyScore.measure(mask, truth, voxel_ml)
        out[key] = shared[digest]
    return out


def sweep_scores(
    args: argparse.Namespace, merges: tuple[str, ...]
) -> tuple[SweepScores, int, Thresholds, dict[str, str]]:
    """Scores of the product masks of the validation studies for each (confidence, extend confidence, merge mode,
    guard option, slices followed): every guard option (guard off included) without following, and the guard's
    defaults with ``FOLLOW_SLICES``; also the number of studies, the detector's current operating point and which
    weights were swept (``Models.provenance``)."""
    models = Models.load(args)
    if "product" not in models.segmenters or models.detector is None or models.confidence is None \
            or models.extend_confidence is None:
        raise SystemExit("--choose-guard needs both the detector and the crop segmenter")
    segmenter = CropMemo(models.segmenters["product"])
    current = (round(models.confidence, 4), round(models.extend_confidence, 4))
    options, off = sweep_options(), GuardOptions(enabled=False)
    scores: SweepScores = {}
    ids = study_ids(args.data, "val")[: args.limit]
    for study_id in tqdm(ids, desc="validation studies", unit="study"):
        study = load_study(args.data / study_id, args.calibrate)
        segmenter.forget()
        truth, voxel_ml = study.labels > 0, study.series.voxel_volume_ml
        anatomy = pipeline.anatomy_of(study.series, study.windowed)
        detections = pipeline.detect(models.detector, study.windowed)  # every box: each confidence filters them
        runs = {
            (confidence, extend, merge): pipeline.run(
                study.series, segmenter, windowed=study.windowed, detections=detections, anatomy=anatomy,
                options=pipeline.PipelineOptions(merge=merge, confidence=confidence, extend_confidence=extend,
                                                 guard=off, follow=NO_FOLLOWING),
            )
            for confidence, extend in sweep_thresholds(current, args.confidences) for merge in merges
        }
        for key, score in followed_scores(study, segmenter, runs, anatomy).items():
            scores.setdefault((*key, GuardOptions(), FOLLOW_SLICES), Scores()).record(score, study_id=study_id)
        masks = {key: run.unguarded for key, run in runs.items()}
        cut, box = crop_to(anatomy, [truth, *masks.values()])
        empty = len(truth) - len(cut.inside)  # slices with nothing predicted and nothing true
        truth = truth[box]
        same_mask: dict[bytes, list[tuple[float, float, str]]] = {}  # thresholds often give the same product mask
        for key, mask in masks.items():
            same_mask.setdefault(hashlib.blake2b(np.packbits(mask[box])).digest(), []).append(key)
        for keys in same_mask.values():
            mask = masks[keys[0]][box]
            measured = {off: StudyScore.measure(mask, truth, voxel_ml, empty),
                        **guarded_scores(mask, truth, cut, options, empty)}
            for key, (option, score) in itertools.product(keys, measured.items()):
                scores.setdefault((*key, option, 0), Scores()).record(score, study_id=study_id)
    swept = {role: label for role, label in models.provenance().items() if role in ("detector", "segmenter")}
    return scores, len(ids), current, swept


def _ranking(current: Thresholds) -> Callable[[dict], tuple]:
    """Sort key: best objective first; a tie keeps the detector's current thresholds, the default merge, the app's
    following and each current guard default the validation data cannot tell apart (the HU bounds are physics where
    the masks never reach them), then the gentlest guard."""
    default = GuardOptions().describe()

    def key(row: dict) -> tuple:
        guard = row["guard"]
        score = -row["objective"] if not math.isnan(row["objective"]) else math.inf
        low, high = guard["hu_range"]
        return (
            score, row["confidence"] != current[0], abs(row["confidence"] - current[0]),
            row["extend_confidence"] != current[1], abs(row["extend_confidence"] - current[1]),
            row["merge"] != DEFAULT_MERGE, row.get("follow_slices", 0) != FOLLOW_SLICES,
            guard["min_component_ml"] != default["min_component_ml"], guard["min_component_ml"],
            guard["hu_range"] != default["hu_range"], low - high,
            guard["cavity_margin_mm"] != default["cavity_margin_mm"], guard["cavity_margin_mm"],
        )

    return key


def choose_guard(args: argparse.Namespace) -> dict:
    """Sweep thresholds × merge modes × guard settings on the validation split; the best by ``args.objective``."""
    merges = tuple(args.merge)
    scores, studies, current, provenance = sweep_scores(args, merges)
    confidences = sweep_confidences(current[0], args.confidences)
    table: list[dict[str, Any]] = []
    for (confidence, extend, merge, option, follow), row in scores.items():
        summary = row.summary()
        summary.pop("seconds_per_slice")
        missed, called = wrong_studies(row.studies)
        summary["missed_studies"] = [s["study"] for s in missed]
        summary["called_studies"] = [s["study"] for s in called]
        table.append({"confidence": confidence, "extend_confidence": extend, "merge": merge,
                      "guard": option.describe(), "follow_slices": follow,
                      "objective": objective(summary, args.objective), **summary})
    table.sort(key=_ranking(current))

    def first(
        merge: str, guard: dict | None = None, enabled: bool = True, confidence: float | None = None,
        extend: float | None = None, plain: bool = False, follow: int | None = None,
    ) -> dict:
        return next(r for r in table if r["merge"] == merge and r["guard"]["enabled"] == enabled
                    and (guard is None or r["guard"] == guard)
                    and (follow is None or r["follow_slices"] == follow)
                    and (confidence is None or r["confidence"] == confidence)
                    and (extend is None or r["extend_confidence"] == extend)
                    and (not plain or r["extend_confidence"] == r["confidence"]))

    default_merge = DEFAULT_MERGE if DEFAULT_MERGE in merges else merges[0]

    return {
        "data": str(args.data),
        "split": "val",
        "studies": studies,
        "calibrate": args.calibrate,
        "model_versions": provenance,
        "objective": {"name": args.objective, "mean_of": list(OBJECTIVES[args.objective])},
        "current_confidence": current[0],
        "current_extend_confidence": current[1],
        "best": table[0],
        "best_per_merge": {merge: first(merge) for merge in merges},
        "best_plain_threshold": first(default_merge, plain=True),
        "best_at_current_confidence": {merge: first(merge, confidence=current[0], extend=current[1])
                                       for merge in merges},
        "current_defaults": {merge: first(merge, GuardOptions().describe(), confidence=current[0], extend=current[1],
                                          follow=FOLLOW_SLICES)
                             for merge in merges},
        "current_defaults_not_followed": {merge: first(merge, GuardOptions().describe(), confidence=current[0],
                                                       extend=current[1], follow=0)
                                          for merge in merges},
        "unguarded": {merge: first(merge, enabled=False, confidence=current[0], extend=current[1])
                      for merge in merges},
        "best_per_confidence": [first(default_merge, confidence=c) for c in confidences],
        "grid": {"confidence": confidences, "follow_slices": [0, FOLLOW_SLICES],
                 "extend_confidence": sorted({e for _, e in sweep_thresholds(current, args.confidences)}),
                 **{k: list(v) for k, v in GUARD_SWEEP.items()}},
        "evaluated": len(table),
        "sweep": table[:SWEEP_ROWS_SAVED],
    }


def guard_choice_markdown(choice: dict) -> str:
    """The best, the current defaults and no guard, per merge mode, as a Markdown table."""
    lines = [
        f"# Confidence, merge and guard choice on the validation split ({choice['studies']} studies, {choice['data']})",
        "",
        *provenance_lines(choice),
        f"Objective: mean of {', '.join(choice['objective']['mean_of'])}. The detector's current operating "
        f"confidence: {choice['current_confidence']:g}, continued across slices down to "
        f"{choice.get('current_extend_confidence', choice['current_confidence']):g} (`ichseg.z_continuity`; equal: "
        "a plain threshold).",
        "",
        "| configuration | objective | slice Dice | pooled Dice | study sens. | study spec. | FP slices "
        "| volume error (mL) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    named = [("best", choice["best"])]
    named += [(f"best, {m} merge", r) for m, r in choice["best_per_merge"].items()]
    named += [("best plain threshold", choice["best_plain_threshold"])]
    named += [(f"best at the current confidence, {m} merge", r)
              for m, r in choice["best_at_current_confidence"].items()]
    named += [(f"current defaults, {m} merge", r) for m, r in choice["current_defaults"].items()]
    named += [(f"current defaults without following, {m} merge", r)
              for m, r in choice.get("current_defaults_not_followed", {}).items()]
    named += [(f"no guard, {m} merge", r) for m, r in choice["unguarded"].items()]
    named += [(f"best at confidence {r['confidence']:g}", r) for r in choice["best_per_confidence"]]
    for name, r in named:
        g = r["guard"]
        setting = (f"HU {g['hu_range'][0]:g}–{g['hu_range'][1]:g}, margin {g['cavity_margin_mm']:g} mm, "
                   f"≥ {g['min_component_ml']:g} mL") if g["enabled"] else "guard off"
        if r.get("follow_slices"):
            setting += f", followed {r['follow_slices']} slices"
        lines.append(
            f"| {name}: confidence ≥ {r['confidence']:g}{_continued(r)}, {r['merge']} merge, {setting} "
            f"| {cell(r['objective'])} "
            f"| {cell(r['slice_dice'])} "
            f"| {cell(r['pooled_dice'])} | {cell(r['study_sensitivity'], 2)} | {cell(r['study_specificity'], 2)} "
            f"| {r['fp_slices']} / {r['negative_slices']} | {cell(r['volume_error_ml'], 2)} |"
        )
    best = choice["best"]
    if "missed_studies" in best:  # choices written before the studies were named have none
        lines += ["", f"The best setting misses {len(best['missed_studies'])} positive validation studies "
                      f"({', '.join(best['missed_studies']) or 'none'}) and calls {len(best['called_studies'])} "
                      f"negative ones positive ({', '.join(best['called_studies']) or 'none'})."]
    return "\n".join(lines) + "\n"


def _continued(row: dict) -> str:
    """", continued ≥ E" when the row's extend confidence is below its confidence."""
    extend = row.get("extend_confidence", row["confidence"])
    return f" (continued ≥ {extend:g})" if extend < row["confidence"] else ""
