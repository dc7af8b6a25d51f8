"""HU of each tissue and subtype measured on generated studies: ``python -m benchmarks.hu_table DATA``.

Reads the DICOM back (so rescale, partial volume, artefacts and storage are included) and the tissue/label
maps from ``labels.npz``; prints a Markdown table of median and 5th–95th percentiles, and writes it as JSON
beside the results. Rows cover every tissue code of ``synthetic.anatomy.TISSUES`` (skull-base anatomy and the
hemorrhage mimics included: calcifications, venous sinuses, tentorium, scalp haematoma, ...) and each
hemorrhage subtype. The ``mimic`` column marks the codes that imitate blood; ``labelled`` is the share of a
tissue's voxels carrying a hemorrhage label in the ground truth (0 for every mimic: labels are intracranial
blood only). ``studies`` counts the studies in which the tissue occurs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ichseg.dicom_series import load_single_series
from ichseg.subtypes import SUBTYPES
from synthetic.anatomy import MIMICS, TISSUES

SUBSAMPLE = 7  # every 7th voxel of a tissue (percentiles barely move; memory does)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hu_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder of generated studies")
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hu_table.json"))
    args = parser.parse_args(argv)
    samples: dict[str, list[np.ndarray]] = {}
    labelled: dict[str, list[int]] = {}
    present: dict[str, int] = {}
    for study in sorted(p for p in args.data.iterdir() if (p / "labels.npz").is_file())[: args.studies]:
        hu = load_single_series(study / "ct").hu
        maps = np.load(study / "labels.npz")
        tissues, labels = maps["tissues"], maps["labels"]
        for name, code in TISSUES.items():
            region = tissues == code
            samples.setdefault(name, []).append(hu[region][::SUBSAMPLE])
            counts = labelled.setdefault(name, [0, 0])
            counts[0] += int((region & (labels > 0)).sum())
            counts[1] += int(region.sum())
            present[name] = present.get(name, 0) + int(region.any())
        for index, subtype in enumerate(SUBTYPES):
            region = labels == index + 1
            samples.setdefault(subtype, []).append(hu[region])
            present[subtype] = present.get(subtype, 0) + int(region.any())
    table = {}
    print(
        f"| region | mimic | studies | voxels (1/{SUBSAMPLE} of tissue) | median HU | 5th–95th percentile | labelled |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, parts in samples.items():
        values = np.concatenate(parts)
        if values.size == 0:
            continue
        p5, median, p95 = np.percentile(values, [5, 50, 95])
        row = {"voxels": int(values.size), "median": round(float(median), 1), "p5": round(float(p5), 1),
               "p95": round(float(p95), 1), "studies": present.get(name, 0), "mimic": name in MIMICS}
        share = ""
        if name in labelled and labelled[name][1]:
            row["labelled_fraction"] = round(labelled[name][0] / labelled[name][1], 4)
            share = f"{row['labelled_fraction']:.3f}"
        table[name] = row
        print(f"| {name} | {'yes' if row['mimic'] else ''} | {row['studies']} | {values.size} | {median:.1f} "
              f"| {p5:.1f} … {p95:.1f} | {share} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
