"""Train the stage-2 segmenter (or a single-stage baseline) and export a model folder for the app.

    python -m training.train_segmenter --data data/synthetic --out models/segmenter --mode crops \
        --network transdeeplab --epochs 6 --steps-per-epoch 12 --val-slices 48 --max-minutes 25

Optimizers: ``--optimizer sgd`` is the paper's recipe (TransDeepLab's public trainer: SGD, momentum 0.9, lr 0.01,
weight decay 1e-4, polynomial decay per step), which assumes an ImageNet-initialised Swin encoder. The default,
``adamw`` (lr 3e-4, weight decay 0.05, 40-step linear warm-up, cosine decay), is what a randomly initialised
transformer needs: no ImageNet weights can be downloaded here, and on this CPU AdamW reached crop Dice 0.83 in the
steps SGD needed for 0.73. Batch 8; loss 0.4·cross-entropy + 0.6·Dice (MONAI DiceCELoss, softmax, one-hot targets,
background included), computed in fp32. ``--precision auto`` runs forward/backward under bf16 autocast where the
hardware has bf16 (AVX512-BF16/AMX CPUs, recent GPUs; ≈2.5× faster per step on such a CPU), fp32 elsewhere; the
weights and optimizer state stay fp32. Every epoch ends with the validation Dice and a checkpoint
(``<out>/checkpoint.pt``: model, optimizer, step, epoch — for ``--resume``); the best epoch so far is
exported as ``<out>/model.pt`` (float16 state dict) and ``<out>/manifest.json``. With ``--negative-crops`` the
checkpoint has ``<out>/negative_crops.json`` beside it: the hemorrhage-free crops chosen, which ``--resume`` cuts
again instead of running the detector over the training studies (its weights still load, for its name).
``--max-minutes`` counts from the start of this invocation (data loading included) and stops after the epoch when
the next one would not fit.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler, WeightedRandomSampler
from tqdm import tqdm

from ichseg.blood_density import LOW_DENSITY_HU
from ichseg.crops import CROP_SIZE
from ichseg.labelled_study import study_ids
from ichseg.model_manifest import WEIGHTS_NAME, ModelManifest, portable_path, weights_path
from ichseg.networks import TransDeepLab
from ichseg.runtime import PRECISIONS, autocast, autocast_dtype, configure_threads, default_device
from ichseg.segmenter import ARCHITECTURES, CLASSES, CROP_MODE, MODES, WHOLE_SLICE_MODE, build_network
from ichseg.windowing import INPUT_KINDS, MULTI_WINDOW_INPUT
from training.hu_shift import HU_CHANGES, channel_widths
from training.lr_schedule import LrPlan
from training.segmenter_data import (
    JITTER,
    SegmentationDataset,
    SliceSample,
    draw_weights,
    evenly_spaced,
    load_samples,
)
from training.segmenter_negatives import NegativeCrops, hardest_crops, read_record, write_record
from training.study_leaks import refuse_held_out

CHECKPOINT_NAME = "checkpoint.pt"
MOMENTUM = 0.9  # SGD
#: optimizer → (lr, weight decay, warm-up steps, lr shape); the first is the default
OPTIMIZERS = {"adamw": (3e-4, 0.05, 40, "warmup-cosine"), "sgd": (0.01, 1e-4, 0, "poly")}
NEGATIVE_SHARE = 0.25  # hemorrhage-free crops per crop of blood: enough to learn "empty", few enough to keep recall
LOSS = "DiceCELoss(softmax, to_onehot_y, lambda_ce=0.4, lambda_dice=0.6)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.train_segmenter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="synthetic data folder with studies.csv")
    parser.add_argument("--more-data", type=Path, nargs="+", default=[], metavar="DIR",
                        help="further synthetic data folders whose train splits join --data's (validation stays "
                             "--data's; a training study of theirs in --data's val or test split is refused)")
    parser.add_argument("--negative-crops", type=Path, default=None, metavar="DETECTOR_DIR",
                        help="crop mode: also train on hemorrhage-free crops, the boxes this detector draws on the "
                             "training studies' hemorrhage-free slices, with empty masks (hardest first)")
    parser.add_argument("--negative-share", type=float, default=NEGATIVE_SHARE,
                        help=f"hemorrhage-free crops per crop of blood with --negative-crops "
                             f"(default {NEGATIVE_SHARE})")
    parser.add_argument("--low-density-weight", type=float, default=1.0, metavar="W",
                        help="crop mode: draw crops of blood whose median is under 50 HU (hyperacute, anaemic or "
                             "unclotted; ichseg.blood_density) W times as often as the others (default 1: uniform; "
                             "drawn with replacement, so a crop drawn twice in an epoch is augmented alike)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--mode", choices=MODES, default=CROP_MODE,
                        help=f"{CROP_MODE} (two-stage) or {WHOLE_SLICE_MODE} (single-stage)")
    parser.add_argument("--network", choices=sorted(ARCHITECTURES), default="transdeeplab")
    parser.add_argument("--input", choices=INPUT_KINDS, default=MULTI_WINDOW_INPUT,
                        help="what the 3 input channels hold: the header window 3× (the paper), the header, brain "
                             "and subdural windows (default: blood stays apart from bone whatever the header says), "
                             "the stroke (40/40), brain and subdural windows, or a ±3 mm slab's brain window and the "
                             "slice's brain and subdural windows (ichseg.windowing)")
    parser.add_argument("--jitter", type=float, default=JITTER, metavar="FRACTION",
                        help="crop mode: each box edge moves outwards by up to this fraction of the box side and "
                             f"inwards by up to half of it (default {JITTER:g}); match it to how far your detector's "
                             "boxes lie from the ground truth's (models/README.md)")
    parser.add_argument("--hu-shift", type=float, default=0.0, metavar="HU",
                        help="calibration-shift augmentation: each training crop as if every HU read up to this much "
                             "higher or lower (training.hu_shift; 0: off)")
    parser.add_argument("--hu-noise", type=float, default=0.0, metavar="HU",
                        help="noise augmentation: correlated noise of a standard deviation up to this added to each "
                             "training image's HU before cropping (training.hu_shift; 0: off)")
    parser.add_argument("--epochs", type=int, default=300, help="planned epochs; the lr decays to 0 over them")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adamw",
                        help="adamw (warm-up + cosine; default, for random initialisation) "
                             "or sgd (the paper's poly decay)")
    parser.add_argument("--lr", type=float, default=None, help="peak lr (default: adamw 3e-4, sgd 0.01)")
    parser.add_argument("--weight-decay", type=float, default=None, help="default: adamw 0.05, sgd 1e-4")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="linear warm-up steps (default: adamw 40, sgd 0)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast where the hardware has bf16, else fp32 (weights stay fp32)")
    parser.add_argument("--init-weights", type=Path, default=None,
                        help="start from this model folder's weights (fine-tuning), e.g. models/segmenter")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same data order, augmentation and init")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after the epoch when the next one would not fit in this budget (loading included)")
    parser.add_argument("--resume", action="store_true", help=f"continue from <out>/{CHECKPOINT_NAME}")
    parser.add_argument("--init-encoder", type=Path, default=None,
                        help="local ImageNet Swin-T checkpoint for the TransDeepLab encoder (never downloaded)")
    parser.add_argument("--limit-studies", type=int, default=None,
                        help="use at most this many studies per split (of each folder)")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="batches per epoch, drawn at random (default: one pass over the training slices); "
                             "shorter epochs give --max-minutes and validation a finer grain on a CPU")
    parser.add_argument("--max-slices", type=int, default=None,
                        help="train on at most this many slices, spread evenly over the studies")
    parser.add_argument("--val-slices", type=int, default=96,
                        help="validate on at most this many slices, spread evenly (validation costs CPU time)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA if present, else CPU)")
    args = parser.parse_args(argv)
    if args.negative_crops is not None and args.mode != CROP_MODE:
        parser.error("--negative-crops needs --mode crops (whole-slice mode samples hemorrhage-free slices itself)")
    if not 0.0 < args.low_density_weight <= 100.0:
        parser.error(f"--low-density-weight must be in (0, 100], got {args.low_density_weight}")
    if args.low_density_weight != 1.0 and args.mode != CROP_MODE:
        parser.error("--low-density-weight needs --mode crops")
    if not 0.0 <= args.negative_share <= 10.0:
        parser.error(f"--negative-share must be between 0 and 10, got {args.negative_share}")
    if not 0.0 <= args.jitter <= 1.0:
        parser.error(f"--jitter must be between 0 and 1, got {args.jitter}")
    for key, largest in HU_CHANGES.items():
        if not 0.0 <= getattr(args, key) <= largest:
            parser.error(f"--{key.replace('_', '-')} must be between 0 and {largest:g} HU, got {getattr(args, key)}")
    lr, weight_decay, warmup, _ = OPTIMIZERS[args.optimizer]
    args.lr = lr if args.lr is None else args.lr
    args.weight_decay = weight_decay if args.weight_decay is None else args.weight_decay
    args.warmup_steps = warmup if args.warmup_steps is None else args.warmup_steps
    return args


def make_model(args: argparse.Namespace) -> nn.Module:
    """The network: random, from a model folder's weights (``--init-weights``), or with a local Swin-T encoder."""
    torch.manual_seed(args.seed)
    model = build_network(args.network)
    if args.init_weights is not None:
        state = torch.load(weights_path(args.init_weights), map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    if args.init_encoder is not None:
        if not isinstance(model, TransDeepLab):
            raise SystemExit("--init-encoder applies to --network transdeeplab only")
        model.load_encoder_checkpoint(args.init_encoder)
    return model


def make_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM, weight_decay=args.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def lr_plan(args: argparse.Namespace, steps_per_epoch: int) -> LrPlan:
    return LrPlan(OPTIMIZERS[args.optimizer][3], args.lr, args.epochs * steps_per_epoch, args.warmup_steps)


@torch.no_grad()
def validation_dice(
    model: nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype | None = None
) -> float:
    """Mean Dice of the hemorrhage class over validation samples with hemorrhage, in the 224×224 input space."""
    model.eval()
    scores = []
    for images, targets in tqdm(loader, desc="  validation", unit="batch", leave=False):
        with autocast(device, dtype):
            logits = model(images.to(device))
        predicted = logits.float().argmax(dim=1, keepdim=True).cpu()
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
    stage = "segmenter" if args.mode == CROP_MODE else "single-stage"
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
            "input": args.input,
            "epochs": state["epoch"],
            "planned_epochs": args.epochs,
            "best_epoch": state["best_epoch"],
            "steps": state["steps"],
            "seconds": round(state["seconds"]),
            "val_dice": _finite(state["best_dice"]),
            "data": f"{portable_path(args.data)}"
                    + "".join(f" + {portable_path(folder)}" for folder in args.more_data)
                    + f" (train split {state['train_samples']} slices, val {state['val_samples']})",
            "negative_crops": None if args.negative_crops is None else (
                f"{state.get('negative_samples', 0)} of the train slices are hemorrhage-free crops: the boxes "
                f"{portable_path(args.negative_crops)} ({args.negative_detector}) draws on hemorrhage-free training "
                "slices, merged per slice, hardest first"),
            "loss": LOSS,
            "optimizer": optimizer_description(args),
            "precision": state.get("precision", "fp32"),
            "init_weights": portable_path(args.init_weights) if args.init_weights else None,
            "augmentation": "rot90 + flip" + (f" + box jitter {args.jitter:.0%}" if args.mode == CROP_MODE else "")
            + (f" + calibration shift ±{args.hu_shift:g} HU" if args.hu_shift else "")
            + (f" + noise up to {args.hu_noise:g} HU sd" if args.hu_noise else ""),
            "sampling": "uniform" if args.low_density_weight == 1.0 else (
                f"crops of blood under {LOW_DENSITY_HU:g} HU drawn {args.low_density_weight:g}x as often "
                f"({state.get('low_density_samples', 0)} of the train slices)"),
            "encoder_init": portable_path(args.init_encoder) if args.init_encoder else "random",
            "seed": args.seed,
        },
    )


def optimizer_description(args: argparse.Namespace) -> str:
    if args.optimizer == "sgd":
        return (f"SGD lr {args.lr} momentum {MOMENTUM} weight decay {args.weight_decay}, "
                f"poly decay power 0.9 per step, batch {args.batch}")
    return (f"AdamW lr {args.lr} weight decay {args.weight_decay}, {args.warmup_steps}-step linear warm-up, "
            f"cosine decay per step, batch {args.batch}")


def refuse_leaks(data: Path, more_data: list[Path]) -> None:
    """Stop when a further folder's training study is one of ``data``'s validation or test studies, or is trained
    on already (the same folder twice, a set given as --data and again): study ids carry the generator's seed."""
    held_out = set(study_ids(data, "val")) | set(study_ids(data, "test"))
    further = [(str(folder), set(study_ids(folder, "train"))) for folder in more_data]
    try:
        refuse_held_out(held_out, str(data), further)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    training = set(study_ids(data, "train"))
    for folder, studies in further:
        twice = training & studies
        if twice:
            raise SystemExit(f"{folder}: training studies {', '.join(sorted(twice)[:5])} are given twice "
                             f"({len(twice)} in all)")
        training |= studies


class Loaders(NamedTuple):
    """What ``make_loaders`` builds."""

    train_set: SegmentationDataset
    train_loader: DataLoader
    generator: torch.Generator  # the training sampler's
    val_loader: DataLoader
    negative_crops: list[SliceSample]  # the hemorrhage-free crops chosen, before --max-slices thins the set: the record


def make_loaders(args: argparse.Namespace) -> Loaders:
    """Cached, augmented training set with its seeded sampler, and the un-augmented validation loader. A resumed
    run with ``--negative-crops`` cuts the crops its record lists (``training.segmenter_negatives.read_record``)."""
    refuse_leaks(args.data, args.more_data)
    negatives = None if args.negative_crops is None else NegativeCrops(args.negative_crops, args.input, args.jitter)
    args.negative_detector = None if negatives is None else negatives.description  # resume refuses another detector
    if negatives is not None and args.resume:  # the crops the run chose, cut again without a detector pass
        negatives.recorded = read_record(args.out, negatives.description, args.negative_share)
    train_samples: list[SliceSample] = []
    chosen: list[SliceSample] = []
    for number, folder in enumerate([args.data, *args.more_data]):  # whole-slice mode: other negatives per folder
        train_samples += load_samples(folder, "train", args.mode, args.input, seed=args.seed + 1000 * number,
                                      jitter=args.jitter,
                                      limit=args.limit_studies, negative_crops=negatives)
    if negatives is not None:
        negatives.check_all_recorded_were_cut()
        blood = [sample for sample in train_samples if sample.score is None]
        chosen = hardest_crops(train_samples, round(args.negative_share * len(blood)))
        train_samples = blood + chosen
    val_samples = load_samples(args.data, "val", args.mode, args.input, negative_fraction=0.0,
                               limit=args.limit_studies)
    train_samples = evenly_spaced(train_samples, args.max_slices)
    val_samples = evenly_spaced(val_samples, args.val_slices)
    if not train_samples:
        raise SystemExit(f"{args.data}: no training slices for mode {args.mode}")
    train_set = SegmentationDataset(train_samples, augment=True, jitter=args.jitter if args.mode == CROP_MODE else 0.0,
                                    seed=args.seed, hu_shift=args.hu_shift, hu_noise=args.hu_noise,
                                    widths=channel_widths(args.input))
    generator = torch.Generator()
    per_epoch = args.steps_per_epoch * args.batch if args.steps_per_epoch else None
    sampler: Sampler[int] = RandomSampler(train_set, num_samples=per_epoch, generator=generator)
    if args.low_density_weight != 1.0:
        sampler = WeightedRandomSampler(draw_weights(train_samples, args.low_density_weight),
                                        num_samples=per_epoch or len(train_set), generator=generator)
    train_loader = DataLoader(train_set, batch_size=args.batch, sampler=sampler, drop_last=len(train_set) > args.batch)
    val_loader = DataLoader(SegmentationDataset(val_samples, augment=False), batch_size=args.batch)
    return Loaders(train_set, train_loader, generator, val_loader, chosen)


def train_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                plan: LrPlan, first_step: int, device: torch.device, dtype: torch.dtype | None,
                description: str) -> tuple[list[float], float]:
    """One pass over the loader, the lr set from the plan every step; returns the step losses and loading seconds."""
    model.train()
    losses: list[float] = []
    loading = 0.0
    progress = tqdm(loader, desc=description, unit="step")
    waited = time.perf_counter()
    for images, targets in progress:
        loading += time.perf_counter() - waited
        lr = plan.lr(first_step + len(losses))
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, dtype):
            logits = model(images.to(device))
        loss = loss_fn(logits.float(), targets[:, None].to(device))  # the loss in fp32, whatever the forward ran in
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}")
        waited = time.perf_counter()
    return losses, loading


def resume(checkpoint_path: Path, args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer,
           plan: LrPlan) -> dict:
    """Model, optimizer and progress from the checkpoint; a larger ``--epochs`` extends the lr plan.

    The lr is a function of the step (``LrPlan``), so a longer plan simply continues along the longer curve. A
    plan that already ended is not restarted (a poly plan is then at lr 0): start a new run with --init-weights.
    """
    if not checkpoint_path.is_file():
        raise SystemExit(f"{checkpoint_path}: no checkpoint to resume from")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    made = checkpoint["args"]
    made_for = (made["mode"], made["network"], made.get("optimizer", "sgd"), made.get("input", INPUT_KINDS[0]))
    wanted = (args.mode, args.network, args.optimizer, args.input)
    if made_for != wanted:
        raise SystemExit(f"{checkpoint_path}: made for {'/'.join(made_for)}, not {'/'.join(wanted)}")
    made_with, given = [str(p) for p in made.get("more_data", [])], [str(p) for p in args.more_data]
    if made_with != given:  # a run keeps its training set: the manifest's slice count describes one set
        raise SystemExit(f"{checkpoint_path}: trained with --more-data {' '.join(made_with) or '(none)'}, "
                         f"not {' '.join(given) or '(none)'}")
    made_negatives = (made.get("negative_detector"), made.get("negative_share", NEGATIVE_SHARE))
    if made_negatives[0] is not None or args.negative_detector is not None:
        if made_negatives != (args.negative_detector, args.negative_share):
            raise SystemExit(f"{checkpoint_path}: trained with --negative-crops from {made_negatives[0]} "
                             f"--negative-share {made_negatives[1]}, not {args.negative_detector} "
                             f"{args.negative_share}")
    for option, default in (("jitter", JITTER), ("low_density_weight", 1.0), ("hu_shift", 0.0), ("hu_noise", 0.0)):
        # how it draws and augments its crops
        if made.get(option, default) != getattr(args, option):
            raise SystemExit(f"{checkpoint_path}: trained with --{option.replace('_', '-')} "
                             f"{made.get(option, default)}, not {getattr(args, option)}")
    state = checkpoint["state"]
    old_total = checkpoint.get("plan", {}).get("total_steps", 0)
    if state["steps"] >= old_total and plan.total_steps > old_total:
        raise SystemExit(f"{checkpoint_path}: its lr plan ended after epoch {state['epoch']}; a larger --epochs "
                         "cannot restart it (start a new run with --init-weights)")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    print(f"resumed from {checkpoint_path} after epoch {state['epoch']} (step {state['steps']} of {plan.total_steps})")
    return state


@dataclass
class Run:
    """What one invocation trains with, built once and then stepped epoch by epoch."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype (None: fp32)
    train_set: SegmentationDataset
    train_loader: DataLoader
    generator: torch.Generator  # the training sampler's, reseeded every epoch
    val_loader: DataLoader
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    plan: LrPlan
    negative_crops: list[SliceSample]  # recorded with every checkpoint (``--negative-crops``)

    @property
    def checkpoint_path(self) -> Path:
        return self.args.out / CHECKPOINT_NAME


def set_up(args: argparse.Namespace) -> Run:
    """Data, model, optimizer, loss and lr plan for ``args`` (the output folder is created)."""
    device = default_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    train_set, train_loader, generator, val_loader, negative_crops = make_loaders(args)
    model = make_model(args).to(device)
    optimizer = make_optimizer(args, model)
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True, lambda_ce=0.4, lambda_dice=0.6)
    return Run(args, device, autocast_dtype(device, args.precision), train_set, train_loader, generator, val_loader,
               model, optimizer, loss_fn, lr_plan(args, len(train_loader)), negative_crops)


def fresh_state(run: Run) -> dict:
    """Progress of a run that starts at epoch 0 (what the checkpoint stores and ``resume`` restores)."""
    val_samples = len(run.val_loader.dataset)  # type: ignore[arg-type]  # a SegmentationDataset: sized
    return {"epoch": 0, "steps": 0, "seconds": 0.0, "loading_seconds": 0.0, "best_dice": None, "best_epoch": None,
            "history": [], "train_samples": len(run.train_set), "val_samples": val_samples,
            "negative_samples": sum(sample.score is not None for sample in run.train_set.samples),
            "low_density_samples": sum(sample.low_density for sample in run.train_set.samples),
            "precision": "bf16" if run.dtype == torch.bfloat16 else "fp32"}


def train_and_validate(run: Run, state: dict, epoch: int, started: float) -> tuple[bool, float]:
    """One epoch and its validation, recorded in ``state``; returns (best so far, seconds spent loading data)."""
    args = run.args
    torch.manual_seed(args.seed * 100_003 + epoch)  # dropout/drop-path; repeatable across --resume
    run.generator.manual_seed(args.seed * 100_003 + epoch)
    run.train_set.set_epoch(epoch)
    losses, loading = train_epoch(run.model, run.train_loader, run.loss_fn, run.optimizer, run.plan, state["steps"],
                                  run.device, run.dtype, f"epoch {epoch}/{args.epochs}")
    dice = validation_dice(run.model, run.val_loader, run.device, run.dtype)
    state["epoch"], state["steps"] = epoch, state["steps"] + len(losses)
    state["seconds"] = time.perf_counter() - started
    state["loading_seconds"] = state.get("loading_seconds", 0.0) + loading
    state["history"].append({"epoch": epoch, "steps": state["steps"], "loss": sum(losses) / len(losses),
                             "val_dice": dice, "seconds": round(state["seconds"], 1)})
    improved = state["best_dice"] is None or math.isnan(state["best_dice"]) or dice > state["best_dice"]
    if improved:
        state["best_dice"], state["best_epoch"] = dice, epoch
    return improved, loading


def save_epoch(run: Run, state: dict, improved: bool) -> None:
    """The best weights (when this epoch improved), the manifest and the checkpoint for ``--resume``."""
    if improved:
        torch.save(half_state(run.model), run.args.out / WEIGHTS_NAME)
    manifest_for(run.args, state).save(run.args.out)
    if run.args.negative_crops is not None:  # with the checkpoint it belongs to, never before it is known to match
        write_record(run.args.out, run.args.negative_detector, run.args.negative_share, run.negative_crops)
    torch.save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "plan": vars(run.plan), "state": state, "args": vars(run.args)}, run.checkpoint_path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    invoked = time.perf_counter()
    configure_threads()
    run = set_up(args)
    state = resume(run.checkpoint_path, args, run.model, run.optimizer, run.plan) if args.resume else fresh_state(run)
    print(f"{args.optimizer} {run.plan.shape}, peak lr {args.lr}, {state['precision']} on {run.device}")
    started = time.perf_counter() - state["seconds"]
    budget = args.max_minutes * 60 if args.max_minutes else math.inf
    print(f"{args.network} {args.mode}: {state['train_samples']} train / {state['val_samples']} val slices, "
          f"{len(run.train_loader)} steps per epoch on {run.device}")
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        epoch_started = time.perf_counter()
        improved, loading = train_and_validate(run, state, epoch, started)
        save_epoch(run, state, improved)
        tqdm.write(f"epoch {epoch}: loss {state['history'][-1]['loss']:.4f}, "
                   f"val Dice {state['history'][-1]['val_dice']:.4f}{' (best)' if improved else ''}, "
                   f"{time.perf_counter() - epoch_started:.0f} s ({loading:.0f} s loading)")
        now = time.perf_counter()
        if (now - invoked) + (now - epoch_started) > budget:  # elapsed + one more epoch like this one
            print(f"stopping: the next epoch would exceed --max-minutes {args.max_minutes}")
            break
    size = (args.out / WEIGHTS_NAME).stat().st_size / 2**20
    print(f"best val Dice {_finite(state['best_dice'])} at epoch {state['best_epoch']}; "
          f"{args.out / WEIGHTS_NAME} {size:.1f} MiB, {state['seconds'] / 60:.1f} min of training")


if __name__ == "__main__":
    main()
