"""How the product's answer holds when the scanner differs: ``python -m benchmarks.robustness DATA``.

The phantoms draw kernels, noise, pose and field of view, but every tissue's HU comes from one calibration. Real
scanners differ: water is accepted within ±4 HU, brain and blood read several HU apart between vendors and kVp,
and low-dose protocols double the noise. This benchmark copies the studies of one split, changes their DICOM as a
different scanner would (a calibration offset through RescaleIntercept, which shifts every HU exactly; added
correlated noise on the stored pixels), runs ``evaluation.evaluate`` on each copy with the app's defaults, and
writes the product's figures per perturbation to JSON. Labels are the original ones (linked, not copied).

Run on the validation split (the default) when choosing a training change by it; the test split is for reporting.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

from benchmarks.common import cpu_model
from evaluation.evaluate import configure_threads, evaluate, json_ready, parse_args, wrong_studies
from ichseg.labelled_study import LABELS_FILE, SERIES_FOLDER, STUDIES_CSV, study_ids

#: Figures kept per row of the evaluation.
FIGURES = ("slice_dice", "pooled_dice", "study_sensitivity", "study_specificity", "fp_slices", "negative_slices",
           "median_volume_error_ml", "volume_error_ml")
#: Rows of the evaluation reported: the app's answer, and ground-truth boxes through the same guard.
ROWS = ("product+guard", "oracle+guard")


@dataclass(frozen=True)
class Perturbation:
    """One way a different scanner changes the stored slices."""

    name: str
    description: str
    hu_offset: float = 0.0  # HU added to every pixel (RescaleIntercept)
    added_noise_hu: float = 0.0  # standard deviation of added noise, HU (correlated over 0.6 px, as a standard kernel)


PERTURBATIONS = (
    Perturbation("reference", "the studies as generated"),
    Perturbation("hu+6", "calibration offset +6 HU (every tissue, blood included, reads 6 HU higher)", hu_offset=6),
    Perturbation("hu-6", "calibration offset -6 HU", hu_offset=-6),
    Perturbation("noise+8", "8 HU of correlated noise added (about twice the median noise: a low-dose scan)",
                 added_noise_hu=8),
)


def perturb_slice(ds: pydicom.Dataset, perturbation: Perturbation, rng: np.random.Generator) -> None:
    """Change one stored slice in place; pixels outside the field of view (padding) stay as they were."""
    if perturbation.hu_offset:
        ds.RescaleIntercept = f"{float(ds.RescaleIntercept) + perturbation.hu_offset:g}"
    if perturbation.added_noise_hu:
        stored = ds.pixel_array.astype(np.float32)
        padding = getattr(ds, "PixelPaddingValue", None)
        outside = stored == (padding if padding is not None else 0)
        noise = ndimage.gaussian_filter(rng.normal(size=stored.shape).astype(np.float32), 0.6)
        noise *= np.float32(perturbation.added_noise_hu / noise.std() / float(ds.RescaleSlope))
        stored = np.where(outside, stored, np.rint(stored + noise))
        dtype = np.int16 if ds.PixelRepresentation == 1 else np.uint16
        info = np.iinfo(dtype)
        ds.PixelData = np.clip(stored, info.min, info.max).astype(dtype).tobytes()


def perturbed_copy(data: Path, split: str, perturbation: Perturbation, out: Path, seed: int) -> Path:
    """``out`` laid out as a labelled data folder whose "test" split is ``data``'s ``split``, perturbed."""
    ids = study_ids(data, split)
    rng = np.random.default_rng(seed)
    for study_id in ids:
        source, target = data / study_id, out / study_id
        (target / SERIES_FOLDER).mkdir(parents=True, exist_ok=True)
        labels = target / LABELS_FILE
        if not labels.exists():
            labels.symlink_to((source / LABELS_FILE).resolve())
        for path in sorted((source / SERIES_FOLDER).iterdir()):
            ds = pydicom.dcmread(path)
            perturb_slice(ds, perturbation, rng)
            ds.save_as(target / SERIES_FOLDER / path.name)
    with (out / STUDIES_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_id", "split"])
        writer.writerows([study_id, "test"] for study_id in ids)
    return out


def run_evaluation(data: Path, detector: Path, segmenter: Path, extra: list[str]) -> dict:
    """The evaluation's rows, the studies each gets wrong, and the detector figures for one folder."""
    configure_threads()
    argv = ["--data", str(data), "--detector", str(detector), "--segmenter", str(segmenter), "--merge", "slice", *extra]
    results = json_ready(evaluate(parse_args(argv)))
    assert isinstance(results, dict)
    rows = {key: {name: results["rows"][key].get(name) for name in FIGURES} for key in ROWS if key in results["rows"]}
    for key in rows:  # which studies flip is what to open in a viewer
        missed, called = wrong_studies(results.get("studies", {}).get(key, []))
        rows[key]["missed_studies"] = [s["study"] for s in missed]
        rows[key]["called_negative_studies"] = [s["study"] for s in called]
    detector_figures = results.get("detector", {})
    rows["detector"] = {name: detector_figures.get(name) for name in ("test_mAP50", "test_mAP50_95")}
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="labelled data folder (studies.csv, <study>/ct, <study>/labels.npz)")
    parser.add_argument("--split", default="val", help="the split to perturb (default val)")
    parser.add_argument("--work", type=Path, default=Path("data/robustness"), help="perturbed copies go here")
    parser.add_argument("--detector", type=Path, default=Path("models/detector"))
    parser.add_argument("--segmenter", type=Path, default=Path("models/segmenter"))
    parser.add_argument("--evaluate-args", default="",
                        help='further evaluation.evaluate options, e.g. "--confidence 0.4 --no-calibrate"')
    parser.add_argument("--only", default=None, help="comma-separated perturbation names (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/robustness.json"))
    args = parser.parse_args(argv)
    extra = shlex.split(args.evaluate_args)
    chosen = [p for p in PERTURBATIONS if args.only is None or p.name in args.only.split(",")]
    report: dict = {"data": str(args.data), "split": args.split, "detector": str(args.detector),
                    "segmenter": str(args.segmenter), "evaluate_args": args.evaluate_args,
                    "cpu": cpu_model(), "perturbations": {}}
    if args.out.exists():  # perturbations measured earlier (e.g. with --only) are kept
        report["perturbations"] = json.loads(args.out.read_text()).get("perturbations", {})
    for perturbation in chosen:
        started = time.monotonic()
        folder = perturbed_copy(args.data, args.split, perturbation, args.work / perturbation.name, args.seed)
        rows = run_evaluation(folder, args.detector, args.segmenter, extra)
        report["perturbations"][perturbation.name] = {"description": perturbation.description, **rows,
                                                      "seconds": round(time.monotonic() - started)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.out.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(temporary, args.out)
        print(perturbation.name, json.dumps(rows))


if __name__ == "__main__":
    main()
