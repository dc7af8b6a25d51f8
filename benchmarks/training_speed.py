"""Training throughput of both networks, fp32 against bf16 autocast: ``python -m benchmarks.training_speed``.

Times full training steps (forward, fp32 loss, backward, optimizer step) on random inputs, after warm-up, in one
process so that every figure is from the same machine and moment: TransDeepLab at 224² (batch 8, AdamW) and
yolov5n through ultralytics' own loss at 512² and on 320² tiles (batch 8). Writes images/s per configuration to
``benchmarks/results/training_speed.json``. Data loading is excluded here; the training scripts log its share.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ichseg.runtime import autocast, configure_threads, cpu_has_native_bf16
from ichseg.segmenter import build_network
from ichseg.ultralytics_offline import YOLO  # noqa: F401  (offline settings before ultralytics builds models)

# isort: split
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import IterableSimpleNamespace

BATCH = 8


def seconds_per_step(step: Callable[[], None], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def segmenter_step(dtype: torch.dtype | None) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_network("transdeeplab").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    images = torch.rand(BATCH, 3, 224, 224)
    targets = torch.randint(0, 2, (BATCH, 224, 224))
    device = torch.device("cpu")

    def step() -> None:
        with autocast(device, dtype):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def detector_step(dtype: torch.dtype | None, size: int) -> Callable[[], None]:
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml", nc=5, verbose=False).train()
    model.args = IterableSimpleNamespace(**vars(get_cfg()))  # the loss reads box/cls/dfl gains from here
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(BATCH, 1)
    batch = {"img": torch.rand(BATCH, 3, size, size), "batch_idx": torch.arange(BATCH).float(),
             "cls": torch.zeros(BATCH, 1), "bboxes": boxes}
    device = torch.device("cpu")

    def step() -> None:
        with autocast(device, dtype):
            loss, _ = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training_speed.json"))
    args = parser.parse_args(argv)
    threads = configure_threads()
    results = []
    configurations = [("TransDeepLab 224", lambda d: segmenter_step(d)),
                      ("yolov5n 512 (whole slice)", lambda d: detector_step(d, 512)),
                      ("yolov5n 320 (tile)", lambda d: detector_step(d, 320))]
    for name, make in configurations:
        for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            seconds = seconds_per_step(make(dtype), args.repeats)
            results.append({"network": name, "precision": precision, "batch": BATCH, "s_per_step": round(seconds, 3),
                            "images_per_s": round(BATCH / seconds, 2)})
            print(f"{name:28s} {precision}: {seconds:.2f} s/step, {BATCH / seconds:.1f} images/s", flush=True)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": threads,
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
