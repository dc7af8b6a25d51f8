"""The validation curves of the training legs — those of the bundled weights and the side legs that were not
bundled — kept in ``models/learning_curves.json`` and drawn as one figure: how far each stage is from its target and
what the hours of CPU bought.

Legs are fresh schedules, each started from the weights of an earlier leg, so the x axis is the training time spent,
summed over the legs in the order they ran (side legs included). A leg's validation set is named with it: the early
legs were scored on other draws of the phantoms or against other boxes, so a step between legs is not all learning.

    python -m training.learning_curves add-detector runs/detector/NAME --leg "NAME" --validation "..."
    python -m training.learning_curves add-segmenter models/segmenter/checkpoint.pt --leg "NAME" --validation "..."
    python -m training.learning_curves plot                     # docs/learning_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.ultralytics_results import RESULTS_NAME, epoch_rows, run_seconds

CURVES = Path("models/learning_curves.json")
FIGURE = Path("docs/learning_curves.png")
STAGES = {  # stage → (metric, reference line, its label)
    "detector": ("validation mAP@0.5", 0.90, "target 0.90 (the paper: 0.974 on real CT)"),
    "segmenter": ("validation Dice on crops of ground-truth boxes", 0.769, "the paper's oracle Dice 0.769 (real CT)"),
}
ULTRALYTICS_MAP50 = "metrics/mAP50(B)"


def detector_leg(run_dir: Path) -> dict[str, Any]:
    """One ultralytics run: validation mAP@0.5 per epoch and the run's wall-clock minutes (``results.csv``; a
    run paused by the user counts its pause: ``--minutes`` overrides)."""
    rows = epoch_rows(run_dir)
    if not rows:
        raise SystemExit(f"{run_dir / RESULTS_NAME}: no finished epoch")
    return {"values": [round(float(row[ULTRALYTICS_MAP50]), 4) for row in rows],
            "minutes": round(run_seconds([float(row["time"]) for row in rows]) / 60.0, 1)}


def segmenter_leg(checkpoint: Path) -> dict[str, Any]:
    """One ``training.train_segmenter`` run: validation Dice per epoch and minutes, from its checkpoint's history."""
    import torch  # only this command needs it

    history = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["history"]
    if not history:
        raise SystemExit(f"{checkpoint}: no finished epoch")
    return {"values": [round(float(entry["val_dice"]), 4) for entry in history],
            "minutes": round(float(history[-1]["seconds"]) / 60.0, 1)}


def load(path: Path = CURVES) -> dict[str, Any]:
    """The recorded curves, or none yet."""
    return json.loads(path.read_text()) if path.is_file() else {stage: [] for stage in STAGES}


def add_leg(curves: dict[str, Any], stage: str, leg: dict[str, Any]) -> dict[str, Any]:
    """The curves with ``leg`` appended to ``stage``; a leg of the same name (a resumed run grows) is replaced in its
    place, since the figure lays legs out in the order they ran, and stays bundled if it was."""
    legs = list(curves.get(stage, []))
    for index, old in enumerate(legs):
        if old["leg"] == leg["leg"]:
            legs[index] = {**leg, "bundled": leg["bundled"] or old["bundled"]}
            return {**curves, stage: legs}
    return {**curves, stage: [*legs, leg]}


def plot(curves: dict[str, Any], png: Path) -> None:
    """One panel per stage: each leg's curve against the summed training minutes, bundled legs solid, the reference
    dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(STAGES), 1, figsize=(15, 4.5 * len(STAGES)))  # one row per stage, legend beside
    for axis, (stage, (metric, target, label)) in zip(axes, STAGES.items(), strict=True):
        start = 0.0
        for leg in curves.get(stage, []):
            values = leg["values"]
            step = leg["minutes"] / len(values)
            hours = [(start + step * (k + 1)) / 60.0 for k in range(len(values))]
            axis.plot(hours, values, marker="o", markersize=3, linestyle="-" if leg.get("bundled") else ":",
                      label=f"{leg['leg']} ({leg['validation']})")
            start += leg["minutes"]
        axis.axhline(target, color="grey", linestyle="--", linewidth=1)
        axis.text(0.0, target, f" {label}", va="bottom", fontsize=8, color="grey")
        axis.set_xlim(left=0.0)
        axis.set(title=f"{stage}: {metric}", xlabel="training hours on a 2-core CPU, legs in the order they ran",
                 ylim=(0.0, 1.0))
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axis.grid(alpha=0.3)
    figure.suptitle("Synthetic phantoms, demonstration weights (not for clinical use); solid = bundled leg",
                    fontsize=9)
    figure.subplots_adjust(left=0.05, right=0.5, hspace=0.3)  # the right half holds the legends
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=110, bbox_inches="tight")  # the legends lie outside the axes
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curves", type=Path, default=CURVES)
    commands = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        add = commands.add_parser(f"add-{stage}", help=f"append a finished or stopped {stage} leg")
        add.add_argument("source", type=Path, help="ultralytics run folder" if stage == "detector"
                         else "train_segmenter checkpoint.pt")
        add.add_argument("--leg", required=True, help="name shown in the figure")
        add.add_argument("--validation", required=True, help="what it was validated on")
        add.add_argument("--bundled", action="store_true", help="these weights were bundled")
        add.add_argument("--minutes", type=float, help="training minutes, where the run's clock counted pauses")
    draw = commands.add_parser("plot", help="draw the figure")
    draw.add_argument("--png", type=Path, default=FIGURE)
    args = parser.parse_args(argv)
    curves = load(args.curves)
    if args.command == "plot":
        plot(curves, args.png)
        print(f"wrote {args.png}")
        return
    stage = args.command.removeprefix("add-")
    measured = detector_leg(args.source) if stage == "detector" else segmenter_leg(args.source)
    if args.minutes is not None:
        measured["minutes"] = args.minutes
    leg = {"leg": args.leg, "validation": args.validation, "bundled": args.bundled, **measured}
    args.curves.write_text(json.dumps(add_leg(curves, stage, leg), indent=1) + "\n")
    print(f"{args.curves}: {stage} leg {args.leg!r}, {len(measured['values'])} epochs, {measured['minutes']} min")


if __name__ == "__main__":
    main()
