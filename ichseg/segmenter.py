"""Stage 2 at inference: segment hemorrhage inside each slice's merged box(es) and paste the mask back.

A slice may carry several boxes (``ichseg.boxes.merge_slice`` in ``cluster`` mode): each is cropped and segmented
on its own and the pasted masks are unioned. Training and inference share ``ichseg.crops``, so the network sees
the crops it was trained on. The same wrapper runs the single-stage baselines (manifest mode ``whole-slice``): they
segment every slice through the whole-slice box, whatever boxes the caller passes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from numbers import Real
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ichseg.boxes import Box
from ichseg.crops import CROP_SIZE, crop_to_input, paste_probability
from ichseg.model_manifest import ModelError, ModelManifest, weights_path
from ichseg.networks import TransDeepLab
from ichseg.runtime import autocast, autocast_dtype, default_device
from ichseg.windowing import INPUT_KINDS, input_planes

CLASSES = ["background", "hemorrhage"]
CROP_MODE = "crops"  # two-stage: trained on and run over detector boxes
WHOLE_SLICE_MODE = "whole-slice"  # single-stage baselines: every slice through the whole-slice box
MODES = (CROP_MODE, WHOLE_SLICE_MODE)
SliceBoxes = Box | Sequence[Box] | None  # one box, a list of boxes, or None/[] (slice not run)
Crop = tuple[int, Box]  # (slice index, box)
ARCHITECTURES = {
    "transdeeplab": "TransDeepLab (Swin-T, 2-level Swin SPP)",
    "monai-unet": "MONAI UNet 2D (channels 16-256, 4 strided levels, 2 residual units)",
}


def build_network(network: str) -> nn.Module:
    """A randomly initialised 3-channel, 2-class, 224×224 segmentation network by its manifest name."""
    if network == "transdeeplab":
        return TransDeepLab(num_classes=len(CLASSES), img_size=CROP_SIZE, in_chans=3)
    if network == "monai-unet":
        from monai.networks.nets import UNet  # here: MONAI core's import costs ≈ 3 s, and the app ships TransDeepLab

        return UNet(
            spatial_dims=2, in_channels=3, out_channels=len(CLASSES), channels=(16, 32, 64, 128, 256),
            strides=(2, 2, 2, 2), num_res_units=2,
        )
    raise ValueError(f"unknown network {network!r}; expected one of {sorted(ARCHITECTURES)}")


def whole_slice_box(shape: tuple[int, int]) -> Box:
    """The box covering a whole (rows, columns) slice."""
    return (0.0, 0.0, float(shape[1]), float(shape[0]))


def boxes_of(entry: SliceBoxes) -> list[Box]:
    """A slice's boxes as a list: None → [], one box (4 numbers) → [box], a list of boxes → itself."""
    if entry is None:
        return []
    if len(entry) == 4 and all(isinstance(v, Real) for v in entry):
        return [entry]  # type: ignore[list-item]
    return list(entry)  # type: ignore[arg-type]


class HemorrhageSegmenter:
    """A segmentation model folder (manifest.json + float16 model.pt) ready to segment windowed slices."""

    def __init__(self, model_dir: Path, device: str | None = None, precision: str = "auto") -> None:
        """``precision``: auto = bf16 autocast where the hardware has it natively (1.8× faster on this project's CPU,
        masks within Dice 0.998 of fp32: tests/test_bundled_models.py), else fp32; or force bf16 / fp32."""
        self.model_dir = Path(model_dir)
        self.manifest = ModelManifest.load(self.model_dir)
        self.manifest.require("segmentation", CROP_SIZE, CLASSES)
        network = self.manifest.training.get("network")
        self.mode = self.manifest.training.get("mode")
        self.input = self.manifest.input
        if network not in ARCHITECTURES or self.mode not in MODES or self.input not in INPUT_KINDS:
            raise ModelError(f"{self.model_dir}: manifest training.network {network!r} / mode {self.mode!r} / "
                             f"input {self.input!r} unsupported")
        self.device = default_device(device)
        self.autocast_dtype = autocast_dtype(self.device, precision)
        self.network = build_network(network)
        path = weights_path(self.model_dir)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        except Exception as error:  # torch/pickle raise many types for a corrupt or foreign file (UnpicklingError…)
            raise ModelError(f"{path}: weights do not load into {network} ({error})") from error
        self.network.to(self.device).eval()

    @property
    def whole_slice(self) -> bool:
        return self.mode == WHOLE_SLICE_MODE

    def _check_input(self, windowed: np.ndarray) -> None:
        """Grey slices for a multi-window model (or the reverse) would run and give wrong masks: refuse them."""
        expected = 3 + len(input_planes(self.input))
        if windowed.ndim != expected:
            raise ValueError(f"segmenter input {self.input!r} takes {expected}-D slices, got shape {windowed.shape}")

    @torch.inference_mode()
    def segment(
        self, windowed: np.ndarray, boxes: Sequence[SliceBoxes] | None = None, batch_size: int = 8
    ) -> np.ndarray:
        """Windowed slices, (N, H, W) or (N, 3, H, W) uint8 as ``WindowedSeries.source_input(self.input)`` gives
        them, + per slice a box, a list of boxes or None → (N, H, W) bool masks.

        Slices without a box are not run and stay empty; a slice with several boxes gets the union of their masks.
        A whole-slice model ignores ``boxes`` and runs every slice.
        """
        self._check_input(windowed)
        count, height, width = windowed.shape[0], *windowed.shape[-2:]
        if self.whole_slice:
            boxes = [whole_slice_box((height, width))] * count
        elif boxes is None or len(boxes) != count:
            raise ValueError(f"a crop segmenter needs one entry of boxes (or None) per slice ({count} slices)")
        crops = [(index, box) for index, entry in enumerate(boxes) for box in boxes_of(entry)]
        masks = np.zeros((count, height, width), dtype=bool)
        for (index, _), crop_mask in zip(crops, self.crop_masks(windowed, crops, batch_size), strict=True):
            masks[index] |= crop_mask
        return masks

    @torch.inference_mode()
    def crop_masks(self, windowed: np.ndarray, crops: Sequence[Crop], batch_size: int = 8) -> Iterator[np.ndarray]:
        """One (H, W) bool mask per (slice index, box), pasted back on its slice, in order: the unit ``segment``
        unions (yielded, so a long series never holds every crop's mask at once)."""
        self._check_input(windowed)
        height, width = windowed.shape[-2:]
        for start in range(0, len(crops), batch_size):
            batch = crops[start:start + batch_size]
            inputs = torch.stack([crop_to_input(windowed[i], box) for i, box in batch]).to(self.device)
            with autocast(self.device, self.autocast_dtype):
                logits = self.network(inputs)
            foreground = torch.softmax(logits.float(), dim=1)[:, 1].cpu()
            for (_, box), probability in zip(batch, foreground, strict=True):
                yield paste_probability(probability, box, (height, width))
