"""``monai-deploy package`` up to the image build: app.json, pkg.json and the Dockerfile from app.yaml +
requirements.txt.

No network and no image build in tests: the artifacts manifest the CLI would download is given as a local
``--source`` file, and a stand-in ``docker`` first on PATH fails, so the packager stops right after writing its
build context. It writes that context to a temporary folder it deletes on exit, but with ``-l DEBUG`` it prints
app.json, pkg.json, the requirements and the Dockerfile, which are checked here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ichseg import __version__

REPO = Path(__file__).resolve().parents[1]
APP_CONTENT = (
    "app.py", "__main__.py", "app.yaml", "requirements.txt", "series_selection_rules.json", "operators", "ichseg"
)
HOLOSCAN_VERSION = "4.2.0"
BASE_IMAGE = "nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04"
TAG = "ich-seg:test"


def artifact_sources() -> dict:
    """The layout holoscan-cli 4.2 validates (``common/artifact_sources.py``); only the base image is used here."""
    build_images = {
        "igpu": {"jetson-agx-orin-devkit": "unused", "igx-orin-devkit": "unused", "sbsa": "unused"},
        "dgpu": {"x64-workstation": "unused", "igx-orin-devkit": "unused", "sbsa": "unused"},
        "cpu": {"x64-workstation": "unused"},
    }
    return {
        HOLOSCAN_VERSION: {
            "holoscan": {
                "debian-version": f"{HOLOSCAN_VERSION}.0-1",
                "wheel-version": HOLOSCAN_VERSION,
                "base-images": {"dgpu": BASE_IMAGE, "igpu": BASE_IMAGE},
                "build-images": build_images,
            },
            "health-probes": {"linux/amd64": "unused", "linux/arm64": "unused"},
        }
    }


def stage_app(folder: Path) -> Path:
    """The application folder as it goes into the MAP (the repo root also holds a venv and data)."""
    folder.mkdir()
    for name in APP_CONTENT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    return folder


def block(log: str, name: str) -> str:
    """The text the packager logs between its Begin/End lines for ``name`` (a log prefix may precede each line)."""
    match = re.search(rf"Begin {re.escape(name)} =+\n(.*?)\n[^\n]*?=+ End {re.escape(name)} =+", log, re.DOTALL)
    assert match, f"{name} not in the packager's log"
    return match.group(1)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    root = tmp_path_factory.mktemp("package")
    app_dir = stage_app(root / "app")
    models = root / "models"
    for name in ("detector", "segmenter"):
        (models / name).mkdir(parents=True)
        (models / name / "README").write_text("weights go here; the packager only copies this folder\n")
    source = root / "artifacts.json"
    source.write_text(json.dumps(artifact_sources()))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\necho 'docker is disabled in tests' >&2\nexit 1\n")
    docker.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(root)}
    command = [
        str(Path(sys.executable).parent / "monai-deploy"), "package", str(app_dir), "-c", str(app_dir / "app.yaml"),
        "-t", TAG, "--platform", "x86_64", "-m", str(models), "--source", str(source), "-l", "DEBUG",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=root, env=env, timeout=600)
    return result, app_dir


def test_packager_stops_only_at_the_image_build(packaged: tuple[subprocess.CompletedProcess, Path]) -> None:
    result, _ = packaged
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "docker is disabled in tests" in log or "buildx" in log, log[-3000:]
    assert "Begin Dockerfile" in log


def test_app_json_runs_the_app_folder(packaged: tuple[subprocess.CompletedProcess, Path]) -> None:
    result, _ = packaged
    app = json.loads(block(result.stdout + result.stderr, "app.json"))
    assert json.loads(app["command"]) == ["python3", "/opt/holoscan/app"]
    assert app["sdk"] == "monai-deploy" and app["sdkVersion"] == "4.0.0"
    assert app["version"] == __version__
    assert app["input"]["formats"] == ["file"] and app["output"]["formats"] == ["file"], "kebab-case keys read"
    assert app["environment"]["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"


def test_pkg_json_carries_resources_and_models(packaged: tuple[subprocess.CompletedProcess, Path]) -> None:
    result, app_dir = packaged
    pkg = json.loads(block(result.stdout + result.stderr, "pkg.json"))
    config = yaml.safe_load((app_dir / "app.yaml").read_text())
    assert pkg["resources"] == config["resources"]
    assert {"cpu", "gpu", "memory", "gpuMemory"} <= set(pkg["resources"]) and pkg["resources"]["gpu"] >= 1
    assert pkg["models"] == {"detector": "/opt/holoscan/models/detector", "segmenter": "/opt/holoscan/models/segmenter"}
    assert pkg["version"] == config["application"]["version"] == __version__


def test_dockerfile_installs_requirements_and_copies_app_and_models(
    packaged: tuple[subprocess.CompletedProcess, Path],
) -> None:
    result, _ = packaged
    log = result.stdout + result.stderr
    dockerfile = block(log, "Dockerfile")
    assert f"FROM {BASE_IMAGE}" in dockerfile
    assert re.search(r"^COPY \./app\s+/opt/holoscan/app$", dockerfile, re.MULTILINE)
    assert re.search(r"^COPY \./models\s+/opt/holoscan/models$", dockerfile, re.MULTILINE)
    assert "pip install --no-cache-dir --user -r /tmp/requirements.txt" in dockerfile
    assert "monai-deploy-app-sdk==4.0.0" in dockerfile
    assert f'LABEL org.opencontainers.image.version="{__version__}"' in dockerfile
    requirements = block(log, "requirements.txt")
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.strip() in requirements


def test_staged_app_folder_is_self_contained(packaged: tuple[subprocess.CompletedProcess, Path]) -> None:
    """What goes into /opt/holoscan/app imports and starts on its own (``python <folder>``, as app.json runs it)."""
    _, app_dir = packaged
    result = subprocess.run(
        [sys.executable, str(app_dir), "--help"], capture_output=True, text=True, cwd=app_dir.parent, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ICH_CONFIDENCE" in result.stdout
