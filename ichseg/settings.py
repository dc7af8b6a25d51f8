"""The application's options beyond the SDK's -i/-o/-m: ICH_* environment variables, checked before anything runs.

Containers pass environment variables easily; a value the app cannot use is refused (exit 2) before any DICOM is
read or any model loaded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ichseg import head_ct
from ichseg.boxes import DEFAULT_MERGE, MERGE_MODES
from ichseg.follow import FOLLOW_SLICES, FollowOptions
from ichseg.guard import BLOOD_HU, CAVITY_MARGIN_MM, MIN_COMPONENT_ML, GuardOptions
from ichseg.runtime import PRECISIONS
from ichseg.series_selection import BUNDLED_RULES


class SettingsError(ValueError):
    """An ICH_* environment option has a value the application cannot use."""


@dataclass(frozen=True)
class Settings:
    """Options beyond the SDK's -i/-o/-m, from ICH_* environment variables (containers pass env easily)."""

    confidence: float | None = None  # None: the detector manifest's operating point
    extend_confidence: float | None = None  # None: the manifest's (ichseg.z_continuity); = confidence: plain threshold
    iou: float = 0.6
    device: str | None = None
    precision: str = "auto"  # the segmenter's: bf16 autocast where native, else fp32
    rules: Path = BUNDLED_RULES
    save_mask: bool = False
    head_check: bool = True
    merge: str = DEFAULT_MERGE
    guard: bool = True
    guard_hu: tuple[float, float] = BLOOD_HU
    guard_min_ml: float = MIN_COMPONENT_ML
    guard_margin_mm: float = CAVITY_MARGIN_MM
    calibrate: bool = True  # windowing and the guard's density rule follow the series' calibration (ichseg.calibration)
    follow_slices: int = FOLLOW_SLICES  # 0: guarded findings are not followed into slices without a box

    @classmethod
    def from_env(cls) -> Settings:
        iou = _fraction("ICH_IOU", cls.iou)
        return cls(
            confidence=_fraction("ICH_CONFIDENCE", cls.confidence),
            extend_confidence=_fraction("ICH_EXTEND_CONFIDENCE", cls.extend_confidence),
            iou=cls.iou if iou is None else iou,
            device=os.environ.get("ICH_DEVICE") or None,
            precision=_choice("ICH_PRECISION", PRECISIONS, cls.precision),
            rules=Path(os.environ.get("ICH_SELECTION_RULES") or cls.rules),
            save_mask=_switch("ICH_SAVE_MASK", cls.save_mask),
            head_check=_switch(head_ct.ENV_SWITCH, cls.head_check),
            merge=_choice("ICH_MERGE", MERGE_MODES, cls.merge),
            guard=_switch("ICH_GUARD", cls.guard),
            guard_hu=_hu_range("ICH_GUARD_HU", cls.guard_hu),
            guard_min_ml=_non_negative("ICH_GUARD_MIN_ML", cls.guard_min_ml),
            guard_margin_mm=_non_negative("ICH_GUARD_MARGIN_MM", cls.guard_margin_mm),
            calibrate=_switch("ICH_CALIBRATE", cls.calibrate),
            follow_slices=_count("ICH_FOLLOW_SLICES", cls.follow_slices),
        )

    def guard_options(self) -> GuardOptions:
        return GuardOptions(self.guard, self.guard_hu, self.guard_min_ml, self.guard_margin_mm)

    def follow_options(self) -> FollowOptions:
        return FollowOptions(self.follow_slices)


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


def _count(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()):
        raise SettingsError(f"{name}={text!r}: expected a whole number ≥ 0")
    return int(text)


def _hu_range(name: str, default: tuple[float, float]) -> tuple[float, float]:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        low, high = 1.0, 0.0
    if not (-1024.0 <= low < high <= 3071.0):
        raise SettingsError(f"{name}={text!r}: expected LOW,HIGH in HU with LOW < HIGH, e.g. 40,200")
    return low, high
