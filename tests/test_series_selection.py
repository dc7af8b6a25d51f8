"""Series selection on real DICOM: this app's rules format, the MONAI Deploy SDK's selector format, bad rules files.

``data/monai_deploy_sample_rules.json`` is ``Sample_Rules_Text`` copied verbatim from the MONAI Deploy App SDK 4.0.0,
``monai/deploy/operators/dicom_series_selector_operator.py`` (Apache-2.0), the example its
``DICOMSeriesSelectorOperator`` is tested with.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ichseg import cli
from ichseg.dicom_series import DicomInputError, group_series
from ichseg.series_selection import Condition, RulesError, SelectionRules, load_chosen_series, select_series

REPO = Path(__file__).resolve().parents[1]
BUNDLED_RULES = REPO / "series_selection_rules.json"
SDK_SAMPLE_RULES = Path(__file__).resolve().parent / "data" / "monai_deploy_sample_rules.json"

# Decoys beside the head CT, a few files each (never decoded unless chosen): what a PACS sends along.
DECOYS = {
    "bone": {"SeriesDescription": "Head 5mm Bone", "ConvolutionKernel": "BONE"},
    "reformat": {"SeriesDescription": "Head 1mm MPR", "ImageType": ["DERIVED", "SECONDARY", "AXIAL"],
                 "SliceThickness": "1"},
    "scout": {"SeriesDescription": "Scout", "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
              "ImageOrientationPatient": [0, 1, 0, 0, 0, -1]},
    "mr": {"SeriesDescription": "T1 axial", "Modality": "MR"},
}


@pytest.fixture(scope="module")
def study(positive_study: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The positive synthetic head CT plus decoy series made from copies of its first files with other headers."""
    folder = tmp_path_factory.mktemp("selection_study")
    shutil.copytree(positive_study / "ct", folder / "ct")
    headers = {path: pydicom.dcmread(path, stop_before_pixels=True) for path in (folder / "ct").glob("*.dcm")}
    sources = sorted(headers, key=lambda path: int(headers[path].InstanceNumber))  # decoys: 3 adjacent slices
    uids = {"ct": str(headers[sources[0]].SeriesInstanceUID)}
    for name, changes in DECOYS.items():
        uids[name] = generate_uid()
        (folder / name).mkdir()
        for source in sources[:3]:
            ds = pydicom.dcmread(source)
            ds.SeriesInstanceUID = uids[name]
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            for keyword, value in changes.items():
                setattr(ds, keyword, value)
            ds.save_as(folder / name / source.name)
    return {"folder": folder, "uids": uids, "slices": len(sources)}


def _write(tmp_path: Path, rules: object, name: str = "rules.json") -> Path:
    path = tmp_path / name
    path.write_text(rules if isinstance(rules, str) else json.dumps(rules))
    return path


def test_own_format_chooses_the_soft_tissue_head_ct(study: dict) -> None:
    uids = study["uids"]
    selection, series = load_chosen_series(study["folder"], SelectionRules.load(BUNDLED_RULES), head_check=True)
    assert selection.series_uid == series.series_uid == uids["ct"]
    assert series.hu.shape[0] == study["slices"]
    assert selection.reason.startswith(
        "meets all required rules (modality is CT, not a localizer (scout), axial slices)"
    )
    assert "head CT check" in selection.reason
    rejected = selection.rejected
    assert "fails modality is CT" in rejected[uids["mr"]]
    assert "fails not a localizer (scout), axial slices" in rejected[uids["scout"]]
    assert "below the chosen series on 'soft-tissue reconstruction kernel'" in rejected[uids["bone"]]
    assert "below the chosen series on 'original (not derived) images'" in rejected[uids["reformat"]]


def test_sdk_sample_rules_choose_the_head_ct(study: dict) -> None:
    """Selections 1 and 2 match nothing here; 'CT Series 3' matches the head CT and its bone-kernel twin, and the
    bundled preferences (soft-tissue kernel first) decide between them."""
    uids = study["uids"]
    rules = SelectionRules.load(SDK_SAMPLE_RULES, preferences_from=BUNDLED_RULES)
    assert [c.name for c in rules.criteria] == [f"CT Series {i}" for i in range(1, 6)]
    selection, series = load_chosen_series(study["folder"], rules, head_check=False)
    assert selection.series_uid == series.series_uid == uids["ct"]
    assert selection.reason.startswith("meets selection 'CT Series 3' of monai_deploy_sample_rules.json (")
    assert "('CT Series 1', 'CT Series 2' matched none)" in selection.reason
    assert "SliceThickness in [3, 5]" in selection.reason and "soft-tissue reconstruction kernel" in selection.reason
    rejected = selection.rejected
    assert "candidate, ranked below the chosen series on 'soft-tissue reconstruction kernel'" in rejected[uids["bone"]]
    assert ("ImageType has PRIMARY, ORIGINAL, AXIAL (ImageType is 'DERIVED\\\\SECONDARY\\\\AXIAL')"
            in rejected[uids["reformat"]])
    assert "SliceThickness in [3, 5] (SliceThickness is '1')" in rejected[uids["reformat"]]
    assert "Modality matches '(?i)CT' (Modality is 'MR')" in rejected[uids["mr"]]


def test_sdk_file_without_preferences_takes_the_first_match(study: dict) -> None:
    """No 'preferred' list and no preferences_from: as the SDK, any series meeting the selection will do."""
    selection = select_series(group_series(study["folder"]), SelectionRules.load(SDK_SAMPLE_RULES), study["folder"])
    assert selection.series_uid in {study["uids"]["ct"], study["uids"]["bone"]}
    assert selection.reason.endswith("preferred: none")


def test_sdk_reader_agrees_with_the_sdk_operator(study: dict) -> None:
    """Per selection of the SDK's sample rules, the series our reader matches are those the SDK's operator matches."""
    pytest.importorskip("monai.deploy")
    from monai.deploy.core import Fragment
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
    from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

    fragment = Fragment()
    studies = DICOMDataLoaderOperator(fragment, name="loader").load_data_to_studies(Path(study["folder"]))
    sdk_rules = json.loads(SDK_SAMPLE_RULES.read_text())
    chosen = DICOMSeriesSelectorOperator(fragment, name="selector").filter(sdk_rules, studies, all_matched=True)
    sdk = {name: {str(s.series.SeriesInstanceUID) for s in selected}
           for name, selected in chosen[0].series_by_selection_name.items()}
    groups = group_series(study["folder"])
    ours = {}
    for criteria in SelectionRules.load(SDK_SAMPLE_RULES).criteria:
        matched = {uid for uid, entries in groups.items() if not criteria.failures(entries[0][1])}
        if matched:
            ours[criteria.name] = matched
    uids = study["uids"]
    assert ours == sdk
    assert ours["CT Series 3"] == {uids["ct"], uids["bone"]}
    assert ours["CT Series 4"] == {uids["mr"]}
    assert ours["CT Series 5"] == {uids["ct"], uids["bone"], uids["scout"]}


def test_sdk_condition_matching_nothing_names_the_rules_file(study: dict, tmp_path: Path) -> None:
    path = _write(tmp_path, {"selections": [
        {"name": "abdomen CT", "conditions": {"Modality": "CT", "BodyPartExamined": "(?i)abdomen"}},
        {"name": "thin CT", "conditions": {"Modality": "CT", "SliceThickness": [0, 0.75]}},
    ]})
    with pytest.raises(DicomInputError) as refused:
        load_chosen_series(study["folder"], SelectionRules.load(path), head_check=False)
    message = str(refused.value)
    assert f"no series meets the selection rules of {path}" in message
    assert "selection 'abdomen CT' [BodyPartExamined matches '(?i)abdomen' (BodyPartExamined is 'HEAD')]" in message
    assert "selection 'thin CT' [SliceThickness in [0, 0.75] (SliceThickness is '5')]" in message
    assert all(uid in message for uid in study["uids"].values()), "every series is accounted for"


HEADER = {"Modality": "CT", "SeriesDescription": "Head 5mm Standard", "SliceThickness": "5",
          "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}


@pytest.mark.parametrize("keyword, value, holds", [
    ("Modality", "ct", True),  # equal, ignoring case
    ("SeriesDescription", "(?i)^head", True),  # regular expression searched
    ("SeriesDescription", "bone", False),
    ("SliceThickness", [3, 5], True),  # inclusive range
    ("SliceThickness", [2, ">"], True),
    ("SliceThickness", [5, "<"], False),
    ("SliceThickness", [5, "!="], False),
    ("SliceThickness", 5, True),
    ("SliceThickness", "5(\\.0)?", True),  # regular expression over the whole value
    ("SliceThickness", "[0-4]", False),
    ("ImageType", ["primary", "ORIGINAL"], True),  # values present, ignoring case
    ("ImageType", ["PRIMARY", "!SECONDARY"], True),
    ("ImageType", ["PRIMARY", "!AXIAL"], False),
    ("ImageType", "AXIAL", True),
    ("ImageType", "AX", False),  # whole values (the SDK would search substrings)
    ("ImageOrientationPatient", "Axial", True),
    ("ImageOrientationPatient", "sagittal", False),
    ("BodyPartExamined", "HEAD", False),  # absent attribute: no match
])
def test_sdk_condition_semantics(keyword: str, value: object, holds: bool) -> None:
    header = Dataset()
    for name, item in HEADER.items():
        setattr(header, name, item)
    assert Condition.parse(keyword, value, "rules.json").holds(header) is holds


def test_empty_sdk_condition_is_ignored(tmp_path: Path) -> None:
    """As in the SDK, a condition with an empty value ("", [], null, 0) does not take part."""
    path = _write(tmp_path, {"selections": [{"name": "any", "conditions": {"Modality": "CT", "BodyPartExamined": ""}}]})
    (criteria,) = SelectionRules.load(path).criteria
    assert [test.name for test in criteria.tests] == ["Modality matches 'CT'"]


MALFORMED = {
    "not JSON": ("selections: CT", "are not valid JSON"),
    "wrong top-level type": ('[{"name": "CT", "conditions": {"Modality": "CT"}}]',
                             "expected a JSON object with 'required'"),
    "neither format": ({"rules": []}, "expected exactly one of 'required'"),
    "both formats": ({"required": [], "selections": []}, "expected exactly one of 'required'"),
    "unknown top-level key": ({"selections": [{"name": "a", "conditions": {"Modality": "CT"}}], "all_matched": True},
                              "unknown key(s) 'all_matched'"),
    "unknown selection key": ({"selections": [{"name": "a", "condition": {"Modality": "CT"}}]},
                              "selection 'a': unknown key(s) 'condition'"),
    "unknown keyword": ({"selections": [{"name": "a", "conditions": {"Modalty": "CT"}}]},
                        "'Modalty' is not a DICOM attribute keyword"),
    "unknown rule key": ({"required": [{"rule": "CT", "keyword": "Modality", "equals": "CT", "optional": True}]},
                         "rule 'CT': unknown key(s) 'optional'"),
    "bad regex (SDK format)": ({"selections": [{"name": "a", "conditions": {"SeriesDescription": "(head"}}]},
                               "selection 'a': condition 'SeriesDescription': bad regular expression '(head'"),
    "bad regex (own format)": ({"required": [{"rule": "kernel", "keyword": "ConvolutionKernel", "matches": "[a-"}]},
                               "rule 'kernel': bad regular expression '[a-'"),
    "selection without conditions": ({"selections": [{"name": "head CT"}]}, "selection 'head CT': needs 'conditions'"),
    "selection with empty conditions": ({"selections": [{"name": "head CT", "conditions": {}}]},
                                        "selection 'head CT': needs 'conditions'"),
    "no selections": ({"selections": []}, "'selections' is empty"),
    "bad operator": ({"selections": [{"name": "a", "conditions": {"SliceThickness": [2, "=>"]}}]},
                     "condition 'SliceThickness': operator '=>' is not one of"),
    "bad orientation": ({"selections": [{"name": "a", "conditions": {"ImageOrientationPatient": "oblique"}}]},
                        "expected one of Axial, Coronal, Sagittal"),
    "object as a value": ({"selections": [{"name": "a", "conditions": {"Modality": {"is": "CT"}}}]},
                          "is not a string, a number or a list of them"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_rules_file_is_refused_naming_file_and_problem(case: str, tmp_path: Path) -> None:
    content, problem = MALFORMED[case]
    path = _write(tmp_path, content)
    with pytest.raises(RulesError) as refused:
        SelectionRules.load(path)
    assert str(refused.value).startswith(f"{path}: "), str(refused.value)
    assert problem in str(refused.value)


def test_missing_rules_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="unreadable"):
        SelectionRules.load(tmp_path / "missing.json")


def test_app_exits_with_usage_status_on_a_malformed_rules_file(
    positive_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """``python app.py -i STUDY -o OUT -m models`` with ICH_SELECTION_RULES naming a bad file: exit 2 before any
    DICOM is read, the log names the file and the problem, nothing is written."""
    from test_app import MODELS, nothing_written, run_app

    path = _write(tmp_path, {"selections": [{"name": "head CT"}]}, name="sdk_rules.json")
    monkeypatch.setenv("ICH_SELECTION_RULES", str(path))
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo_config"))
    assert run_app(positive_study / "ct", tmp_path / "out", models=MODELS) == cli.EXIT_USAGE
    assert f"{path}: selection 'head CT': needs 'conditions'" in capfd.readouterr().err
    assert nothing_written(tmp_path / "out"), "nothing written"
