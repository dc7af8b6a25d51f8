"""The evaluation (``evaluation.evaluate``, ``evaluation.guard_choice``) on a series that is not 512×512, with the
bundled models: a 256² study written by the synthetic generator. The detector must see the 512 grid and its boxes
come back on the source grid (the evaluation once handed source-grid slices to the 512-only detector)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from small_study import MATRIX, generated_study

from evaluation.by_box_size import BoxSizeRecall, box_overlaps
from evaluation.by_density import DensityScores
from evaluation.by_subtype import SubtypeScores, study_lesions
from evaluation.evaluate import (
    DetectionRecords,
    Models,
    Scores,
    StudyScore,
    add_study,
    parse_args,
    study_masks,
    wrong_studies,
)
from evaluation.evaluate import main as evaluate_main
from ichseg.blood_density import blood_contrast, density_class, slice_contrasts, slice_densities
from ichseg.follow import FOLLOW_SLICES, FollowOptions
from ichseg.guard import GuardOptions
from ichseg.labelled_study import Study, load_study
from ichseg.model_manifest import ModelManifest, portable_path
from ichseg.subtypes import SUBTYPES

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def data_folder(root: Path, study: Path, split: str) -> Path:
    """A data folder listing one study (linked in) under ``split``."""
    root.mkdir(parents=True)
    (root / study.name).symlink_to(study, target_is_directory=True)
    (root / "studies.csv").write_text(f"study_id,split\n{study.name},{split}\n")
    return root


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated_study(tmp_path_factory.mktemp("matrix") / f"small_{MATRIX}")


@pytest.fixture(scope="module")
def study(study_folder: Path) -> Study:
    return load_study(study_folder)


@pytest.fixture(scope="module")
def models(study_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Models:
    """The bundled detector and crop segmenter, loaded as ``evaluate`` loads them.

    At confidence 0.2, not the bundled operating point: these tests check where boxes land on a 256 series (scaled
    back from the detector's 512 grid), and detector v0.6.0 at its 0.4 boxes too few of this 8-slice phantom's slices
    (product slice Dice 0.08) to tell a misplaced box from a missing one. The operating point is measured by the
    evaluation and ``tests/test_bundled_models.py``.
    """
    with pytest.MonkeyPatch.context() as patch:  # ultralytics' config folder, unless imported already
        patch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo")))
        return Models.load(parse_args(["--data", str(study_folder.parent), "--detector", str(MODELS / "detector"),
                                       "--segmenter", str(MODELS / "segmenter"), "--confidence", "0.2"]))


def test_labelled_study_windows_both_grids(study: Study) -> None:
    assert study.series.hu.shape[1:] == (MATRIX, MATRIX) and study.labels.shape == study.series.hu.shape
    assert study.windowed.source.shape == study.labels.shape
    assert study.windowed.detector.shape == (len(study.labels), 512, 512)
    positive = (study.labels > 0).any(axis=(1, 2))
    assert positive.sum() >= 5 and not positive.all(), "the lesion spans most of the cut, not all of it"


def test_study_masks_on_a_256_series(study: Study, models: Models) -> None:
    """Per study: masks on the source grid; GT boxes and detector boxes (scaled back from 512) find the lesion."""
    records = DetectionRecords()
    masks = study_masks(study, models, ("slice",), GuardOptions(), records)
    assert set(masks) == {"oracle", "oracle+guard", "product", "product+guard"}
    for mask, seconds, _ in masks.values():
        assert mask.shape == study.labels.shape and mask.dtype == bool and seconds >= 0
    scores: dict[str, Scores] = {}
    add_study(scores, study, masks)
    oracle = scores["oracle"].summary()
    assert oracle["slice_dice"] > 0.3 and oracle["pooled_dice"] > 0.3, "GT boxes on the source grid find the lesion"
    assert oracle["fp_slices"] == 0 and oracle["study_sensitivity"] == 1.0
    assert scores["oracle+guard"].summary()["pooled_dice"] > 0.3
    (line,) = scores["oracle"].studies  # the study's own figures, by name
    true_ml = (study.labels > 0).sum() * study.series.voxel_volume_ml
    assert line["study"] == study.study_id and true_ml > 0 and line["true_ml"] == pytest.approx(true_ml, abs=1e-3)
    assert line["slice_dice"] == pytest.approx(oracle["slice_dice"], abs=1e-4) and line["fp_slices"] == 0
    product = scores["product"].summary()  # boxes left on the 512 grid would land at twice their place: Dice ≈ 0
    assert product["slice_dice"] > 0.3 and product["pooled_dice"] > 0.3

    assert records.true_classes, "ground-truth boxes were matched against detections"
    matched = np.concatenate(records.correct)
    assert matched[:, 0].any(), "some detection hits a lesion box at IoU 0.5: both on the source grid"


def test_evaluation_command_on_a_256_series(study_folder: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    data = data_folder(tmp_path / "data", study_folder, "test")
    out = tmp_path / "results"
    evaluate_main(["--data", str(data), "--detector", str(MODELS / "detector"),  # confidence 0.2, as above: the
                   "--segmenter", str(MODELS / "segmenter"), "--merge", "slice", "--out", str(out),  # one study's
                   "--confidence", "0.2"])  # top box (0.38) sits at the bundled 0.4, and this checks the tallies
    results = json.loads((out / "evaluation.json").read_text())
    assert set(results["rows"]) == {"oracle", "oracle+guard", "product", "product+guard"}
    labels = np.load(study_folder / "labels.npz")["labels"]
    present = {SUBTYPES[k - 1] for k in np.unique(labels) if k}
    oracle = results["rows"]["oracle"]
    assert oracle["positive_slices"] >= 5 and oracle["slice_dice"] > 0.3 and oracle["fp_slices"] == 0
    guarded = results["rows"]["product+guard"]
    assert guarded["guard_removed_ml"].keys() == {"cavity", "density", "size"}
    assert results["detector"]["test_mAP50"] > 0, "detections compared with boxes on the same grid"
    assert set(results["detector"]["test_AP50_by_subtype"]) == present, "one AP per subtype in the ground truth"
    by_size = results["detector"]["test_recall_by_box_size"]
    assert sum(row["boxes"] for row in by_size.values()) > 0 and any(row["recall"] for row in by_size.values())
    by_subtype = results["by_subtype"]["oracle"]
    assert set(by_subtype) == present and by_subtype
    for name, tally in by_subtype.items():
        assert tally["slices"] == int((labels == SUBTYPES.index(name) + 1).any(axis=(1, 2)).sum())
        assert 0 < tally["lesions_found"] <= tally["lesions"] and 0 < tally["voxel_recall"] <= 1
    by_density = results["by_density"]["oracle"]  # every slice with blood in one class, as its stored HU says
    assert sum(tally["slices"] for tally in by_density.values()) == oracle["positive_slices"]
    assert all(tally["studies"] == 1 for tally in by_density.values()), "one test study"
    assert all(tally["median_contrast_hu"] > 0 for tally in by_density.values()), "blood above the brain around it"
    table = (out / "evaluation.md").read_text()
    assert "YOLO + TransDeepLab (product), slice merge + guard" in table and "| subtype | method |" in table
    assert "| blood density | contrast (HU) | method | slices (studies) |" in table
    assert results["follow"] == FollowOptions().describe(), "the product rows follow findings as the app does"
    assert f"followed up to {FOLLOW_SLICES} slices each way" in table
    versions = {role: ModelManifest.load(MODELS / role).label for role in ("detector", "segmenter")}
    folders = {role: portable_path(MODELS / role) for role in versions}
    assert results["model_versions"] == {role: f"{versions[role]} ({folders[role]})" for role in versions}, \
        "the figures name the weights that gave them"
    assert f"detector {versions['detector']} ({folders['detector']}); segmenter {versions['segmenter']}" in table
    (line,) = results["studies"]["product+guard"]
    assert line["study"] == study_folder.name and line["true_ml"] > 0 and line["positive"]
    assert line["called"] == (line["predicted_ml"] > 0) == (results["rows"]["product+guard"]["study_sensitivity"] == 1)
    missed = not line["called"]
    assert f"gets wrong: {int(missed)} positive missed" in table
    assert (f"missed, {study_folder.name} (" in table) == missed


def test_wrong_studies_follow_the_study_calls_not_the_rounded_volumes() -> None:
    """A positive left empty is missed, a negative given any voxel is called, even under the rounding of mL."""
    truth = np.zeros((2, 4, 4), dtype=bool)
    truth[0, 1, 1] = True
    nothing, speck = np.zeros_like(truth), np.zeros_like(truth)
    speck[1, 3, 3] = True
    voxel_ml = 1e-4  # a speck rounds to 0.000 mL
    lines = [StudyScore.measure(predicted, t, voxel_ml).describe(name) for name, predicted, t in (
        ("missed", nothing, truth), ("found", truth, truth), ("called", speck, nothing), ("clean", nothing, nothing),
        ("found-elsewhere", speck, truth),
    )]
    assert lines[2]["predicted_ml"] == 0 and lines[2]["called"]
    missed, called = wrong_studies(lines)
    assert [s["study"] for s in missed] == ["missed"] and [s["study"] for s in called] == ["called"]


def test_choose_guard_writes_its_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--choose-guard`` on a (tiny) validation split: the sweep, the best setting, the defaults and no guard."""
    from evaluation.guard_choice import sweep_confidences, sweep_options, sweep_thresholds

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    data = data_folder(tmp_path / "data", generated_study(tmp_path / "short", slices=4), "val")  # the sweep is slow
    out = tmp_path / "choice"
    evaluate_main(["--data", str(data), "--detector", str(MODELS / "detector"), "--segmenter",
                   str(MODELS / "segmenter"), "--choose-guard", "--confidences", "0.3", "--out", str(out)])
    choice = json.loads((out / "guard_choice.json").read_text())
    current = choice["current_confidence"], choice["current_extend_confidence"]
    confidences = sweep_confidences(current[0], (0.3,))
    manifest = json.loads((MODELS / "detector" / "manifest.json").read_text())
    assert current[0] == manifest["operating_confidence"] and current[0] in confidences
    assert current[1] == (manifest.get("extend_confidence") or current[0])
    thresholds = sweep_thresholds(current, (0.3,))
    assert (0.3, 0.3) in thresholds and (0.3, 0.1) in thresholds and all(e <= c for c, e in thresholds)
    assert choice["evaluated"] == len(thresholds) * 2 * (len(sweep_options()) + 2), \
        "(confidence, extend) pairs × both merges × (grid + guard off + the guard's defaults followed)"
    for merge in ("slice", "cluster"):
        followed, not_followed = choice["current_defaults"][merge], choice["current_defaults_not_followed"][merge]
        assert (followed["follow_slices"], not_followed["follow_slices"]) == (FOLLOW_SLICES, 0)
        assert followed["guard"] == not_followed["guard"] == GuardOptions().describe()
    assert choice["sweep"][0] == choice["best"] and len(choice["sweep"]) == 200
    assert [r["confidence"] for r in choice["best_per_confidence"]] == confidences
    assert choice["best"]["objective"] >= max(r["objective"] for r in choice["unguarded"].values())
    assert choice["best"]["objective"] >= max(r["objective"] for r in choice["best_at_current_confidence"].values())
    assert all((r["confidence"], r["extend_confidence"]) == current for r in choice["current_defaults"].values())
    plain = choice["best_plain_threshold"]
    assert plain["extend_confidence"] == plain["confidence"] and choice["best"]["objective"] >= plain["objective"]
    assert set(choice["current_defaults"]) == {"slice", "cluster"} and choice["split"] == "val"
    assert set(choice["model_versions"]) == {"detector", "segmenter"}
    assert f"segmenter {ModelManifest.load(MODELS / 'segmenter').label}" in (out / "guard_choice.md").read_text()
    assert all((r["missed_studies"] == ["short"]) == (r["study_sensitivity"] == 0) and r["called_studies"] == []
               for r in choice["sweep"]), "the one positive study is named where a setting misses it"
    markdown = (out / "guard_choice.md").read_text()
    assert "Confidence, merge and guard choice" in markdown and "The best setting misses" in markdown
    assert f"followed {FOLLOW_SLICES} slices" in markdown


def test_subtype_tallies_count_slices_voxels_and_lesions() -> None:
    """Two intraparenchymal lesions (one touched by half a slice) and one untouched subdural, 0.5 mL voxels."""
    labels = np.zeros((3, 16, 16), np.uint8)
    labels[0:2, 2:6, 2:6] = 1  # IPH lesion over two slices, 32 voxels
    labels[1, 10:12, 10:12] = 1  # a second IPH lesion, 4 voxels
    labels[2, 6:8, 6:8] = 1  # diagonal to the first lesion's last slice: the same lesion (26-connected)
    labels[2, 0:2, 12:16] = 4  # SDH, 8 voxels
    predicted = np.zeros(labels.shape, bool)
    predicted[0, 2:6, 2:4] = True  # half the first lesion's first slice: slice Dice 2·8 / (8 + 16)
    predicted[2, 12:14, 0:2] = True  # a false positive beside the subdural and the lesions: touches no blood
    tallies = SubtypeScores()
    tallies.add(predicted, study_lesions(labels, 0.5), StudyScore.measure(predicted, labels > 0, 0.5).slice_dice)
    summary = tallies.summary()
    assert set(summary) == {"intraparenchymal", "subdural"}
    iph, sdh = summary["intraparenchymal"], summary["subdural"]
    assert iph["slices"] == 3 and iph["slice_dice"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert iph["voxel_recall"] == pytest.approx(8 / 40) and iph["slices_touched"] == pytest.approx(1 / 3)
    assert (iph["lesions"], iph["lesions_found"], iph["median_missed_ml"]) == (2, 1, 2.0)
    assert (sdh["slices"], sdh["slices_touched"], sdh["slice_dice"], sdh["voxel_recall"]) == (1, 0.0, 0.0, 0.0)
    assert (sdh["lesions"], sdh["lesions_found"], sdh["median_missed_ml"]) == (1, 0, 4.0)


def test_lesions_group_fragments_within_the_gap() -> None:
    """Two subdural fragments 4 mm apart are one lesion at the 5 mm gap; a fragment 30 mm away is another."""
    labels = np.zeros((3, 40, 40), np.uint8)
    labels[0, 0:2, 0:10] = 4
    labels[0, 0:2, 13:20] = 4  # columns 10-12 empty: 4 mm from column 9 at 1 mm pixels
    labels[2, 30:32, 30:40] = 4
    assert len(study_lesions(labels, 1.0)["subdural"].volumes_ml) == 3, "connected components without a spacing"
    grouped = study_lesions(labels, 1.0, spacing_mm=(5.0, 1.0, 1.0))["subdural"]
    assert sorted(grouped.volumes_ml) == [20.0, 34.0]
    assert set(np.unique(grouped.components)) == {0, 1, 2} and (grouped.components > 0).sum() == 54


def test_blood_density_classes_each_slice_by_its_own_blood() -> None:
    """Low-density blood scored apart from dense blood: one slice of each, the prediction finding only the dense."""
    hu = np.full((3, 12, 12), 38.0)  # grey matter
    truth = np.zeros(hu.shape, dtype=bool)
    truth[0, 4:6, 4:6] = True
    hu[0, 4:6, 4:6] = 45.0  # hyperacute
    truth[2, 4:8, 4:8] = True
    hu[2, 4:8, 4:8] = 75.0  # clotted
    hu[2, 4, 4] = 120.0  # partial volume with bone: the median, not the mean, classes the slice
    predicted = truth.copy()
    predicted[0] = False
    densities = slice_densities(hu, truth)
    assert np.isnan(densities[1]) and densities[0] == 45.0 and densities[2] == 75.0
    assert [density_class(d) for d in (45.0, 50.0, 69.9, 70.0)] == ["< 50 HU", "50–70 HU", "50–70 HU", "≥ 70 HU"]
    contrasts = slice_contrasts(hu, truth)
    assert np.isnan(contrasts[1]) and contrasts[0] == 7.0 and contrasts[2] == 37.0, "blood minus the grey around it"
    scores = DensityScores()
    scores.add(predicted, truth, densities, contrasts, [0.0, 1.0])
    summary = scores.summary()
    assert set(summary) == {"< 50 HU", "≥ 70 HU"}, "classes without slices are left out"
    assert summary["< 50 HU"] == {"slices": 1, "studies": 1, "slice_dice": 0.0, "slices_touched": 0.0,
                                  "voxel_recall": 0.0, "median_contrast_hu": 7.0}
    assert summary["≥ 70 HU"] == {"slices": 1, "studies": 1, "slice_dice": 1.0, "slices_touched": 1.0,
                                  "voxel_recall": 1.0, "median_contrast_hu": 37.0}
    scores.add(predicted, truth, densities, contrasts, [0.0, 1.0])  # a second study
    assert scores.summary()["< 50 HU"]["studies"] == 2 and scores.summary()["< 50 HU"]["slices"] == 2
    with pytest.raises(ValueError, match="1 slice Dice values for 2 slices"):
        scores.add(predicted, truth, densities, contrasts, [1.0])


def test_blood_contrast_skips_the_gap_and_what_is_not_soft_tissue() -> None:
    """The surroundings start a pixel away (partial volume) and leave out bone and air; none left: NaN."""
    hu = np.full((16, 16), 25.0)  # white matter
    blood = np.zeros(hu.shape, dtype=bool)
    blood[6:10, 6:10] = True
    hu[blood] = 40.0
    hu[5, 6:10] = 90.0  # the gap: partial volume next to the blood, not its surroundings
    hu[:, 12:] = 1500.0  # bone on one side
    assert blood_contrast(hu, blood) == 15.0
    hu[~blood] = 1500.0
    assert np.isnan(blood_contrast(hu, blood)) and np.isnan(blood_contrast(hu, np.zeros_like(blood)))


def test_recall_by_box_size_buckets_by_shortest_side_in_mm_whatever_the_subtype() -> None:
    """A box counts as found at the best confidence of any detection overlapping it at IoU ≥ 0.5."""
    recall = BoxSizeRecall()
    thin, large = [0.0, 0.0, 6.0, 60.0], [100.0, 100.0, 160.0, 140.0]  # shortest sides 6 and 40 px
    def add(true_boxes: list, pred_boxes: list, confidences: list) -> None:
        truth, found = np.array(true_boxes).reshape(-1, 4), np.array(pred_boxes).reshape(-1, 4)
        recall.add_slice(truth, box_overlaps(truth, found), np.array(confidences), 0.5)

    add([thin, large], [[102.0, 100.0, 160.0, 140.0]], [0.3])
    add([thin], [[0.0, 0.0, 6.0, 60.0], [0.0, 30.0, 6.0, 90.0]], [0.2, 0.9])  # the 0.9 box overlaps it at IoU 1/3
    add([], [thin], [0.9])  # a false alarm: no lesion box
    add([large], [], [])  # a missed box
    table = recall.recall(0.25)
    assert list(table) == ["< 4 mm", "4–8 mm", "8–16 mm", "16–32 mm", "≥ 32 mm"]
    assert table["< 4 mm"] == {"boxes": 2, "recall": 0.0}, "3 mm wide: found only at 0.2"
    assert table["16–32 mm"] == {"boxes": 2, "recall": 0.5}, "20 mm: found once (IoU 0.97, 0.3), missed once"
    assert table["4–8 mm"] == {"boxes": 0, "recall": None}
    assert recall.recall(0.1)["< 4 mm"]["recall"] == 0.5 and recall.recall(0.5)["16–32 mm"]["recall"] == 0.0
