"""An ultralytics run's ``results.csv``, read once for every caller (the export of a stopped run, the learning
curves): one row per finished epoch, and the training seconds across ``--resume``s."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

RESULTS_NAME = "results.csv"


def epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    """One row per finished epoch, column names stripped (older ultralytics pads them); an epoch redone after a stop
    is written twice, and its last row counts."""
    with (run_dir / RESULTS_NAME).open(newline="") as handle:
        rows = ({key.strip(): value for key, value in row.items()} for row in csv.DictReader(handle))
        return list({row["epoch"].strip(): row for row in rows}.values())


def run_seconds(elapsed: list[float]) -> float:
    """Training seconds from ultralytics' per-epoch ``time`` column, which counts from the start of each invocation:
    the first row after ``--resume`` holds about one epoch, not the run's total. A row that adds less than half a
    typical epoch (the median of the first row and the increments) to the previous one, or goes back, is such a
    restart. Wall clock: a run paused by the user counts its pause."""
    if not elapsed:
        return 0.0
    increments = [b - a for a, b in zip(elapsed, elapsed[1:], strict=False) if b > a]
    typical = statistics.median([elapsed[0], *increments])
    total, previous = 0.0, 0.0
    for seconds in elapsed:
        added = seconds - previous
        total += added if added >= 0.5 * typical else seconds
        previous = seconds
    return total
