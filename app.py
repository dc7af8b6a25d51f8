"""ICH segmentation MAP: head CT (DICOM) → DICOM SEG of intracranial hemorrhage, a JSON report and a PNG preview.

Two stages as in Rajapakse et al. (IEEE Access 2024): a YOLO detector boxes hemorrhage per slice, the boxes
of a slice are merged (into one box, or one per cluster), TransDeepLab segments inside the merged box(es), and an
anatomical guard keeps only voxels inside the skull at blood density; each guarded finding is then followed into
adjacent slices the detector left without a box (the segmenter decides there, the guard again). Every stage is a
thin operator over the shared ``ichseg`` code (``ichseg.pipeline``, also what the evaluation runs). Outputs are
written to a staging folder inside the output folder and moved into place only when every stage has succeeded, so a
failed run leaves no partial SEG or report behind. Options, settings and the input are checked first
(``ichseg.cli``), before torch and the SDK are imported, so that a refusal comes in about a second.
"""

# ruff: noqa: E402  (the imports after the early answer below are deliberate: they cost ≈ 4 s)
from __future__ import annotations

import sys

from ichseg import cli

if __name__ == "__main__":  # -h, a bad setting or a refused input answered before torch and the SDK load
    PREPARED = cli.prepare_or_exit([sys.executable, *sys.argv])

import logging
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

from ichseg import __version__
from ichseg.runtime import configure_threads
from ichseg.sdk import Application, CountCondition, init_app_context  # torch, then the SDK
from operators import (
    REPORT_NAME,
    BoxMergerOperator,
    CTSeriesLoaderOperator,
    DetectorOperator,
    FollowOperator,
    GuardOperator,
    PreviewOperator,
    ReportOperator,
    SegmenterOperator,
    SegWriterOperator,
    WindowingOperator,
)

logger = logging.getLogger("ichseg.app")


class ICHSegmentationApp(Application):
    """DICOM series loader → windowing → YOLO detector → box merger → TransDeepLab segmenter → anatomical guard →
    DICOM SEG writer (+ preview and report)."""

    def __init__(self, argv: list[str] | None = None, prepared: cli.Prepared | None = None) -> None:
        """``prepared``: settings, rules and the series ``cli.prepare`` read (else the loader reads the series)."""
        super().__init__(argv)
        self.context = init_app_context(self.argv)  # -i/-o/-m or HOLOSCAN_* env; usage errors exit 2 here
        self.prepared = prepared or cli.prepare(self.argv, load=False)
        self.settings = self.prepared.settings
        self.output_folder = Path(self.context.output_path).absolute()
        self.staging = self.output_folder / f".ich-staging-{uuid.uuid4().hex[:12]}"
        self.clock = self.prepared.clock
        configure_threads()
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # per-module copy notes drown the stage log
        if self.context.workdir:  # in a MAP the app folder is read-only to the app user: ultralytics settings go here
            os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(self.context.workdir) / "ultralytics"))

    def compose(self) -> None:
        models = Path(self.context.model_path).absolute()
        model_dirs = {"detector": models / "detector", "segmenter": models / "segmenter"}
        settings = self.settings
        clock = self.clock

        input_folder = Path(self.context.input_path)
        loaded = self.prepared.loaded if input_folder == self.prepared.input_folder else None
        loader = CTSeriesLoaderOperator(
            self, CountCondition(self, 1), name="dicom_series_loader", input_folder=input_folder,
            rules=self.prepared.rules, head_check=settings.head_check, loaded=loaded, clock=clock,
        )
        windowing = WindowingOperator(self, name="windowing", clock=clock, calibrate=settings.calibrate)
        detector = DetectorOperator(
            self, name="yolo_detector", model_dir=model_dirs["detector"], confidence=settings.confidence,
            extend=settings.extend_confidence, iou=settings.iou, device=settings.device, clock=clock,
        )
        merger = BoxMergerOperator(self, name="box_merger", mode=settings.merge, clock=clock)
        segmenter = SegmenterOperator(
            self, name="transdeeplab_segmenter", model_dir=model_dirs["segmenter"], device=settings.device,
            precision=settings.precision, clock=clock,
        )
        guard = GuardOperator(self, name="anatomical_guard", options=settings.guard_options(), clock=clock)
        follower = FollowOperator(
            self, name="finding_follower", model_dir=model_dirs["segmenter"], device=settings.device,
            precision=settings.precision, guard=settings.guard_options(), options=settings.follow_options(),
            clock=clock,
        )
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
        self.add_flow(windowing, guard, {("windowed", "windowed")})
        self.add_flow(guard, follower, {("mask", "mask"), ("guard", "guard"), ("anatomy", "anatomy")})
        self.add_flow(segmenter, follower, {("mask", "unguarded")})
        self.add_flow(merger, follower, {("boxes", "boxes")})
        self.add_flow(windowing, follower, {("windowed", "windowed")})
        self.add_flow(loader, follower, {("series", "series")})
        self.add_flow(loader, seg_writer, {("series", "series")})
        self.add_flow(follower, seg_writer, {("mask", "mask")})
        self.add_flow(windowing, preview, {("windowed", "windowed")})
        self.add_flow(follower, preview, {("boxes", "boxes"), ("mask", "mask")})
        self.add_flow(loader, report, {("series", "series"), ("selection", "selection")})
        self.add_flow(detector, report, {("detections", "detections"), ("thresholds", "thresholds")})
        self.add_flow(follower, report, {("boxes", "boxes"), ("unguarded", "unguarded"), ("mask", "mask"),
                                         ("guard", "guard"), ("follow", "follow")})
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


def main(argv: list[str] | None = None, prepared: cli.Prepared | None = None) -> int:
    """Command line entry point (``python app.py``, ``python .``, the MAP); returns the exit status.

    ``argv`` as holoscan's Application takes it: interpreter, script, options (it drops the first two).
    ``prepared``: what ``cli.prepare`` already read for this ``argv`` (it is run here otherwise).
    """
    argv = [sys.executable, *sys.argv] if argv is None else list(argv)
    if prepared is None:
        outcome = cli.prepare_or_status(argv)
        if isinstance(outcome, int):
            return outcome
        prepared = outcome
    try:
        ICHSegmentationApp(argv, prepared).run()
    except Exception as error:  # every failure ends in a logged, mapped exit status
        return cli.failure_status(error)
    logger.info("done")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main(prepared=PREPARED))
