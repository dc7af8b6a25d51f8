"""Source operator: pick one CT series from the input folder by readable JSON rules and load it as HU.

Why not the SDK's ``DICOMDataLoaderOperator`` + ``DICOMSeriesSelectorOperator``: the loader's default input
folder is fixed when the module is imported, it skips unreadable files with only a warning (a dropped slice
would leave a silent gap in the SEG), it reads every pixel of every series, and the selector takes the first
match rather than ranking candidates. Here ``ichseg.dicom_series`` refuses corrupt files, missing slices and
bad geometry with a message naming the file, only the chosen series is decoded, and the log says which
series was chosen and why each other one was not.

Only head CT is segmented (``ichseg.head_ct``): series whose BodyPartExamined names another body region are
not candidates, and the chosen series must show a skull ring around brain at head size, or the input is
refused. ``ICH_HEAD_CHECK=0`` (or ``head_check=False``) skips both.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ichseg import head_ct
from ichseg.dicom_series import CTSeries, DicomInputError, group_series, load_series, slice_normal
from monai.deploy.core import Fragment, Operator, OperatorSpec
from operators.stage import StageClock

logger = logging.getLogger("ichseg.app")

TESTS = ("equals", "includes", "excludes", "matches", "orientation", "most")
ORIENTATIONS = ("sagittal", "coronal", "axial")  # the slice normal's dominant axis: x, y, z


class RulesError(ValueError):
    """The selection rules file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Rule:
    """One test on the header of a series' first file (``most`` ranks by slice count instead)."""

    name: str
    test: str
    value: str
    keyword: str = ""

    @classmethod
    def parse(cls, item: dict[str, Any], source: Path) -> "Rule":
        tests = [t for t in TESTS if t in item]
        if "rule" not in item or len(tests) != 1 or (tests[0] != "most" and "keyword" not in item):
            raise RulesError(f"{source}: rule {item} needs 'rule', 'keyword' and exactly one of {', '.join(TESTS)}")
        rule = cls(str(item["rule"]), tests[0], str(item[tests[0]]), str(item.get("keyword", "")))
        if rule.test == "orientation" and rule.value.lower() not in ORIENTATIONS:
            raise RulesError(f"{source}: rule {rule.name!r}: orientation must be one of {', '.join(ORIENTATIONS)}")
        if rule.test == "matches":
            try:
                re.compile(rule.value)
            except re.error as error:
                raise RulesError(f"{source}: rule {rule.name!r}: bad regular expression ({error})") from error
        return rule

    def holds(self, header: Dataset) -> bool:
        if self.test == "orientation":
            return _orientation(header) == self.value.lower()
        value = header.get(self.keyword)
        if value is None:
            return self.test == "excludes"
        values = [str(v).strip() for v in (value if isinstance(value, (MultiValue, list, tuple)) else [value])]
        upper = [v.upper() for v in values]
        if self.test == "equals":
            return upper == [self.value.upper()]
        if self.test == "includes":
            return self.value.upper() in upper
        if self.test == "excludes":
            return self.value.upper() not in upper
        if self.test == "matches":
            return re.search(self.value, "\\".join(values)) is not None
        raise RulesError(f"rule {self.name!r}: {self.test!r} is not a header test")


def _orientation(header: Dataset) -> str:
    """'axial', 'coronal' or 'sagittal' by the dominant axis of the slice normal (as the SDK's selector)."""
    try:
        normal = slice_normal(np.asarray([float(v) for v in header.ImageOrientationPatient], dtype=float))
    except (AttributeError, TypeError, ValueError):
        return "unknown"
    return ORIENTATIONS[int(np.argmax(np.abs(normal)))]


@dataclass(frozen=True)
class SelectionRules:
    required: list[Rule]
    preferred: list[Rule]

    @classmethod
    def load(cls, path: Path) -> "SelectionRules":
        try:
            data = json.loads(Path(path).read_text())
            required = [Rule.parse(item, path) for item in data["required"]]
            preferred = [Rule.parse(item, path) for item in data.get("preferred", [])]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise RulesError(f"{path}: series selection rules unreadable ({error!r})") from error
        if any(rule.test == "most" for rule in required):
            raise RulesError(f"{path}: 'most' ranks candidates; it belongs under 'preferred'")
        return cls(required, preferred)

    def rank(self, header: Dataset, slices: int) -> tuple[int, ...]:
        """Sort key of a candidate: one entry per preferred rule, larger is better."""
        return tuple(slices if rule.test == "most" else int(rule.holds(header)) for rule in self.preferred)


@dataclass
class Selection:
    """Which series was chosen and why; every other series with the reason it was not."""

    series_uid: str
    description: str
    reason: str
    rejected: dict[str, str] = field(default_factory=dict)


def _describe(entries: list[tuple[Path, Dataset]]) -> str:
    header = entries[0][1]
    return f"'{header.get('SeriesDescription', '')}' ({header.get('Modality', '?')}, {len(entries)} files)"


def select_series(groups: dict[str, list[tuple[Path, Dataset]]], rules: SelectionRules, folder: Path) -> Selection:
    """The best candidate series by ``rules``, or DicomInputError listing why each series was rejected."""
    rejected: dict[str, str] = {}
    candidates = []
    for uid, entries in groups.items():
        failed = [rule.name for rule in rules.required if not rule.holds(entries[0][1])]
        if failed:
            rejected[uid] = f"{_describe(entries)}: fails {', '.join(failed)}"
        else:
            candidates.append(uid)
    if not candidates:
        details = "; ".join(f"series {uid} {reason}" for uid, reason in rejected.items())
        raise DicomInputError(f"{folder}: no series meets the selection rules — {details}")
    keys = {uid: rules.rank(groups[uid][0][1], len(groups[uid])) for uid in candidates}
    ranked = sorted(candidates, key=lambda uid: keys[uid], reverse=True)
    chosen = ranked[0]
    for uid in ranked[1:]:
        index = next((i for i, (a, b) in enumerate(zip(keys[chosen], keys[uid])) if a != b), None)
        why = f"below the chosen series on '{rules.preferred[index].name}'" if index is not None else "tied; the series found first was taken"
        rejected[uid] = f"{_describe(groups[uid])}: candidate, ranked {why}"
    met = [rule.name if rule.test != "most" else f"{len(groups[chosen])} slices" for rule, k in zip(rules.preferred, keys[chosen]) if k]
    reason = f"meets all required rules ({', '.join(r.name for r in rules.required)}); preferred: {', '.join(met) or 'none'}"
    return Selection(chosen, _describe(groups[chosen]), reason, rejected)


def load_chosen_series(
    folder: Path, rules: SelectionRules, head_check: bool = True, clock: StageClock | None = None
) -> tuple[Selection, CTSeries]:
    """The series ``rules`` choose among the head-CT candidates, loaded as HU and checked to be a head CT.

    DicomInputError (``head_ct.NotHeadCTError`` when the input is not a head CT) names the series, the folder
    and the reason. ``head_check=False`` skips the BodyPartExamined filter and the image check.
    """
    clock = clock or StageClock()
    with clock.stage("load DICOM series"):
        groups = group_series(folder)
        refused = {}
        if head_check:
            for uid, entries in groups.items():
                why = head_ct.body_part_refusal(entries[0][1])
                if why:
                    refused[uid] = f"{_describe(entries)}: {why}"
        candidates = {uid: entries for uid, entries in groups.items() if uid not in refused}
        details = "; ".join(f"series {uid} {why}" for uid, why in refused.items())
        if not candidates:
            raise head_ct.NotHeadCTError(f"{folder}: {details} — {head_ct.SKIP_HINT}")
        try:
            selection = select_series(candidates, rules, folder)
        except DicomInputError as error:
            if not refused:
                raise
            raise DicomInputError(f"{error}; {details}") from error
        selection.rejected.update(refused)
        logger.info("chosen series %s %s: %s", selection.series_uid, selection.description, selection.reason)
        for uid, reason in selection.rejected.items():
            logger.info("not chosen: series %s %s", uid, reason)
        series = load_series(groups[selection.series_uid])
        logger.info(
            "%d slices of %dx%d, pixel spacing %.3f x %.3f mm, slice spacing %.2f mm",
            *series.hu.shape, *series.pixel_spacing, series.slice_spacing,
        )
    if not head_check:
        logger.warning("head CT check skipped (%s=0): the series is segmented whatever it shows", head_ct.ENV_SWITCH)
        return selection, series
    with clock.stage("head CT check"):
        where = f"series {selection.series_uid} {selection.description} in {series.files[0].parent}"
        result = head_ct.check_series(series, where)
        logger.info("head CT check: %s", result.summary())
        selection.reason += f"; head CT check: {result.summary()}"
    return selection, series


class CTSeriesLoaderOperator(Operator):
    """Input folder → ``series`` (ichseg CTSeries, HU sorted along the normal) and ``selection`` (why it).

    ``head_check``: refuse input that is not a head CT (default: ``ICH_HEAD_CHECK``, on unless 0).
    """

    def __init__(self, fragment: Fragment, *args: Any, input_folder: Path, rules_path: Path, clock: StageClock,
                 head_check: bool | None = None, **kwargs: Any):
        self.input_folder = Path(input_folder)
        self.rules = SelectionRules.load(rules_path)
        self.clock = clock
        if head_check is None:
            try:
                head_check = head_ct.enabled()
            except ValueError as error:  # a usage error (exit 2), like a bad rules file
                raise RulesError(str(error)) from error
        self.head_check = head_check
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("series")
        spec.output("selection")

    def compute(self, op_input, op_output, context) -> None:
        selection, series = load_chosen_series(self.input_folder, self.rules, self.head_check, self.clock)
        op_output.emit(series, "series")
        op_output.emit(selection, "selection")
