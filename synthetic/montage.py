"""Montage of a study's windowed slices with the ground-truth outline: ``python -m synthetic.montage STUDY PNG``.

STUDY is a study folder holding ``ct/`` (or ``study/``) and ``labels.npz`` (or ``ground_truth/labels.npz``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ichseg.dicom_series import load_single_series
from ichseg.preview import save_montage
from ichseg.windowing import window_volume


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m synthetic.montage", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--tiles", type=int, default=12)
    args = parser.parse_args(argv)
    ct = args.study / "ct" if (args.study / "ct").is_dir() else args.study / "study"
    labels_path = next(p for p in (args.study / "labels.npz", args.study / "ground_truth" / "labels.npz") if p.exists())
    series = load_single_series(ct)
    labels = np.load(labels_path)["labels"]
    windowed = window_volume(series.hu, series.windows)
    indices = np.linspace(2, len(windowed) - 2, args.tiles).round().astype(int).tolist()
    save_montage(windowed, labels > 0, indices, args.png)
    print(args.png)


if __name__ == "__main__":
    main()
