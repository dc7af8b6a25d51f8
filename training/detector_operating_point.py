"""Choose the detector's operating point (confidence threshold) on the validation split and store it.

``python -m training.detector_operating_point --model models/detector --data data/yolo/data.yaml``

The threshold maximising the class-agnostic F1 on validation slices (ultralytics' own F1 curve, every subtype
counted as one class) becomes ``operating_confidence`` in the manifest. Class-agnostic because the product merges
all boxes of a slice into one: a box with the wrong subtype still yields the right crop, a missed or spurious box
does not. The curve is measured with class-agnostic NMS (ultralytics' single-class mode) while the app keeps
per-class NMS; the two differ only in overlapping boxes of different subtypes, which the merger unites anyway. It
is written to ``operating_confidence`` in the manifest, which the app uses unless ICH_CONFIDENCE overrides it.
Choosing it on validation data, never on the test split, keeps the test figures honest. ``training.train_detector``
calls this after training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ichseg.detector import INPUT_SIZE, KEEP_EVERY_BOX, NMS_IOU
from ichseg.model_manifest import ModelError, ModelManifest, weights_path
from ichseg.runtime import default_device
from ichseg.ultralytics_offline import YOLO
from training.detector_dataset import dataset_input


def operating_confidence(weights: Path, data: Path, project: Path, device: str | None = None) -> float:
    """Confidence at the maximum of the class-agnostic F1 curve on the validation split."""
    metrics = YOLO(str(weights), task="detect").val(
        data=str(data), split="val", imgsz=INPUT_SIZE, conf=KEEP_EVERY_BOX, iou=NMS_IOU,
        device=str(default_device(device)),
        plots=False, project=str(project), name="operating-point", exist_ok=True, verbose=False, single_cls=True,
    )
    f1 = np.asarray(metrics.box.f1_curve).mean(axis=0)  # one row in single-class mode
    return float(np.asarray(metrics.box.px)[int(f1.argmax())])


def store(model_dir: Path, data: Path, project: Path, device: str | None = None) -> float:
    """Measure the operating point of a model folder's weights and write it into its manifest."""
    manifest = ModelManifest.load(model_dir)
    images = dataset_input(data)
    if manifest.input != images:
        raise ModelError(f"{model_dir}: weights take {manifest.input!r} input, {data} holds {images!r} images")
    manifest.operating_confidence = round(operating_confidence(weights_path(model_dir), data, project, device), 4)
    manifest.extend_confidence = None  # the earlier weights' hysteresis does not carry over: --choose-guard sets it
    manifest.training["operating_point"] = "max class-agnostic F1 on the validation split"
    manifest.save(model_dir)
    print(f"{model_dir}: operating confidence {manifest.operating_confidence}")
    return manifest.operating_confidence


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.detector_operating_point", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", type=Path, default=Path("models/detector"), help="model folder")
    parser.add_argument("--data", type=Path, required=True, help="data.yaml with a val split")
    parser.add_argument("--project", type=Path, default=Path("runs/detector"))
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    store(args.model, args.data.resolve(), args.project.resolve(), args.device)


if __name__ == "__main__":
    main()
