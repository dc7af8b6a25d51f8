"""HU of each tissue and subtype measured on generated studies: ``python -m benchmarks.hu_table DATA``.

Reads the DICOM back (so rescale and storage are included) and the tissue/label maps from ``labels.npz``;
prints a Markdown table of median and 5th–95th percentiles, and writes it as JSON beside the results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ichseg.dicom_series import load_single_series
from ichseg.subtypes import SUBTYPES
from synthetic.anatomy import TISSUES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hu_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder of generated studies")
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hu_table.json"))
    args = parser.parse_args(argv)
    samples: dict[str, list[np.ndarray]] = {}
    for study in sorted(p for p in args.data.iterdir() if (p / "labels.npz").is_file())[: args.studies]:
        hu = load_single_series(study / "ct").hu
        maps = np.load(study / "labels.npz")
        for name, code in TISSUES.items():
            samples.setdefault(name, []).append(hu[maps["tissues"] == code][::7])
        for index, subtype in enumerate(SUBTYPES):
            samples.setdefault(subtype, []).append(hu[maps["labels"] == index + 1])
    table = {}
    print("| region | voxels (1/7 of tissue) | median HU | 5th–95th percentile |\n|---|---|---|---|")
    for name, parts in samples.items():
        values = np.concatenate(parts)
        if values.size == 0:
            continue
        p5, median, p95 = np.percentile(values, [5, 50, 95])
        table[name] = {"voxels": int(values.size), "median": round(float(median), 1), "p5": round(float(p5), 1), "p95": round(float(p95), 1)}
        print(f"| {name} | {values.size} | {median:.1f} | {p5:.1f} … {p95:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
