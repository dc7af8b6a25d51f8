"""What the speed benchmarks share: running the app as a child process, the machine, the paper's figures.

``run_process`` times a child from start to exit and takes its peak resident memory from ``os.wait4``, i.e.
the rusage of that one child (its own peak, or that of a descendant it waited for, whichever is larger), not
``RUSAGE_CHILDREN`` of this process, which is the maximum over every child waited for so far.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG_TAIL_CHARS = 3000

#: Rajapakse et al., IEEE Access 2024, Table 3, as quoted in shared/reference/paper-recipe.md.
PAPER = {
    "source": "Rajapakse et al., IEEE Access 2024, Table 3 (quoted in shared/reference/paper-recipe.md)",
    "hardware": "NVIDIA A100",
    "method": "YOLOv5 (YOLOv5l, 512x512) + TransDeepLab",
    "s_per_slice": 0.52,
    "detector_s_per_slice": 0.07,
    "s_per_30_slice_scan": 15,  # the paper's "≈ 15 s for a 30-slice head CT" (30 × 0.52 = 15.6)
    "single_stage_s_per_slice": [0.24, 0.48],
    "note": "per-slice inference time on a GPU; the recipe does not say whether model loading or DICOM I/O "
            "is included. Our figures are on the machine below, end to end from process start unless named "
            "otherwise.",
}


def paper_comparison(s_per_slice: float | None, what: str, reference: str = "s_per_slice") -> dict:
    """The paper block with our figure beside it: ``ratio`` = ours / the paper's (> 1: slower than the paper)."""
    paper_value = PAPER[reference]
    assert isinstance(paper_value, (int, float))
    block: dict = {"paper": dict(PAPER), "compared": reference, "ours_what": what,
                   "ours_s_per_slice": None if s_per_slice is None else round(s_per_slice, 4)}
    block["ratio_ours_to_paper"] = None if s_per_slice is None else round(s_per_slice / paper_value, 2)
    return block


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The "model name" of /proc/cpuinfo (first CPU), else what platform knows."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def app_threads(environ: Mapping[str, str] = os.environ) -> int:
    """Torch CPU threads the app sets (``ichseg.runtime.configure_threads``: ICH_THREADS, else all cores)."""
    return int(environ.get("ICH_THREADS") or 0) or os.cpu_count() or 1


TORCH_FACTS = (
    "import json, torch; cuda = torch.cuda.is_available(); "
    "print(json.dumps({'cuda': cuda, 'gpu': torch.cuda.get_device_name(0) if cuda else None, "
    "'torch': torch.__version__}))"
)


def torch_facts() -> dict:
    """CUDA, the card and torch's version, asked of a child process: a parent that imported torch (≈ 500 MiB) would
    pass its resident size on to every child it starts, and Linux reports a child's peak RSS as at least that."""
    found = subprocess.run([sys.executable, "-c", TORCH_FACTS], capture_output=True, text=True, check=True)
    return json.loads(found.stdout)


def machine_info() -> dict:
    """Device, CPU, cores, threads, versions and the load average (is the machine quiet?)."""
    facts = torch_facts()
    try:
        memory_mib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    except (ValueError, OSError):
        memory_mib = None
    return {
        "device": os.environ.get("ICH_DEVICE") or ("cuda:0" if facts["cuda"] else "cpu"),
        "gpu": facts["gpu"],
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": app_threads(),
        "memory_mib": memory_mib,
        "env": {k: os.environ[k] for k in ("ICH_THREADS", "ICH_DEVICE", "OMP_NUM_THREADS") if k in os.environ},
        "python": platform.python_version(),
        "torch": facts["torch"],
        "platform": platform.platform(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def run_process(command: Sequence[str], cwd: Path = ROOT, env: Mapping[str, str] | None = None) -> dict:
    """Run ``command`` to its end: exit status, wall seconds (start to exit), peak RSS, CPU seconds, log tail.

    The peak RSS Linux reports for a child is at least this process's resident size when it started the child (exec
    keeps the larger of the two): keep the benchmark process small (no torch here) so the figure is the child's.
    """
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), cwd=cwd, env=None if env is None else dict(env),
                                   stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
        log.seek(0)
        tail = log.read()[-LOG_TAIL_CHARS:].decode(errors="replace")
    return {"exit_status": process.returncode, "wall_s": round(wall, 3),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "log_tail": tail}


def app_command(study: Path, output: Path, models: Path) -> list[str]:
    return [sys.executable, str(ROOT / "app.py"), "-i", str(study), "-o", str(output), "-m", str(models)]


def report_summary(report: Mapping) -> dict:
    """What the timing tables need from an ``ich_report.json``: stage seconds, slices, boxes, volume."""
    slices = int(report["series"]["slices"])
    per_slice = report.get("slices") or []
    boxed = sum(1 for s in per_slice if s.get("detections"))
    segmented = sum(1 for s in per_slice if s.get("merged_boxes"))
    return {
        "stages_s": dict(report.get("timings_s") or {}),
        "slices": slices,
        "slices_with_box": boxed,
        "box_share": round(boxed / slices, 4) if slices else None,
        "slices_segmented": segmented,
        "hemorrhage_volume_ml": report.get("hemorrhage_volume_ml"),
        "result": report.get("result"),
    }


def run_app(study: Path, models: Path, env: Mapping[str, str] | None = None) -> dict:
    """One cold ``python app.py`` run into a fresh output folder; the process figures plus the report's."""
    with tempfile.TemporaryDirectory(prefix="ich-bench-") as scratch:
        output = Path(scratch) / "out"
        run = run_process(app_command(study, output, models), env=env)
        report_path = output / "ich_report.json"
        if report_path.is_file():
            run.update(report_summary(json.loads(report_path.read_text())))
    if run["exit_status"] == 0:
        run.pop("log_tail")  # keep the log only when it explains a failure
    return run


def summarise(values: Iterable[float]) -> dict:
    values = list(values)
    return {"best": round(min(values), 3), "median": round(statistics.median(values), 3),
            "worst": round(max(values), 3), "n": len(values)}


def median_stages(runs: Sequence[Mapping]) -> dict:
    """Median seconds of each stage over the runs that report it, in the report's order."""
    names: list[str] = []
    for run in runs:
        names += [n for n in run.get("stages_s", {}) if n not in names]
    return {n: round(statistics.median(r["stages_s"][n] for r in runs if n in r.get("stages_s", {})), 3) for n in names}


def pipeline_seconds(stages: Mapping[str, float]) -> float:
    """Stage seconds without model loading: the per-study work that grows with the slices."""
    return round(sum(v for k, v in stages.items() if not (k.startswith("load ") and k.endswith(" model"))), 3)


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict | None:
    """Least-squares y = fixed + per_unit · x (None with fewer than two distinct x)."""
    if len(set(xs)) < 2:
        return None
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return {"fixed_s": round(mean_y - slope * mean_x, 3), "per_unit_s": round(slope, 4)}


def write_json(result: Mapping, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(path)


def finish(result: dict) -> dict:
    """Stamp the end of a benchmark: load average now (a busy machine makes every figure meaningless)."""
    result.setdefault("machine", {})["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result
