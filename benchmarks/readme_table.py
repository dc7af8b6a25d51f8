"""The README's "Performance" tables from the committed benchmark results: ``python -m benchmarks.readme_table``.

Reads ``benchmarks/results/{app,scaling,detector_sizes}.json`` and prints the Markdown that belongs between
``<!-- performance:start -->`` and ``<!-- performance:end -->`` in README.md. ``--check README.md`` exits 1
(with a diff) when the README's block differs from what the JSON gives, 2 when the markers are missing;
``--write README.md`` replaces the block. A results file that is absent leaves its rows out.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from benchmarks.common import PAPER, ROOT

START = "<!-- performance:start -->"
END = "<!-- performance:end -->"
RESULTS = ROOT / "benchmarks" / "results"
FILES = {"app": "app.json", "scaling": "scaling.json", "detectors": "detector_sizes.json"}
HEAD_LABELS = {"negative": "no hemorrhage", "small": "one tiny clot", "extensive": "extensive hemorrhage"}
NOTE_STAGES = 3  # stages named in a row's notes (the slowest)


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def per_slice(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def mib(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} MiB"


def slowest_stages(stages: Mapping[str, float], count: int = NOTE_STAGES) -> str:
    ranked = sorted(stages.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{name} {value:.1f} s" for name, value in ranked)


def machine_line(machine: Mapping) -> str:
    device = machine.get("device", "cpu")
    threads = machine.get("torch_threads", "?")
    where = f"{machine.get('cpu_model', '?')}, {machine.get('cpu_cores', '?')} cores, " \
            f"{threads} torch thread{'' if threads == 1 else 's'}"
    if machine.get("gpu"):
        where = f"{machine['gpu']} ({device}); CPU {where}"
    return where


def app_rows(app: Mapping) -> list[str]:
    rows = []
    cold = app.get("cold", {})
    if "wall_s" in cold:
        wall = cold["wall_s"]
        rows.append(
            f"| {app.get('study', 'study')}, {cold['slices']} slices: cold `python app.py` "
            f"(median of {wall['n']}; best) "
            f"| {seconds(wall['median'])} ({seconds(wall['best'])}) | {per_slice(cold['s_per_slice_end_to_end'])} "
            f"| {mib(cold['peak_rss_mib']['worst'])} | {slowest_stages(cold['median_stage_s'])} |")
    warm = app.get("warm")
    if warm:
        if warm.get("second_call_possible"):
            rows.append(
                f"| same, second `app.main` call in one process | {seconds(warm['second_call_s'])} "
                f"| {per_slice(warm['second_call_s_per_slice'])} | {mib(warm['process']['peak_rss_mib'])} (process) "
                f"| first call {seconds(warm['first_call_s'])}, imports {seconds(warm['import_s'])} |")
        else:
            error = (warm.get("failure", {}).get("error") or "see app.json").replace("|", "\\|").splitlines()[0]
            rows.append(f"| same, second `app.main` call in one process | not possible | — | — | {error} |")
    refused = app.get("refused")
    if refused:
        statuses = ", ".join(str(s) for s in refused["exit_statuses"])
        note = "the documented status" if refused.get("as_expected") else f"expected {refused['expected_exit_status']}"
        rows.append(f"| refused input (empty folder → exit {statuses}) | {seconds(refused['wall_s']['median'])} | — "
                    f"| {mib(refused['peak_rss_mib']['worst'])} | {note} |")
    return rows


def box_note(point: Mapping) -> str:
    slices = point["slices"]
    truth = round(point.get("ground_truth_positive_share", 0) * slices)
    return f"{point.get('slices_with_box', '?')} / {slices} slices with a box (ground truth {truth})"


def scaling_rows(scaling: Mapping) -> list[str]:
    rows = []
    series = scaling.get("slice_counts", {})
    label = HEAD_LABELS.get(series.get("head", ""), series.get("head", ""))
    for point in series.get("points", []):
        if "wall_s" not in point:
            rows.append(f"| phantom, {point['slices']} slices ({label}) | exit {point.get('exit_status')} "
                        "| — | — | — |")
            continue
        rows.append(f"| phantom, {point['slices']} slices ({label}) | {seconds(point['wall_s'])} "
                    f"| {per_slice(point['s_per_slice'])} | {mib(point['peak_rss_mib'])} | {box_note(point)} |")
    fit = (series.get("fits_per_slice") or {}).get("wall_s")
    if fit:
        rows.append(f"| fit over the slice counts: fixed + per slice | {seconds(fit['fixed_s'])} "
                    f"| {per_slice(fit['per_unit_s'])} | — | least squares, wall time |")
    share = scaling.get("positive_share", {})
    for point in share.get("points", []):
        if point in series.get("points", []):  # the scaling series' study at the same slice count: shown above
            continue
        what = HEAD_LABELS.get(point["head"], point["head"])
        if point.get("confidence") is not None:
            what += f", confidence {point['confidence']:g}"
        if "wall_s" not in point:
            rows.append(f"| phantom, {point['slices']} slices, {what} | exit {point.get('exit_status')} | — | — | — |")
            continue
        rows.append(f"| phantom, {point['slices']} slices, {what} | {seconds(point['wall_s'])} "
                    f"| {per_slice(point['s_per_slice'])} | {mib(point['peak_rss_mib'])} | {box_note(point)} |")
    return rows


def detector_rows(detectors: Mapping) -> list[str]:
    rows = []
    for size in detectors.get("sizes", []):
        name = size["model"].removesuffix(".yaml")
        roles = [role for role, key in (("the app's", "app_detector"), ("the paper's", "paper_detector"))
                 if detectors.get(key) == size["model"]]
        label = f"{name} ({', '.join(roles)})" if roles else name
        gflops = "—" if size.get("gflops_per_image") is None else f"{size['gflops_per_image']:.1f}"
        rows.append(f"| {label} | {size['parameters'] / 1e6:.1f} M | {gflops} "
                    f"| {per_slice(size['predict_s_per_slice'])} | {per_slice(size['forward_s_per_slice'])} |")
    return rows


def render(results: Mapping[str, Mapping | None]) -> str:
    """The Markdown block (without the markers) from the loaded JSON files (``app``, ``scaling``, ``detectors``)."""
    app, scaling, detectors = (results.get(k) for k in ("app", "scaling", "detectors"))
    machine = next((r["machine"] for r in (app, scaling, detectors) if r and "machine" in r), None)
    lines = []
    if machine:
        lines.append(f"Measured on {machine_line(machine)}.")
    lines.append(f"The paper: {PAPER['s_per_slice']} s per slice on an {PAPER['hardware']} "
                 f"(≈ {PAPER['s_per_30_slice_scan']} s per 30-slice scan; YOLOv5 ≈ {PAPER['detector_s_per_slice']} s "
                 "of it).")
    rows = (app_rows(app) if app else []) + (scaling_rows(scaling) if scaling else [])
    if rows:
        lines += ["", "| run | wall time | s / slice | peak RSS | notes |", "|---|---|---|---|---|", *rows]
    if detectors and detectors.get("sizes"):
        first = detectors["sizes"][0]
        title = f"detector, {detectors['settings']['imgsz']} px, batch {first['batch']} ({detectors['device']})"
        lines += ["", f"| {title} | parameters | GFLOPs / slice | s / slice (predict) | s / slice (forward) |",
                  "|---|---|---|---|---|", *detector_rows(detectors)]
    return "\n".join(lines) + "\n"


def load_results(folder: Path = RESULTS) -> dict[str, dict | None]:
    loaded: dict[str, dict | None] = {}
    for key, name in FILES.items():
        path = folder / name
        loaded[key] = json.loads(path.read_text()) if path.is_file() else None
    return loaded


def readme_block(text: str) -> str | None:
    """The text between the markers (None when they are missing or out of order)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start + len(START):end]


def normalised(block: str) -> list[str]:
    lines = [line.rstrip() for line in block.strip("\n").splitlines()]
    return lines


def check(readme: Path, expected: str) -> int:
    """0 when the README's block equals ``expected`` (trailing spaces and outer blank lines aside), else 1 or 2."""
    block = readme_block(readme.read_text())
    if block is None:
        print(f"{readme}: no {START} … {END} block", file=sys.stderr)
        return 2
    if normalised(block) == normalised(expected):
        return 0
    diff = difflib.unified_diff(normalised(block), normalised(expected), f"{readme} (performance block)",
                                "from benchmarks/results", lineterm="")
    print("\n".join(diff), file=sys.stderr)
    print(f"{readme}: the performance block differs from the results; run python -m benchmarks.readme_table "
          f"--write {readme}", file=sys.stderr)
    return 1


def write(readme: Path, expected: str) -> int:
    text = readme.read_text()
    if readme_block(text) is None:
        print(f"{readme}: no {START} … {END} block to replace", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{expected}{END}{tail}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", type=Path, metavar="README", help="exit non-zero if README's block differs")
    action.add_argument("--write", type=Path, metavar="README", help="replace README's block")
    args = parser.parse_args(argv)
    expected = render(load_results(args.results))
    if args.check:
        return check(args.check, expected)
    if args.write:
        return write(args.write, expected)
    print(expected, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
