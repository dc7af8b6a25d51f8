"""Shared fixtures: synthetic studies generated once per test session (real DICOM files on disk)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

TEST_SEED = 7
POSITIVE_STUDY = 5  # intraparenchymal + epidural, 5 mm, 512², standard kernel, brain window, no motion
NEGATIVE_STUDY = 41  # no hemorrhage, 5 mm, 512², standard kernel, brain (+ subdural) window


@pytest.fixture(scope="session")
def study_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one positive and one negative synthetic study (made with the generator's CLI code path)."""
    from synthetic.__main__ import main

    root = tmp_path_factory.mktemp("synthetic")
    main(["--out", str(root / "negative"), "--studies", "1", "--first", str(NEGATIVE_STUDY),
          "--seed", str(TEST_SEED), "--workers", "1"])
    main(["--out", str(root / "positive"), "--studies", "1", "--first", str(POSITIVE_STUDY),
          "--seed", str(TEST_SEED), "--workers", "1"])
    return root


@pytest.fixture(scope="session")
def positive_study(study_root: Path) -> Path:
    return study_root / "positive" / f"study_{TEST_SEED:03d}_{POSITIVE_STUDY:05d}"


@pytest.fixture(scope="session")
def negative_study(study_root: Path) -> Path:
    return study_root / "negative" / f"study_{TEST_SEED:03d}_{NEGATIVE_STUDY:05d}"
