"""Several detector datasets → one ultralytics ``data.yaml``: their training splits together, validation and test from
the first.

``python -m training.combine_datasets --out data/yolo_combined data/yolo/data.yaml data/yolo_more/data.yaml``

Why: more training studies (a second phantom set, or real BHX data beside the phantoms) should not move the
validation and test splits, or a new leg's figures stop being comparable with the earlier ones. The datasets must
agree on the class names and on what the image channels hold (``ich_input``): mixing grey and three-window images
would train a detector on two inputs and serve it one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from training.detector_dataset import INPUT_KEY, dataset_input


def train_dirs(data: dict[str, Any]) -> list[str]:
    """A dataset's training folders as absolute paths (``train:`` may be one folder or a list, relative to ``path``)."""
    entries = data["train"] if isinstance(data["train"], list) else [data["train"]]
    return [str(Path(data["path"]) / entry) for entry in entries]


def combine(data_yamls: list[Path], out: Path) -> Path:
    """Write ``out/data.yaml`` training on every dataset's training split and validating/testing on the first's."""
    if not data_yamls:
        raise ValueError("no dataset to combine")
    loaded = [yaml.safe_load(path.read_text()) for path in data_yamls]
    first, first_path = loaded[0], data_yamls[0]
    for path, data in zip(data_yamls[1:], loaded[1:], strict=True):
        if data["names"] != first["names"]:
            raise ValueError(f"{path}: class names {data['names']} differ from {first_path}'s {first['names']}")
        held, expected = dataset_input(path), dataset_input(first_path)
        if held != expected:
            raise ValueError(f"{path}: images hold {held!r}, {first_path}'s {expected!r}")
    folders = [folder for data in loaded for folder in train_dirs(data)]
    missing = [folder for folder in folders if not Path(folder).is_dir()]
    if missing:
        raise ValueError(f"training folders not found: {', '.join(missing)}")
    combined = {
        "path": str(Path(first["path"]).resolve()), "train": folders,
        **{split: first[split] for split in ("val", "test") if split in first},
        "names": first["names"], INPUT_KEY: dataset_input(first_path),
    }
    out.mkdir(parents=True, exist_ok=True)
    target = out / "data.yaml"
    target.write_text(yaml.safe_dump(combined, sort_keys=False))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.combine_datasets", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="+", help="data.yaml of each dataset; the first gives val and test")
    parser.add_argument("--out", type=Path, required=True, help="folder for the combined data.yaml")
    args = parser.parse_args(argv)
    try:
        target = combine(args.data, args.out)
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"combine_datasets: {error}") from error
    print(f"data YAML: {target.resolve()}")


if __name__ == "__main__":
    main()
