"""Detector speed by YOLOv5 size at 512 px: ``python -m benchmarks.detector_sizes``.

The app ships yolov5n (CPU-trainable); the paper used yolov5l. This times yolov5 n/s/m/l as the app calls
them — ``YOLO.predict`` on a batch of windowed 512×512 slices (pre-processing, forward, NMS at IoU 0.6, conf 0.25,
FP32) — and the bare network forward on the same batch, on the device the app would use (``ICH_DEVICE``, else
the first CUDA GPU, else the CPU) with the app's torch threads. The networks are built from ultralytics'
``yolov5{n,s,m,l}.yaml`` with 5 classes and untrained weights: nothing is downloaded (``YOLO_OFFLINE=1``), and
speed does not depend on the weights' values. The batch is the demo study's middle slices; warm-up calls are
excluded and the median of ``--repeats`` calls is kept. Parameter counts and GFLOPs (per 512² image) are
ultralytics' own. Writes ``benchmarks/results/detector_sizes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, finish, machine_info, paper_comparison, write_json

SIZES = ("n", "s", "m", "l")
PAPER_SIZE = "l"
INPUT = 512
CLASSES = 5
IOU = 0.6
CONFIDENCE = 0.25


def demo_batch(study: Path, count: int) -> np.ndarray:
    """``count`` middle slices of a study, windowed with the header's first window (else 40/80): (N, 512, 512) uint8."""
    import cv2
    import pydicom

    datasets = [pydicom.dcmread(p) for p in sorted(study.glob("*.dcm"))]
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    middle = max(0, (len(datasets) - count) // 2)
    chosen = (datasets[middle:middle + count] * count)[:count]  # repeated if the study is short
    slices = []
    for ds in chosen:
        slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
        hu = ds.pixel_array.astype(np.float32) * slope + intercept
        centre, width = 40.0, 80.0
        if "WindowCenter" in ds and "WindowWidth" in ds:
            centre, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
        windowed = np.clip((hu - (centre - width / 2)) / width * 255.0, 0, 255).astype(np.uint8)
        if windowed.shape != (INPUT, INPUT):
            windowed = cv2.resize(windowed, (INPUT, INPUT), interpolation=cv2.INTER_AREA)
        slices.append(windowed)
    return np.stack(slices)


def _first_value(value: object) -> float:
    """A DICOM value that may be multi-valued: its first value."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, MultiValue) else value)  # type: ignore[arg-type]


def timed(call: Callable[[], object], warmup: int, repeats: int, synchronize: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        call()
    synchronize()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(size: str, batch: np.ndarray, device: str, warmup: int, repeats: int) -> dict:
    import torch
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    from ichseg.ultralytics_offline import YOLO

    config = f"yolov5{size}.yaml"
    torch.manual_seed(0)
    yolo = YOLO(config)  # ultralytics' yaml; its 80 classes are replaced by the app's 5 below
    network = DetectionModel(config, nc=CLASSES, verbose=False)
    network.names = {i: str(i) for i in range(CLASSES)}
    yolo.model = network  # type: ignore[assignment]
    parameters = get_num_params(network)
    gflops = get_flops(network, imgsz=INPUT) or None  # per image; 0.0 from ultralytics when thop is missing
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    images = [np.repeat(s[:, :, None], 3, axis=2) for s in batch]  # what ichseg.detector feeds predict
    predict = timed(lambda: yolo.predict(images, imgsz=INPUT, conf=CONFIDENCE, iou=IOU, device=device, verbose=False),
                    warmup, repeats, synchronize)
    model = network.to(device).eval()
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).to(device)

    def forward() -> None:
        with torch.inference_mode():
            model(tensor)
    forward_seconds = timed(forward, warmup, repeats, synchronize)
    n = len(batch)
    result = {
        "model": config, "classes": CLASSES, "parameters": parameters,
        "gflops_per_image": None if gflops is None else round(gflops, 2),
        "batch": n, "repeats": repeats, "warmup": warmup,
        "predict_s_per_batch": [round(s, 4) for s in predict],
        "predict_s_per_slice": round(statistics.median(predict) / n, 4),
        "predict_best_s_per_slice": round(min(predict) / n, 4),
        "forward_s_per_slice": round(statistics.median(forward_seconds) / n, 4),
        "forward_best_s_per_slice": round(min(forward_seconds) / n, 4),
        "torch_threads_used": torch.get_num_threads(),
    }
    print(f"{config}: {result['predict_s_per_slice']:.3f} s/slice (predict), {result['forward_s_per_slice']:.3f} "
          f"s/slice (forward), {parameters / 1e6:.1f} M parameters, {result['gflops_per_image']} GFLOPs", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detector_sizes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--batch", type=int, default=8, help="slices per call (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per size (default 5; the median is kept)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke test: yolov5n, batch 2, 1 warm-up, 1 repeat")
    parser.add_argument("--study", type=Path, default=ROOT / "demo" / "study", help="slices to time (default: demo)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "detector_sizes.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.warmup, args.repeats = ["n"], 2, 1, 1
    os.environ["YOLO_OFFLINE"] = "1"  # also set by ichseg.ultralytics_offline; said here because it must hold
    from ichseg.runtime import configure_threads, default_device

    configure_threads()
    device = str(default_device(os.environ.get("ICH_DEVICE") or None))
    batch = demo_batch(args.study, args.batch)
    study = args.study.absolute()
    shown = study.relative_to(ROOT) if study.is_relative_to(ROOT) else study
    manifest = json.loads((ROOT / "models" / "detector" / "manifest.json").read_text())
    result: dict = {
        "benchmark": "python -m benchmarks.detector_sizes",
        "machine": machine_info(),
        "device": device,
        "input": f"{len(batch)} windowed {INPUT}x{INPUT} slices of {shown} (grey as 3 channels)",
        "settings": {"imgsz": INPUT, "conf": CONFIDENCE, "iou": IOU, "precision": "fp32", "weights": "untrained"},
        "app_detector": manifest.get("architecture"),
        "paper_detector": f"yolov5{PAPER_SIZE}.yaml",
        "sizes": [measure(size, batch, device, args.warmup, args.repeats) for size in args.sizes],
    }
    paper_row = next((r for r in result["sizes"] if r["model"] == result["paper_detector"]), None)
    result["paper"] = paper_comparison(paper_row["predict_s_per_slice"] if paper_row else None,
                                       "yolov5l predict seconds per slice on this machine (the paper's detector)",
                                       reference="detector_s_per_slice")
    write_json(finish(result), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
