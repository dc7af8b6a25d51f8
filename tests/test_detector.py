"""Stage 1 on real files: dataset converter, BHX CSV layout, offline ultralytics, tiny training, inference."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from ichseg.boxes import LabelledBox, lesion_boxes, lesion_gap_pixels
from ichseg.detector import INPUT_SIZE, KEEP_EVERY_BOX, Detection, HemorrhageDetector, to_bgr
from ichseg.dicom_series import load_single_series
from ichseg.model_manifest import ModelError, ModelManifest
from ichseg.pipeline import window_series
from ichseg.subtypes import SUBTYPES
from ichseg.windowing import HEADER_INPUT, MULTI_WINDOW_INPUT
from training.detector_dataset import convert, dataset_input, read_boxes, select_negatives
from training.detector_operating_point import store as store_operating_point


@pytest.fixture(scope="module")
def ultralytics_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ultralytics' config folder, a fresh temporary one unless another test module imported ultralytics first."""
    if "ultralytics" not in sys.modules:
        os.environ["YOLO_CONFIG_DIR"] = str(tmp_path_factory.mktemp("yolo-config"))
    import ichseg.ultralytics_offline  # noqa: F401  (switches ultralytics offline, before its first import)

    # isort: split
    from ultralytics.utils import USER_CONFIG_DIR

    return Path(USER_CONFIG_DIR)


def study_folder(root: Path, names: dict[str, Path], boxes_from: list[Path]) -> tuple[Path, Path, Path]:
    """A dicom root with study folders linked under new names, their combined boxes.csv and a studies.csv."""
    root.mkdir()
    (root / "studies").mkdir()
    for name, target in names.items():
        (root / "studies" / name).symlink_to(target, target_is_directory=True)
    rows = [row for path in boxes_from for row in csv.DictReader(path.open(newline=""))]
    with (root / "boxes.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "studies", root / "boxes.csv", root / "studies.csv"


def write_splits(path: Path, splits: dict[str, str]) -> None:
    path.write_text("study_id,split\n" + "".join(f"{study},{split}\n" for study, split in splits.items()))


def keep_first(dataset: Path, count: int) -> None:
    """Cut every split of a converted dataset to its first ``count`` slices (a test-sized training run)."""
    for split in (dataset / "images").iterdir():
        for image in sorted(split.glob("*.png"))[count:]:
            image.unlink()
            (dataset / "labels" / split.name / f"{image.stem}.txt").unlink()


def read_label(path: Path) -> list[tuple[int, tuple[float, float, float, float]]]:
    """YOLO label lines back to (class, pixel-edge box) in the 512 slice."""
    boxes = []
    for line in path.read_text().splitlines():
        c, cx, cy, w, h = (float(v) for v in line.split())
        boxes.append((int(c), tuple(v * INPUT_SIZE for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))))
    return boxes


def box_array(boxes: list) -> np.ndarray:
    return np.reshape([box for _, box in boxes], (-1, 4))


def test_converter_labels_equal_mask_boxes(tmp_path: Path, positive_study: Path, negative_study: Path) -> None:
    """Every positive slice's label file holds exactly the mask boxes; images are what the detector is fed."""
    dicom_root, boxes_csv, studies_csv = study_folder(
        tmp_path / "in", {"pos": positive_study, "neg": negative_study},
        [positive_study.parent / "boxes.csv", negative_study.parent / "boxes.csv"],
    )
    write_splits(studies_csv, {"pos": "train", "neg": "val"})
    out = tmp_path / "dataset"
    summary = convert(boxes_csv, dicom_root, out, studies_csv)
    series = load_single_series(positive_study / "ct")
    labels = np.load(positive_study / "labels.npz")
    windowed = window_series(series)
    channels = windowed.detector_input(MULTI_WINDOW_INPUT)  # the converter's default
    positives = [i for i, label in enumerate(labels["labels"]) if label.any()]
    assert positives and summary.positives["train"] == len(positives)
    assert summary.images["train"] == len(series.headers) and summary.images["test"] == 0
    assert summary.images["val"] > 0 and summary.positives["val"] == 0
    assert summary.unmatched_boxes == summary.lost_boxes == summary.empty_boxes == 0
    for index, (header, label_slice) in enumerate(zip(series.headers, labels["labels"], strict=True)):
        assert str(header.SOPInstanceUID) == str(labels["sop_instance_uids"][index])
        got = sorted(read_label(out / "labels" / "train" / f"pos_{header.SOPInstanceUID}.txt"))
        want = sorted((b.subtype, b.box) for b in lesion_boxes(label_slice, lesion_gap_pixels(series.pixel_spacing)))
        assert [c for c, _ in got] == [c for c, _ in want]
        np.testing.assert_allclose(box_array(got), box_array(want), atol=0.01)
        image = cv2.imread(str(out / "images" / "train" / f"pos_{header.SOPInstanceUID}.png"), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(image, to_bgr(channels[index]))  # ultralytics' loader = detect()'s input
        np.testing.assert_array_equal(image[:, :, 0], windowed.detector[index])  # channel 0: the header window
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert Path(data["path"]).is_absolute() and "download" not in data
    assert data["names"] == dict(enumerate(SUBTYPES)) and data["test"] == "images/test"
    assert dataset_input(out / "data.yaml") == MULTI_WINDOW_INPUT

    grey = tmp_path / "sampled"
    sampled = convert(boxes_csv, dicom_root, grey, studies_csv, negatives_per_positive=0.2, input_kind=HEADER_INPUT)
    negatives = sampled.images["train"] - sampled.positives["train"]
    assert negatives == round(0.2 * len(positives)) and sampled.images["val"] == 0
    assert dataset_input(grey / "data.yaml") == HEADER_INPUT
    sop = series.headers[positives[0]].SOPInstanceUID
    image = cv2.imread(str(grey / "images" / "train" / f"pos_{sop}.png"), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(image, to_bgr(windowed.detector[positives[0]]))


def test_bhx_data_column_layout(tmp_path: Path) -> None:
    """BHX rows: geometry in ``data`` (its width/height columns are the image size), capitalised labels."""
    path = tmp_path / "bhx.csv"
    path.write_text(
        "Origin,SOPInstanceUID,SeriesInstanceUID,StudyInstanceUID,data,height,labelName,width\n"
        "Initial,1.2.3,1.2,1,\"{'x': 183.5, 'y': 185.25, 'width': 27.5, 'height': 29.0}\",512,Intraparenchymal,512\n"
        "Initial,1.2.3,1.2,1,\"{'x': 10, 'y': 20, 'width': 5, 'height': 6}\",512,Subdural,512\n"
        "Initial,1.2.4,1.2,1,\"{'x': 10, 'y': 20, 'width': 5, 'height': 6}\",512,Chronic,512\n"
    )
    boxes, excluded = read_boxes(path, ignore_labels=("Chronic",))
    assert excluded == {"1.2.4"}
    assert boxes["1.2.3"][0] == (SUBTYPES.index("intraparenchymal"), (183.5, 185.25, 211.0, 214.25))
    assert boxes["1.2.3"][1] == (SUBTYPES.index("subdural"), (10.0, 20.0, 15.0, 26.0))
    with pytest.raises(ValueError, match="bhx.csv:4"):
        read_boxes(path)  # an unknown subtype must not silently become background


def test_ultralytics_is_offline(ultralytics_config: Path, tmp_path: Path) -> None:
    """The fonts check_font would download are local, and nothing is allowed to go online or pip-install."""
    from ultralytics.utils import AUTOINSTALL, ONLINE, SETTINGS
    from ultralytics.utils.checks import check_font

    from ichseg.ultralytics_offline import install_fonts

    assert not ONLINE and not AUTOINSTALL and not SETTINGS["sync"] and SETTINGS["api_key"] == ""
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        assert Path(check_font(name)) == ultralytics_config / name
    install_fonts(tmp_path / "fresh")
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["Arial.Unicode.ttf", "Arial.ttf"]


def test_tiny_training_gives_a_loadable_detector(
    ultralytics_config: Path, tmp_path: Path, positive_study: Path
) -> None:
    """One epoch of yolov5n at 512 offline → model.pt + manifest that HemorrhageDetector loads and runs."""
    from training.train_detector import main

    dicom_root, boxes_csv, studies_csv = study_folder(
        tmp_path / "in", {s: positive_study for s in ("a", "b", "c")}, [positive_study.parent / "boxes.csv"]
    )
    write_splits(studies_csv, {"a": "train", "b": "val", "c": "test"})
    convert(boxes_csv, dicom_root, tmp_path / "dataset", studies_csv, negatives_per_positive=0.0)
    keep_first(tmp_path / "dataset", 4)
    model_dir = tmp_path / "model"
    main([
        "--data", str(tmp_path / "dataset" / "data.yaml"), "--model", "yolov5n.yaml", "--epochs", "2", "--batch", "4",
        "--workers", "0", "--no-plots", "--project", str(tmp_path / "runs"), "--out", str(model_dir), "--device", "cpu",
        "--hyp", str(Path(__file__).resolve().parents[1] / "training" / "cpu_polish.yaml"),  # keeps epochN.pt
        "--hu-shift", "4", "--hu-noise", "6", "--mosaic", "0",  # trained through the HU transform (shift and noise)
    ])
    manifest = ModelManifest.load(model_dir)
    assert manifest.architecture == "yolov5n.yaml" and manifest.input_size == INPUT_SIZE
    assert manifest.classes == list(SUBTYPES) and manifest.task == "detection"
    assert 0.0 <= manifest.training["mAP50_95"] <= manifest.training["mAP50"] <= 1.0
    assert manifest.training["input"] == MULTI_WINDOW_INPUT
    recipe = manifest.training["recipe"]
    assert recipe["hsv_h"] == recipe["hsv_s"] == recipe["hsv_v"] == recipe["bgr"] == 0.0, "channels are not colours"
    assert recipe["hu_shift"] == 4.0 and recipe["hu_noise"] == 6.0, "what no ultralytics argument holds is recorded"
    with pytest.raises(SystemExit):  # tuning would mutate the colour augmentations back on
        main(["--data", str(tmp_path / "dataset" / "data.yaml"), "--tune", "2"])
    with pytest.raises(SystemExit):  # a resumed run keeps its own augmentation: another value is refused, not ignored
        main(["--resume", "--project", str(tmp_path / "runs"), "--hu-shift", "8"])
    with pytest.raises(SystemExit):
        main(["--resume", "--project", str(tmp_path / "runs"), "--hu-noise", "2"])
    with pytest.raises(SystemExit):  # a mosaic would take three of its four images past the transform
        main(["--data", str(tmp_path / "dataset" / "data.yaml"), "--hu-noise", "6", "--mosaic", "0.5"])
    assert (tmp_path / "runs" / "train" / "weights" / "best.pt").is_file()
    exported = tmp_path / "exported"  # a stopped run bundled from its checkpoint: the same folder a finished run gives
    main(["--export-only", "--model-version", "0.0.1", "--project", str(tmp_path / "runs"), "--out", str(exported),
          "--device", "cpu"])
    again = ModelManifest.load(exported)
    assert again.version == "0.0.1" and again.training["epochs"] == manifest.training["epochs"] == 2
    for key in ("mAP50", "data", "recipe", "imgsz"):
        assert again.training[key] == manifest.training[key], key
    import torch

    weights = [torch.load(f / "model.pt", weights_only=False)["model"].state_dict() for f in (exported, model_dir)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert again.operating_confidence == manifest.operating_confidence
    chosen = tmp_path / "chosen"  # an epoch chosen by the product sweep rather than by mAP: the first of two
    main(["--export-only", "--checkpoint", "epoch0.pt", "--model-version", "0.0.2", "--project", str(tmp_path / "runs"),
          "--out", str(chosen), "--device", "cpu"])
    assert ModelManifest.load(chosen).training["epochs"] == 1
    first = torch.load(tmp_path / "runs" / "train" / "weights" / "epoch0.pt", weights_only=False)["ema"].state_dict()
    exported_first = torch.load(chosen / "model.pt", weights_only=False)["model"].state_dict()
    assert all(torch.equal(first[k].half(), exported_first[k].half()) for k in first), "epoch 1's weights, not the best"
    with pytest.raises(SystemExit):
        main(["--checkpoint", "epoch0.pt", "--data", str(tmp_path / "dataset" / "data.yaml")])
    with pytest.raises(SystemExit, match="epoch9.pt: no such checkpoint"):
        main(["--export-only", "--checkpoint", "epoch9.pt", "--project", str(tmp_path / "runs"), "--out",
              str(tmp_path / "none")])

    detector = HemorrhageDetector(model_dir, confidence=KEEP_EVERY_BOX)
    assert detector.input == MULTI_WINDOW_INPUT
    windowed = window_series(load_single_series(positive_study / "ct"))
    blank = detector.detect(np.zeros((2, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8))
    slices = detector.detect(windowed.detector_input(detector.input)[:3], batch_size=2)
    with pytest.raises(ValueError, match="expected"):
        detector.detect(windowed.detector[:3])
    assert len(blank) == 2 and all(isinstance(d, list) for d in blank) and len(slices) == 3
    for detection in (d for per_slice in slices for d in per_slice):
        assert isinstance(detection, Detection) and 0 <= detection.subtype < len(SUBTYPES)
        x0, y0, x1, y1 = detection.box
        assert 0 <= x0 <= x1 <= INPUT_SIZE and 0 <= y0 <= y1 <= INPUT_SIZE and 0 < detection.confidence <= 1

    manifest.training["input"] = HEADER_INPUT  # grey weights, three-window images: no operating point from them
    manifest.save(model_dir)
    with pytest.raises(ModelError, match="holds 'header\\+brain\\+subdural' images"):
        store_operating_point(model_dir, tmp_path / "dataset" / "data.yaml", tmp_path / "runs", "cpu")
    manifest.training["input"] = "bone-window"
    manifest.save(model_dir)
    with pytest.raises(ModelError, match="training.input 'bone-window' unsupported"):
        HemorrhageDetector(model_dir)
    manifest.training["input"] = MULTI_WINDOW_INPUT
    manifest.classes = list(reversed(SUBTYPES))
    manifest.save(model_dir)
    with pytest.raises(ModelError, match="classes"):
        HemorrhageDetector(model_dir)


def test_nms_keeps_every_image_on_a_starved_cpu(ultralytics_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ultralytics' NMS returns the images after its deadline empty; on a loaded CPU that would drop detections.

    The clock NMS reads jumps 10 s per reading (a CPU starved by other work), the deadline of a 4-image batch is
    2.2 s: every image must still get its box (the predictor and validator call this same function).
    """
    import torch
    from ultralytics.utils import nms

    readings = iter(range(0, 10_000, 10))
    monkeypatch.setattr(nms, "time", type("StarvedClock", (), {"time": staticmethod(lambda: float(next(readings)))}))
    prediction = torch.zeros(4, 4 + 5, 10)  # (batch, xywh + 5 class scores, candidates)
    prediction[:, :4, 0] = torch.tensor([100.0, 120.0, 40.0, 30.0])
    prediction[:, 4 + 2, 0] = 0.9  # candidate 0 of every image: subarachnoid, confident
    kept = nms.non_max_suppression(prediction, conf_thres=0.25, iou_thres=0.6)
    assert [len(boxes) for boxes in kept] == [1, 1, 1, 1]


def test_thresholds_resolve_and_the_app_path_keeps_what_the_evaluation_keeps(
    positive_study: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two confidences come from the manifest unless set (the extend capped at the confidence), and
    ``pipeline.detect`` (the app's detector stage) keeps what ``pipeline.keep_findings`` keeps of every box at the
    extend confidence (the evaluation's path): one hysteresis, on the source grid, for both."""
    from ichseg import pipeline
    from ichseg.settings import Settings

    models = Path(__file__).resolve().parents[1] / "models" / "detector"
    manifest = ModelManifest.load(models)
    bundled = HemorrhageDetector(models)
    assert manifest.extend_confidence is not None, "the bundled detector continues findings across slices"
    assert bundled.confidence == manifest.operating_confidence
    assert bundled.extend_confidence == manifest.extend_confidence
    assert HemorrhageDetector(models, extend=0.9).extend_confidence == bundled.confidence, "capped"
    assert HemorrhageDetector(models, confidence=0.02).extend_confidence == 0.02
    monkeypatch.setenv("ICH_EXTEND_CONFIDENCE", "0.07")
    assert Settings.from_env().extend_confidence == 0.07

    windowed = window_series(load_single_series(positive_study / "ct"))
    every = pipeline.detect(HemorrhageDetector(models, confidence=bundled.extend_confidence), windowed)
    kept = pipeline.detect(bundled, windowed)
    assert kept == pipeline.keep_findings(every, bundled.confidence, bundled.extend_confidence)
    plain = pipeline.detect(HemorrhageDetector(models, extend=bundled.confidence), windowed)
    assert plain == pipeline.keep_findings(every, bundled.confidence)
    assert all(d.confidence >= bundled.confidence for found in plain for d in found)
    assert sum(map(len, kept)) >= sum(map(len, plain)) and any(kept)


def test_hard_negative_mining_takes_the_slices_the_detector_fires_on(
    ultralytics_config: Path, tmp_path: Path, positive_study: Path, negative_study: Path
) -> None:
    """``--hard-negatives``: the training split's negatives are the slices the detector scores highest, scored
    through the inference path, and ``slices.csv`` records their scores; bad settings are refused."""
    from training.hard_negatives import MINING_CONFIDENCE

    model_dir = Path(__file__).resolve().parents[1] / "models" / "detector"
    dicom_root, boxes_csv, studies_csv = study_folder(
        tmp_path / "in", {"pos": positive_study, "neg": negative_study},
        [positive_study.parent / "boxes.csv", negative_study.parent / "boxes.csv"],
    )
    write_splits(studies_csv, {"pos": "train", "neg": "train"})
    detector = HemorrhageDetector(model_dir, confidence=MINING_CONFIDENCE)
    boxed = {row["SOPInstanceUID"] for row in csv.DictReader(boxes_csv.open(newline=""))}
    scores: dict[str, float] = {}
    for study in (positive_study, negative_study):
        series = load_single_series(study / "ct")
        found = detector.detect(window_series(series).detector_input(detector.input))
        for header, slice_found in zip(series.headers, found, strict=True):
            if str(header.SOPInstanceUID) not in boxed:
                scores[str(header.SOPInstanceUID)] = max((d.confidence for d in slice_found), default=0.0)
    fired = sorted((s for s in scores.values() if s > 0), reverse=True)
    assert len(fired) >= 2, "the bundled detector should fire on some hemorrhage-free slice of the test studies"

    def train_negatives(out: Path) -> set[str]:
        rows = list(csv.DictReader((out / "slices.csv").open(newline="")))
        return {r["sop_instance_uid"] for r in rows if r["split"] == "train" and r["boxes"] == "0"}

    ratio = 2 / len(boxed)  # two negatives in the training split
    with pytest.raises(ValueError, match="hard-share"):
        convert(boxes_csv, dicom_root, tmp_path / "bad", studies_csv, negatives_per_positive=ratio,
                hard_negatives=model_dir, hard_share=1.5)
    mined = convert(boxes_csv, dicom_root, tmp_path / "mined", studies_csv, negatives_per_positive=ratio,
                    hard_negatives=model_dir, hard_share=1.0)
    chosen = train_negatives(tmp_path / "mined")
    assert mined.hard_negatives == len(chosen) == 2
    assert sorted((scores[s] for s in chosen), reverse=True) == pytest.approx(fired[:2], abs=1e-4)
    assert mined.hard_floor == pytest.approx(fired[1], abs=1e-4)
    rows = list(csv.DictReader((tmp_path / "mined" / "slices.csv").open(newline="")))
    assert all(float(r["mining_score"]) == pytest.approx(scores[r["sop_instance_uid"]], abs=1e-3)
               and r["hard_negative"] == "1" for r in rows if r["sop_instance_uid"] in chosen)


def test_negative_selection_mines_only_the_ranked_split() -> None:
    """Hard slices first, the seeded draw fills the rest; an unranked split gets the very same draw as without
    mining (validation and test stay comparable between a plain and a mined dataset)."""
    negatives = {"train": [f"t{i:02d}" for i in range(40)], "val": [f"v{i:02d}" for i in range(30)],
                 "test": [f"s{i:02d}" for i in range(30)]}
    positives = {"train": 10, "val": 5, "test": 5}
    scores = {sop: (0.9 - 0.1 * i if i < 3 else 0.0) for i, sop in enumerate(negatives["train"])}  # 3 slices fired
    plain, no_hard = select_negatives(negatives, positives, 1.0, seed=3)
    mined, hard = select_negatives(negatives, positives, 1.0, seed=3, scores=scores, hard_share=0.5)
    assert no_hard == [] and hard == ["t00", "t01", "t02"]  # 5 wanted, only 3 fired: the draw fills the other 7
    for split in ("val", "test"):
        assert {s for s in plain if s in negatives[split]} == {s for s in mined if s in negatives[split]}
    train = {s for s in mined if s in negatives["train"]}
    assert len(train) == 10 and set(hard) <= train
    assert len({s for s in plain if s in negatives["train"]} - train) <= 3  # the draw, less what the hard ones replace
    everything, _ = select_negatives(negatives, positives, 1.0, seed=3, scores=scores, hard_share=1.0)
    assert len(everything) == 20 and {"t00", "t01", "t02"} <= everything
    assert select_negatives(negatives, {"train": 0}, 1.0, seed=3, scores=scores, hard_share=1.0) == (set(), [])


def _tiny_dataset(root: Path, name: str, input_kind: str) -> Path:
    """A detector dataset of one labelled slice per split, in the converter's layout (``slices.csv`` included)."""
    from training.detector_dataset import write_data_yaml

    rows = ["image,split,study_id"]
    for split in ("train", "val", "test"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / split / f"{name}.png"), np.full((64, 64, 3), 40, np.uint8))
        (root / "labels" / split / f"{name}.txt").write_text("3 0.5 0.5 0.25 0.25\n")
        rows.append(f"images/{split}/{name}.png,{split},{name}_{split}")
    (root / "slices.csv").write_text("\n".join(rows) + "\n")
    return write_data_yaml(root, input_kind)


def test_combined_dataset_trains_on_all_and_validates_on_the_first(ultralytics_config: Path, tmp_path: Path) -> None:
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    from training.combine_datasets import combine, main

    first = _tiny_dataset(tmp_path / "first", "a", MULTI_WINDOW_INPUT)
    second = _tiny_dataset(tmp_path / "second", "b", MULTI_WINDOW_INPUT)
    third = _tiny_dataset(tmp_path / "third", "c", MULTI_WINDOW_INPUT)
    pair = combine([first, second, first], tmp_path / "pair")  # a dataset given twice counts once
    combined = combine([pair, third], tmp_path / "combined")  # a combined (list-valued) train: entry combines again
    data = check_det_dataset(str(combined))  # ultralytics' own reading of the YAML
    assert dataset_input(combined) == MULTI_WINDOW_INPUT
    train = YOLODataset(img_path=data["train"], data=data, imgsz=64, augment=False)
    assert sorted(Path(f).name for f in train.im_files) == ["a.png", "b.png", "c.png"]
    assert all(len(label["cls"]) == 1 for label in train.labels)
    assert Path(data["val"]) == (tmp_path / "first" / "images" / "val").resolve()
    assert Path(data["test"]) == (tmp_path / "first" / "images" / "test").resolve()

    def refused(sources: list[Path], message: str) -> None:
        with pytest.raises(SystemExit, match=message):
            main([*map(str, sources), "--out", str(tmp_path / "refused")])
        assert not (tmp_path / "refused" / "data.yaml").exists()

    refused([first, _tiny_dataset(tmp_path / "grey", "g", HEADER_INPUT)], "images hold 'header-window'")
    leaky = _tiny_dataset(tmp_path / "leaky", "d", MULTI_WINDOW_INPUT)
    (tmp_path / "leaky" / "slices.csv").write_text("image,split,study_id\nimages/train/d.png,train,a_test\n")
    refused([first, leaky], "training studies a_test are in .*first/data.yaml's validation or test split")
    no_test = tmp_path / "no_test.yaml"
    no_test.write_text(first.read_text().replace("test: images/test\n", ""))
    refused([no_test, second], "no_test.yaml: no test split")


def test_tiles_hold_every_box_whole_at_native_scale_and_validation_stays_on_whole_slices(
    ultralytics_config: Path, tmp_path: Path
) -> None:
    """Tiles are crops of the slices (no resizing), every box lies whole in one of its slice's tiles with the same
    pixels under its label, negatives are cut within the head, and the trainer trains at the tile's size but
    validates whole slices at the app's."""
    from training.bf16_trainer import Bf16DetectionTrainer, with_hu_changes
    from training.detector_dataset import write_data_yaml
    from training.detector_tiles import main, write_tiles
    from training.hu_shift import UltralyticsHuShift
    from training.train_detector import main as train_main

    source = tmp_path / "source"
    slices = {  # name → boxes (x0, y0, x1, y1); the second is wider than a tile
        "two": [(40, 40, 100, 90), (400, 380, 470, 450)], "wide": [(60, 200, 440, 260)], "negative": [],
    }
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (source / "images" / split).mkdir(parents=True)
        (source / "labels" / split).mkdir(parents=True)
    for name, boxes in slices.items():
        image = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        image[330:500, 330:500] = rng.integers(1, 255, (170, 170, 3))  # the "head", off-centre
        for x0, y0, x1, y1 in boxes:
            image[y0:y1, x0:x1] = rng.integers(1, 255, (y1 - y0, x1 - x0, 3))  # a pattern only an exact crop keeps
        cv2.imwrite(str(source / "images" / "train" / f"{name}.png"), image)
        lines = [f"{number % 5} {(x0 + x1) / 2 / INPUT_SIZE} {(y0 + y1) / 2 / INPUT_SIZE} {(x1 - x0) / INPUT_SIZE} "
                 f"{(y1 - y0) / INPUT_SIZE}\n" for number, (x0, y0, x1, y1) in enumerate(boxes)]
        (source / "labels" / "train" / f"{name}.txt").write_text("".join(lines))
    for split in ("val", "test"):
        cv2.imwrite(str(source / "images" / split / "whole.png"), np.full((INPUT_SIZE, INPUT_SIZE, 3), 9, np.uint8))
        (source / "labels" / split / "whole.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (source / "slices.csv").write_text("image,split,study_id\n" + "".join(
        f"images/train/{name}.png,train,study_{name}\n" for name in slices) + "images/val/whole.png,val,study_v\n")
    data_yaml = write_data_yaml(source, MULTI_WINDOW_INPUT)

    counts = write_tiles(data_yaml, tmp_path / "tiles", 320, negative_tiles=8, seed=1)
    assert counts == {"images": 3, "positive_tiles": 3, "negative_tiles": 8, "small_box_tiles": 0, "labels": 3}
    small = write_tiles(data_yaml, tmp_path / "small", 320, negative_tiles=8, seed=1, small_box_tiles=2,
                        small_box_px=3001)  # only "two"'s first box (60 × 50 px) is small
    assert small == {**counts, "small_box_tiles": 2, "labels": 5}
    extra = [row for row in csv.DictReader((tmp_path / "small" / "slices.csv").open(newline=""))
             if Path(row["source_image"]).stem == "two"]
    assert len(extra) == 4 and all(int(r["x"]) <= 40 and int(r["y"]) <= 40 and int(r["x"]) + 320 >= 100
                                   and int(r["y"]) + 320 >= 90 for r in extra[2:]), "the small box whole in each"
    rows = list(csv.DictReader((tmp_path / "tiles" / "slices.csv").open(newline="")))
    tile_rows = [row for row in rows if row["split"] == "train"]
    assert len(tile_rows) == 11 and [row["study_id"] for row in rows if row["split"] != "train"] == ["study_v"]

    def label_of(row: dict[str, str]) -> Path:
        return tmp_path / "tiles" / "labels" / "train" / f"{Path(row['image']).stem}.txt"

    for name, boxes in slices.items():
        original = cv2.imread(str(source / "images" / "train" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        tiles = [row for row in tile_rows if Path(row["source_image"]).stem == name]
        assert {row["study_id"] for row in tiles} == {f"study_{name}"}
        for row in tiles:
            ox, oy = int(row["x"]), int(row["y"])
            tile = cv2.imread(str(tmp_path / "tiles" / row["image"]), cv2.IMREAD_UNCHANGED)
            assert tile.shape == (320, 320, 3) and np.array_equal(tile, original[oy:oy + 320, ox:ox + 320])
            if not boxes:  # centre within the head (330..499): origins 170..192 on both axes
                assert 170 <= ox <= 192 and 170 <= oy <= 192 and not label_of(row).read_text()
        labelled = [(int(row["x"]), int(row["y"]), read_label(label_of(row))) for row in tiles]
        for number, (x0, y0, x1, y1) in enumerate(boxes):
            back = [(subtype, tuple(v * 320 / INPUT_SIZE + (ox, oy)[k % 2] for k, v in enumerate(box)))
                    for ox, oy, found in labelled for subtype, box in found]
            if x1 - x0 <= 320:  # whole in some tile, label and pixels exact
                assert any(subtype == number and np.allclose(box, (x0, y0, x1, y1), atol=0.01)
                           for subtype, box in back), (name, number)
            else:  # wider than a tile: one tile centred on it, the label clipped to the tile
                ((ox, oy, found),) = labelled
                assert ox == round((x0 + x1 - 320) / 2) and y0 - oy >= 0 and y1 - oy <= 320
                assert np.allclose(found[0][1], (0, (y0 - oy) * INPUT_SIZE / 320, INPUT_SIZE, (y1 - oy) * INPUT_SIZE
                                                 / 320), atol=0.02)
    tiled = yaml.safe_load((tmp_path / "tiles" / "data.yaml").read_text())
    assert tiled["ich_tile"] == 320 and dataset_input(tmp_path / "tiles" / "data.yaml") == MULTI_WINDOW_INPUT
    assert Path(tiled["val"]) == source / "images" / "val" and Path(tiled["test"]) == source / "images" / "test"

    trainer = Bf16DetectionTrainer(overrides={
        "model": "yolov5n.yaml", "data": str(tmp_path / "tiles" / "data.yaml"), "imgsz": 320, "device": "cpu",
        "workers": 0, "project": str(tmp_path / "runs"), "name": "tiles", "plots": False})
    trainer.model = trainer.get_model(cfg="yolov5n.yaml", verbose=False)
    train_tiles = str(tmp_path / "tiles" / "images" / "train")
    assert trainer.build_dataset(train_tiles, "train", 2).imgsz == 320
    validation = trainer.build_dataset(tiled["val"], "val", 2)
    assert validation.imgsz == INPUT_SIZE and min(validation[0]["img"].shape[-2:]) >= INPUT_SIZE  # not shrunk
    assert trainer.args.imgsz == 320
    plain = trainer.build_dataset(train_tiles, "train", 2).transforms.transforms
    assert not any(isinstance(t, UltralyticsHuShift) for t in plain)
    shifted = with_hu_changes(8.0)(overrides={
        "model": "yolov5n.yaml", "data": str(tmp_path / "tiles" / "data.yaml"), "imgsz": 320, "device": "cpu",
        "workers": 0, "project": str(tmp_path / "runs"), "name": "shifted", "plots": False})
    shifted.model = shifted.get_model(cfg="yolov5n.yaml", verbose=False)
    dataset = shifted.build_dataset(train_tiles, "train", 2)
    first = dataset.transforms.transforms[0]  # the first transform: it sees the image as loaded
    assert isinstance(first, UltralyticsHuShift) and first.max_hu == 8.0 and first.widths == (200.0, 80.0, 80.0)
    assert dataset[0]["img"].shape[0] == 3 and with_hu_changes(0.0) is Bf16DetectionTrainer

    for data, imgsz in ((tmp_path / "tiles" / "data.yaml", "512"), (data_yaml, "320")):  # any rescaling is refused
        with pytest.raises(SystemExit) as refusal:
            train_main(["--data", str(data), "--imgsz", imgsz, "--out", str(tmp_path / "never")])
        assert refusal.value.code == 2 and not (tmp_path / "never").exists()
    with pytest.raises(SystemExit) as refusal:
        main([str(data_yaml), "--out", str(tmp_path / "odd"), "--size", "300"])
    assert refusal.value.code == 2 and not (tmp_path / "odd").exists()
    with pytest.raises(SystemExit, match="holds the source dataset's images"):
        main([str(data_yaml), "--out", str(source)])
    assert len(list((source / "images" / "train").iterdir())) == 3, "the source is untouched"


def test_tile_labels_follow_ultralytics_rule_for_cut_boxes() -> None:
    """A cut box stays labelled, clipped, when ≥ 10 % of it and more than 2 px each way lie in the tile."""
    from training.detector_tiles import tile_lines

    box = LabelledBox(3, (0.0, 0.0, 100.0, 100.0))
    assert tile_lines([box], 95, 0, 320) == []  # 5 % inside
    assert tile_lines([box], 50, 0, 320) == [f"3 {25 / 320:.6f} {50 / 320:.6f} {50 / 320:.6f} {100 / 320:.6f}"]
    assert tile_lines([LabelledBox(0, (0.0, 0.0, 101.5, 10.0))], 100, 0, 320) == []  # a 1.5 px sliver
    assert tile_lines([box], 0, 0, 320) == [f"3 {50 / 320:.6f} {50 / 320:.6f} {100 / 320:.6f} {100 / 320:.6f}"]


def test_transfer_to_a_p2_head_keeps_every_trained_level(ultralytics_config: Path, tmp_path: Path) -> None:
    """The bundled detector carried to training/yolov5n-p2.yaml: all its weights in place, so the new model's
    stride-8/16/32 outputs equal the old model's, plus a stride-4 level; an architecture that changes the old
    layers is refused, naming the weight that does not fit."""
    import torch

    from training.transfer_detector import load_detection_model, main, transfer

    root = Path(__file__).resolve().parents[1]
    models, out = root / "models" / "detector" / "model.pt", tmp_path / "p2_init.pt"
    main(["--source", str(models), "--model", str(root / "training" / "yolov5n-p2.yaml"), "--out", str(out)])
    old, new = load_detection_model(models).eval(), load_detection_model(out).eval()
    assert new.stride.tolist() == [4.0, 8.0, 16.0, 32.0] and old.stride.tolist() == [8.0, 16.0, 32.0]
    assert new.names == old.names
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        before, after = old(image)[0], new(image)[0]
    p2_anchors = (128 // 4) ** 2
    assert after.shape[-1] == p2_anchors + before.shape[-1]
    torch.testing.assert_close(after[..., p2_anchors:], before, rtol=0, atol=0)
    with pytest.raises(ModelError, match="no place in the new architecture"):
        transfer(old, "yolov5s.yaml")


def test_widening_keeps_the_trained_detector_and_breaks_the_symmetry(ultralytics_config: Path, tmp_path: Path) -> None:
    """The bundled yolov5n widened to yolov5s: every layer has twice the channels, the predictions stay those of the
    trained model, and the two copies of a channel read their inputs with different weights (or they would learn
    alike forever); an architecture with other layers is refused."""
    import torch

    from training.transfer_detector import load_detection_model, main, widen

    models, out = Path(__file__).resolve().parents[1] / "models" / "detector" / "model.pt", tmp_path / "s_init.pt"
    main(["--source", str(models), "--model", "yolov5s.yaml", "--widen", "--out", str(out)])
    old, new = load_detection_model(models).eval(), load_detection_model(out).eval()
    assert sum(p.numel() for p in new.parameters()) > 3 * sum(p.numel() for p in old.parameters())
    assert new.names == old.names
    image = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        before, after = old(image)[0], new(image)[0]
    torch.testing.assert_close(after[:, 4:], before[:, 4:], rtol=0, atol=1e-4)  # class scores
    torch.testing.assert_close(after[:, :4], before[:, :4], rtol=1e-4, atol=1e-2)  # boxes, in pixels
    first, second = new.model[0].conv.weight, new.model[1].conv.weight  # the second reads the first's 2 × 16 channels
    assert torch.equal(first[0], first[1]), "the first layer's output channels 0 and 1 are copies of one channel"
    pairs = second.reshape(second.shape[0], -1, 2, *second.shape[2:])
    torch.testing.assert_close(pairs.sum(2)[0], old.model[1].conv.weight[0])  # what reads a pair sums to the old weight
    assert not torch.equal(pairs[0, :, 0], pairs[0, :, 1]), "the copies of a channel are read with other weights"
    with pytest.raises(ModelError, match="not the same layers|cannot widen"):
        widen(old, str(Path(__file__).resolve().parents[1] / "training" / "yolov5n-p2.yaml"))
