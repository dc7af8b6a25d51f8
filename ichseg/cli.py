"""The command line before the graph: help, settings, exit statuses, and the input read and checked first.

A bad setting, a bad rules file or a refused input is answered before torch and the MONAI Deploy SDK are imported
(``prepare``; ≈ 1 s instead of ≈ 5 s), because a PACS or a user waiting on a refusal should not wait for the models.
The series read here is handed to the graph's loader operator, so it is read once.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ichseg import __version__
from ichseg.boxes import CLUSTER_MARGIN_MM, DEFAULT_MERGE
from ichseg.calibration import MAX_OFFSET_HU, REFERENCE_SOFT_TISSUE_HU
from ichseg.dicom_series import CTSeries, DicomInputError
from ichseg.follow import FOLLOW_SLICES
from ichseg.guard import BLOOD_HU, CAVITY_MARGIN_MM, MIN_COMPONENT_ML
from ichseg.model_manifest import ModelError, ModelManifest, weights_path
from ichseg.series_selection import BUNDLED_RULES, RulesError, Selection, SelectionRules, load_chosen_series
from ichseg.settings import Settings, SettingsError
from ichseg.stage_clock import StageClock

logger = logging.getLogger("ichseg.app")

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT = 0, 1, 2, 3, 4, 5
FAILURES = (  # error type → exit status and the word the log line starts with
    ((SettingsError, RulesError), EXIT_USAGE, "bad setting"),
    (DicomInputError, EXIT_INPUT, "input refused"),
    (ModelError, EXIT_MODEL, "model problem"),
    (OSError, EXIT_OUTPUT, "file system error"),
)
LOG_FORMAT = "[%(asctime)s] [%(levelname)s] (%(name)s) - %(message)s"  # the SDK's, which takes over once it loads
SDK_PATHS = {  # option → (long option, environment variable, default), as the SDK resolves -i and -m
    "-i": ("--input", "HOLOSCAN_INPUT_PATH", "input"),
    "-m": ("--model", "HOLOSCAN_MODEL_PATH", "models"),
}
MODEL_FOLDERS = ("detector", "segmenter")

HELP = f"""\
ICH segmentation MAP {__version__}: intracranial hemorrhage on head CT → DICOM SEG + JSON report + PNG preview.
Demo application; its weights are trained on synthetic phantoms: not for clinical use.

usage: python app.py [-i INPUT] [-o OUTPUT] [-m MODELS] [-w WORKDIR] [-l LEVEL]
       python <app folder> ...        (same options; what the packaged MAP runs)

options (parsed by the MONAI Deploy App SDK):
  -i, --input INPUT     folder of DICOM files, searched recursively (env HOLOSCAN_INPUT_PATH, default ./input):
                        single-frame CT images, or Enhanced / Legacy Converted Enhanced CT (one multi-frame file
                        per series).
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
                        chosen on validation data; 0.25 if it names none): a box this sure starts a finding
  ICH_EXTEND_CONFIDENCE boxes this sure or more are kept where they overlap a kept box on the same or an adjacent
                        slice (default: the manifest's extend confidence, else ICH_CONFIDENCE, a plain threshold;
                        capped at ICH_CONFIDENCE)
  ICH_IOU               detector NMS IoU threshold, 0-1 (default 0.6, the paper's)
  ICH_DEVICE            torch device, e.g. cuda:0 or cpu (default: first GPU if any, else CPU)
  ICH_PRECISION         segmenter precision: auto (default: bf16 autocast where the CPU/GPU has native bf16,
                        else fp32), bf16 or fp32
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
  ICH_CALIBRATE         0 = use the HU as stored; 1 (default) = measure the series' calibration offset (the median of
                        its soft tissue minus {REFERENCE_SOFT_TISSUE_HU:g} HU, at most ±{MAX_OFFSET_HU:g}) and take it
                        off the HU the networks see and add it to the guard's blood range: scanners that read a few
                        HU high or low get the same answer
  ICH_FOLLOW_SLICES     follow each guarded finding up to this many slices up and down into slices the detector
                        gave no box; the segmenter and the guard decide there (default {FOLLOW_SLICES}; 0 = off;
                        needs the guard)

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


@dataclass
class Prepared:
    """What ``prepare`` read and checked; the app's graph starts from it."""

    settings: Settings
    rules: SelectionRules
    input_folder: Path
    loaded: tuple[Selection, CTSeries] | None  # None when the SDK is left to report the input (see ``prepare``)
    clock: StageClock = field(default_factory=StageClock)


def wants_help(argv: list[str]) -> bool:
    return bool({"-h", "--help"} & set(argv[1:]))


def sdk_path(argv: list[str], option: str) -> Path:
    """A folder option as the SDK resolves it: e.g. -i/--input, else $HOLOSCAN_INPUT_PATH, else ./input."""
    long_option, variable, default = SDK_PATHS[option]
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(option, long_option, dest="value")
    known, _ = parser.parse_known_args(argv[1:])
    return Path(known.value or os.environ.get(variable) or default)


def check_models(folder: Path) -> None:
    """ModelError unless each model folder has a readable manifest and its weights (read, not loaded, here)."""
    for name in MODEL_FOLDERS:
        ModelManifest.load(folder / name)
        weights_path(folder / name)


def log_level(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-l", "--log-level", type=str.upper, default="INFO")
    known, _ = parser.parse_known_args(argv[1:])
    return known.log_level if known.log_level in ("DEBUG", "INFO", "WARN", "ERROR", "CRITICAL") else "INFO"


def configure_logging(level: str) -> None:
    """The console logging the SDK sets up (its logging.json: root handler, this format), before the SDK loads."""
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"simple": {"format": LOG_FORMAT}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "simple"}},
        "root": {"level": "WARNING" if level == "WARN" else level, "handlers": ["console"]},
    })


def prepare(argv: list[str], load: bool = True) -> Prepared:
    """Settings, rules and (``load``) the chosen series, checked; raises the errors ``FAILURES`` maps to statuses.

    The models are checked first (a missing model is the site's problem, whatever the study). A missing input or
    model folder is left to the SDK's own option check (a usage error, exit 2); without ``load`` (an app built
    directly, as SDK users do) the graph's loader operator reads the series.
    """
    settings = Settings.from_env()
    rules = SelectionRules.load(settings.rules, preferences_from=BUNDLED_RULES)
    folder = sdk_path(argv, "-i")
    prepared = Prepared(settings, rules, folder, None)
    if not load:
        return prepared
    models = sdk_path(argv, "-m")
    if models.is_dir():
        check_models(models)
    if folder.exists():
        prepared.loaded = load_chosen_series(folder, rules, settings.head_check, prepared.clock.stage)
    return prepared


def failure_status(error: BaseException) -> int:
    """Log ``error`` as the operator reads it and return its exit status."""
    status, kind = next(
        ((s, k) for types, s, k in FAILURES if isinstance(error, types)), (EXIT_UNEXPECTED, "unexpected error")
    )
    logger.error("%s: %s", kind, error, exc_info=status == EXIT_UNEXPECTED)
    return status


def prepare_or_status(argv: list[str]) -> Prepared | int:
    """``prepare``, or the exit status to end with (help printed, or a refusal logged)."""
    if wants_help(argv):
        print(HELP)
        return EXIT_OK
    configure_logging(log_level(argv))
    try:
        return prepare(argv)
    except Exception as error:  # every failure ends in a logged, mapped exit status
        return failure_status(error)


def prepare_or_exit(argv: list[str]) -> Prepared:
    """``prepare_or_status`` for a script's first lines: the process ends here unless the graph has work to do."""
    outcome = prepare_or_status(argv)
    if isinstance(outcome, int):
        sys.exit(outcome)
    return outcome
