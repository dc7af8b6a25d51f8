"""End-to-end speed and memory of the application: ``python -m benchmarks.benchmark_app``.

Runs ``app.py`` as a separate process (as an integrator would) and writes ``benchmarks/results/app.json``:

- ``cold``: ``python app.py -i STUDY`` on the demo study, ``--runs`` times, each in a fresh process; wall time
  from process start to exit (imports, model loading and writing included), best and median; the per-stage
  seconds the app puts in its report (``timings_s``); peak resident memory and CPU seconds of each child
  (``os.wait4``, so each figure is that run's own).
- ``refused``: an empty input folder, which the app must refuse with exit status 3 (before torch loads).
- ``warm``: one process that imports ``app`` and calls ``app.main`` twice, on two output folders; the second call
  is what a long-lived service would pay per study. If the SDK refuses a second Application in one process, that
  fact and its error text are the result.
- ``machine``: device, CPU model, cores, torch threads, GPU name; ``paper``: the paper's 0.52 s/slice on an A100.

Timed here, not in the tests, because timings depend on the machine; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (
    ROOT,
    finish,
    machine_info,
    median_stages,
    paper_comparison,
    pipeline_seconds,
    report_summary,
    run_app,
    run_process,
    summarise,
    write_json,
)

EXIT_REFUSED = 3

#: Run by ``python -c`` in the repository root: import the app once, call ``app.main`` once per output folder,
#: and write what happened to a JSON file after each call (so a crash in the second call keeps the first).
WARM_SCRIPT = r"""
import json, sys, time, traceback
started = time.perf_counter()
result_path, study, models, *outputs = sys.argv[1:]
result = {"import_s": None, "calls": []}
def save():
    with open(result_path, "w") as handle:
        json.dump(result, handle)
sys.path.insert(0, ".")
import app
result["import_s"] = round(time.perf_counter() - started, 3)
save()
for output in outputs:
    call = {"output": output, "exit_status": None, "error": None}
    began = time.perf_counter()
    try:
        call["exit_status"] = app.main([sys.executable, "app.py", "-i", study, "-o", output, "-m", models])
    except BaseException as error:  # SystemExit included: the SDK may exit instead of raising
        call["error"] = "".join(traceback.format_exception_only(type(error), error)).strip()
        call["traceback"] = traceback.format_exc(limit=6)
    call["wall_s"] = round(time.perf_counter() - began, 3)
    result["calls"].append(call)
    save()
"""


def cold_runs(study: Path, models: Path, runs: int) -> dict:
    measured = []
    for index in range(runs):
        run = run_app(study, models)
        print(f"cold run {index + 1}/{runs}: exit {run['exit_status']}, {run['wall_s']:.2f} s, "
              f"{run['peak_rss_mib']:.0f} MiB", flush=True)
        measured.append(run)
    ok = [r for r in measured if r["exit_status"] == 0]
    result: dict = {"runs": measured, "failed_runs": len(measured) - len(ok)}
    if ok:
        stages = median_stages(ok)
        slices = ok[0]["slices"]
        result.update({
            "slices": slices,
            "wall_s": summarise(r["wall_s"] for r in ok),
            "peak_rss_mib": summarise(r["peak_rss_mib"] for r in ok),
            "cpu_s": summarise(r["cpu_s"] for r in ok),
            "median_stage_s": stages,
            "pipeline_s": pipeline_seconds(stages),  # stages without model loading
            "s_per_slice_end_to_end": round(summarise(r["wall_s"] for r in ok)["median"] / slices, 4),
            "s_per_slice_pipeline": round(pipeline_seconds(stages) / slices, 4),
            "box_share": ok[0]["box_share"],
            "hemorrhage_volume_ml": ok[0]["hemorrhage_volume_ml"],
        })
    return result


def refused_run(models: Path, runs: int) -> dict:
    measured = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="ich-bench-empty-") as empty:
            run = run_app(Path(empty), models)
        run.pop("log_tail", None)
        measured.append(run)
    statuses = sorted({r["exit_status"] for r in measured})
    return {"input": "empty folder", "expected_exit_status": EXIT_REFUSED, "exit_statuses": statuses,
            "as_expected": statuses == [EXIT_REFUSED], "wall_s": summarise(r["wall_s"] for r in measured),
            "peak_rss_mib": summarise(r["peak_rss_mib"] for r in measured), "runs": measured}


def warm_runs(study: Path, models: Path, calls: int = 2) -> dict:
    """``calls`` calls of ``app.main`` in one process (see WARM_SCRIPT)."""
    with tempfile.TemporaryDirectory(prefix="ich-bench-warm-") as scratch:
        folder = Path(scratch)
        outputs = [folder / f"out{i + 1}" for i in range(calls)]
        result_path = folder / "warm.json"
        process = run_process([sys.executable, "-c", WARM_SCRIPT, str(result_path), str(study.absolute()),
                               str(models.absolute()), *map(str, outputs)])
        inner = json.loads(result_path.read_text()) if result_path.is_file() else {"import_s": None, "calls": []}
        for call in inner["calls"]:
            report = Path(call.pop("output")) / "ich_report.json"
            if report.is_file():
                call.update(report_summary(json.loads(report.read_text())))
    completed = [c for c in inner["calls"] if c["exit_status"] == 0 and "stages_s" in c]
    result = {
        "process": {k: process[k] for k in ("exit_status", "wall_s", "peak_rss_mib", "cpu_s")},
        "import_s": inner["import_s"],
        "calls": inner["calls"],
        "second_call_possible": len(completed) >= 2,
    }
    if len(completed) >= 2:
        first, second = completed[0], completed[1]
        result["first_call_s"] = first["wall_s"]
        result["second_call_s"] = second["wall_s"]
        result["second_call_s_per_slice"] = round(second["wall_s"] / second["slices"], 4)
    else:  # the fact is the result: why the second run in one process did not happen
        failed = next((c for c in inner["calls"] if c not in completed), None)
        result["failure"] = {
            "call": inner["calls"].index(failed) + 1 if failed else len(inner["calls"]) + 1,
            "exit_status": failed["exit_status"] if failed else None,
            "error": (failed or {}).get("error"),
            "traceback": (failed or {}).get("traceback"),
            "process_exit_status": process["exit_status"],
            "log_tail": process["log_tail"],
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.benchmark_app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=ROOT / "demo" / "study", help="DICOM folder (default: demo)")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--runs", type=int, default=5, help="cold runs (default 5); best and median are kept")
    parser.add_argument("--refused-runs", type=int, default=3, help="runs on an empty folder (default 3)")
    parser.add_argument("--no-warm", action="store_true", help="skip the two calls in one process")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "app.json")
    args = parser.parse_args(argv)
    study = args.study.absolute()
    result: dict = {
        "benchmark": "python -m benchmarks.benchmark_app",
        "study": str(study.relative_to(ROOT) if study.is_relative_to(ROOT) else study),
        "study_files": sum(1 for p in study.iterdir() if p.is_file()),
        "machine": machine_info(),
    }
    result["cold"] = cold_runs(study, args.models, args.runs)
    result["refused"] = refused_run(args.models, args.refused_runs)
    print(f"refused input: exit {result['refused']['exit_statuses']}, {result['refused']['wall_s']['median']:.2f} s",
          flush=True)
    if not args.no_warm:
        result["warm"] = warm_runs(study, args.models)
        warm = result["warm"]
        if warm["second_call_possible"]:
            print(f"warm: first call {warm['first_call_s']:.2f} s, second {warm['second_call_s']:.2f} s", flush=True)
        else:
            print(f"warm: no second call: {warm['failure']['error']}", flush=True)
    result["paper"] = paper_comparison(result["cold"].get("s_per_slice_end_to_end"),
                                       "median cold wall time (process start to exit) / slices")
    result["paper"]["ours_pipeline_s_per_slice"] = result["cold"].get("s_per_slice_pipeline")
    write_json(finish(result), args.out)
    cold = result["cold"]
    print(json.dumps({k: cold.get(k) for k in ("slices", "wall_s", "peak_rss_mib", "median_stage_s")}, indent=2))
    print(args.out)
    if cold["failed_runs"] or not result["refused"]["as_expected"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
