"""The small manifest beside each model's weights, checked when a model is loaded.

Layout under the model path (the MONAI Deploy multi-model convention, one sub-folder per model)::

    models/detector/manifest.json + model.pt
    models/segmenter/manifest.json + model.pt

A manifest says what the weights are (name, version, architecture), what they expect (input size,
classes, windowing) and how they were made (data, recipe) — the operators refuse weights whose manifest
does not match what the pipeline feeds them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ichseg.windowing import HEADER_INPUT

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.pt"


class ModelError(RuntimeError):
    """Missing, unreadable or mismatching model files; the message names the path and the problem."""


@dataclass
class ModelManifest:
    name: str
    version: str
    architecture: str
    input_size: int
    classes: list[str]
    task: str  # "detection" or "segmentation"
    training: dict[str, Any] = field(default_factory=dict)  # data, recipe, epochs, figures
    #: detection only: confidence threshold of the weights' operating point, chosen on the validation split
    operating_confidence: float | None = None
    #: detection only: boxes this sure or more are kept when they continue an operating-confidence box on the same or
    #: an adjacent slice (``ichseg.z_continuity``), chosen with it; None: the operating confidence alone
    extend_confidence: float | None = None
    notice: str = "Trained on synthetic head-CT phantoms, for demonstration and testing only; not for clinical use."

    @property
    def label(self) -> str:
        """Name and version: which weights a result, a report or a training run came from."""
        return f"{self.name} {self.version}"

    @property
    def input(self) -> str:
        """What the network's input channels hold (``ichseg.windowing.INPUT_KINDS``); older manifests have none."""
        return str(self.training.get("input", HEADER_INPUT))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST_NAME).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ModelManifest:
        path = Path(folder) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError as error:
            raise ModelError(f"{path}: model manifest missing") from error
        except (json.JSONDecodeError, TypeError) as error:
            raise ModelError(f"{path}: model manifest unreadable ({error})") from error

    def require(self, task: str, input_size: int, classes: list[str] | None = None) -> None:
        """Raise ModelError unless these weights do the task at the size (and classes) the pipeline uses."""
        problems = []
        if self.task != task:
            problems.append(f"task {self.task!r}, expected {task!r}")
        if self.input_size != input_size:
            problems.append(f"input size {self.input_size}, expected {input_size}")
        if classes is not None and list(self.classes) != list(classes):
            problems.append(f"classes {self.classes}, expected {classes}")
        if problems:
            raise ModelError(f"model {self.name} {self.version}: " + "; ".join(problems))


def weights_path(folder: Path) -> Path:
    """The weights file of a model folder, or ModelError naming what is missing."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise ModelError(f"{path}: model weights missing")
    return path


def portable_path(path: Path | str) -> str:
    """``path`` as a manifest records it: relative to the working folder when inside it, so that committed manifests
    carry no build-machine paths."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(path)
