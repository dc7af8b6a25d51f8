"""Several detector datasets → one ultralytics ``data.yaml``: their training splits together, validation and test from
the first.

``python -m training.combine_datasets --out data/yolo_combined data/yolo/data.yaml data/yolo_more/data.yaml``

Why: more training studies (a second phantom set, or real BHX data beside the phantoms) should not move the
validation and test splits, or a new leg's figures stop being comparable with the earlier ones. The datasets must
agree on the class names and on what the image channels hold (``ich_input``): mixing grey and three-window images
would train a detector on two inputs and serve it one. A study in the first dataset's validation or test split that
is also in any training split (same study folder name in the converters' ``slices.csv``) is refused: it would leak.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import yaml

from ichseg.atomic_file import atomic_path
from training.detector_dataset import INPUT_KEY, images_held
from training.study_leaks import refuse_held_out

HELD_OUT = ("val", "test")


def dataset_root(data: dict[str, Any], data_yaml: Path) -> Path:
    """The folder a dataset's split entries are relative to (ultralytics: ``path:``, else the YAML's folder)."""
    return Path(data.get("path") or data_yaml.parent).resolve()


def train_entries(data: dict[str, Any], data_yaml: Path) -> list[str]:
    """A dataset's training folders or image lists as absolute paths (``train:`` may be one entry or a list)."""
    entries = data["train"] if isinstance(data["train"], list) else [data["train"]]
    return [str(dataset_root(data, data_yaml) / entry) for entry in entries]


def studies_by_split(data: dict[str, Any], data_yaml: Path) -> dict[str, set[str]]:
    """Study folder names per split from the converter's ``slices.csv`` (empty where a dataset has none)."""
    found: dict[str, set[str]] = {}
    index = dataset_root(data, data_yaml) / "slices.csv"
    if index.exists():
        with index.open(newline="") as handle:
            for row in csv.DictReader(handle):
                found.setdefault(row["split"], set()).add(row["study_id"])
    return found


def load(data_yaml: Path) -> dict[str, Any]:
    """One dataset's YAML, with the keys a combination needs checked by name."""
    data = yaml.safe_load(data_yaml.read_text())
    missing = [key for key in ("train", "names") if key not in (data or {})]
    if missing:
        raise ValueError(f"{data_yaml}: no {', '.join(missing)}")
    return dict(data)


def combine(data_yamls: list[Path], out: Path) -> Path:
    """Write ``out/data.yaml`` training on every dataset's training split and validating/testing on the first's."""
    if not data_yamls:
        raise ValueError("no dataset to combine")
    loaded = [load(path) for path in data_yamls]
    first, first_path = loaded[0], data_yamls[0]
    absent = [split for split in HELD_OUT if split not in first]
    if absent:
        raise ValueError(f"{first_path}: no {' or '.join(absent)} split (the first dataset gives validation and test)")
    expected = images_held(first)
    for path, data in zip(data_yamls[1:], loaded[1:], strict=True):
        if data["names"] != first["names"]:
            raise ValueError(f"{path}: class names {data['names']} differ from {first_path}'s {first['names']}")
        held = images_held(data)
        if held != expected:
            raise ValueError(f"{path}: images hold {held!r}, {first_path}'s {expected!r}")
    pairs = list(zip(loaded, data_yamls, strict=True))
    entries = list(dict.fromkeys(entry for data, path in pairs for entry in train_entries(data, path)))  # no doubles
    missing = [entry for entry in entries if not Path(entry).exists()]
    if missing:
        raise ValueError(f"training folders not found: {', '.join(missing)}")
    splits = [studies_by_split(data, path) for data, path in pairs]  # each slices.csv read once
    held_out = set().union(*(splits[0].get(split, set()) for split in HELD_OUT))
    training = [(str(path), studies.get("train", set())) for (_, path), studies in zip(pairs, splits, strict=True)]
    refuse_held_out(held_out, str(first_path), training)
    combined = {
        "path": str(dataset_root(first, first_path)), "train": entries, **{split: first[split] for split in HELD_OUT},
        "names": first["names"], INPUT_KEY: expected,
    }
    out.mkdir(parents=True, exist_ok=True)
    target = out / "data.yaml"
    with atomic_path(target) as temporary:
        temporary.write_text(yaml.safe_dump(combined, sort_keys=False))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.combine_datasets", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="+", help="data.yaml of each dataset; the first gives val and test")
    parser.add_argument("--out", type=Path, required=True, help="folder for the combined data.yaml")
    args = parser.parse_args(argv)
    try:
        target = combine(args.data, args.out)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise SystemExit(f"combine_datasets: {error}") from error
    print(f"data YAML: {target.resolve()}")


if __name__ == "__main__":
    main()
