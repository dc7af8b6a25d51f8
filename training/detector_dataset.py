"""BHX-style box CSV + DICOM study folders → ultralytics detection dataset for the stage-1 detector.

Writes under ``--out`` (replacing its ``images/`` and ``labels/``): ``images/<split>/*.png`` (512×512 slices made
by ``ichseg.pipeline.window_series``, the function inference uses: by default three channels, the header and the
fixed brain and subdural windows, through ``ichseg.detector.to_bgr``; grey in the header window with ``--input
header-window``), ``labels/<split>/*.txt`` (``class cx cy w h`` normalised, one line per box), ``slices.csv``
(which slice each image is; with ``--hard-negatives`` each training negative's mining score and whether it was
mined) and ``data.yaml`` (absolute ``path:``, no ``download:`` key, ``ich_input``: what the channels hold, which
``training.train_detector`` writes into the model's manifest).

Boxes are matched to slices by SOPInstanceUID. The CSV may give a box as ``x, y, width, height`` columns
(the synthetic generator) or as BHX's ``data`` column holding ``{'x': .., 'y': .., 'width': .., 'height': ..}``
(BHX's own ``width``/``height`` columns are then ignored: ``data`` wins). Splits are per study: from
``studies.csv`` when given, else a seeded 80:10:10 split of the study folders (the paper's ratio).

Hemorrhage-free slices are sampled per split (``--negatives-per-positive``). With ``--hard-negatives MODEL_DIR`` a share
of the training split's sample (``--hard-share``) is the slices that detector fires on most strongly
(``training.hard_negatives``: mimics the model still mistakes for blood), the rest random; validation and test keep
random negatives, so that their figures describe the population, not the model's weak spots.
"""

from __future__ import annotations

import argparse
import ast
import csv
import re
import shutil
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from ichseg.boxes import Box, LabelledBox
from ichseg.detector import INPUT_SIZE, to_bgr
from ichseg.dicom_series import DicomInputError, group_series, load_series
from ichseg.pipeline import window_series
from ichseg.subtypes import SUBTYPES, subtype_index
from ichseg.windowing import HEADER_INPUT, INPUT_KINDS, MULTI_WINDOW_INPUT
from training.hard_negatives import hardest, score_slices

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
GEOMETRY_KEYS = ("x", "y", "width", "height")


@dataclass
class Summary:
    """What the conversion kept and lost, printed at the end so that silent label loss is visible."""

    images: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    positives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    boxes: int = 0
    skipped_series: list[str] = field(default_factory=list)
    unmatched_boxes: int = 0  # CSV boxes on no slice of the listed studies (other studies, or missing files)
    lost_boxes: int = 0  # CSV boxes on a slice of a listed study that was not written (unreadable series)
    empty_boxes: int = 0  # boxes with no area inside the slice
    hard_negatives: int = 0  # training negatives chosen because the mining detector fired on them
    hard_floor: float = 0.0  # the weakest of their detector scores


def box_geometry(row: dict[str, str]) -> tuple[float, float, float, float]:
    """``(x, y, width, height)`` of one CSV row, from BHX's ``data`` dict or from separate columns."""
    data = (row.get("data") or "").strip()
    if data:
        values = ast.literal_eval(data)  # a Python-literal dict, not JSON (single quotes)
        return tuple(float(values[k]) for k in GEOMETRY_KEYS)  # type: ignore[return-value]
    return tuple(float(row[k]) for k in GEOMETRY_KEYS)  # type: ignore[return-value]


def read_boxes(path: Path, ignore_labels: tuple[str, ...] = ()) -> tuple[dict[str, list[LabelledBox]], set[str]]:
    """Boxes per SOPInstanceUID, and the SOPs carrying an ignored label (those slices are left out entirely).

    An unknown ``labelName`` is an error unless ignored: dropping its box would teach "no hemorrhage here".
    """
    ignored = {name.lower() for name in ignore_labels}
    boxes: dict[str, list[LabelledBox]] = defaultdict(list)
    excluded: set[str] = set()
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            sop = row["SOPInstanceUID"].strip()
            if row["labelName"].strip().lower() in ignored:
                excluded.add(sop)
                continue
            try:
                x, y, width, height = box_geometry(row)
                boxes[sop].append(LabelledBox(subtype_index(row["labelName"]), (x, y, x + width, y + height)))
            except (ValueError, KeyError, SyntaxError, TypeError) as error:
                raise ValueError(f"{path}:{number}: unusable box row ({error})") from error
    return dict(boxes), excluded


def assign_splits(dicom_root: Path, studies_csv: Path | None, seed: int) -> dict[str, str]:
    """study folder name → split, from ``studies.csv`` (study_id, split) or a seeded 80:10:10 shuffle."""
    if studies_csv is not None:
        with studies_csv.open(newline="") as handle:
            splits = {row["study_id"]: row["split"] for row in csv.DictReader(handle)}
        unknown = set(splits.values()) - set(SPLITS)
        if unknown:
            raise ValueError(f"{studies_csv}: unknown split(s) {sorted(unknown)}; expected {SPLITS}")
        return splits
    studies = sorted(p.name for p in dicom_root.iterdir() if p.is_dir())
    np.random.default_rng(seed).shuffle(studies)
    ends = np.rint(np.cumsum(DEFAULT_FRACTIONS) * len(studies)).astype(int)
    return {study: SPLITS[int(np.searchsorted(ends, index, side="right"))] for index, study in enumerate(studies)}


def clip_box(box: Box, rows: int, columns: int, origin: tuple[float, float] = (0.0, 0.0)) -> Box:
    """A box in pixels of a larger image → the same box in the pixels of the ``rows``×``columns`` image (or tile) at
    ``origin`` of it, clipped to that image (empty when the box lies outside it)."""
    ox, oy = origin
    x0, x1 = np.clip([box[0] - ox, box[2] - ox], 0, columns)
    y0, y1 = np.clip([box[1] - oy, box[3] - oy], 0, rows)
    return (float(x0), float(y0), float(x1), float(y1))


def yolo_line(subtype: int, box: Box, rows: int, columns: int) -> str:
    """A box inside a ``rows``×``columns`` image → its YOLO label line, ``class cx cy w h`` normalised."""
    x0, y0, x1, y1 = box
    return (f"{subtype} {(x0 + x1) / 2 / columns:.6f} {(y0 + y1) / 2 / rows:.6f} "
            f"{(x1 - x0) / columns:.6f} {(y1 - y0) / rows:.6f}")


def yolo_lines(boxes: list[LabelledBox], rows: int, columns: int) -> list[str]:
    """Boxes in source-matrix pixels → ``class cx cy w h`` normalised, clipped to the slice; empty boxes dropped."""
    clipped = [(subtype, clip_box(box, rows, columns)) for subtype, box in boxes]
    return [yolo_line(subtype, box, rows, columns) for subtype, box in clipped if box[2] > box[0] and box[3] > box[1]]


def label_text(lines: list[str]) -> str:
    """A YOLO label file's text: one line per box (empty for a negative image)."""
    return "".join(line + "\n" for line in lines)


def select_negatives(
    negatives: dict[str, list[str]], positives: dict[str, int], ratio: float | None, seed: int,
    scores: dict[str, float] | None = None, hard_share: float = 0.0,
) -> tuple[set[str], list[str]]:
    """``ratio`` × positives of each split's negative slices (all of them when ratio is None): a seeded random draw,
    except that in a split that ``scores`` rank the ``hard_share`` of them the detector fires on most (``hardest``)
    come first and the draw fills the rest. Every split makes the same draw with or without scores, so mining the
    training split leaves the validation and test samples unchanged. Returns the chosen slices and the hard ones."""
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    hard: list[str] = []
    for split, sops in negatives.items():
        count = len(sops) if ratio is None else min(len(sops), round(ratio * positives.get(split, 0)))
        drawn = rng.choice(sorted(sops), size=count, replace=False).tolist()
        split_hard = hardest(sops, scores, round(hard_share * count)) if scores else []
        taken = set(split_hard)
        chosen.update(split_hard, [sop for sop in drawn if sop not in taken][:count - len(split_hard)])
        hard += split_hard
    return chosen, hard


def mining_problem(ratio: float | None, hard_share: float) -> str | None:
    """Why hard-negative mining with these settings makes no sense, or None."""
    if ratio is None:
        return "--hard-negatives ranks a sample of the negatives: give --negatives-per-positive too"
    if not 0.0 <= hard_share <= 1.0:
        return f"--hard-share {hard_share}: a share from 0 to 1"
    return None


def safe_name(text: str) -> str:
    """File-name-safe form of a study folder name (CQ500 folders contain spaces)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


INPUT_KEY = "ich_input"  # data.yaml: what the image channels hold (ultralytics ignores keys it does not know)


def write_data_yaml(out: Path, input_kind: str) -> Path:
    """ultralytics data YAML: absolute path (runs from any working directory), no download key (offline), and what
    the image channels hold."""
    path = out / "data.yaml"
    data = {"path": str(out.resolve()), **{split: f"images/{split}" for split in SPLITS},
            "names": dict(enumerate(SUBTYPES)), INPUT_KEY: input_kind}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


TILE_KEY = "ich_tile"  # data.yaml of training.detector_tiles: the training images are tiles of this side


def training_size(data: Mapping[str, Any]) -> int:
    """The side a loaded data.yaml's training images are trained at without rescaling: the tile's for tiles, else
    the slice's (the app's input size). Any other ``imgsz`` would change the pixel scale between training and app."""
    return int(data.get(TILE_KEY, INPUT_SIZE))


def images_held(data: Mapping[str, Any]) -> str:
    """What a loaded data.yaml's image channels hold; datasets written before ``ich_input`` existed are grey."""
    return str(data.get(INPUT_KEY, HEADER_INPUT))


def dataset_input(data_yaml: Path) -> str:
    """``images_held`` of a data.yaml file."""
    return images_held(yaml.safe_load(Path(data_yaml).read_text()))


@dataclass
class SeriesToWrite:
    """One CT series found in pass 1, by its header entries (pixels not decoded yet)."""

    study: str
    split: str
    entries: list  # (path, header) pairs of ``group_series``


@dataclass
class HeaderScan:
    """Pass 1, headers only: which slices exist, so that negatives can be sampled per split before decoding."""

    series: list[SeriesToWrite] = field(default_factory=list)
    negatives: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # split → hemorrhage-free SOPs
    positives: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # split → slices with a box
    seen: set[str] = field(default_factory=set)  # every CT SOPInstanceUID found


def scan_headers(
    dicom_root: Path, splits: dict[str, str], boxes: dict[str, list[LabelledBox]], excluded: set[str],
    summary: Summary,
) -> HeaderScan:
    """Read the headers of every listed study; unreadable folders are noted in ``summary`` and skipped."""
    scan = HeaderScan()
    for study, split in tqdm(sorted(splits.items()), desc="headers", unit="study"):
        try:
            grouped = group_series(dicom_root / study)
        except DicomInputError as error:
            summary.skipped_series.append(str(error))
            continue
        for entries in grouped.values():
            if str(entries[0][1].get("Modality", "")) != "CT":
                continue  # e.g. the ground-truth SEG beside a synthetic series
            scan.series.append(SeriesToWrite(study, split, entries))
            for _, header in entries:
                sop = str(header.SOPInstanceUID)
                scan.seen.add(sop)
                if sop in excluded:
                    continue
                if sop in boxes:
                    scan.positives[split] += 1
                else:
                    scan.negatives[split].append(sop)
    return scan


def empty_folders(out: Path) -> None:
    """Fresh ``images/<split>`` and ``labels/<split>`` folders: a rerun must not mix datasets."""
    for folder in ("images", "labels"):
        shutil.rmtree(out / folder, ignore_errors=True)
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)


class IndexRow(NamedTuple):
    """One line of ``slices.csv``."""

    image: str
    split: str
    study_id: str
    series_uid: str
    sop_instance_uid: str
    boxes: int
    mining_score: str = ""  # training negatives with --hard-negatives: the mining detector's top confidence
    hard_negative: str = ""  # "1": chosen for that score (mined), "0": drawn at random


def write_series(
    item: SeriesToWrite, keep: set[str], boxes: dict[str, list[LabelledBox]], out: Path, summary: Summary,
    input_kind: str,
) -> list[IndexRow]:
    """Pass 2 for one series: decode, window as the app does, write its kept slices; their ``slices.csv`` rows."""
    try:
        series = load_series(item.entries)
    except DicomInputError as error:
        summary.skipped_series.append(str(error))
        return []
    images = window_series(series).detector_input(input_kind)
    rows, columns = series.hu.shape[1:]
    index_rows: list[IndexRow] = []
    for header, image in zip(series.headers, images, strict=True):
        sop = str(header.SOPInstanceUID)
        if sop not in keep:
            continue
        slice_boxes = boxes.get(sop, [])
        lines = yolo_lines(slice_boxes, rows, columns)
        summary.empty_boxes += len(slice_boxes) - len(lines)
        name = f"{safe_name(item.study)}_{sop}"
        cv2.imwrite(str(out / "images" / item.split / f"{name}.png"), image if image.ndim == 2 else to_bgr(image))
        (out / "labels" / item.split / f"{name}.txt").write_text(label_text(lines))
        summary.images[item.split] += 1
        summary.positives[item.split] += bool(lines)
        summary.boxes += len(lines)
        index_rows.append(IndexRow(f"images/{item.split}/{name}.png", item.split, item.study, series.series_uid, sop,
                                   len(lines)))
    return index_rows


def write_index(out: Path, index_rows: list[IndexRow]) -> None:
    """``slices.csv``: which slice of which study each image is."""
    with (out / "slices.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(IndexRow._fields)
        writer.writerows(index_rows)


def convert(
    boxes_csv: Path, dicom_root: Path, out: Path, studies_csv: Path | None = None,
    negatives_per_positive: float | None = None, seed: int = 0, ignore_labels: tuple[str, ...] = (),
    input_kind: str = MULTI_WINDOW_INPUT, hard_negatives: Path | None = None, hard_share: float = 0.5,
) -> Summary:
    """Write the dataset under ``out`` with ``input_kind`` images; returns what was written and what was lost.
    ``hard_negatives``: a detector folder that ranks the training split's negatives (``select_negatives``)."""
    boxes, excluded = read_boxes(boxes_csv, ignore_labels)
    summary = Summary()
    scan = scan_headers(dicom_root, assign_splits(dicom_root, studies_csv, seed), boxes, excluded, summary)
    scores = None
    if hard_negatives is not None:
        if problem := mining_problem(negatives_per_positive, hard_share):
            raise ValueError(problem)
        if hard_share > 0:
            scores = score_slices((item.entries for item in scan.series if item.split == "train"),
                                  set(scan.negatives["train"]), hard_negatives)
    negatives, hard = select_negatives(scan.negatives, scan.positives, negatives_per_positive, seed, scores,
                                       hard_share)
    summary.hard_negatives = len(hard)
    summary.hard_floor = min((scores[sop] for sop in hard), default=0.0) if scores else 0.0
    keep = (negatives | set(boxes)) - excluded
    empty_folders(out)
    index_rows: list[IndexRow] = []
    for item in tqdm(scan.series, desc="series", unit="series"):
        if any(str(h.SOPInstanceUID) in keep for _, h in item.entries):
            index_rows += write_series(item, keep, boxes, out, summary, input_kind)
    if scores:
        mined = set(hard)
        index_rows = [row._replace(mining_score=f"{scores[row.sop_instance_uid]:.4f}",
                                   hard_negative=str(int(row.sop_instance_uid in mined)))
                      if row.sop_instance_uid in scores else row for row in index_rows]
    written = {row.sop_instance_uid for row in index_rows}
    summary.unmatched_boxes = sum(len(v) for sop, v in boxes.items() if sop not in scan.seen)
    summary.lost_boxes = sum(len(v) for sop, v in boxes.items() if sop in scan.seen and sop not in written)
    write_index(out, index_rows)
    write_data_yaml(out, input_kind)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.detector_dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=Path, required=True, help="box CSV (BHX layout or synthetic boxes.csv)")
    parser.add_argument("--dicom-root", type=Path, required=True, help="folder with one sub-folder per study")
    parser.add_argument("--studies-csv", type=Path, default=None, help="study_id,split CSV (default: seeded 80:10:10)")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--negatives-per-positive", type=float, default=None,
                        help="keep this many hemorrhage-free slices per hemorrhage slice in each split (default: all)")
    parser.add_argument("--hard-negatives", type=Path, default=None, metavar="MODEL_DIR",
                        help="detector folder (model.pt + manifest.json) whose strongest false alarms on the training "
                             "split's hemorrhage-free slices fill --hard-share of its negatives (needs "
                             "--negatives-per-positive)")
    parser.add_argument("--hard-share", type=float, default=0.5,
                        help="share of the training negatives taken hardest-first with --hard-negatives (default 0.5; "
                             "the rest stay random so that plain anatomy is still seen)")
    parser.add_argument("--ignore-label", action="append", default=[],
                        help="labelName whose slices are left out entirely (repeatable), e.g. BHX's Chronic")
    parser.add_argument("--seed", type=int, default=0, help="seed of the negative sampling and the default split")
    parser.add_argument("--input", choices=INPUT_KINDS, default=MULTI_WINDOW_INPUT,
                        help="image channels: the header window (grey, the paper), the header, brain and subdural "
                             "windows (default: blood stays apart from bone whatever the header says), the stroke "
                             "(40/40), brain and subdural windows, or a ±3 mm slab's brain window and the slice's "
                             "brain and subdural windows (ichseg.windowing)")
    args = parser.parse_args(argv)
    if args.hard_negatives is not None and (problem := mining_problem(args.negatives_per_positive, args.hard_share)):
        parser.error(problem)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    summary = convert(args.boxes, args.dicom_root, args.out, args.studies_csv, args.negatives_per_positive,
                      args.seed, tuple(args.ignore_label), args.input, args.hard_negatives, args.hard_share)
    for split in SPLITS:
        print(f"{split}: {summary.images[split]} images, {summary.positives[split]} with hemorrhage")
    print(f"{summary.boxes} boxes written; CSV boxes on slices of unlisted studies: {summary.unmatched_boxes}, "
          f"on unreadable series: {summary.lost_boxes}, outside their slice: {summary.empty_boxes}")
    if args.hard_negatives is not None:
        print(f"hard negatives (training split): {summary.hard_negatives}, detector score ≥ {summary.hard_floor:.3f}")
    for problem in summary.skipped_series:
        print(f"skipped: {problem}")
    print(f"data YAML: {(args.out / 'data.yaml').resolve()}")


if __name__ == "__main__":
    main()
