"""Train the stage-1 YOLOv5 hemorrhage detector (the paper's recipe), test it and bundle it as a model folder.

Paper defaults: ``yolov5l.yaml`` built from its YAML (never a downloaded ``.pt``), 512 px, 200 epochs, batch 64,
SGD, augmentation HSV / translate / scale / horizontal flip / mosaic. ``--tune N`` runs ultralytics' genetic
hyperparameter evolution (the paper's GA) for N iterations and writes ``best_hyperparameters.yaml``;
``--hyp`` trains with such a file (flags given on the command line still win).

After training, the best weights are tested on the test split (mAP@0.5 and mAP@0.5:0.95, at the NMS IoU of
inference, ``ichseg.detector.NMS_IOU``) and written with a manifest to ``--out`` (``model.pt`` + ``manifest.json``),
which ``ichseg.detector.HemorrhageDetector`` loads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ichseg.detector import INPUT_SIZE, KEEP_EVERY_BOX, NMS_IOU
from ichseg.model_manifest import WEIGHTS_NAME, ModelError, ModelManifest, portable_path
from ichseg.runtime import PRECISIONS, autocast_dtype, default_device
from ichseg.subtypes import SUBTYPES
from ichseg.ultralytics_offline import YOLO
from ichseg.windowing import HEADER_INPUT
from training.bf16_trainer import with_hu_changes
from training.detector_dataset import dataset_input, training_size
from training.detector_operating_point import store as store_operating_point
from training.hu_shift import HU_CHANGES
from training.ultralytics_results import epoch_rows, run_seconds

# isort: split
from ultralytics.utils.torch_utils import strip_optimizer  # after ichseg.ultralytics_offline has switched it offline

MODEL_NAME = "ich-yolov5-detector"
HU_SHIFT_FILE = "hu_shift.json"  # in the run folder: --hu-shift and --hu-noise of the run, for --resume, --export-only
RECIPE_KEYS = ("model", "optimizer", "lr0", "lrf", "momentum", "weight_decay", "hsv_h", "hsv_s", "hsv_v",
               "translate", "scale", "fliplr", "bgr", "mosaic", "close_mosaic", "seed", "amp", "nbs", "warmup_epochs")
NOT_RECIPE = ("save_period",)  # hyperparameters that say when checkpoints are kept, not how the weights were made
MAX_BYTES_PER_PARAMETER = 3  # FP16 weights are 2; more means an optimizer or EMA copy is still inside


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.train_detector", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="data.yaml written by training.detector_dataset")
    parser.add_argument("--out", type=Path, default=Path("models/detector"), help="model folder to write")
    parser.add_argument("--model", default="yolov5l.yaml", help="architecture YAML (yolov5n/s/m/l/x.yaml)")
    parser.add_argument("--model-version", default="0.1.0", help="version written to the manifest")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--time", type=float, default=None, help="hours; replaces --epochs (recomputed to fill it)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--imgsz", type=int, default=None,
                        help="training size; default and only choice: the images' own (the app's 512 for slices, the "
                             "tile's for training.detector_tiles datasets); validation and test run on whole slices")
    parser.add_argument("--optimizer", default="SGD", choices=("SGD", "Adam", "AdamW"), help="not 'auto' (ignores lr0)")
    parser.add_argument("--lr0", type=float, default=0.01)
    parser.add_argument("--lrf", type=float, default=0.01, help="final lr as a fraction of lr0")
    parser.add_argument("--momentum", type=float, default=0.937)
    parser.add_argument("--weight-decay", type=float, default=0.0005)
    parser.add_argument("--hsv-h", type=float, default=0.015, help="no effect on grey slices; 0 for windows")
    parser.add_argument("--hsv-s", type=float, default=0.7, help="no effect on grey slices; 0 for windows")
    parser.add_argument("--hsv-v", type=float, default=0.4, help="brightness jitter on grey slices; 0 for windows")
    parser.add_argument("--translate", type=float, default=0.1)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--fliplr", type=float, default=0.5)
    parser.add_argument("--mosaic", type=float, default=1.0)
    parser.add_argument("--close-mosaic", type=int, default=10, help="last epochs without mosaic")
    parser.add_argument("--hyp", type=Path, default=None, help="hyperparameter YAML, e.g. best_hyperparameters.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hu-shift", type=float, default=None, metavar="HU",
                        help="calibration-shift augmentation: each training image as if every HU read up to this much "
                             "higher or lower (training.hu_shift; default 0: off); --resume keeps the run's own and "
                             "refuses another")
    parser.add_argument("--hu-noise", type=float, default=None, metavar="HU",
                        help="noise augmentation: correlated noise of a standard deviation up to this added to each "
                             "training image's HU (training.hu_shift; default 0: off); --resume keeps the run's own "
                             "and refuses another")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast where the hardware has bf16 (weights stay fp32), else fp32")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="start from these weights (e.g. models/detector/model.pt) "
                             "instead of random initialisation")
    parser.add_argument("--workers", type=int, default=2, help="dataloader processes")
    parser.add_argument("--cache", choices=("none", "ram", "disk"), default="none", help="decoded-image cache")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA if present, else CPU)")
    parser.add_argument("--project", type=Path, default=Path("runs/detector"), help="ultralytics run folder")
    parser.add_argument("--name", default="train", help="run name under --project")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="ultralytics plots")
    parser.add_argument("--resume", action="store_true", help="continue <project>/<name>/weights/last.pt")
    parser.add_argument("--export-only", action="store_true",
                        help="no training: bundle <project>/<name>'s best checkpoint so far into --out")
    parser.add_argument("--checkpoint", default=None, metavar="FILE",
                        help="with --export-only: this file of the run's weights/ (e.g. epoch3.pt, kept by "
                             "save_period) instead of its best — for an epoch chosen by the product sweep")
    parser.add_argument("--tune", type=int, default=0, metavar="N", help="run N genetic tuning iterations and stop")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Arguments, with ``--hyp`` values as defaults; hyperparameters without a flag are returned separately."""
    parser = build_parser()
    hyp_path = parser.parse_known_args(argv)[0].hyp
    hyp = yaml.safe_load(hyp_path.read_text()) if hyp_path else {}
    flags = set(vars(parser.parse_args([])))
    parser.set_defaults(**{k: v for k, v in hyp.items() if k in flags})
    args = parser.parse_args(argv)
    if not (args.resume or args.export_only) and args.data is None:
        parser.error("--data is required unless --resume or --export-only")
    if args.checkpoint and not args.export_only:
        parser.error("--checkpoint chooses what --export-only bundles")
    extra = {k: v for k, v in hyp.items() if k not in flags}
    if args.data is not None:
        native = training_size(yaml.safe_load(args.data.read_text()))
        if args.imgsz not in (None, native):
            parser.error(f"--imgsz {args.imgsz}: {args.data}'s images are trained at {native} px (their own scale; "
                         f"the app detects on {INPUT_SIZE} px slices at that scale)")
        args.imgsz = native
    recorded = run_hu_changes(args.project / args.name) if args.resume else {}
    for key, largest in HU_CHANGES.items():
        value, flag = getattr(args, key), "--" + key.replace("_", "-")
        if value is not None and not 0.0 <= value <= largest:
            parser.error(f"{flag} must be between 0 and {largest:g} HU, got {value}")
        if value and (args.tune or args.export_only):
            parser.error(f"{flag} is a training augmentation: --tune does not apply it, --export-only reads the run's")
        if value and args.mosaic > 0 and not args.resume:  # Mosaic loads its other three images past the transforms
            parser.error(f"{flag} reaches only one image of four in a mosaic: train with --mosaic 0")
        if args.resume and value is not None and value != recorded[key]:
            parser.error(f"{flag} {value:g}: {args.project / args.name} was trained with {flag} {recorded[key]:g}, "
                         "which --resume keeps")
    if args.data is not None and dataset_input(args.data) != HEADER_INPUT:
        if args.tune:
            parser.error("--tune mutates colour augmentations (hsv, bgr) that would mix window channels: tune on a "
                         "--input header-window dataset")
        # the channels are windows, not colours: HSV jitter (even value-only, through 8-bit HSV) and BGR swaps
        # would change what each channel means in training only
        args.hsv_h = args.hsv_s = args.hsv_v = 0.0
        extra["bgr"] = 0.0
    return args, extra


def train_settings(args: argparse.Namespace, extra: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """ultralytics keyword arguments for training and tuning."""
    return {
        "data": str(args.data.resolve()), "epochs": args.epochs, "time": args.time, "batch": args.batch,
        "imgsz": args.imgsz, "optimizer": args.optimizer, "lr0": args.lr0, "lrf": args.lrf, "momentum": args.momentum,
        "weight_decay": args.weight_decay, "hsv_h": args.hsv_h, "hsv_s": args.hsv_s, "hsv_v": args.hsv_v,
        "translate": args.translate, "scale": args.scale, "fliplr": args.fliplr, "mosaic": args.mosaic,
        "close_mosaic": args.close_mosaic, "seed": args.seed, "workers": args.workers,
        "cache": False if args.cache == "none" else args.cache, "device": str(device), "plots": args.plots,
        # fp16 AMP's check downloads a model; bf16 needs neither the check nor a GradScaler (CPU: Bf16DetectionTrainer)
        "amp": "bf16" if autocast_dtype(device, args.precision) == torch.bfloat16 else False,
        "pretrained": str(args.pretrained.resolve()) if args.pretrained else False,
        "project": str(args.project.resolve()), "name": args.name, "exist_ok": True, **extra,
    }


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def export_weights(best: Path, out: Path) -> Path:
    """Best checkpoint → ``out/model.pt`` without optimizer/EMA state (FP16), refusing an oversized result."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / WEIGHTS_NAME
    checkpoint = strip_optimizer(best, s=str(target))
    if not checkpoint:
        raise ModelError(f"{best}: not an ultralytics checkpoint")
    parameters = sum(p.numel() for p in checkpoint["model"].parameters())
    size = target.stat().st_size
    if size > MAX_BYTES_PER_PARAMETER * parameters + 2**20:
        raise ModelError(f"{target}: {size / 1e6:.1f} MB for {parameters / 1e6:.2f} M parameters; state not stripped")
    print(f"weights: {target} ({size / 1e6:.1f} MB, {parameters / 1e6:.2f} M parameters)")
    return target


def evaluate(weights: Path, trainer_args: Any, device: torch.device) -> tuple[float, float]:
    """mAP@0.5 and mAP@0.5:0.95 of the exported weights on the test split, at the app's input size (a model trained
    on tiles included)."""
    metrics = YOLO(str(weights), task="detect").val(
        data=trainer_args.data, split="test", imgsz=INPUT_SIZE, batch=trainer_args.batch,
        conf=KEEP_EVERY_BOX, iou=NMS_IOU, device=str(device), plots=False,
        project=str(trainer_args.project), name=f"{Path(trainer_args.name).name}-test", exist_ok=True,
    )
    return float(metrics.box.map50), float(metrics.box.map)


def tune(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    """Genetic evolution of the hyperparameters, each iteration a ``--epochs`` training.

    ultralytics runs each iteration in a subprocess of its own CLI: offline (it inherits the environment and
    the config folder) but with its own thread choice (cpu_count−1) — tuning is meant for a GPU.
    """
    settings = {**settings, "name": f"{args.name}-tune", "exist_ok": False, "plots": False, "save": False, "val": False}
    YOLO(args.model).tune(iterations=args.tune, use_ray=False, **settings)
    found = sorted(args.project.glob(f"{args.name}-tune*/best_hyperparameters.yaml"), key=lambda p: p.stat().st_mtime)
    if found:
        print(f"best hyperparameters: {found[-1]}\ntrain with: python -m training.train_detector --hyp {found[-1]} ...")


def bundle(
    best: Path, args: argparse.Namespace, train_args: Any, epochs: int, seconds: float, model_yaml: str,
    extra: dict[str, Any], device: torch.device,
) -> None:
    """Best checkpoint → ``args.out``: weights, their test mAP, the manifest and the validation operating point."""
    weights = export_weights(best, args.out)
    map50, map50_95 = evaluate(weights, train_args, device)
    print(f"test mAP@0.5 {map50:.3f}, mAP@0.5:0.95 {map50_95:.3f}")
    keys = [k for k in (*RECIPE_KEYS, *extra) if k not in NOT_RECIPE]
    recipe = {k: getattr(train_args, k) for k in keys if hasattr(train_args, k)}
    recipe["model"] = model_yaml
    recipe |= run_hu_changes(args.project / args.name)
    ModelManifest(
        name=MODEL_NAME, version=args.model_version, architecture=model_yaml, input_size=INPUT_SIZE,
        classes=list(SUBTYPES), task="detection",
        training={
            "data": portable_path(train_args.data), "epochs": epochs, "batch": train_args.batch,
            "imgsz": train_args.imgsz, "mAP50": round(map50, 4), "mAP50_95": round(map50_95, 4),
            "seconds": round(seconds, 1), "device": device_name(device), "input": dataset_input(train_args.data),
            "recipe": recipe,
        },
    ).save(args.out)
    store_operating_point(args.out, Path(train_args.data), args.project.resolve(), str(device))
    print(f"model folder: {args.out}")


def export_stopped_run(args: argparse.Namespace, extra: dict[str, Any], device: torch.device) -> None:
    """``--export-only``: bundle the best checkpoint of a run that was stopped (or whose schedule is not over yet),
    as a finished run would have been; ``--resume`` still continues it."""
    folder = args.project / args.name
    last = folder / "weights" / "last.pt"
    if not last.is_file():
        raise SystemExit(f"{last}: no checkpoint to export")
    best = folder / "weights" / "best.pt" if (folder / "weights" / "best.pt").is_file() else last
    rows = epoch_rows(folder)  # one per finished epoch (a finished run's last.pt says epoch -1)
    if args.checkpoint:
        best = folder / "weights" / args.checkpoint
        if not best.is_file():
            raise SystemExit(f"{best}: no such checkpoint")
        epoch = int(torch.load(best, map_location="cpu", weights_only=False).get("epoch", -1))
        rows = rows[: epoch + 1] if epoch >= 0 else rows  # the epochs that made this checkpoint
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    train_args = argparse.Namespace(**checkpoint["train_args"])
    seconds = run_seconds([float(row["time"]) for row in rows])  # across --resume; pauses included
    model_yaml = (checkpoint.get("ema") or checkpoint["model"]).yaml.get("yaml_file", train_args.model)  # EMA: mid-run
    print(f"exporting {best}: {len(rows)} of {train_args.epochs} epochs")
    bundle(best, args, train_args, len(rows), seconds, model_yaml, extra, device)


def run_hu_changes(run: Path, changes: dict[str, float] | None = None) -> dict[str, float]:
    """The run's HU augmentations (``HU_CHANGES``): recorded beside its checkpoints when given (a fresh run), read back
    otherwise (--resume, --export-only; 0 for what a run from before an option did not record). ultralytics keeps no
    unknown arguments."""
    record = run / HU_SHIFT_FILE
    if changes is not None:
        run.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(changes) + "\n")
        return changes
    recorded = json.loads(record.read_text()) if record.is_file() else {}
    return {key: float(recorded.get(key, 0.0)) for key in HU_CHANGES}


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(argv)
    device = default_device(args.device)
    if args.tune:
        tune(args, train_settings(args, extra, device))
        return
    if args.export_only:
        export_stopped_run(args, extra, device)
        return
    started = time.perf_counter()
    if args.resume:
        model = YOLO(str(args.project / args.name / "weights" / "last.pt"))
        trainer = with_hu_changes(**run_hu_changes(args.project / args.name))
        model.train(resume=True, device=str(device), workers=args.workers, trainer=trainer)
    else:
        model = YOLO(args.model)
        changes = {key: getattr(args, key) or 0.0 for key in HU_CHANGES}
        trainer = with_hu_changes(**run_hu_changes(args.project / args.name, changes))
        model.train(**train_settings(args, extra, device), trainer=trainer)
    run = model.trainer
    assert run is not None, "ultralytics' train() leaves its trainer on the model"
    best = run.best if run.best.is_file() else run.last
    model_yaml = model.model.yaml.get("yaml_file", args.model)  # on resume trainer.args.model is last.pt
    bundle(best, args, run.args, run.epoch + 1, time.perf_counter() - started, model_yaml, extra, device)


if __name__ == "__main__":
    main()
