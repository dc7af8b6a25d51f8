"""ultralytics detection training under bf16 autocast on CPUs that compute bf16 in hardware.

ultralytics 8.4 accepts ``amp="bf16"`` (no GradScaler, no AMP check download) but its ``autocast`` helper allows
bf16 on CUDA only. ``Bf16DetectionTrainer`` lifts that one restriction for the duration of its training loop by
handing ultralytics' trainer module an ``autocast`` that also opens a CPU bf16 context; everything else — loss,
optimizer, EMA, checkpoints (saved as plain ``DetectionModel``s, loadable without this module) — is ultralytics'
own. The weights stay fp32; only the forward pass runs in bf16 (≈1.4× faster per yolov5n step on an AVX512-BF16
CPU, measured by ``benchmarks/training_speed.py``). It also gives torch back every core (``ICH_THREADS``):
ultralytics' device selection leaves cpu_count − 1 threads, one on a 2-core machine. And it validates at the app's
input size (``ichseg.detector.INPUT_SIZE``) whatever ``imgsz`` it trains at: trained on native-scale tiles
(``training.detector_tiles``, ``imgsz`` = the tile), the model is still chosen by its score on whole slices.
``with_hu_changes`` gives a subclass whose training images also get a calibration shift and noise
(``training.hu_shift``); ultralytics takes a trainer class, not extra arguments, so the settings travel as class
attributes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ultralytics.engine import trainer as trainer_module
from ultralytics.models.yolo.detect import DetectionTrainer

from ichseg.detector import INPUT_SIZE
from ichseg.runtime import configure_threads
from training.detector_dataset import dataset_input
from training.hu_shift import UltralyticsHuShift

_ULTRALYTICS_AUTOCAST = trainer_module.autocast


def cpu_aware_autocast(enabled: bool | torch.dtype, device: str = "cuda") -> Any:
    """ultralytics' ``autocast``, plus bf16 on the CPU (which it refuses)."""
    if enabled is torch.bfloat16 and device == "cpu":
        return torch.amp.autocast("cpu", dtype=torch.bfloat16)
    return _ULTRALYTICS_AUTOCAST(enabled, device=device)


class Bf16DetectionTrainer(DetectionTrainer):
    """DetectionTrainer whose training loop may run bf16 autocast on the CPU (pass ``amp="bf16"``) and whose
    validation runs on whole slices at the app's input size."""

    hu_shift: float = 0.0  # HU: the largest calibration shift of a training image (0: none)
    hu_noise: float = 0.0  # HU: the largest standard deviation of noise added to a training image (0: none)

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None) -> Any:
        if mode == "train":
            dataset = super().build_dataset(img_path, mode, batch)
            self._add_hu_shift(dataset)
            return dataset
        training_size, self.args.imgsz = self.args.imgsz, INPUT_SIZE
        try:
            return super().build_dataset(img_path, mode, batch)
        finally:
            self.args.imgsz = training_size

    def _add_hu_shift(self, dataset: Any) -> None:
        """First of the training transforms, so that it sees the image as loaded (before any padding)."""
        if self.hu_shift > 0 or self.hu_noise > 0:
            dataset.transforms.insert(
                0, UltralyticsHuShift(self.hu_shift, dataset_input(Path(self.args.data)), self.hu_noise)
            )

    def _close_dataloader_mosaic(self) -> None:  # rebuilds the transforms: the shift goes back in
        super()._close_dataloader_mosaic()
        self._add_hu_shift(self.train_loader.dataset)

    def _do_train(self, *args: Any, **kwargs: Any) -> Any:
        if self.device.type == "cpu":
            configure_threads()
        trainer_module.autocast = cpu_aware_autocast
        try:
            return super()._do_train(*args, **kwargs)
        finally:
            trainer_module.autocast = _ULTRALYTICS_AUTOCAST


def with_hu_changes(hu_shift: float, hu_noise: float = 0.0) -> type[Bf16DetectionTrainer]:
    """``Bf16DetectionTrainer`` itself, or a subclass that shifts training images by up to ``hu_shift`` HU and adds
    noise of up to ``hu_noise`` HU."""
    if hu_shift <= 0 and hu_noise <= 0:
        return Bf16DetectionTrainer
    return type("HuChangeDetectionTrainer", (Bf16DetectionTrainer,),
                {"hu_shift": float(hu_shift), "hu_noise": float(hu_noise)})
