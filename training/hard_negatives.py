"""Hard-negative mining: score hemorrhage-free slices by how strongly the current detector fires on them.

A random sample of hemorrhage-free slices is mostly normal brain, which a detector soon gets right; what it gets
wrong are the mimics (calcifications, dense sinuses, the skull base, streaks, scalp swelling). Scoring every
candidate slice with the current detector and training on the highest-scoring ones is the classic bootstrapping
remedy (Sung & Poggio 1998; online hard example mining). The slices go through the inference path
(``ichseg.pipeline.window_series`` and ``HemorrhageDetector`` on the detector's own input), so a slice scores what the
app would see.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from pydicom import Dataset
from tqdm import tqdm

from ichseg.detector import HemorrhageDetector
from ichseg.dicom_series import DicomInputError, load_series
from ichseg.pipeline import window_series

MINING_CONFIDENCE = 0.01  # boxes this weak still rank slices; below it a slice scores 0 (nothing to learn from)


def score_slices(
    series: Iterable[Sequence[tuple[Path, Dataset]]], candidates: set[str], model_dir: Path
) -> dict[str, float]:
    """Each candidate SOPInstanceUID → the highest confidence of any box the detector in ``model_dir`` puts on it
    (0 when none reaches ``MINING_CONFIDENCE``). ``series`` are ``group_series`` entry lists; only series holding a
    candidate are decoded; unreadable ones get no score (their slices can still be drawn at random, and the converter
    reports the series when it tries to write one of them)."""
    detector = HemorrhageDetector(model_dir, confidence=MINING_CONFIDENCE)
    scores: dict[str, float] = {}
    for entries in tqdm(list(series), desc="mining", unit="series"):
        if not any(str(header.SOPInstanceUID) in candidates for _, header in entries):
            continue
        try:
            loaded = load_series(entries)
        except DicomInputError:
            continue
        found = detector.detect(window_series(loaded).detector_input(detector.input))
        for header, slice_found in zip(loaded.headers, found, strict=True):
            sop = str(header.SOPInstanceUID)
            if sop in candidates:
                scores[sop] = max((d.confidence for d in slice_found), default=0.0)
    return scores


def hardest(sops: Iterable[str], scores: dict[str, float], count: int) -> list[str]:
    """The ``count`` slices of ``sops`` the detector fires on most strongly (score > 0 only; ties by UID)."""
    fired = [sop for sop in sops if scores.get(sop, 0.0) > 0.0]
    return sorted(fired, key=lambda sop: (-scores[sop], sop))[:count]
