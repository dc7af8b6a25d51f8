"""ICH segmentation MAP: head CT (DICOM) → DICOM SEG of intracranial hemorrhage, a JSON report and a PNG preview.

Two stages as in Rajapakse et al. (IEEE Access 2024): a YOLO detector boxes hemorrhage per slice, the boxes
of a slice are merged (into one box, or one per cluster), TransDeepLab segments inside the merged box(es), and an
anatomical guard keeps only voxels inside the skull at blood density. Every stage is a thin operator over the
shared ``ichseg`` code (``ichseg.pipeline``, also what the evaluation runs). Outputs are written to a staging folder
inside the output folder and moved into
place only when every stage has succeeded, so a failed run leaves no partial SEG or report behind.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ichseg import __version__  # first: imports torch, which holoscan (below) needs loaded before it
from ichseg.boxes import CLUSTER_MARGIN_MM, DEFAULT_MERGE, MERGE_MODES
from ichseg.dicom_series import DicomInputError
from ichseg.guard import BLOOD_HU, CAVITY_MARGIN_MM, MIN_COMPONENT_ML, GuardOptions
from ichseg.model_manifest import ModelError
from ichseg.runtime import configure_threads
from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, init_app_context
from operators import (
    REPORT_NAME,
    BoxMergerOperator,
    CTSeriesLoaderOperator,
    DetectorOperator,
    GuardOperator,
    PreviewOperator,
    ReportOperator,
    RulesError,
    SegmenterOperator,
    SegWriterOperator,
    StageClock,
    WindowingOperator,
)

logger = logging.getLogger("ichseg.app")

APP_DIR = Path(__file__).resolve().parent
EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT = 0, 1, 2, 3, 4, 5

HELP = f"""\
ICH segmentation MAP {__version__}: intracranial hemorrhage on head CT → DICOM SEG + JSON report + PNG preview.
Demo application; its weights are trained on synthetic phantoms: not for clinical use.

usage: python app.py [-i INPUT] [-o OUTPUT] [-m MODELS] [-w WORKDIR] [-l LEVEL]
       python <app folder> ...        (same options; what the packaged MAP runs)

options (parsed by the MONAI Deploy App SDK):
  -i, --input INPUT     folder of DICOM files, searched recursively (env HOLOSCAN_INPUT_PATH, default ./input).
                        One series is chosen by series_selection_rules.json: CT, not a localizer, axial;
                        then soft-tissue kernel, original images, most slices. The log says which and why.
  -o, --output OUTPUT   output folder, created if missing (env HOLOSCAN_OUTPUT_PATH, default ./output)
  -m, --model MODELS    model folder with detector/ and segmenter/, each manifest.json + model.pt
                        (env HOLOSCAN_MODEL_PATH, default ./models)
  -w, --workdir DIR     SDK work folder (env HOLOSCAN_WORKDIR)
  -l, --log-level LEVEL DEBUG, INFO (default), WARN, ERROR or CRITICAL
  -h, --help            this text

environment options:
  ICH_CONFIDENCE        detector confidence threshold, 0-1 (default: the detector manifest's operating point,
                        chosen on validation data; 0.25 if it names none)
  ICH_IOU               detector NMS IoU threshold, 0-1 (default 0.6, the paper's)
  ICH_DEVICE            torch device, e.g. cuda:0 or cpu (default: first GPU if any, else CPU)
  ICH_THREADS           CPU threads for torch (default: all cores)
  ICH_SELECTION_RULES   series selection rules JSON (default: series_selection_rules.json beside app.py)
  ICH_SAVE_MASK         1 = also write ich_mask.npz (mask + SOPInstanceUIDs) for QA (default 0)
  ICH_HEAD_CHECK        0 = skip the head-CT check (default 1: a series whose BodyPartExamined names another
                        body region, or without a skull ring around brain at head size, is refused with exit 3)
  ICH_MERGE             how the boxes of a slice are merged before segmentation: slice = one enclosing box (the
                        paper's), cluster = one box per group of boxes within {CLUSTER_MARGIN_MM:g} mm
                        (default {DEFAULT_MERGE})
  ICH_GUARD             0 = switch the anatomical guard off (default 1: keep voxels only inside the skull, at
                        blood density, in components of at least ICH_GUARD_MIN_ML)
  ICH_GUARD_HU          blood density range on a 3x3-smoothed HU, LOW,HIGH (default {BLOOD_HU[0]:g},{BLOOD_HU[1]:g})
  ICH_GUARD_MIN_ML      smallest kept 3D component in mL (default {MIN_COMPONENT_ML:g}; 0 keeps all)
  ICH_GUARD_MARGIN_MM   kept distance from bone inside the skull, mm (default {CAVITY_MARGIN_MM:g})

outputs (in OUTPUT, each replaced atomically, all only after every stage succeeded):
  ich_seg.dcm           DICOM SEG (BINARY, one segment "Intracranial hemorrhage", AUTOMATIC), one frame per
                        source slice, on the source grid; written also when nothing is found (empty segment)
  ich_report.json       result ("hemorrhage detected" / "no hemorrhage detected"), volume (mL), subtypes, boxes
                        and merged boxes per slice, what the guard removed, chosen series and why, models,
                        settings, timings per stage
  ich_preview.png       key slices with the hemorrhage outlined

exit status:
  {EXIT_OK} done (also when no hemorrhage is found)   {EXIT_UNEXPECTED} unexpected error
  {EXIT_USAGE} bad option, setting or rules file
  {EXIT_INPUT} input refused (no/unreadable DICOM, no matching series, not a head CT, missing slice, tilt, ...)
  {EXIT_MODEL} model missing or mismatching   {EXIT_OUTPUT} output cannot be written (or another file system error)
"""


class SettingsError(ValueError):
    """An ICH_* environment option has a value the application cannot use."""


@dataclass(frozen=True)
class Settings:
    """Options beyond the SDK's -i/-o/-m, from ICH_* environment variables (containers pass env easily)."""

    confidence: float | None = None  # None: the detector manifest's operating point
    iou: float = 0.6
    device: str | None = None
    rules: Path = APP_DIR / "series_selection_rules.json"
    save_mask: bool = False
    head_check: bool = True
    merge: str = DEFAULT_MERGE
    guard: bool = True
    guard_hu: tuple[float, float] = BLOOD_HU
    guard_min_ml: float = MIN_COMPONENT_ML
    guard_margin_mm: float = CAVITY_MARGIN_MM

    @classmethod
    def from_env(cls) -> "Settings":
        iou = _fraction("ICH_IOU", cls.iou)
        return cls(
            confidence=_fraction("ICH_CONFIDENCE", cls.confidence),
            iou=cls.iou if iou is None else iou,
            device=os.environ.get("ICH_DEVICE") or None,
            rules=Path(os.environ.get("ICH_SELECTION_RULES") or cls.rules),
            save_mask=_switch("ICH_SAVE_MASK", cls.save_mask),
            head_check=_switch("ICH_HEAD_CHECK", cls.head_check),
            merge=_choice("ICH_MERGE", MERGE_MODES, cls.merge),
            guard=_switch("ICH_GUARD", cls.guard),
            guard_hu=_hu_range("ICH_GUARD_HU", cls.guard_hu),
            guard_min_ml=_non_negative("ICH_GUARD_MIN_ML", cls.guard_min_ml),
            guard_margin_mm=_non_negative("ICH_GUARD_MARGIN_MM", cls.guard_margin_mm),
        )

    def guard_options(self) -> GuardOptions:
        return GuardOptions(self.guard, self.guard_hu, self.guard_min_ml, self.guard_margin_mm)


def _number(name: str, default: float | None, valid: Callable[[float], bool], expected: str) -> float | None:
    """The float in environment variable ``name`` (default when unset), refused with a SettingsError unless valid."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and valid(value)):
        raise SettingsError(f"{name}={text!r}: expected {expected}")
    return value


def _fraction(name: str, default: float | None) -> float | None:
    return _number(name, default, lambda v: 0.0 < v < 1.0, "a number between 0 and 1")


def _switch(name: str, default: bool) -> bool:
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text not in ("1", "true", "yes", "0", "false", "no"):
        raise SettingsError(f"{name}={text!r}: expected 1 or 0")
    return text in ("1", "true", "yes")


def _choice(name: str, choices: tuple[str, ...], default: str) -> str:
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text not in choices:
        raise SettingsError(f"{name}={text!r}: expected one of {', '.join(choices)}")
    return text


def _non_negative(name: str, default: float) -> float:
    value = _number(name, default, lambda v: v >= 0.0, "a number ≥ 0")
    assert value is not None
    return value


def _hu_range(name: str, default: tuple[float, float]) -> tuple[float, float]:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        low, high = 1.0, 0.0
    if not (-1024.0 <= low < high <= 3071.0):
        raise SettingsError(f"{name}={text!r}: expected LOW,HIGH in HU with LOW < HIGH, e.g. 35,130")
    return low, high


class ICHSegmentationApp(Application):
    """DICOM series loader → windowing → YOLO detector → box merger → TransDeepLab segmenter → anatomical guard →
    DICOM SEG writer (+ preview and report)."""

    def __init__(self, argv: list[str] | None = None) -> None:
        super().__init__(argv)
        self.context = init_app_context(self.argv)  # -i/-o/-m or HOLOSCAN_* env; usage errors exit 2 here
        self.settings = Settings.from_env()
        self.output_folder = Path(self.context.output_path).absolute()
        self.staging = self.output_folder / f".ich-staging-{uuid.uuid4().hex[:12]}"
        self.clock = StageClock()
        configure_threads()
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # per-module copy notes drown the stage log
        if self.context.workdir:  # in a MAP the app folder is read-only to the app user: ultralytics settings go here
            os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(self.context.workdir) / "ultralytics"))

    def compose(self) -> None:
        models = Path(self.context.model_path).absolute()
        model_dirs = {"detector": models / "detector", "segmenter": models / "segmenter"}
        settings = self.settings
        clock = self.clock

        loader = CTSeriesLoaderOperator(
            self, CountCondition(self, 1), name="dicom_series_loader",
            input_folder=Path(self.context.input_path), rules_path=settings.rules, head_check=settings.head_check,
            clock=clock,
        )
        windowing = WindowingOperator(self, name="windowing", clock=clock)
        detector = DetectorOperator(
            self, name="yolo_detector", model_dir=model_dirs["detector"], confidence=settings.confidence,
            iou=settings.iou, device=settings.device, clock=clock,
        )
        merger = BoxMergerOperator(self, name="box_merger", mode=settings.merge, clock=clock)
        segmenter = SegmenterOperator(
            self, name="transdeeplab_segmenter", model_dir=model_dirs["segmenter"], device=settings.device, clock=clock
        )
        guard = GuardOperator(self, name="anatomical_guard", options=settings.guard_options(), clock=clock)
        seg_writer = SegWriterOperator(self, name="dicom_seg_writer", output_folder=self.staging, clock=clock)
        preview = PreviewOperator(self, name="preview", output_folder=self.staging, clock=clock)
        report = ReportOperator(
            self, name="report", output_folder=self.staging, model_dirs=model_dirs,
            settings={k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
            save_mask=settings.save_mask, clock=clock,
        )

        self.add_flow(loader, windowing, {("series", "series")})
        self.add_flow(windowing, detector, {("windowed", "windowed")})
        self.add_flow(detector, merger, {("detections", "detections")})
        self.add_flow(loader, merger, {("series", "series")})
        self.add_flow(merger, segmenter, {("boxes", "boxes")})
        self.add_flow(windowing, segmenter, {("windowed", "windowed")})
        self.add_flow(segmenter, guard, {("mask", "mask")})
        self.add_flow(loader, guard, {("series", "series")})
        self.add_flow(loader, seg_writer, {("series", "series")})
        self.add_flow(guard, seg_writer, {("mask", "mask")})
        self.add_flow(windowing, preview, {("windowed", "windowed")})
        self.add_flow(merger, preview, {("boxes", "boxes")})
        self.add_flow(guard, preview, {("mask", "mask")})
        self.add_flow(loader, report, {("series", "series"), ("selection", "selection")})
        self.add_flow(detector, report, {("detections", "detections")})
        self.add_flow(merger, report, {("boxes", "boxes")})
        self.add_flow(segmenter, report, {("mask", "unguarded")})
        self.add_flow(guard, report, {("mask", "mask"), ("guard", "guard")})
        self.add_flow(seg_writer, report, {("seg", "seg")})
        self.add_flow(preview, report, {("preview", "preview")})

    def run(self) -> None:
        """Run the graph into the staging folder; move its files into the output folder only if all succeeded."""
        logger.info(
            "ICH segmentation %s: input %s, output %s", __version__, self.context.input_path, self.output_folder
        )
        self.staging.mkdir(parents=True)
        try:
            super().run()
            if not (self.staging / REPORT_NAME).is_file():
                raise RuntimeError("the pipeline ended without writing its report; nothing published")
            # The report last: once it is there, everything it names is too.
            for path in sorted(self.staging.iterdir(), key=lambda p: p.name == REPORT_NAME):
                os.replace(path, self.output_folder / path.name)
                logger.info("wrote %s", self.output_folder / path.name)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``python app.py``, ``python .``, the MAP); returns the exit status.

    ``argv`` as holoscan's Application takes it: interpreter, script, options (it drops the first two).
    """
    argv = [sys.executable, *sys.argv] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv[1:]):
        print(HELP)
        return EXIT_OK
    failures = (
        ((SettingsError, RulesError), EXIT_USAGE, "bad setting"),
        (DicomInputError, EXIT_INPUT, "input refused"),
        (ModelError, EXIT_MODEL, "model problem"),
        (OSError, EXIT_OUTPUT, "file system error"),
    )
    try:
        ICHSegmentationApp(argv).run()
    except Exception as error:
        status, kind = next(
            ((s, k) for types, s, k in failures if isinstance(error, types)), (EXIT_UNEXPECTED, "unexpected error")
        )
        logger.error("%s: %s", kind, error, exc_info=status == EXIT_UNEXPECTED)
        return status
    logger.info("done")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
