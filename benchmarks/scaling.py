"""How time and memory grow with slices and with the share of positive slices: ``python -m benchmarks.scaling``.

Studies come from the repository's phantom generator (``synthetic``), cut to exactly N slices: the head of a
generator study (same anatomy, lesions, mimics, 512 matrix) is rendered from its lowest slice to the vertex with
N evenly spaced slices (thickness = coverage / (N − 1): ≈ 5 mm at 30 slices, ≈ 0.3 mm at 600 — thinner than a
scanner's, but every slice is a 512² head slice, which is what the app's work depends on). Patient motion is
left out so that studies of one head differ only in slice count. Studies are cached under
``data/benchmarks/scaling/`` (``meta.json`` is written last: a folder without it is regenerated).

- ``slice_counts``: the extensive-hemorrhage head (the demo study's) at each ``--slices`` count;
- ``positive_share``: three heads at ``--share-slices`` slices — no hemorrhage, one tiny clot, extensive
  hemorrhage — since only slices where the detector puts a box go through the segmenter; and the worst case,
  the extensive head with ``ICH_CONFIDENCE=0.001`` (a box on nearly every slice, so every slice is segmented).

Each study is run once (``--runs``) as ``python app.py`` in a fresh process: wall time from start to exit,
the report's stage seconds, peak RSS, and the share of slices with a detector box (report) beside the ground
truth's share of slices with hemorrhage. ``fits`` gives time = fixed + per-slice × slices by least squares.
Writes ``benchmarks/results/scaling.json``; ``--quick`` runs 8-slice studies only (a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.common import (
    ROOT,
    finish,
    linear_fit,
    machine_info,
    median_stages,
    paper_comparison,
    pipeline_seconds,
    run_app,
    write_json,
)

CACHE = ROOT / "data" / "benchmarks" / "scaling"
SLICE_COUNTS = (30, 60, 120, 600)
QUICK_SLICES = 8
RENDER_CHUNK = 64  # slices rendered at a time (bounds the generator's memory at 600 slices)

#: Generator heads (seed, study number), found by sampling ``SyntheticHead`` (all drawn at a 512 matrix).
HEADS = {
    "negative": (2026, 17, "no hemorrhage, no mimics"),
    "small": (2026, 111, "one tiny intraparenchymal clot (radius 3.8 mm)"),
    "extensive": (2026, 1049, "the demo study's head: intraventricular, subdural and intraparenchymal blood"),
}
SCALING_HEAD = "extensive"
EVERY_SLICE_CONFIDENCE = 0.001  # ICH_CONFIDENCE of the worst case: a box on (almost) every slice


def build_study(head: str, slices: int, cache: Path = CACHE) -> dict:
    """Render ``head`` with exactly ``slices`` slices into ``cache/<head>_<slices>/ct`` (cached); its meta."""
    import numpy as np

    from synthetic.ct_writer import StudyIdentity, write_ct_series
    from synthetic.volume import SyntheticHead

    folder = cache / f"{head}_{slices:04d}"
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    if slices < 2:
        raise ValueError("a study needs at least 2 slices")
    started = time.perf_counter()
    seed, number, description = HEADS[head]
    rng = np.random.default_rng([seed, number])
    phantom = SyntheticHead.sample(rng)
    drawn = phantom.acquisition
    lowest = drawn.first_slice_w
    top = lowest + drawn.slice_thickness * (drawn.slice_count - 1)
    thickness = round((top - lowest) / (slices - 1), 4)
    acquisition = dataclasses.replace(
        drawn, slice_count=slices, slice_thickness=thickness, first_slice_w=top - thickness * (slices - 1),
        matrix=512, pixel_spacing=drawn.pixel_spacing if drawn.matrix == 512 else 0.45, motion={},
        slice_noise=rng.uniform(0.85, 1.15, slices).astype(np.float32),
    )
    phantom = dataclasses.replace(phantom, acquisition=acquisition)
    hu = np.empty((slices, 512, 512), dtype=np.float32)
    positive = np.zeros(slices, dtype=bool)
    blood_voxels = 0
    for start in range(0, slices, RENDER_CHUNK):
        indices = list(range(start, min(slices, start + RENDER_CHUNK)))
        chunk, labels, _ = phantom.render(rng, indices)
        hu[indices[0]:indices[-1] + 1] = chunk
        positive[indices[0]:indices[-1] + 1] = labels.reshape(len(indices), -1).any(axis=1)
        blood_voxels += int((labels > 0).sum())
    scratch = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    identity = StudyIdentity(number, seed * 100_000 + slices)  # distinct UIDs for each slice count of a head
    write_ct_series(hu, acquisition, identity, scratch / "ct", rng)
    meta = {
        "head": head, "description": description, "generator_seed": seed, "generator_study": number,
        "slices": slices, "slice_thickness_mm": thickness, "matrix": 512,
        "pixel_spacing_mm": round(acquisition.pixel_spacing, 4),
        "lesions": [{"subtype": lesion.name, "variant": lesion.variant} for lesion in phantom.lesions],
        "ground_truth_positive_slices": int(positive.sum()),
        "ground_truth_positive_share": round(float(positive.mean()), 4),
        "ground_truth_ml": round(blood_voxels * acquisition.pixel_spacing ** 2 * thickness / 1000, 2),
        "generation_s": round(time.perf_counter() - started, 1),
    }
    (scratch / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    scratch.replace(folder)
    return meta


def measure(head: str, slices: int, models: Path, runs: int, cache: Path, confidence: float | None = None) -> dict:
    """Build (or reuse) the study and run the app on it ``runs`` times; the median run's figures.

    ``confidence``: ICH_CONFIDENCE for the app (None: the detector's operating point).
    """
    meta = build_study(head, slices, cache)
    env = dict(os.environ)
    if confidence is not None:
        env["ICH_CONFIDENCE"] = str(confidence)
    measured = [run_app(cache / f"{head}_{slices:04d}" / "ct", models, env) for _ in range(runs)]
    ok = [r for r in measured if r["exit_status"] == 0]
    point = {"head": head, "slices": slices, "confidence": confidence, "slice_thickness_mm": meta["slice_thickness_mm"],
             "ground_truth_positive_share": meta["ground_truth_positive_share"],
             "ground_truth_ml": meta["ground_truth_ml"], "runs": len(measured), "failed_runs": len(measured) - len(ok)}
    if not ok:
        point["exit_status"] = measured[-1]["exit_status"]
        point["log_tail"] = measured[-1].get("log_tail")
        print(f"{head} {slices} slices: exit {point['exit_status']}", flush=True)
        return point
    stages = median_stages(ok)
    wall = statistics.median(r["wall_s"] for r in ok)
    point.update({
        "wall_s": round(wall, 3),
        "s_per_slice": round(wall / slices, 4),
        "stages_s": stages,
        "pipeline_s": pipeline_seconds(stages),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in ok),
        "cpu_s": round(statistics.median(r["cpu_s"] for r in ok), 2),
        "box_share": ok[0]["box_share"],
        "slices_with_box": ok[0]["slices_with_box"],
        "slices_segmented": ok[0]["slices_segmented"],
        "hemorrhage_volume_ml": ok[0]["hemorrhage_volume_ml"],
    })
    setting = "" if confidence is None else f", confidence {confidence}"
    print(f"{head} {slices} slices{setting}: {wall:.1f} s, {point['peak_rss_mib']:.0f} MiB, "
          f"{point['slices_with_box']} slices with a box", flush=True)
    return point


def fits(points: list[dict], x_key: str, stages: str = "") -> dict:
    """Least-squares y = fixed + per-unit · x for the wall time, the pipeline, peak RSS and the stages whose name
    contains ``stages`` (all by default), over the successful points (None with fewer than two distinct x)."""
    ok = [p for p in points if "wall_s" in p]
    xs = [p[x_key] for p in ok]
    result = {"wall_s": linear_fit(xs, [p["wall_s"] for p in ok]),
              "pipeline_s": linear_fit(xs, [p["pipeline_s"] for p in ok]),
              "peak_rss_mib": linear_fit(xs, [p["peak_rss_mib"] for p in ok])}
    for stage in (ok[0]["stages_s"] if ok else {}):
        if stages.lower() in stage.lower() and all(stage in p["stages_s"] for p in ok):
            result[stage] = linear_fit(xs, [p["stages_s"][stage] for p in ok])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=list(SLICE_COUNTS),
                        help=f"slice counts of the scaling series (default {' '.join(map(str, SLICE_COUNTS))})")
    parser.add_argument("--share-slices", type=int, default=60, help="slice count of the positive-share studies (60)")
    parser.add_argument("--runs", type=int, default=1, help="app runs per study (default 1; the median is kept)")
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK_SLICES}-slice studies only")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--cache", type=Path, default=CACHE, help="generated studies (default data/benchmarks/scaling)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.slices, args.share_slices = [QUICK_SLICES], QUICK_SLICES
    result: dict = {"benchmark": "python -m benchmarks.scaling", "machine": machine_info(),
                    "heads": {name: {"generator_seed": s, "generator_study": n, "description": d}
                              for name, (s, n, d) in HEADS.items()},
                    "runs_per_study": args.runs}
    series = [measure(SCALING_HEAD, n, args.models, args.runs, args.cache) for n in sorted(set(args.slices))]
    result["slice_counts"] = {"head": SCALING_HEAD, "points": series, "fits_per_slice": fits(series, "slices")}
    share = []
    for head in HEADS:
        if head == SCALING_HEAD and args.share_slices in args.slices:
            share.append(next(p for p in series if p["slices"] == args.share_slices))
        else:
            share.append(measure(head, args.share_slices, args.models, args.runs, args.cache))
    # upper bound: a confidence that boxes (almost) every slice sends every slice through the segmenter
    share.append(measure(SCALING_HEAD, args.share_slices, args.models, args.runs, args.cache, EVERY_SLICE_CONFIDENCE))
    result["positive_share"] = {"slices": args.share_slices, "points": share,
                                "fits_per_slice_with_box": fits(share, "slices_with_box", stages="segmentation")}
    marginal = (result["slice_counts"]["fits_per_slice"]["wall_s"] or {}).get("per_unit_s")
    result["paper"] = paper_comparison(marginal, "marginal wall seconds per added slice (least-squares slope over "
                                                 "the slice counts)")
    write_json(finish(result), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
