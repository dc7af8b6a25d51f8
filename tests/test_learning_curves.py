"""The learning-curve record: legs read from ultralytics' results.csv and a segmenter checkpoint (written here in
their formats), replaced in place when resumed, drawn."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training.learning_curves import main
from training.ultralytics_results import run_seconds

ROOT = Path(__file__).resolve().parents[1]
HEADER = "epoch,time,metrics/mAP50(B),metrics/mAP50-95(B)\n"  # ultralytics 8.4 (older versions pad the names)


def write_results(run: Path, rows: list[tuple[int, float, float]]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = [HEADER] + [f"{epoch},{seconds},{map50},{map50 / 2}\n" for epoch, seconds, map50 in rows]
    (run / "results.csv").write_text("".join(lines))


def test_legs_are_read_replaced_when_resumed_and_drawn(tmp_path: Path) -> None:
    curves, run = tmp_path / "curves.json", tmp_path / "runs" / "leg"
    write_results(run, [(1, 300.0, 0.21), (2, 600.0, 0.25)])
    main(["--curves", str(curves), "add-detector", str(run), "--leg", "leg", "--validation", "val", "--bundled"])
    paused = tmp_path / "runs" / "paused"  # paused 10 min in its first epoch: no restart after it
    write_results(paused, [(1, 900.0, 0.1), (2, 1200.0, 0.2), (3, 1500.0, 0.3)])
    assert run_seconds([900.0, 1200.0, 1500.0]) == 1500.0, "a long first epoch is not a restart of the next ones"
    main(["--curves", str(curves), "add-detector", str(paused), "--leg", "paused", "--validation", "val",
          "--minutes", "15"])
    later = tmp_path / "runs" / "later"
    write_results(later, [(1, 400.0, 0.3)])
    main(["--curves", str(curves), "add-detector", str(later), "--leg", "later", "--validation", "val"])
    # resumed after epoch 1: the clock restarts, so epoch 2 reads 310 s, just more than epoch 1's 300; stopped after
    # epoch 2's row but before its weights were saved and resumed again: epoch 2 redone (305 s), then epoch 3
    write_results(run, [(1, 300.0, 0.21), (2, 310.0, 0.24), (2, 305.0, 0.25), (3, 600.0, 0.3)])
    main(["--curves", str(curves), "add-detector", str(run), "--leg", "leg", "--validation", "val"])
    checkpoint = tmp_path / "checkpoint.pt"
    history = [{"epoch": 1, "steps": 25, "loss": 0.9, "val_dice": 0.61234, "seconds": 240.0},
               {"epoch": 2, "steps": 50, "loss": 0.8, "val_dice": 0.65, "seconds": 480.0}]
    torch.save({"state": {"history": history}}, checkpoint)
    main(["--curves", str(curves), "add-segmenter", str(checkpoint), "--leg", "seg", "--validation", "crops"])

    recorded = json.loads(curves.read_text())
    assert recorded["detector"].pop(1) == {"leg": "paused", "validation": "val", "bundled": False,
                                           "values": [0.1, 0.2, 0.3], "minutes": 15.0}
    assert recorded["detector"] == [
        {"leg": "leg", "validation": "val", "bundled": True, "values": [0.21, 0.25, 0.3], "minutes": 15.0},
        {"leg": "later", "validation": "val", "bundled": False, "values": [0.3], "minutes": 6.7},
    ], "replaced in its place, still bundled"
    assert recorded["segmenter"][0]["values"] == [0.6123, 0.65] and recorded["segmenter"][0]["minutes"] == 8.0

    png = tmp_path / "curves.png"
    main(["--curves", str(curves), "plot", "--png", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_the_bundled_record_names_every_leg_and_its_validation() -> None:
    recorded = json.loads((ROOT / "models" / "learning_curves.json").read_text())
    for stage in ("detector", "segmenter"):
        assert recorded[stage] and any(leg["bundled"] for leg in recorded[stage])
        for leg in recorded[stage]:
            assert leg["validation"] and leg["minutes"] > 0 and all(0.0 <= v <= 1.0 for v in leg["values"])
