"""Models loaded once per process: a long-lived process (the gateway's warm worker) running the application on
study after study loads each model once, not once per study.

Keyed by the model folder, the size and modification time of its weights and manifest, and the options, so weights
replaced on disk are loaded anew; a bad folder raises the loaders' ModelError every time (errors are not cached).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ichseg.detector import HemorrhageDetector
from ichseg.model_manifest import MANIFEST_NAME, weights_path
from ichseg.segmenter import HemorrhageSegmenter

Stamp = tuple[tuple[int, int], ...]


def _stamp(model_dir: Path) -> Stamp:
    """(size, mtime) of the weights and the manifest: what changes when a model folder is replaced."""
    files = (weights_path(model_dir), Path(model_dir) / MANIFEST_NAME)
    return tuple((stat.st_size, stat.st_mtime_ns) for stat in (path.stat() for path in files if path.exists()))


def detector(
    model_dir: Path, confidence: float | None, iou: float, device: str | None, extend: float | None = None
) -> HemorrhageDetector:
    """``HemorrhageDetector(model_dir, confidence, iou, device, extend)``, loaded once per process and options."""
    return _detector(Path(model_dir).resolve(), _stamp(model_dir), confidence, iou, device, extend)


def segmenter(model_dir: Path, device: str | None, precision: str) -> HemorrhageSegmenter:
    """``HemorrhageSegmenter(model_dir, device, precision)``, loaded once per process and options."""
    return _segmenter(Path(model_dir).resolve(), _stamp(model_dir), device, precision)


@lru_cache(maxsize=2)
def _detector(model_dir: Path, stamp: Stamp, confidence: float | None, iou: float,
              device: str | None, extend: float | None) -> HemorrhageDetector:
    return HemorrhageDetector(model_dir, confidence, iou, device, extend)


@lru_cache(maxsize=2)
def _segmenter(model_dir: Path, stamp: Stamp, device: str | None, precision: str) -> HemorrhageSegmenter:
    return HemorrhageSegmenter(model_dir, device, precision)
