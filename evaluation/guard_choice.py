"""``python -m evaluation.evaluate --choose-guard``: the product's operating point — detector confidence, merge mode and
guard — chosen on validation.

Each validation study is detected once (every box kept); for each confidence of ``CONFIDENCE_SWEEP`` and each merge
mode the product runs with the guard off (``ichseg.pipeline.run``), and every guard setting of ``GUARD_SWEEP`` is
applied to those masks and scored like the evaluation's rows. The confidence is chosen here, with the guard, because
the F1 maximum of the detector alone (the manifest's starting point) does not know what the guard will remove. The
volumes are cut to the in-plane box of prediction and truth first (the guard only removes, so nothing outside can
change), and components are labelled once per HU range and margin: the guard sweep adds seconds, not minutes, per
study.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

from evaluation.evaluate import OBJECTIVES, Models, Scores, cell
from ichseg import pipeline
from ichseg.boxes import DEFAULT_MERGE
from ichseg.guard import Anatomy, Components, GuardOptions, cavity_and_density
from ichseg.labelled_study import load_study, study_ids

GUARD_SWEEP = {  # --choose-guard grid
    "hu_low": (25.0, 30.0, 35.0, 40.0),
    "hu_high": (100.0, 130.0, 160.0, 200.0),
    "margin_mm": (0.0, 0.5, 1.0),
    "min_ml": (0.0, 0.02, 0.05, 0.1, 0.2, 0.5),
}
CONFIDENCE_SWEEP = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)  # detector confidences tried, and the manifest's own


def sweep_confidences(current: float, grid: tuple[float, ...] | None = None) -> list[float]:
    """The confidence grid (default ``CONFIDENCE_SWEEP``) and the detector's current operating point, ascending."""
    return sorted({*(CONFIDENCE_SWEEP if grid is None else grid), round(current, 4)})


def sweep_options() -> list[GuardOptions]:
    """Every guard setting of the --choose-guard grid, and the current defaults."""
    grid = GUARD_SWEEP
    product = itertools.product(grid["hu_low"], grid["hu_high"], grid["margin_mm"], grid["min_ml"])
    options = [GuardOptions(True, (low, high), min_ml, margin) for low, high, margin, min_ml in product]
    return options if GuardOptions() in options else [*options, GuardOptions()]


def sweep_masks(mask: np.ndarray, anatomy: Anatomy, options: list[GuardOptions]) -> dict[GuardOptions, np.ndarray]:
    """The guarded mask for each option, labelling components once per (margin, HU range)."""
    out: dict[GuardOptions, np.ndarray] = {}
    for (margin, hu_range), group in itertools.groupby(options, key=lambda o: (o.margin_mm, o.hu_range)):
        _, dense = cavity_and_density(mask, anatomy, margin, hu_range)
        components = Components(dense)
        for option in group:
            out[option] = components.at_least(option.min_ml / anatomy.voxel_volume_ml) if option.min_ml > 0 else dense
    return out


def objective(summary: dict, name: str) -> float:
    """Mean of the objective's metrics that are defined (specificity is not on a split without negatives)."""
    values = [summary[metric] for metric in OBJECTIVES[name]]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


SweepScores = dict[tuple[float, str, GuardOptions], Scores]


def crop_to(anatomy: Anatomy, masks: list[np.ndarray]) -> tuple[Anatomy, tuple[slice, slice]]:
    """The anatomy cut to the in-plane box of all ``masks`` (and that box): every guarded mask lies inside the
    unguarded one, so the sweep scores the same on the box, ~10× faster. All slices are kept (slice counts)."""
    footprint = np.logical_or.reduce([mask.any(axis=0) for mask in masks])
    rows, columns = np.flatnonzero(footprint.any(axis=1)), np.flatnonzero(footprint.any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)) if len(rows) else (slice(0, 1),) * 2
    cut = (slice(None), *window)
    return dataclasses.replace(
        anatomy, inside=anatomy.inside[cut], bone_distance_mm=anatomy.bone_distance_mm[cut],
        smoothed_hu=anatomy.smoothed_hu[cut],
    ), window


def sweep_scores(args: argparse.Namespace, merges: tuple[str, ...]) -> tuple[SweepScores, int, float]:
    """Scores of the product masks of the validation studies for each (confidence, merge mode, guard option), guard
    off included; also the number of studies and the detector's current operating point."""
    models = Models.load(args)
    if "product" not in models.segmenters or models.detector is None or models.confidence is None:
        raise SystemExit("--choose-guard needs both the detector and the crop segmenter")
    segmenter, current = models.segmenters["product"], models.confidence
    options, off = sweep_options(), GuardOptions(enabled=False)
    scores: SweepScores = {}
    ids = study_ids(args.data, "val")[: args.limit]
    for study_id in tqdm(ids, desc="validation studies", unit="study"):
        study = load_study(args.data / study_id)
        truth, voxel_ml = study.labels > 0, study.series.voxel_volume_ml
        anatomy = pipeline.anatomy_of(study.series)
        detections = pipeline.detect(models.detector, study.windowed)  # every box: each confidence filters them
        masks = {
            (confidence, merge): pipeline.run(
                study.series, segmenter, windowed=study.windowed, detections=detections, anatomy=anatomy,
                options=pipeline.PipelineOptions(merge=merge, confidence=confidence, guard=off),
            ).unguarded
            for confidence in sweep_confidences(current, args.confidences) for merge in merges
        }
        cut, (rows, columns) = crop_to(anatomy, [truth, *masks.values()])
        truth = truth[:, rows, columns]
        for key, mask in masks.items():
            mask = mask[:, rows, columns]
            scores.setdefault((*key, off), Scores()).add(mask, truth, voxel_ml, 0.0)
            for option, guarded in sweep_masks(mask, cut, options).items():
                scores.setdefault((*key, option), Scores()).add(guarded, truth, voxel_ml, 0.0)
    return scores, len(ids), round(current, 4)


def _ranking(current: float) -> Callable[[dict], tuple]:
    """Sort key: best objective first; a tie keeps the detector's current confidence, the default merge and each
    current guard default the validation data cannot tell apart (the HU bounds are physics where the masks never
    reach them), then the gentlest guard."""
    default = GuardOptions().describe()

    def key(row: dict) -> tuple:
        guard = row["guard"]
        score = -row["objective"] if not math.isnan(row["objective"]) else math.inf
        low, high = guard["hu_range"]
        return (
            score, row["confidence"] != current, abs(row["confidence"] - current), row["merge"] != DEFAULT_MERGE,
            guard["min_component_ml"] != default["min_component_ml"], guard["min_component_ml"],
            guard["hu_range"] != default["hu_range"], low - high,
            guard["cavity_margin_mm"] != default["cavity_margin_mm"], guard["cavity_margin_mm"],
        )

    return key


def choose_guard(args: argparse.Namespace) -> dict:
    """Sweep confidences × merge modes × guard settings on the validation split; the best by ``args.objective``."""
    merges = tuple(args.merge)
    scores, studies, current = sweep_scores(args, merges)
    table: list[dict[str, Any]] = []
    for (confidence, merge, option), row in scores.items():
        summary = row.summary()
        summary.pop("seconds_per_slice")
        table.append({"confidence": confidence, "merge": merge, "guard": option.describe(),
                      "objective": objective(summary, args.objective), **summary})
    table.sort(key=_ranking(current))

    def first(merge: str, guard: dict | None = None, enabled: bool = True, confidence: float | None = None) -> dict:
        return next(r for r in table if r["merge"] == merge and r["guard"]["enabled"] == enabled
                    and (guard is None or r["guard"] == guard)
                    and (confidence is None or r["confidence"] == confidence))

    return {
        "data": str(args.data),
        "split": "val",
        "studies": studies,
        "objective": {"name": args.objective, "mean_of": list(OBJECTIVES[args.objective])},
        "current_confidence": current,
        "best": table[0],
        "best_per_merge": {merge: first(merge) for merge in merges},
        "best_at_current_confidence": {merge: first(merge, confidence=current) for merge in merges},
        "current_defaults": {merge: first(merge, GuardOptions().describe(), confidence=current) for merge in merges},
        "unguarded": {merge: first(merge, enabled=False, confidence=current) for merge in merges},
        "grid": {"confidence": sweep_confidences(current, args.confidences),
                 **{k: list(v) for k, v in GUARD_SWEEP.items()}},
        "sweep": table,
    }


def guard_choice_markdown(choice: dict) -> str:
    """The best, the current defaults and no guard, per merge mode, as a Markdown table."""
    lines = [
        f"# Confidence, merge and guard choice on the validation split ({choice['studies']} studies, {choice['data']})",
        "",
        f"Objective: mean of {', '.join(choice['objective']['mean_of'])}. The detector's current operating "
        f"confidence: {choice['current_confidence']:g}.",
        "",
        "| configuration | objective | slice Dice | pooled Dice | study sens. | study spec. | FP slices "
        "| volume error (mL) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    named = [("best", choice["best"])]
    named += [(f"best, {m} merge", r) for m, r in choice["best_per_merge"].items()]
    named += [(f"best at the current confidence, {m} merge", r)
              for m, r in choice["best_at_current_confidence"].items()]
    named += [(f"current defaults, {m} merge", r) for m, r in choice["current_defaults"].items()]
    named += [(f"no guard, {m} merge", r) for m, r in choice["unguarded"].items()]
    for name, r in named:
        g = r["guard"]
        setting = (f"HU {g['hu_range'][0]:g}–{g['hu_range'][1]:g}, margin {g['cavity_margin_mm']:g} mm, "
                   f"≥ {g['min_component_ml']:g} mL") if g["enabled"] else "guard off"
        lines.append(
            f"| {name}: confidence ≥ {r['confidence']:g}, {r['merge']} merge, {setting} | {cell(r['objective'])} "
            f"| {cell(r['slice_dice'])} "
            f"| {cell(r['pooled_dice'])} | {cell(r['study_sensitivity'], 2)} | {cell(r['study_specificity'], 2)} "
            f"| {r['fp_slices']} / {r['negative_slices']} | {cell(r['volume_error_ml'], 2)} |"
        )
    return "\n".join(lines) + "\n"
