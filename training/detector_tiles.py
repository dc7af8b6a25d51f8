"""Native-scale training tiles from a converted detector dataset: the same pixels, ≈ 2.4× cheaper per image.

The detector is fully convolutional, so it can learn from ``--size``×``--size`` tiles cut from the 512 slices
without resizing (the pixel scale of inference stays) and still run on whole slices in the app. Each positive slice
gives one tile per lesion box not yet whole in an earlier tile of that slice, placed at a seeded random offset that
keeps the box whole (a box larger than the tile gets a tile centred on it); each negative slice gives
``--negative-tiles`` tiles centred within the head (non-zero pixels), where the mimics are. ``--small-box-tiles K``
cuts K more tiles for every box under ``--small-box-px`` px² (each at its own random offset holding it whole): the
small lesions the detector misses most, seen at more positions and beside more context. A box cut by a tile
edge is kept, clipped, by ultralytics' own rule for cropped boxes (≥ ``MIN_VISIBLE`` of its area inside, sides over
``MIN_SIDE`` px, aspect under ``MAX_ASPECT``); otherwise dropped. Validation and test stay the source dataset's whole
slices (``training.train_detector`` validates at the app's input size whatever the training size).

Writes ``images/train``, ``labels/train``, ``slices.csv`` (each tile's source image, study and origin; the source's
validation and test rows, so that ``combine_datasets`` still checks leakage) and a ``data.yaml`` whose ``val``/``test``
point at the source dataset's and whose ``ich_tile`` makes ``train_detector`` train at the tile's size.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from tqdm import tqdm

import ichseg.ultralytics_offline  # noqa: F401  (switches ultralytics offline before its first import)
from ichseg.atomic_file import atomic_path
from ichseg.boxes import Box, LabelledBox
from training.combine_datasets import HELD_OUT, dataset_root, train_entries
from training.detector_dataset import INPUT_KEY, TILE_KEY, clip_box, images_held, label_text, yolo_line

# isort: split
from ultralytics.data.utils import img2label_paths  # the label file ultralytics reads for an image

MIN_VISIBLE = 0.1  # share of a box's area that must lie in a tile for the box to be labelled there
MIN_SIDE = 2.0  # px: a thinner sliver of a cut box is dropped
MAX_ASPECT = 100.0
SMALL_BOX_PX = 24 * 24  # px² on the 512 slice: ≈ 4.6 × 4.6 mm at 0.45 mm pixels, a sulcus or a clot under 0.1 mL
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_labels(path: Path, width: int, height: int) -> list[LabelledBox]:
    """``class cx cy w h`` (normalised) lines → boxes in pixels; a missing file is a negative image."""
    boxes = []
    if path.is_file():
        for line in path.read_text().split("\n"):
            if line.strip():
                subtype, cx, cy, w, h = line.split()
                x, y, bw, bh = float(cx) * width, float(cy) * height, float(w) * width, float(h) * height
                boxes.append(LabelledBox(int(subtype), (x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2)))
    return boxes


def inside(box: Box, ox: int, oy: int, size: int) -> bool:
    """Whether the box lies whole in the tile at (``ox``, ``oy``)."""
    x0, y0, x1, y1 = box
    return ox <= x0 and oy <= y0 and x1 <= ox + size and y1 <= oy + size


def origin_span(low: float, high: float, size: int, extent: int) -> tuple[int, int]:
    """Tile origins on one axis that hold ``[low, high]`` whole, or the one centred on it when it is too long."""
    first, last = max(0, int(np.ceil(high)) - size), min(int(np.floor(low)), extent - size)
    if first > last:
        centred = int(np.clip(round((low + high - size) / 2), 0, extent - size))
        return centred, centred
    return first, last


def positive_origins(boxes: list[LabelledBox], size: int, width: int, height: int,
                     rng: np.random.Generator) -> list[tuple[int, int]]:
    """One tile per box not yet whole in an earlier tile, at a random offset that keeps the box whole."""
    origins: list[tuple[int, int]] = []
    for index in rng.permutation(len(boxes)):
        x0, y0, x1, y1 = box = boxes[int(index)].box
        if any(inside(box, ox, oy, size) for ox, oy in origins):
            continue
        xs, ys = origin_span(x0, x1, size, width), origin_span(y0, y1, size, height)
        origins.append((int(rng.integers(xs[0], xs[1] + 1)), int(rng.integers(ys[0], ys[1] + 1))))
    return origins


def small_box_origins(boxes: list[LabelledBox], size: int, width: int, height: int, count: int, max_area: float,
                      rng: np.random.Generator) -> list[tuple[int, int]]:
    """``count`` tiles per box smaller than ``max_area`` px², each at a random offset that keeps the box whole."""
    origins: list[tuple[int, int]] = []
    for _, (x0, y0, x1, y1) in boxes:
        if (x1 - x0) * (y1 - y0) < max_area:
            xs, ys = origin_span(x0, x1, size, width), origin_span(y0, y1, size, height)
            origins += [(int(rng.integers(xs[0], xs[1] + 1)), int(rng.integers(ys[0], ys[1] + 1)))
                        for _ in range(count)]
    return origins


def negative_origins(image: np.ndarray, size: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``count`` tiles whose centres lie within the head (the bounding box of non-zero pixels; the whole image when
    blank)."""
    height, width = image.shape[:2]
    rows, columns = np.nonzero(image.max(axis=2) if image.ndim == 3 else image)
    if not rows.size:
        rows, columns = np.array([0, height - 1]), np.array([0, width - 1])
    xs = centre_span(columns.min(), columns.max(), size, width)
    ys = centre_span(rows.min(), rows.max(), size, height)
    return [(int(rng.integers(xs[0], xs[1] + 1)), int(rng.integers(ys[0], ys[1] + 1))) for _ in range(count)]


def centre_span(low: int, high: int, size: int, extent: int) -> tuple[int, int]:
    """Tile origins on one axis whose centre lies in ``[low, high]`` (the nearest one when none does)."""
    first, last = max(0, int(np.ceil(low - size / 2))), min(extent - size, int(np.floor(high - size / 2)))
    if first > last:
        nearest = int(np.clip(round((low + high - size) / 2), 0, extent - size))
        return nearest, nearest
    return first, last


def tile_lines(boxes: list[LabelledBox], ox: int, oy: int, size: int) -> list[str]:
    """The boxes as a tile's YOLO label lines, clipped to the tile and kept by ultralytics' rule for cropped boxes
    (``box_candidates``): more than MIN_SIDE px each way, ≥ MIN_VISIBLE of the box's area, aspect below MAX_ASPECT."""
    lines = []
    for subtype, box in boxes:
        x0, y0, x1, y1 = clipped = clip_box(box, size, size, (ox, oy))
        width, height, area = x1 - x0, y1 - y0, (box[2] - box[0]) * (box[3] - box[1])
        if (width > MIN_SIDE and height > MIN_SIDE and width * height >= MIN_VISIBLE * area
                and max(width / height, height / width) < MAX_ASPECT):
            lines.append(yolo_line(subtype, clipped, size, size))
    return lines


def training_images(data: dict[str, Any], data_yaml: Path) -> list[Path]:
    """Every training image of a loaded dataset (``train:`` folders or image lists, as ``combine_datasets`` writes)."""
    images: list[Path] = []
    for entry in map(Path, train_entries(data, data_yaml)):
        if entry.is_dir():
            images += sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            lines = [Path(line.strip()) for line in entry.read_text().splitlines() if line.strip()]
            images += [line if line.is_absolute() else entry.parent / line for line in lines]  # as ultralytics reads
    return images


def dataset_index(root: Path) -> list[dict[str, str]]:
    """A converted dataset's ``slices.csv`` rows, their ``image`` made absolute (none where it has no index)."""
    if not (root / "slices.csv").is_file():
        return []
    with (root / "slices.csv").open(newline="") as handle:
        return [{**row, "image": str((root / row["image"]).resolve())} for row in csv.DictReader(handle)]


def source_studies(images: list[Path]) -> dict[Path, str]:
    """Image → study id from the ``slices.csv`` of each training image's dataset (``ROOT/images/train/x.png``)."""
    roots = {image.resolve().parents[2] for image in images if len(image.resolve().parents) > 2}
    return {Path(row["image"]): row["study_id"] for root in roots for row in dataset_index(root)}


def refuse_overwriting(out: Path, root: Path, data_yaml: Path, images: list[Path]) -> None:
    """``out`` is emptied first: it must not be the source dataset (``root``) nor hold any of its images."""
    target = out.resolve()
    sources = {root, *(i.resolve() for i in images)}
    if any(source == target or target in source.parents for source in sources):
        raise ValueError(f"{out}: holds the source dataset's images; write the tiles to a new folder")
    stems = [image.stem for image in images]
    if len(set(stems)) < len(stems):
        raise ValueError(f"{data_yaml}: {len(stems) - len(set(stems))} training images share a file name with another; "
                         "their tiles would overwrite each other")


def write_tiles(data_yaml: Path, out: Path, size: int, negative_tiles: int = 1, seed: int = 0,
                small_box_tiles: int = 0, small_box_px: float = SMALL_BOX_PX) -> dict[str, int]:
    """Cut the training split of ``data_yaml`` into tiles under ``out``; returns counts of images and tiles."""
    data = yaml.safe_load(data_yaml.read_text())
    root = dataset_root(data, data_yaml)
    images = training_images(data, data_yaml)
    refuse_overwriting(out, root, data_yaml, images)
    studies = source_studies(images)
    rng = np.random.default_rng(seed)
    for folder in ("images", "labels"):
        shutil.rmtree(out / folder, ignore_errors=True)
        (out / folder / "train").mkdir(parents=True)
    counts = {"images": 0, "positive_tiles": 0, "negative_tiles": 0, "small_box_tiles": 0, "labels": 0}
    rows = []
    for image_path in tqdm(images, desc="tiles", unit="image"):
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"{image_path}: not an image")
        height, width = image.shape[:2]
        if min(height, width) < size:
            raise ValueError(f"{image_path}: {width}×{height} is smaller than the {size} px tile")
        boxes = read_labels(Path(img2label_paths([image_path])[0]), width, height)
        origins = (positive_origins(boxes, size, width, height, rng) if boxes
                   else negative_origins(image, size, negative_tiles, rng))
        counts["images"] += 1
        counts["positive_tiles" if boxes else "negative_tiles"] += len(origins)
        extra = small_box_origins(boxes, size, width, height, small_box_tiles, small_box_px, rng)
        counts["small_box_tiles"] += len(extra)
        origins += extra
        for number, (ox, oy) in enumerate(origins):
            name = f"{image_path.stem}_t{number}"
            lines = tile_lines(boxes, ox, oy, size)
            counts["labels"] += len(lines)
            cv2.imwrite(str(out / "images" / "train" / f"{name}.png"), image[oy:oy + size, ox:ox + size])
            (out / "labels" / "train" / f"{name}.txt").write_text(label_text(lines))
            rows.append((f"images/train/{name}.png", "train", studies.get(image_path.resolve(), ""),
                         str(image_path), ox, oy, len(lines)))
    held_out = [(row["image"], row["split"], row["study_id"], row["image"], "", "", row.get("boxes", ""))
                for row in dataset_index(root) if row["split"] in HELD_OUT]  # for combine_datasets' leakage check
    with (out / "slices.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("image", "split", "study_id", "source_image", "x", "y", "boxes"))
        writer.writerows(rows + held_out)
    tiled = {"path": str(out.resolve()), "train": "images/train",
             **{split: str(root / data[split]) for split in HELD_OUT}, "names": data["names"],
             INPUT_KEY: images_held(data), TILE_KEY: size}
    with atomic_path(out / "data.yaml") as temporary:
        temporary.write_text(yaml.safe_dump(tiled, sort_keys=False))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.detector_tiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="data.yaml of a converted (or combined) dataset")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tiled dataset")
    parser.add_argument("--size", type=int, default=320, help="tile side in pixels (a multiple of 32; default 320)")
    parser.add_argument("--negative-tiles", type=int, default=1, help="tiles per hemorrhage-free slice (default 1)")
    parser.add_argument("--small-box-tiles", type=int, default=0,
                        help="more tiles per box smaller than --small-box-px px² (default 0)")
    parser.add_argument("--small-box-px", type=float, default=SMALL_BOX_PX,
                        help=f"area on the 512 slice below which a box is small (default {SMALL_BOX_PX:g})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size <= 0 or args.size % 32:
        parser.error(f"--size {args.size}: a positive multiple of 32 (the detector's largest stride)")
    try:
        counts = write_tiles(args.data, args.out, args.size, args.negative_tiles, args.seed, args.small_box_tiles,
                             args.small_box_px)
    except (OSError, ValueError, KeyError, yaml.YAMLError) as error:
        raise SystemExit(f"detector_tiles: {error}") from error
    print(f"{counts['images']} training images → {counts['positive_tiles']} positive, {counts['small_box_tiles']} "
          f"more of small boxes and {counts['negative_tiles']} negative tiles holding {counts['labels']} boxes")
    print(f"data YAML: {(args.out / 'data.yaml').resolve()} (training.train_detector trains it at {args.size} px)")


if __name__ == "__main__":
    main()
