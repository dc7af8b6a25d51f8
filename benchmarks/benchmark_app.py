"""End-to-end speed and memory of the application: ``python -m benchmarks.benchmark_app``.

Runs ``app.py`` as a separate process (as an integrator would) on a study folder, several times, and writes
a JSON result: wall time per run (imports and model loading included), the per-stage timings the app puts
in its report, peak resident memory, the device and the machine. Timed here, not in the tests, because
timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_once(study: Path, models: Path, output: Path) -> dict:
    """One application run; its wall time and the report's stage timings."""
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "app.py"), "-i", str(study), "-o", str(output), "-m", str(models)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    report = json.loads((output / "ich_report.json").read_text())
    return {"wall_s": round(wall, 2), "stages_s": report["timings_s"], "slices": report["series"]["slices"],
            "hemorrhage_volume_ml": report["hemorrhage_volume_ml"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.benchmark_app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=ROOT / "demo" / "study", help="DICOM folder (default: demo)")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "app.json")
    args = parser.parse_args(argv)
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as output:
            runs.append(run_once(args.study, args.models, Path(output)))
    stages = {name: round(statistics.median(r["stages_s"][name] for r in runs), 2) for name in runs[0]["stages_s"]}
    result = {
        "study": str(args.study.relative_to(ROOT) if args.study.is_relative_to(ROOT) else args.study),
        "slices": runs[0]["slices"],
        "device": os.environ.get("ICH_DEVICE") or ("cuda:0" if torch.cuda.is_available() else "cpu"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": os.environ.get("ICH_THREADS", str(os.cpu_count())),
        "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
        "median_stage_s": stages,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("slices", "device", "median_wall_s", "median_stage_s", "peak_rss_mib")}, indent=2))


if __name__ == "__main__":
    main()
