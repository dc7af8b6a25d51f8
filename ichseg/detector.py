"""Stage 1: YOLOv5 hemorrhage boxes on windowed 512×512 slices.

``resize_to_input`` (through ``ichseg.pipeline.window_series``) and ``to_bgr`` are the only way slices become
detector input: the dataset converter writes its training PNGs with them and ``HemorrhageDetector`` feeds
ultralytics with them, so training and serving see identical pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import cv2
import numpy as np

from ichseg.boxes import Box
from ichseg.model_manifest import ModelError, ModelManifest, weights_path
from ichseg.runtime import default_device
from ichseg.subtypes import SUBTYPES
from ichseg.windowing import INPUT_KINDS, input_planes

if TYPE_CHECKING:  # ultralytics is imported where the weights are loaded
    from ultralytics.engine.results import Results

INPUT_SIZE = 512
DEFAULT_CONFIDENCE = 0.25  # ultralytics' default, for weights whose manifest names no operating point
NMS_IOU = 0.6  # the paper's NMS threshold: inference, testing and the operating point all use it
KEEP_EVERY_BOX = 0.001  # confidence that keeps (almost) every box: mAP and F1 curves integrate over all confidences
TASK = "detection"


@dataclass(frozen=True)
class Detection:
    subtype: int  # index into SUBTYPES
    confidence: float
    box: Box  # (x0, y0, x1, y1) pixel-edge coordinates in the 512×512 slice


def resize_to_input(windowed: np.ndarray) -> np.ndarray:
    """One windowed slice at 512×512 (unchanged when it already is; area-averaged when larger)."""
    if windowed.shape == (INPUT_SIZE, INPUT_SIZE):
        return windowed
    shrink = max(windowed.shape) > INPUT_SIZE
    return cv2.resize(windowed, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def to_bgr(windowed: np.ndarray) -> np.ndarray:
    """Grey (H, W) or channels (3, H, W) slice → (H, W, 3): what cv2.imread gives ultralytics for the training PNG
    (``training.detector_dataset`` writes it from this array)."""
    if windowed.ndim == 2:
        return np.repeat(windowed[:, :, None], 3, axis=2)
    return np.ascontiguousarray(windowed.transpose(1, 2, 0))


def extend_confidence(confidence: float, extend: float | None) -> float:
    """The confidence a box needs to continue a finding: ``extend`` capped at ``confidence`` (None: ``confidence``,
    a plain threshold)."""
    return confidence if extend is None else min(extend, confidence)


def operating_point(
    manifest: ModelManifest, confidence: float | None = None, extend: float | None = None
) -> tuple[float, float]:
    """(confidence, extend confidence) the product keeps boxes at: the values given, else the manifest's (chosen on
    validation data; ultralytics' default 0.25 where it names none, a plain threshold where it names no extend)."""
    confidence = confidence if confidence is not None else manifest.operating_confidence or DEFAULT_CONFIDENCE
    return confidence, extend_confidence(confidence, extend if extend is not None else manifest.extend_confidence)


class HemorrhageDetector:
    """YOLO weights of a model folder (manifest checked), predicting per slice at 512 with NMS IoU 0.6."""

    def __init__(
        self, model_dir: Path, confidence: float | None = None, iou: float = NMS_IOU, device: str | None = None,
        extend: float | None = None,
    ) -> None:
        """``confidence`` None: the operating point stored in the manifest (chosen on validation data), else 0.25.
        ``extend`` None: the manifest's extend confidence (``ichseg.z_continuity``), when it has one; ``detect``
        returns every box at ``extend_confidence`` or above, ``ichseg.pipeline.detect`` keeps the findings."""
        self.model_dir = Path(model_dir)
        self.manifest = ModelManifest.load(self.model_dir)
        self.manifest.require(TASK, INPUT_SIZE, list(SUBTYPES))
        path = weights_path(model_dir)
        from ichseg.ultralytics_offline import YOLO  # here, so that importing the preprocessing stays light

        try:
            self.model = YOLO(str(path), task="detect")
        except Exception as error:  # torch/pickle raise many types for a corrupt or foreign file
            raise ModelError(f"{path}: not loadable as ultralytics YOLO weights ({error})") from error
        classes = list(self.model.names.values())
        if classes != list(SUBTYPES):
            raise ModelError(f"{path}: weights predict classes {classes}, expected {list(SUBTYPES)}")
        self.input = self.manifest.input
        if self.input not in INPUT_KINDS:
            raise ModelError(f"{model_dir}: manifest training.input {self.input!r} unsupported")
        self.confidence, self.extend_confidence = operating_point(self.manifest, confidence, extend)
        self.iou = iou
        self.device = default_device(device)

    def detect(self, windowed: np.ndarray, batch_size: int = 16) -> list[list[Detection]]:
        """Windowed uint8 slices, (N, 512, 512) or (N, 3, 512, 512) as ``WindowedSeries.detector_input(self.input)``
        gives them → the detections of each slice, in slice order."""
        expected = (*input_planes(self.input), INPUT_SIZE, INPUT_SIZE)
        if windowed.shape[1:] != expected or windowed.dtype != np.uint8:
            raise ValueError(f"detector input {self.input!r}: expected (N, {', '.join(map(str, expected))}) uint8, "
                             f"got {windowed.shape} {windowed.dtype}")
        detections: list[list[Detection]] = []
        for start in range(0, len(windowed), batch_size):
            # predict() is typed for its streaming and embedding modes too; a list call returns list[Results]
            results = cast("list[Results]", self.model.predict(
                [to_bgr(s) for s in windowed[start:start + batch_size]], imgsz=INPUT_SIZE, conf=self.extend_confidence,
                iou=self.iou, device=str(self.device), verbose=False,  # FP32: ultralytics' default
            ))
            for result in results:
                boxes = result.boxes
                assert boxes is not None, "a detection model's results always carry boxes"
                detections.append([
                    Detection(int(c), float(p), tuple(float(v) for v in xyxy))  # type: ignore[arg-type]
                    for c, p, xyxy in zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist(), strict=True)
                ])
        return detections
