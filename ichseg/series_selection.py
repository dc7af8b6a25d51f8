"""Which series of the input folder to segment: rules an integrator can read and edit, and the choice explained.

A study routed to the app often holds several series (scout, bone and soft-tissue kernels, reformats, other
modalities). Segmenting the wrong one gives a wrong answer without any error, so the choice follows a JSON rules
file, and the log and the report say why the chosen series was taken and why each other one was not. A series
sent as one multi-frame image (Enhanced CT) is tested on its first frame's header (functional groups flattened,
``dicom_series.FrameHeader``), and its frames count as its slices.

Two rules-file formats are read; the top-level key tells them apart:

* this application's (``series_selection_rules.json``): every ``required`` rule must hold for a series to be a
  candidate; the ``preferred`` rules then rank the candidates (a later rule only breaks ties of the earlier ones).
* the MONAI Deploy App SDK's ``DICOMSeriesSelectorOperator`` format, ``{"selections": [{"name": ...,
  "conditions": {KEYWORD: VALUE, ...}}]}``, so that integrators can reuse the selection files they keep. The
  selections are tried in order and the first one that some series meets decides, as in the SDK; among the
  series it matches, the ``preferred`` rules rank (the file's own ``preferred`` list in this app's rule syntax,
  which the SDK ignores, else the preferences passed as ``preferences_from``). Conditions are evaluated here with
  the SDK's documented semantics (this package does not import monai.deploy); see ``Condition``.

A malformed file raises ``RulesError`` naming the file and the problem when it is loaded, before any DICOM is read.
"""

from __future__ import annotations

import json
import logging
import operator
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ichseg import head_ct
from ichseg.dicom_series import CTSeries, DicomInputError, group_series, load_series, slice_normal

logger = logging.getLogger(__name__)

# The app's rules (CT, axial, not a localizer; then soft-tissue kernel, original images, most slices); their
# preferences also rank the series an SDK-format file matches when that file brings no 'preferred' list of its own.
BUNDLED_RULES = Path(__file__).resolve().parents[1] / "series_selection_rules.json"
TESTS = ("equals", "includes", "excludes", "matches", "orientation", "most")
ORIENTATIONS = ("sagittal", "coronal", "axial")  # the slice normal's dominant axis: x, y, z
OWN_KEYS = ("description", "required", "preferred")
SDK_KEYS = ("description", "selections", "preferred")  # 'description' and 'preferred' are ignored by the SDK
SELECTION_KEYS = ("name", "conditions")
RULE_KEYS = ("rule", "keyword", *TESTS)
NUMERIC_VRS = {"DS", "IS", "FL", "FD", "US", "SS", "UL", "SL", "UV", "SV"}
UNMATCHABLE_VRS = {"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"}  # sequences and binary data
RELATIONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "!=": operator.ne,
}


class RulesError(ValueError):
    """The selection rules file is missing or malformed; the message names the file and the problem."""


class SeriesTest(Protocol):
    """A test on the header of a series' first file: this format's ``Rule`` or an SDK ``Condition``."""

    @property
    def name(self) -> str: ...  # read-only: both implementations are frozen dataclasses

    def holds(self, header: Dataset) -> bool: ...

    def why_not(self, header: Dataset) -> str | None: ...


def _keyword_tag(keyword: str, where: str) -> int:
    """The keyword's tag; RulesError for a misspelt keyword (it would silently never match)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise RulesError(f"{where}: {keyword!r} is not a DICOM attribute keyword")
    return tag


@dataclass(frozen=True)
class Rule:
    """One test of this application's format on the header of a series' first file (``most`` ranks by slices)."""

    name: str
    test: str
    value: str
    keyword: str = ""

    @classmethod
    def parse(cls, item: Any, source: Path) -> Rule:
        if not isinstance(item, dict):
            raise RulesError(f"{source}: rule {json.dumps(item)} must be a JSON object")
        tests = [t for t in TESTS if t in item]
        if "rule" not in item or len(tests) != 1 or (tests[0] != "most" and "keyword" not in item):
            raise RulesError(f"{source}: rule {item} needs 'rule', 'keyword' and exactly one of {', '.join(TESTS)}")
        unknown = sorted(set(item) - set(RULE_KEYS))
        if unknown:
            raise RulesError(f"{source}: rule {item['rule']!r}: unknown key(s) {', '.join(map(repr, unknown))}")
        rule = cls(str(item["rule"]), tests[0], str(item[tests[0]]), str(item.get("keyword", "")))
        if rule.test != "most":
            _keyword_tag(rule.keyword, f"{source}: rule {rule.name!r}")
        if rule.test == "orientation" and rule.value.lower() not in ORIENTATIONS:
            raise RulesError(f"{source}: rule {rule.name!r}: orientation must be one of {', '.join(ORIENTATIONS)}")
        if rule.test == "matches":
            _compile(rule.value, f"{source}: rule {rule.name!r}")
        return rule

    def holds(self, header: Dataset) -> bool:
        if self.test == "orientation":
            return _orientation(header) == self.value.lower()
        values = _values(header.get(self.keyword))
        if values is None:
            return self.test == "excludes"
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

    def why_not(self, header: Dataset) -> str | None:
        return None if self.holds(header) else self.name


@dataclass(frozen=True)
class Condition:
    """One condition of an SDK-format selection, with the semantics of the SDK's ``DICOMSeriesSelectorOperator``.

    Chosen by the attribute's DICOM dictionary entry (the SDK decides by the value's Python type, which for an
    attribute of the first file comes from the same VR and VM):

    * ``ImageOrientationPatient``: "Axial", "Coronal" or "Sagittal" (any case), the slice normal's dominant axis.
    * numbers (VR DS, IS, FL, ... with VM 1): a number (equal), ``[min, max]`` (inclusive), ``[value, op]`` with
      op one of ``> >= < <= !=``, or a string (regular expression matching the whole value).
    * other single values: a string matches when equal ignoring case, else when the regular expression is found
      anywhere in the value, ignoring case.
    * multi-valued attributes (ImageType ...): a string or a list of strings, each a value that must be present,
      or absent when written with a leading ``!`` (ignoring case).

    A series without the attribute (or with an empty value) fails the condition; a condition whose value is
    empty (``""``, ``[]``, ``null``, ``0``) is ignored, as by the SDK. Differences from the SDK: terms of
    multi-valued attributes are compared as whole values (the SDK searches them as substrings of the printed
    list, so "AXIAL" would also match "AXIAL_MPR"); a list given for a single text value is compared like a
    one-valued set (the SDK raises); PatientPosition is not required for the orientation test; and what the SDK
    would fail on while selecting (an unknown operator, a bad regular expression, an unsupported value type) is
    refused when the file is loaded, as are keywords that are not DICOM keywords (they would never match).
    """

    keyword: str
    kind: str  # "orientation", "number" or "text"
    value: Any  # orientation: str; number: (mode, *args); text: a regular expression, or a tuple of terms
    name: str

    @classmethod
    def parse(cls, keyword: str, value: Any, where: str) -> Condition:
        where = f"{where}: condition {keyword!r}"
        tag = _keyword_tag(keyword, where)
        vr = dictionary_VR(tag)
        single = dictionary_VM(tag) == "1"
        if vr in UNMATCHABLE_VRS:
            raise RulesError(f"{where}: attributes of VR {vr} cannot be matched")
        items = value if isinstance(value, list) else [value]
        scalars = all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items)
        if isinstance(value, dict) or not scalars:
            raise RulesError(f"{where}: {json.dumps(value)} is not a string, a number or a list of them")
        if keyword == "ImageOrientationPatient":
            if not isinstance(value, str) or value.strip().lower() not in ORIENTATIONS:
                raise RulesError(f"{where}: expected one of Axial, Coronal, Sagittal, not {json.dumps(value)}")
            return cls(keyword, "orientation", value.strip().lower(), f"{keyword} is {value.strip().lower()}")
        if vr in NUMERIC_VRS and single:
            return cls._number(keyword, value, where)
        if isinstance(value, str) and single:
            _compile(value, where)
            return cls(keyword, "text", value, f"{keyword} matches {value!r}")
        terms = tuple(str(v).strip() for v in items)  # values that must be present, or absent with a leading '!'
        wanted = ", ".join(t for t in terms if not t.startswith("!"))
        unwanted = ", ".join(t[1:] for t in terms if t.startswith("!"))
        shown = "; ".join(part for part in (wanted and f"has {wanted}", unwanted and f"lacks {unwanted}") if part)
        return cls(keyword, "text", terms, f"{keyword} {shown}")

    @classmethod
    def _number(cls, keyword: str, value: Any, where: str) -> Condition:
        if isinstance(value, (int, float)):
            return cls(keyword, "number", ("=", float(value)), f"{keyword} = {value:g}")
        if isinstance(value, str):
            _compile(value, where)
            return cls(keyword, "number", ("~", value), f"{keyword} matches {value!r} (whole value)")
        if len(value) == 2 and isinstance(value[1], str):
            if value[1] not in RELATIONS:
                raise RulesError(f"{where}: operator {value[1]!r} is not one of {', '.join(RELATIONS)}")
            try:
                bound = float(value[0])
            except ValueError:
                raise RulesError(f"{where}: {value[0]!r} is not a number") from None
            return cls(keyword, "number", (value[1], bound), f"{keyword} {value[1]} {bound:g}")
        if len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            low, high = (float(v) for v in value)
            if low > high:
                raise RulesError(f"{where}: range {json.dumps(value)} is empty (min above max)")
            return cls(keyword, "number", ("in", low, high), f"{keyword} in [{low:g}, {high:g}]")
        raise RulesError(f"{where}: expected a number, a regular expression, [min, max] or [value, operator], "
                         f"not {json.dumps(value)}")

    def holds(self, header: Dataset) -> bool:
        if self.kind == "orientation":
            return _orientation(header) == self.value
        raw = header.get(self.keyword)
        values = _values(raw)
        if not values:
            return False
        if self.kind == "number":
            mode, *args = self.value
            if mode == "~":
                return re.fullmatch(args[0], values[0]) is not None
            try:
                number = float(raw)
            except (TypeError, ValueError):
                return False
            if mode == "=":
                return number == args[0]
            if mode == "in":
                return args[0] <= number <= args[1]
            return RELATIONS[mode](number, args[0])
        if isinstance(self.value, str):  # a single text value
            return (values[0].casefold() == self.value.casefold()
                    or re.search(self.value, values[0], re.IGNORECASE) is not None)
        present = {v.casefold() for v in values}
        return all(
            t[1:].casefold() not in present if t.startswith("!") else t.casefold() in present for t in self.value
        )

    def why_not(self, header: Dataset) -> str | None:
        if self.holds(header):
            return None
        if self.kind == "orientation":
            return f"{self.name} (slices are {_orientation(header)})"
        values = _values(header.get(self.keyword))
        shown = "\\".join(values or [])
        return f"{self.name} ({self.keyword} is {shown!r})" if values else f"{self.name} ({self.keyword} absent)"


def _compile(pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as error:
        raise RulesError(f"{where}: bad regular expression {pattern!r} ({error})") from error


def _values(value: Any) -> list[str] | None:
    """An attribute's values as stripped strings; None when absent, [] when present but empty."""
    if value is None:
        return None
    values = value if isinstance(value, (MultiValue, list, tuple)) else [value]
    return [text for text in (str(v).strip() for v in values) if text]


def _orientation(header: Dataset) -> str:
    """'axial', 'coronal' or 'sagittal' by the dominant axis of the slice normal (as the SDK's selector)."""
    try:
        normal = slice_normal(np.asarray([float(v) for v in header.ImageOrientationPatient], dtype=float))
    except (AttributeError, TypeError, ValueError):
        return "unknown"
    return ORIENTATIONS[int(np.argmax(np.abs(normal)))]


@dataclass(frozen=True)
class Criteria:
    """What makes a series a candidate: this format's 'required' rules, or one SDK 'selection'."""

    name: str
    tests: tuple[SeriesTest, ...]

    def failures(self, header: Dataset) -> list[str]:
        return [why for test in self.tests if (why := test.why_not(header))]


@dataclass(frozen=True)
class SelectionRules:
    """A loaded rules file: candidate criteria tried in order, then preferences that rank the candidates."""

    source: Path
    criteria: tuple[Criteria, ...]
    preferred: tuple[Rule, ...]
    sdk_format: bool = False

    @classmethod
    def load(cls, path: Path, preferences_from: Path | None = None) -> SelectionRules:
        """Read either format; ``preferences_from``: rules whose preferences rank an SDK file's matches
        when that file has no 'preferred' list of its own (without it, the first series found is taken)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as error:
            raise RulesError(f"{path}: series selection rules unreadable ({error})") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RulesError(f"{path}: series selection rules are not valid JSON ({error})") from error
        formats = "'required' (this application's format) or 'selections' (MONAI Deploy SDK format)"
        if not isinstance(data, dict):
            raise RulesError(f"{path}: expected a JSON object with {formats}, found a JSON {type(data).__name__}")
        if ("required" in data) == ("selections" in data):
            raise RulesError(
                f"{path}: expected exactly one of {formats}, found keys {', '.join(map(repr, data)) or 'none'}"
            )
        sdk = "selections" in data
        allowed = SDK_KEYS if sdk else OWN_KEYS
        unknown = [key for key in data if key not in allowed]
        if unknown:
            raise RulesError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; "
                             f"this format has {', '.join(map(repr, allowed))}")
        preferred = tuple(Rule.parse(item, path) for item in _list(data, "preferred", path))
        if not sdk:
            required_rules = tuple(Rule.parse(item, path) for item in _list(data, "required", path))
            required = Criteria("required rules", required_rules)
            if any(rule.test == "most" for rule in required_rules):
                raise RulesError(f"{path}: 'most' ranks candidates; it belongs under 'preferred'")
            return cls(path, (required,), preferred)
        if "preferred" not in data and preferences_from is not None:
            preferred = cls.load(preferences_from).preferred
        return cls(path, _sdk_criteria(data, path), preferred, sdk_format=True)

    def rank(self, header: Dataset, slices: int) -> tuple[int, ...]:
        """Sort key of a candidate: one entry per preferred rule, larger is better."""
        return tuple(slices if rule.test == "most" else int(rule.holds(header)) for rule in self.preferred)


def _list(data: dict[str, Any], key: str, path: Path) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise RulesError(f"{path}: {key!r} must be a JSON list, not {json.dumps(value)[:80]}")
    return value


def _sdk_criteria(data: dict[str, Any], path: Path) -> tuple[Criteria, ...]:
    selections = _list(data, "selections", path)
    if not selections:
        raise RulesError(f"{path}: 'selections' is empty; the SDK format needs at least one selection")
    criteria = []
    for number, selection in enumerate(selections, 1):
        if not isinstance(selection, dict):
            raise RulesError(f"{path}: selection {number} must be a JSON object with 'name' and 'conditions'")
        name = str(selection.get("name", "")).strip() or f"selection {number}"
        where = f"{path}: selection {name!r}"
        unknown = [key for key in selection if key not in SELECTION_KEYS]
        if unknown:
            raise RulesError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                             "a selection has 'name' and 'conditions'")
        conditions = selection.get("conditions")
        if not isinstance(conditions, dict) or not conditions:
            raise RulesError(f"{where}: needs 'conditions', a non-empty JSON object of DICOM keyword: value "
                             f"(the SDK skips such a selection silently)")
        tests = tuple(Condition.parse(keyword, value, where) for keyword, value in conditions.items() if value)
        criteria.append(Criteria(name, tests))
    return tuple(criteria)


@dataclass
class Selection:
    """Which series was chosen and why; every other series with the reason it was not."""

    series_uid: str
    description: str
    reason: str
    rejected: dict[str, str] = field(default_factory=dict)


def _describe(entries: list[tuple[Path, Dataset]]) -> str:
    """Description, modality and size; a multi-frame series counts its frames (one entry per frame)."""
    header = entries[0][1]
    files = len({path for path, _ in entries})
    size = f"{files} files" if files == len(entries) else f"{len(entries)} frames in {files} file(s)"
    return f"'{header.get('SeriesDescription', '')}' ({header.get('Modality', '?')}, {size})"


def _fails(rules: SelectionRules, failed: list[tuple[Criteria, list[str]]]) -> str:
    if not rules.sdk_format:
        return "fails " + "; ".join(", ".join(reasons) for _, reasons in failed)
    return "fails " + ", ".join(f"selection {criteria.name!r} [{', '.join(reasons)}]" for criteria, reasons in failed)


def select_series(groups: dict[str, list[tuple[Path, Dataset]]], rules: SelectionRules, folder: Path) -> Selection:
    """The best candidate series by ``rules``, or DicomInputError listing why each series was rejected."""
    history: dict[str, list[tuple[Criteria, list[str]]]] = {uid: [] for uid in groups}
    for index, criteria in enumerate(rules.criteria):
        failed = {uid: criteria.failures(entries[0][1]) for uid, entries in groups.items()}
        candidates = [uid for uid, reasons in failed.items() if not reasons]
        if candidates:
            matched_at = index
            break
        for uid, reasons in failed.items():
            history[uid].append((criteria, reasons))
    else:
        details = "; ".join(f"series {uid} {_describe(groups[uid])}: {_fails(rules, history[uid])}" for uid in groups)
        raise DicomInputError(f"{folder}: no series meets the selection rules of {rules.source} — {details}")
    rejected = {
        uid: f"{_describe(groups[uid])}: {_fails(rules, [(criteria, reasons)])}"
        for uid, reasons in failed.items() if reasons
    }
    keys = {uid: rules.rank(groups[uid][0][1], len(groups[uid])) for uid in candidates}
    ranked = sorted(candidates, key=lambda uid: keys[uid], reverse=True)
    chosen = ranked[0]
    for uid in ranked[1:]:
        pairs = enumerate(zip(keys[chosen], keys[uid], strict=True))
        index_differing = next((i for i, (a, b) in pairs if a != b), None)
        why = (f"below the chosen series on '{rules.preferred[index_differing].name}'" if index_differing is not None
               else "tied; the series found first was taken")
        rejected[uid] = f"{_describe(groups[uid])}: candidate, ranked {why}"
    met = [
        rule.name if rule.test != "most" else f"{len(groups[chosen])} slices"
        for rule, k in zip(rules.preferred, keys[chosen], strict=True) if k
    ]
    names = ", ".join(test.name for test in criteria.tests)
    if rules.sdk_format:
        earlier = ", ".join(repr(c.name) for c in rules.criteria[:matched_at])
        reason = f"meets selection {criteria.name!r} of {rules.source.name} ({names})"
        reason += f", the first to match a series ({earlier} matched none)" if earlier else ""
    else:
        reason = f"meets all required rules ({names})"
    return Selection(chosen, _describe(groups[chosen]), f"{reason}; preferred: {', '.join(met) or 'none'}", rejected)


def load_chosen_series(
    folder: Path, rules: SelectionRules, head_check: bool = True,
    stage: Callable[[str], AbstractContextManager[Any]] | None = None,
) -> tuple[Selection, CTSeries]:
    """The series ``rules`` choose among the head-CT candidates, loaded as HU and checked to be a head CT.

    DicomInputError (``head_ct.NotHeadCTError`` when the input is not a head CT) names the series, the folder
    and the reason. ``head_check=False`` skips the BodyPartExamined filter and the image check. ``stage``
    (e.g. the app's ``StageClock.stage``) times the two steps, "load DICOM series" and "head CT check".
    """
    stage = stage or (lambda name: nullcontext())
    with stage("load DICOM series"):
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
    with stage("head CT check"):
        where = f"series {selection.series_uid} {selection.description} in {series.files[0].parent}"
        result = head_ct.check_series(series, where)
        logger.info("head CT check: %s", result.summary())
        selection.reason += f"; head CT check: {result.summary()}"
    return selection, series
