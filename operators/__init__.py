"""The application's operators, one pipeline stage each; they receive, call shared ``ichseg`` code, log and emit.

Pipeline logic lives in ``ichseg`` (shared with training and evaluation); these classes only adapt it to the
MONAI Deploy / Holoscan operator interface and time each stage for the report.
"""

from ichseg.series_selection import RulesError  # raised by CTSeriesLoaderOperator for a bad rules file
from ichseg.stage_clock import StageClock
from operators.box_merger_operator import BoxMergerOperator
from operators.ct_series_loader_operator import CTSeriesLoaderOperator
from operators.detector_operator import DetectorOperator
from operators.follow_operator import FollowOperator
from operators.guard_operator import GuardOperator
from operators.preview_operator import PreviewOperator
from operators.report_operator import REPORT_NAME, ReportOperator
from operators.seg_writer_operator import SegWriterOperator
from operators.segmenter_operator import SegmenterOperator
from operators.windowing_operator import WindowingOperator

__all__ = [
    "BoxMergerOperator",
    "CTSeriesLoaderOperator",
    "DetectorOperator",
    "FollowOperator",
    "GuardOperator",
    "PreviewOperator",
    "REPORT_NAME",
    "ReportOperator",
    "RulesError",
    "SegWriterOperator",
    "SegmenterOperator",
    "StageClock",
    "WindowingOperator",
]
