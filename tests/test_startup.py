"""Start-up: what the app imports before it can answer, and the SDK imported without MONAI core's eager start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    lines = importtime_stderr.splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}


def test_refused_input_is_answered_before_torch_and_the_sdk_load(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "app.py"), "-i", str(tmp_path / "empty"),
         "-o", str(tmp_path / "out"), "-m", str(REPO / "models")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "input refused" in result.stderr and "no DICOM files found" in result.stderr
    modules = imported_modules(result.stderr)
    assert "pydicom" in modules
    assert not {"torch", "holoscan", "monai", "ultralytics", "highdicom"} & modules
    assert not (tmp_path / "out").exists(), "nothing created for a refused input"


def test_missing_models_are_reported_before_the_input_is_read(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "app.py"), "-i", str(REPO / "demo" / "study"), "-o", str(tmp_path / "out"),
         "-m", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 4
    assert f"{tmp_path / 'detector' / 'manifest.json'}: model manifest missing" in result.stderr
    assert "load DICOM series" not in result.stderr


def test_sdk_imports_without_monai_core_and_monai_core_still_loads_after_it() -> None:
    script = """
import sys
from ichseg.sdk import Application
core = sorted(m for m in sys.modules if m.startswith("monai.") and not m.startswith("monai.deploy"))
print("core before:", len(core))
from monai.networks.nets import UNet
import monai, monai.deploy.core
from monai.deploy.utils.version import get_sdk_semver
assert monai.deploy.core.Application is Application
print("sdk", get_sdk_semver(), "monai", monai.__version__, UNet.__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "core before: 0" in result.stdout
    assert "sdk 4.0.0" in result.stdout and "UNet" in result.stdout


def test_the_app_graph_imports_no_monai_core() -> None:
    """The shipped TransDeepLab path needs neither MONAI core (≈ 3 s to import) nor its networks: only the UNet
    baseline imports them, when it is built."""
    script = "import sys, app; print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('monai.')}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "['deploy']"
