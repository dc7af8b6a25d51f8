"""Train the stage-2 segmenter (or a single-stage baseline) and export a model folder for the app.

    python -m training.train_segmenter --data data/synthetic --out models/segmenter --mode crops \
        --network transdeeplab --epochs 6 --steps-per-epoch 12 --val-slices 48 --max-minutes 25

Recipe (paper, TransDeepLab's public trainer): SGD, momentum 0.9, lr 0.01, weight decay 1e-4, polynomial
decay ``lr·(1 − step/steps)^0.9`` per step, batch 8; loss 0.4·cross-entropy + 0.6·Dice (MONAI DiceCELoss,
softmax, one-hot targets, background included). Every epoch ends with the validation Dice and a checkpoint
(``<out>/checkpoint.pt``: model, optimizer, scheduler, epoch — for ``--resume``); the best epoch so far is
exported as ``<out>/model.pt`` (float16 state dict) and ``<out>/manifest.json``. ``--max-minutes`` counts from
the start of this invocation (data loading included) and stops after the epoch when the next one would not fit.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from ichseg.crops import CROP_SIZE
from ichseg.model_manifest import WEIGHTS_NAME, ModelManifest
from ichseg.networks import TransDeepLab
from ichseg.runtime import configure_threads, default_device
from ichseg.segmenter import ARCHITECTURES, CLASSES, build_network
from training.segmenter_data import JITTER, MODES, SegmentationDataset, evenly_spaced, load_samples

CHECKPOINT_NAME = "checkpoint.pt"
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
POLY_POWER = 0.9
LOSS = "DiceCELoss(softmax, to_onehot_y, lambda_ce=0.4, lambda_dice=0.6)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.train_segmenter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="synthetic data folder with studies.csv")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--mode", choices=MODES, default="crops", help="crops (two-stage) or whole-slice (single-stage)")
    parser.add_argument("--network", choices=sorted(ARCHITECTURES), default="transdeeplab")
    parser.add_argument("--epochs", type=int, default=300, help="planned epochs; the lr decays to 0 over them")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0, help="same seed, same data order, augmentation and init")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after the epoch when the next one would not fit in this budget (loading included)")
    parser.add_argument("--resume", action="store_true", help=f"continue from <out>/{CHECKPOINT_NAME}")
    parser.add_argument("--init-encoder", type=Path, default=None,
                        help="local ImageNet Swin-T checkpoint for the TransDeepLab encoder (never downloaded)")
    parser.add_argument("--limit-studies", type=int, default=None, help="use at most this many studies per split")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="batches per epoch, drawn at random (default: one pass over the training slices); "
                             "shorter epochs give --max-minutes and validation a finer grain on a CPU")
    parser.add_argument("--max-slices", type=int, default=None,
                        help="train on at most this many slices, spread evenly over the studies")
    parser.add_argument("--val-slices", type=int, default=96,
                        help="validate on at most this many slices, spread evenly (validation costs CPU time)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA if present, else CPU)")
    return parser.parse_args(argv)


def make_model(args: argparse.Namespace) -> nn.Module:
    """The network, with the encoder initialised from a local Swin-T checkpoint when given."""
    torch.manual_seed(args.seed)
    model = build_network(args.network)
    if args.init_encoder is not None:
        if not isinstance(model, TransDeepLab):
            raise SystemExit("--init-encoder applies to --network transdeeplab only")
        model.load_encoder_checkpoint(args.init_encoder)
    return model


@torch.no_grad()
def validation_dice(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Mean Dice of the hemorrhage class over validation samples with hemorrhage, in the 224×224 input space."""
    model.eval()
    scores = []
    for images, targets in tqdm(loader, desc="  validation", unit="batch", leave=False):
        predicted = model(images.to(device)).argmax(dim=1, keepdim=True).cpu()
        dice = compute_dice(predicted.float(), targets[:, None].float(), include_background=True, ignore_empty=True)
        scores += [float(d) for d in dice.flatten() if not math.isnan(d)]
    return sum(scores) / len(scores) if scores else float("nan")


def half_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Float16 copy of the state dict: halves the bundled file; inference converts back to float32."""
    return {k: v.detach().half().cpu() if v.is_floating_point() else v.cpu() for k, v in model.state_dict().items()}


def _finite(value: float | None) -> float | None:
    """NaN (no validation slices) → None, so that the manifest stays strict JSON."""
    return None if value is None or math.isnan(value) else round(value, 4)


def manifest_for(args: argparse.Namespace, state: dict) -> ModelManifest:
    """The manifest of the exported (best) weights, with how they were made."""
    stage = "segmenter" if args.mode == "crops" else "single-stage"
    return ModelManifest(
        name=f"ich-{args.network}-{stage}",
        version="0.1.0",
        architecture=ARCHITECTURES[args.network],
        input_size=CROP_SIZE,
        classes=CLASSES,
        task="segmentation",
        training={
            "mode": args.mode,
            "network": args.network,
            "epochs": state["epoch"],
            "planned_epochs": args.epochs,
            "best_epoch": state["best_epoch"],
            "steps": state["steps"],
            "seconds": round(state["seconds"]),
            "val_dice": _finite(state["best_dice"]),
            "data": f"{args.data} (train split {state['train_samples']} slices, val {state['val_samples']})",
            "loss": LOSS,
            "optimizer": f"SGD lr {args.lr} momentum {MOMENTUM} weight decay {WEIGHT_DECAY}, "
                         f"poly decay power {POLY_POWER} per step, batch {args.batch}",
            "augmentation": "rot90 + flip" + (f" + box jitter {JITTER:.0%}" if args.mode == "crops" else ""),
            "encoder_init": str(args.init_encoder) if args.init_encoder else "random",
            "seed": args.seed,
        },
    )


def make_loaders(args: argparse.Namespace) -> tuple[SegmentationDataset, DataLoader, torch.Generator, DataLoader]:
    """Cached, augmented training set with its seeded sampler, and the un-augmented validation loader."""
    train_samples = load_samples(args.data, "train", args.mode, seed=args.seed, limit=args.limit_studies)
    val_samples = load_samples(args.data, "val", args.mode, negative_fraction=0.0, limit=args.limit_studies)
    train_samples, val_samples = evenly_spaced(train_samples, args.max_slices), evenly_spaced(val_samples, args.val_slices)
    if not train_samples:
        raise SystemExit(f"{args.data}: no training slices for mode {args.mode}")
    train_set = SegmentationDataset(train_samples, augment=True, jitter=JITTER if args.mode == "crops" else 0.0,
                                    seed=args.seed)
    generator = torch.Generator()
    per_epoch = args.steps_per_epoch * args.batch if args.steps_per_epoch else None
    sampler = RandomSampler(train_set, num_samples=per_epoch, generator=generator)
    train_loader = DataLoader(train_set, batch_size=args.batch, sampler=sampler, drop_last=len(train_set) > args.batch)
    val_loader = DataLoader(SegmentationDataset(val_samples, augment=False), batch_size=args.batch)
    return train_set, train_loader, generator, val_loader


def train_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device, description: str) -> list[float]:
    """One pass over the loader, the lr decaying every step; returns the step losses."""
    model.train()
    losses = []
    progress = tqdm(loader, desc=description, unit="step")
    for images, targets in progress:
        loss = loss_fn(model(images.to(device)), targets[:, None].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{scheduler.get_last_lr()[0]:.4f}")
    return losses


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    invoked = time.perf_counter()
    configure_threads()
    device = default_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    train_set, train_loader, generator, val_loader = make_loaders(args)
    model = make_model(args).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=args.epochs * len(train_loader),
                                                      power=POLY_POWER)
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True, lambda_ce=0.4, lambda_dice=0.6)
    state = {"epoch": 0, "steps": 0, "seconds": 0.0, "best_dice": None, "best_epoch": None, "history": [],
             "train_samples": len(train_set), "val_samples": len(val_loader.dataset)}
    checkpoint_path = args.out / CHECKPOINT_NAME
    if args.resume:
        if not checkpoint_path.is_file():
            raise SystemExit(f"{checkpoint_path}: no checkpoint to resume from")
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if (checkpoint["args"]["mode"], checkpoint["args"]["network"]) != (args.mode, args.network):
            raise SystemExit(f"{checkpoint_path}: made for {checkpoint['args']['mode']}/{checkpoint['args']['network']}")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = checkpoint["state"]
        # A larger --epochs on resume extends the plan: the decay continues from the current lr towards 0 at the new
        # end. PolynomialLR is chained (each step scales the last lr), so a run whose decay already reached 0 stays at 0.
        planned_steps = args.epochs * len(train_loader)
        if planned_steps > scheduler.total_iters:
            if scheduler.last_epoch >= scheduler.total_iters:
                raise SystemExit(f"{checkpoint_path}: its lr decay ended after epoch {state['epoch']}; a larger --epochs "
                                 "cannot restart it (start a new run, or resume before the planned end)")
            scheduler.total_iters = planned_steps
        print(f"resumed from {checkpoint_path} after epoch {state['epoch']}")

    started = time.perf_counter() - state["seconds"]
    budget = args.max_minutes * 60 if args.max_minutes else math.inf
    print(f"{args.network} {args.mode}: {state['train_samples']} train / {state['val_samples']} val slices, "
          f"{len(train_loader)} steps per epoch on {device}")
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        epoch_started = time.perf_counter()
        torch.manual_seed(args.seed * 100_003 + epoch)  # dropout/drop-path; repeatable across --resume
        generator.manual_seed(args.seed * 100_003 + epoch)
        train_set.set_epoch(epoch)
        losses = train_epoch(model, train_loader, loss_fn, optimizer, scheduler, device, f"epoch {epoch}/{args.epochs}")
        dice = validation_dice(model, val_loader, device)
        state["epoch"], state["steps"] = epoch, state["steps"] + len(losses)
        state["seconds"] = time.perf_counter() - started
        state["history"].append({"epoch": epoch, "loss": sum(losses) / len(losses), "val_dice": dice})
        improved = state["best_dice"] is None or math.isnan(state["best_dice"]) or dice > state["best_dice"]
        if improved:
            state["best_dice"], state["best_epoch"] = dice, epoch
            torch.save(half_state(model), args.out / WEIGHTS_NAME)
        manifest_for(args, state).save(args.out)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state, "args": vars(args)}, checkpoint_path)
        tqdm.write(f"epoch {epoch}: loss {state['history'][-1]['loss']:.4f}, val Dice {dice:.4f}"
                   f"{' (best)' if improved else ''}, {time.perf_counter() - epoch_started:.0f} s")
        now = time.perf_counter()
        if (now - invoked) + (now - epoch_started) > budget:  # elapsed + one more epoch like this one
            print(f"stopping: the next epoch would exceed --max-minutes {args.max_minutes}")
            break
    size = (args.out / WEIGHTS_NAME).stat().st_size / 2**20
    print(f"best val Dice {_finite(state['best_dice'])} at epoch {state['best_epoch']}; "
          f"{args.out / WEIGHTS_NAME} {size:.1f} MiB, {state['seconds'] / 60:.1f} min of training")


if __name__ == "__main__":
    main()
