"""Write the bundled demo study: ``python -m synthetic.demo --out demo``.

A 31-slice synthetic head CT (5 mm, standard kernel, brain window) with an intraparenchymal, an
intraventricular and a subdural hemorrhage, plus choroid plexus calcification and a scalp haematoma, stored with
RLE Lossless compression (smaller in the repository, and the app's compressed-input path gets exercised by
every demo run). Phantom data, not a patient.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import pydicom
from pydicom.uid import RLELossless

from synthetic.study import make_study

DEMO_SEED = 2026
DEMO_NUMBER = 1049  # with the skull-base/mimic phantoms; study 32 of the old generator is now negative


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m synthetic.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo"), help="folder for study/ and ground truth")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        record = make_study(DEMO_NUMBER, DEMO_SEED, Path(scratch))
        source = Path(scratch) / record.study_id
        study = args.out / "study"
        shutil.rmtree(study, ignore_errors=True)
        study.mkdir(parents=True)
        for path in sorted((source / "ct").glob("*.dcm")):
            dataset = pydicom.dcmread(path)
            dataset.compress(RLELossless)
            dataset.save_as(study / path.name, enforce_file_format=True)
        ground_truth = args.out / "ground_truth"
        ground_truth.mkdir(exist_ok=True)
        shutil.copy(source / "ground_truth_seg.dcm", ground_truth / "ground_truth_seg.dcm")
        shutil.copy(source / "labels.npz", ground_truth / "labels.npz")
    print(f"demo study {record.study_id}: {record.slices} slices, {', '.join(record.subtypes)}, "
          f"{record.hemorrhage_ml:.1f} mL → {study}")


if __name__ == "__main__":
    main()
