"""Stage-2 training data from labelled study folders, preprocessed exactly as inference preprocesses.

Each slice is windowed with its own header window (``ichseg.labelled_study`` → ``ichseg.pipeline.window_series``),
with the fixed windows beside it for a multi-window segmenter (``WindowedSeries.source_input``), and
cropped/resized with ``ichseg.crops``, the functions the app uses on detector boxes. Two modes
(``ichseg.segmenter.MODES``):

* ``crops`` (the paper): every slice with hemorrhage, cropped to the merge of its per-lesion
  ``masks_to_boxes`` boxes — the merged box inference builds from the detector's boxes of a slice; optionally
  with hemorrhage-free crops where a detector boxes a mimic (``training.segmenter_negatives``);
* ``whole-slice`` (single-stage baseline): the whole slice resized to 224, hemorrhage slices plus a random
  share of negative slices, so that the model also learns to leave normal slices empty.

The cache holds uint8 arrays only (a region around each box in crop mode, the 224 slice in whole-slice mode),
so each epoch re-crops cheaply and the CPU stays free for the network. Training augmentation: random 90°
rotation and random flip (the paper), and in crop mode a box jitter in which every box edge moves
independently by up to ``jitter`` (10%) of the box side outwards or half that inwards, imitating detector boxes
that are a little loose, tight or shifted; optionally a calibration shift of up to ``hu_shift`` HU
(``training.hu_shift``, after the rotation and flip so that the other draws stay as they were) and noise of up to
``hu_noise`` HU (added to the cached image before cropping — in crop mode a region at the slice's own pixel scale,
in whole-slice mode the slice already at 224 — from its own random stream).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ichseg.blood_density import LOW_DENSITY_HU, blood_density
from ichseg.boxes import Box, pixel_bounds
from ichseg.crops import CROP_SIZE, crop_mask_to_target, crop_to_input
from ichseg.labelled_study import Study, ground_truth_box, load_study, study_ids
from ichseg.segmenter import CROP_MODE, MODES, whole_slice_box
from ichseg.windowing import input_planes
from training.hu_shift import hu_change, shift_windowed

JITTER = 0.10  # largest outward move of one box edge, as a fraction of the box side
MIN_JITTER_SIDE = 16.0  # px: tiny lesions still get a few pixels of jitter, as detector boxes are never exact
NEGATIVE_FRACTION = 0.2  # whole-slice mode: share of hemorrhage-free training slices kept
NOISE_STREAM = 1  # the noise draws come from a stream of their own, so the other augmentations stay as they were;
# not 0: default_rng([s, e, i, 0]) draws what default_rng([s, e, i]) draws


@dataclass(frozen=True)
class CropOrigin:
    """Where a crop was cut: enough to cut it again without the model that chose it."""

    study_id: str
    slice_index: int
    box: Box  # on the slice's source grid


@dataclass
class SliceSample:
    """A cached uint8 region of one slice with its mask and the box to crop inside it."""

    image: np.ndarray  # uint8 (h, w) grey or (3, h, w) channels
    mask: np.ndarray  # bool (h, w)
    box: Box  # in region coordinates
    score: float | None = None  # a hemorrhage-free crop: the detector's confidence on it (None: a crop of blood)
    density_hu: float = math.nan  # median HU of the slice's blood (``ichseg.blood_density``; NaN: none)
    origin: CropOrigin | None = None  # where a hemorrhage-free crop was cut (recorded for --resume)

    @property
    def low_density(self) -> bool:
        """A crop of blood whose median is under ``LOW_DENSITY_HU`` (near grey matter: what the segmenter misses most);
        False for a hemorrhage-free crop."""
        return self.density_hu < LOW_DENSITY_HU


def jitter_reach(box: Box, jitter: float) -> Box:
    """The box grown by the largest outward jitter (plus a pixel): every jittered box lies inside it."""
    x0, y0, x1, y1 = box
    dx = jitter * max(x1 - x0, MIN_JITTER_SIDE) + 1.0
    dy = jitter * max(y1 - y0, MIN_JITTER_SIDE) + 1.0
    return (x0 - dx, y0 - dy, x1 + dx, y1 + dy)


def jitter_box(box: Box, rng: np.random.Generator, jitter: float) -> Box:
    """Each edge moved independently: outwards by up to ``jitter`` of the side, inwards by up to half that."""
    x0, y0, x1, y1 = box
    sx = jitter * max(x1 - x0, MIN_JITTER_SIDE)
    sy = jitter * max(y1 - y0, MIN_JITTER_SIDE)
    left, top, right, bottom = rng.uniform(-0.5, 1.0, size=4)
    return (x0 - left * sx, y0 - top * sy, x1 + right * sx, y1 + bottom * sy)


def region_sample(windowed: np.ndarray, label_slice: np.ndarray, box: Box, jitter: float,
                  score: float | None = None, origin: CropOrigin | None = None) -> SliceSample:
    """The sample of ``box`` on one slice, caching only the region its jittered versions can reach."""
    row0, row1, col0, col1 = pixel_bounds(jitter_reach(box, jitter), *label_slice.shape)
    x0, y0, x1, y1 = box
    return SliceSample(
        image=windowed[..., row0:row1, col0:col1].copy(),
        mask=label_slice[row0:row1, col0:col1] > 0,
        box=(x0 - col0, y0 - row0, x1 - col0, y1 - row0),
        score=score,
        origin=origin,
    )


def crop_samples(study: Study, jitter: float, input_kind: str) -> list[SliceSample]:
    """Crop mode: one sample per hemorrhage slice, its box the merge of the slice's ground-truth boxes."""
    samples = []
    for windowed, label_slice, hu_slice in zip(
        study.windowed.source_input(input_kind), study.labels, study.series.hu, strict=True
    ):
        box = ground_truth_box(label_slice)
        if box is not None:
            sample = region_sample(windowed, label_slice, box, jitter)
            sample.density_hu = blood_density(hu_slice, label_slice > 0)
            samples.append(sample)
    return samples


def whole_slice_samples(
    study: Study, negative_fraction: float, rng: np.random.Generator, input_kind: str
) -> list[SliceSample]:
    """Whole-slice mode: hemorrhage slices and a random ``negative_fraction`` of the others, resized to 224."""
    samples = []
    whole = whole_slice_box(study.labels.shape[1:])
    channels = slice(None) if input_planes(input_kind) else 0  # grey: one of the three equal channels
    for windowed, label_slice in zip(study.windowed.source_input(input_kind), study.labels, strict=True):
        if not label_slice.any() and rng.random() >= negative_fraction:
            continue
        image = torch.round(crop_to_input(windowed, whole)[channels] * 255.0).to(torch.uint8).numpy()
        mask = crop_mask_to_target(label_slice, whole).numpy().astype(bool)
        samples.append(SliceSample(image, mask, whole_slice_box((CROP_SIZE, CROP_SIZE))))
    return samples


def load_samples(
    data: Path, split: str, mode: str, input_kind: str, *, jitter: float = JITTER,
    negative_fraction: float = NEGATIVE_FRACTION, seed: int = 0, limit: int | None = None,
    negative_crops: Callable[[Study], list[SliceSample]] | None = None,
) -> list[SliceSample]:
    """All samples of a split (``limit`` studies at most) with ``input_kind`` channels
    (``ichseg.windowing.INPUT_KINDS``), read once and cached in memory as uint8. In crop mode ``negative_crops``
    adds each study's hemorrhage-free crops (``training.segmenter_negatives``) while the study is loaded."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    samples: list[SliceSample] = []
    ids = study_ids(data, split)[:limit]
    for number, study_id in enumerate(tqdm(ids, desc=f"loading {split}", unit="study")):
        study = load_study(Path(data) / study_id)
        if mode == CROP_MODE:
            samples += crop_samples(study, jitter, input_kind)
            if negative_crops is not None:
                samples += negative_crops(study)
        else:
            samples += whole_slice_samples(study, negative_fraction, np.random.default_rng([seed, number]), input_kind)
    return samples


def draw_weights(samples: list[SliceSample], low_density_weight: float) -> list[float]:
    """Relative chance of each sample being drawn: ``low_density_weight`` for low-density crops of blood
    (``SliceSample.low_density``), 1 for every other sample."""
    return [low_density_weight if sample.low_density else 1.0 for sample in samples]


def evenly_spaced(samples: list[SliceSample], count: int | None) -> list[SliceSample]:
    """At most ``count`` samples spread evenly over the list (so over all studies), in order."""
    if count is None or count >= len(samples):
        return samples
    return [samples[i] for i in np.linspace(0, len(samples) - 1, count).round().astype(int)]


def rotate_flip(
    image: torch.Tensor, target: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's augmentation: a random multiple of 90° rotation, then a flip along a random axis half the time."""
    turns = int(rng.integers(4))
    image, target = torch.rot90(image, turns, (-2, -1)), torch.rot90(target, turns, (-2, -1))
    if rng.random() < 0.5:
        axis = -1 - int(rng.integers(2))
        image, target = torch.flip(image, (axis,)), torch.flip(target, (axis,))
    return image.contiguous(), target.contiguous()


class SegmentationDataset(Dataset):
    """(input [3,224,224] float 0-1, target [224,224] long) pairs; augmented when ``augment``.

    The random draws of sample ``i`` in epoch ``e`` depend only on (seed, e, i), so a run resumed at an epoch
    boundary sees the same augmentations as an uninterrupted one.
    """

    def __init__(self, samples: list[SliceSample], augment: bool, jitter: float = 0.0, seed: int = 0,
                 hu_shift: float = 0.0, widths: tuple[float, ...] = (), hu_noise: float = 0.0) -> None:
        if (hu_shift > 0 or hu_noise > 0) and not widths:
            raise ValueError("a calibration shift or noise needs the window width of each input channel")
        self.samples = samples
        self.augment = augment
        self.jitter = jitter
        self.hu_shift = hu_shift  # HU, largest calibration shift (0: none)
        self.hu_noise = hu_noise  # HU, largest standard deviation of added noise (0: none)
        self.widths = widths
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def noisy(self, region: np.ndarray, index: int) -> np.ndarray:
        """The cached region with this draw's noise (itself when there is none), from a stream of its own."""
        if self.hu_noise <= 0:
            return region
        rng = np.random.default_rng([self.seed, self.epoch, index, NOISE_STREAM])
        planes = region if region.ndim == 3 else region[None]
        noisy = shift_windowed(planes, hu_change(planes.shape[1:], 0.0, self.hu_noise, rng), self.widths, 0, 255.0)
        return noisy if region.ndim == 3 else noisy[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        box = sample.box
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.augment and self.jitter > 0:
            box = jitter_box(box, rng, self.jitter)
        image = crop_to_input(self.noisy(sample.image, index) if self.augment else sample.image, box)
        target = crop_mask_to_target(sample.mask, box)
        if self.augment:
            image, target = rotate_flip(image, target, rng)
        if self.augment and self.hu_shift > 0:
            offset = rng.uniform(-self.hu_shift, self.hu_shift)
            image = torch.from_numpy(shift_windowed(image.numpy(), offset, self.widths, 0, 1.0))
        return image, target
