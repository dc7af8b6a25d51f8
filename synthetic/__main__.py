"""Generate synthetic head-CT studies: ``python -m synthetic --out data/synthetic --studies 200``.

Writes, under --out: one folder per study (``ct/`` DICOM series, ``labels.npz``, ``ground_truth_seg.dcm``),
``studies.csv`` (manifest with the split) and ``boxes.csv`` (BHX-style boxes, one row per lesion per slice; label
fragments of one subtype within 5 mm are one lesion, as a reader boxes them: ``ichseg.boxes.lesion_boxes``).
The studies are phantoms for demonstration and testing, not patient data: heads from below the skull base to the
vertex with the classic hemorrhage mimics (calcifications, dense venous sinuses, tentorium/falx, petrous bones,
beam hardening, scalp haematoma, ...), ≈45 % without hemorrhage, slice thickness 0.625–5 mm. Thin series have
many slices; ``--max-slices N`` draws an acquisition that would exceed N slices at the thinnest thickness that fits.
Generating into a folder that already holds studies adds to its ``studies.csv`` and ``boxes.csv``: rows of studies
this run does not regenerate are kept (``--first`` and a new ``--seed`` extend a set; the split is fixed by the study
number, so old studies never change split).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from tqdm import tqdm

from ichseg.atomic_file import atomic_path
from synthetic.ct_writer import StudyIdentity
from synthetic.study import BOX_COLUMNS, StudyRecord, make_study, study_id

STUDY_COLUMNS = ("study_id", "split", "slices", "subtypes", "hemorrhage_ml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--studies", type=int, default=20, help="number of studies (default 20)")
    parser.add_argument("--first", type=int, default=0, help="number of the first study (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the set; same seed, same studies")
    parser.add_argument("--max-slices", type=int, default=None,
                        help="cap on slices per series: thinner acquisitions are drawn thicker to fit "
                             "(default: no cap)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    return parser.parse_args(argv)


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    """CSV written to a temporary name and renamed into place."""
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def kept_rows(path: Path, header: tuple[str, ...], key: str, regenerated: set[str]) -> list[tuple[str, ...]]:
    """Rows of an existing CSV whose ``key`` column is not in ``regenerated``: what an earlier run into the same
    folder wrote about studies this run leaves alone. A CSV with other columns is an error, not overwritten."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        found = tuple(next(reader, ()))
        if found != header:
            raise SystemExit(f"{path}: columns {', '.join(found) or '(none)'} are not {', '.join(header)}; "
                             "move it away or choose another --out")
        column = header.index(key)
        return [tuple(row) for row in reader if row[column] not in regenerated]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    numbers = range(args.first, args.first + args.studies)
    # what earlier runs wrote about the studies this run leaves alone, read first: a foreign CSV stops the run here
    studies = kept_rows(args.out / "studies.csv", STUDY_COLUMNS, "study_id", {study_id(args.seed, n) for n in numbers})
    regenerated_uids = {StudyIdentity(n, args.seed).study_uid for n in numbers}
    boxes = kept_rows(args.out / "boxes.csv", BOX_COLUMNS, "StudyInstanceUID", regenerated_uids)
    started = time.perf_counter()
    make = partial(make_study, seed=args.seed, root=args.out, max_slices=args.max_slices)
    records: list[StudyRecord]
    if args.workers <= 1:  # in-process: forking a process that already runs torch/OpenCV threads can hang
        records = [make(number) for number in tqdm(numbers, desc="studies", unit="study")]
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            records = list(tqdm(pool.map(make, numbers), total=len(numbers), desc="studies", unit="study"))
    studies += [(r.study_id, r.split, str(r.slices), ";".join(r.subtypes), f"{r.hemorrhage_ml:.2f}") for r in records]
    boxes += [row for r in records for row in r.box_rows]
    write_csv(args.out / "studies.csv", STUDY_COLUMNS, sorted(studies))
    write_csv(args.out / "boxes.csv", BOX_COLUMNS, sorted(boxes, key=lambda row: row[0]))  # stable: slice order kept
    seconds = time.perf_counter() - started
    print(f"{len(records)} studies in {seconds:.0f} s ({seconds / max(1, len(records)):.1f} s/study) → {args.out}")


if __name__ == "__main__":
    main()
