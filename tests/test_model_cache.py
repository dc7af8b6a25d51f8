"""Models are loaded once per process (the gateway's warm worker runs study after study) and anew when the weights
on disk change; a broken folder fails every time, never from a stale cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ichseg import model_cache
from ichseg.model_manifest import ModelError

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_same_folder_same_options_loads_once(tmp_path: Path) -> None:
    folder = shutil.copytree(MODELS / "detector", tmp_path / "detector")
    first = model_cache.detector(folder, None, 0.6, "cpu")
    assert model_cache.detector(folder, None, 0.6, "cpu") is first
    assert model_cache.detector(folder, 0.5, 0.6, "cpu") is not first  # other options, other instance
    weights = folder / "model.pt"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert model_cache.detector(folder, None, 0.6, "cpu") is not first  # replaced weights load anew


def test_segmenter_cached_and_broken_folder_fails_each_time(tmp_path: Path) -> None:
    assert model_cache.segmenter(MODELS / "segmenter", "cpu", "fp32") is model_cache.segmenter(
        MODELS / "segmenter", "cpu", "fp32")
    broken = shutil.copytree(MODELS / "segmenter", tmp_path / "segmenter")
    (broken / "model.pt").write_bytes(b"not weights")
    for _ in range(2):
        with pytest.raises(ModelError, match="model.pt"):
            model_cache.segmenter(broken, "cpu", "fp32")
