"""Carry a trained detector's weights over to an architecture with more detection levels (e.g. a stride-4 P2 head).

Small and thin hemorrhage is what the bundled yolov5n misses (validation recall of boxes under 8 px across: 1 %,
8–16 px: 29 %, ≥ 64 px: 83 %); a P2 level (``training/yolov5-p2.yaml``) sees it at twice the resolution. (On the
synthetic phantoms it did not help — their small boxes are mostly sub-visible slivers; models/README.md — but real
readers box what they see.) Trained from scratch that costs days of this CPU; most of the network is already
trained. This writes a checkpoint of the new architecture holding every weight of the old one — layers by index (the
new YAML must keep the old layers unchanged, in place), detection levels by stride — with only the new layers at
their initialisation, to start a leg from with ``training.train_detector --model <the YAML> --pretrained <this
checkpoint>``. At the levels they share, the new model's outputs equal the old one's before training.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

import ichseg.ultralytics_offline  # noqa: F401  (ultralytics offline before its first import)
from ichseg.model_manifest import ModelError

# isort: split
from ultralytics.nn.modules import Detect
from ultralytics.nn.tasks import DetectionModel

LEVEL_KEY = re.compile(r"^(cv2|cv3)\.(\d+)\.(.*)$")


def load_detection_model(path: Path) -> DetectionModel:
    """The (EMA if present) fp32 ``DetectionModel`` of an ultralytics checkpoint or bundled ``model.pt``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = checkpoint.get("ema") or checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(model, DetectionModel):
        raise ModelError(f"{path}: not an ultralytics detection checkpoint")
    return model.float()


def detect_head(model: DetectionModel) -> tuple[int, Detect]:
    """Index of the model's last layer (``model.<i>.…`` in its state dict) and that layer, its Detect head."""
    layers = model.model
    if not isinstance(layers, torch.nn.Sequential) or not isinstance(layers[-1], Detect):
        raise ModelError("not a detection model ending in a Detect head")
    return len(layers) - 1, layers[-1]


def level_map(source: Detect, target: Detect) -> dict[int, int]:
    """Source detection level → target level of the same stride; every source level must have one."""
    target_levels = {float(s): i for i, s in enumerate(target.stride)}
    missing = [float(s) for s in source.stride if float(s) not in target_levels]
    if missing:
        raise ModelError(f"the new architecture has no detection level at stride {missing}")
    return {i: target_levels[float(s)] for i, s in enumerate(source.stride)}


def transferred_state(source: DetectionModel, target: DetectionModel) -> dict[str, torch.Tensor]:
    """Source weights under the target's names: layer i stays layer i, the Detect head moves to the target's last
    layer and its per-level branches to the level of the same stride. Refuses any weight that does not fit."""
    (source_head, source_detect), (target_head, target_detect) = detect_head(source), detect_head(target)
    levels = level_map(source_detect, target_detect)
    target_state = target.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, value in source.state_dict().items():
        layer, rest = key.split(".", 2)[1:]
        if int(layer) == source_head:
            level = LEVEL_KEY.match(rest)
            if level:
                rest = f"{level[1]}.{levels[int(level[2])]}.{level[3]}"
            layer = str(target_head)
        name = f"model.{layer}.{rest}"
        if name not in target_state or target_state[name].shape != value.shape:
            raise ModelError(f"{key} has no place in the new architecture (as {name}): it must keep the old layers")
        state[name] = value
    return state


def transfer(source: DetectionModel, architecture: str) -> DetectionModel:
    """A model of ``architecture`` (a YAML) holding every weight of ``source``."""
    target = DetectionModel(architecture, nc=len(source.names), verbose=False)
    target.load_state_dict(transferred_state(source, target), strict=False)
    target.names = dict(source.names)
    return target


def widened_tensor(value: torch.Tensor, shape: torch.Size, rng: torch.Generator) -> torch.Tensor:
    """``value`` at ``shape``: each dimension the same or twice as large. Output channel c (dimension 0) copies
    channel c // 2; a convolution's input channel pair (2k, 2k + 1) shares the weight of input k at fractions f and
    1 - f (f uniform in 0.3–0.7 per weight), so that reading two equal duplicates gives the old sum."""
    if value.dim() != len(shape) or any(new not in (old, 2 * old) for old, new in zip(value.shape, shape, strict=True)):
        raise ModelError(f"cannot widen a weight of shape {tuple(value.shape)} to {tuple(shape)}")
    if value.dim() and shape[0] != value.shape[0]:
        value = value[torch.arange(shape[0]) // 2]
    if value.dim() == 4 and shape[1] != value.shape[1]:
        out, pairs, *kernel = value.shape[0], value.shape[1], *value.shape[2:]
        share = 0.3 + 0.4 * torch.rand((out, pairs, 1, *kernel), generator=rng, dtype=value.dtype)
        value = (value[:, :, None] * torch.cat([share, 1 - share], dim=2)).reshape(out, 2 * pairs, *kernel)
    elif value.dim() > 1 and value.shape[1:] != shape[1:]:
        raise ModelError(f"cannot widen a weight of shape {tuple(value.shape)} to {tuple(shape)}")
    return value.clone()


def widen(source: DetectionModel, architecture: str, seed: int = 0) -> DetectionModel:
    """A model of ``architecture`` (the same layers, up to twice the channels) computing what ``source`` computes."""
    target = DetectionModel(architecture, nc=len(source.names), verbose=False)
    source_state, rng = source.state_dict(), torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, like in target.state_dict().items():
        if name not in source_state:
            raise ModelError(f"{name} of {architecture} has no counterpart in the trained model: not the same layers")
        state[name] = widened_tensor(source_state[name], like.shape, rng)
    target.load_state_dict(state)
    target.names = dict(source.names)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.transfer_detector", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("models/detector/model.pt"), help="trained detector")
    parser.add_argument("--model", default="training/yolov5n-p2.yaml", help="architecture YAML to carry it to")
    parser.add_argument("--widen", action="store_true",
                        help="--model has the same layers, up to twice the channels (e.g. yolov5s.yaml from yolov5n)")
    parser.add_argument("--seed", type=int, default=0, help="--widen: seed of the fractions that split the weights")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (for --pretrained)")
    args = parser.parse_args(argv)
    source = load_detection_model(args.source)
    model = widen(source, args.model, args.seed) if args.widen else transfer(source, args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "epoch": -1, "train_args": {}}, args.out)
    carried = len(source.state_dict())
    print(f"{args.out}: {args.model}, {carried} of {len(model.state_dict())} tensors from {args.source}")


if __name__ == "__main__":
    main()
