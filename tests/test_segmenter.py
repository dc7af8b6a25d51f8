"""Stage-2 data, training, inference wrapper and evaluation metrics, on real generated studies (CPU, < 2 min)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

from evaluation.by_box_size import box_overlaps
from evaluation.evaluate import (
    DetectionRecords,
    Scores,
    match_detections,
    pooled_dice,
    sensitivity_specificity,
    slice_dice_iou,
)
from evaluation.evaluate import main as evaluate_main
from ichseg import pipeline
from ichseg.blood_density import LOW_DENSITY_HU, slice_densities
from ichseg.boxes import pixel_bounds
from ichseg.crops import crop_to_input, paste_probability
from ichseg.labelled_study import Study, ground_truth_box, load_study, study_ids
from ichseg.model_manifest import WEIGHTS_NAME, ModelError, ModelManifest
from ichseg.runtime import autocast_dtype, cpu_has_native_bf16
from ichseg.segmenter import (
    ARCHITECTURES,
    CLASSES,
    CROP_MODE,
    WHOLE_SLICE_MODE,
    HemorrhageSegmenter,
    build_network,
    whole_slice_box,
)
from ichseg.windowing import (
    BRAIN_WINDOW,
    HEADER_INPUT,
    INPUT_KINDS,
    MULTI_WINDOW_INPUT,
    STROKE_INPUT,
    STROKE_WINDOW,
    SUBDURAL_WINDOW,
    apply_window,
    channel_input,
)
from training.lr_schedule import FLOOR, LrPlan
from training.segmenter_data import (
    JITTER,
    SegmentationDataset,
    SliceSample,
    crop_samples,
    draw_weights,
    jitter_box,
    jitter_reach,
    load_samples,
    whole_slice_samples,
)
from training.train_segmenter import CHECKPOINT_NAME, half_state, make_loaders, parse_args
from training.train_segmenter import main as train_main


@pytest.fixture(scope="module")
def study(positive_study: Path) -> Study:
    return load_study(positive_study)


def data_folder(root: Path, study_folder: Path, splits: tuple[str, ...]) -> Path:
    """A data folder listing the one generated study under several names (one per split), via symlinks."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "studies.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_id", "split", "slices", "subtypes", "hemorrhage_ml"])
        for split in splits:
            (root / f"{split}_study").symlink_to(study_folder)
            writer.writerow([f"{split}_study", split, 0, "", 0])
    return root


def constant_model(folder: Path, mode: str) -> Path:
    """A real model folder whose MONAI UNet says 'hemorrhage' everywhere: zeroed last layers, foreground bias."""
    network = build_network("monai-unet")
    with torch.no_grad():
        network.model[2][0].conv.weight.zero_()  # constant map → instance norm gives exactly 0
        network.model[2][1].conv.unit0.conv.weight.zero_()
        network.model[2][1].conv.unit0.conv.bias.copy_(torch.tensor([-100.0, 100.0]))
    folder.mkdir(parents=True)
    torch.save(half_state(network), folder / WEIGHTS_NAME)
    ModelManifest("constant", "0", ARCHITECTURES["monai-unet"], 224, CLASSES, "segmentation",
                  {"mode": mode, "network": "monai-unet"}).save(folder)
    return folder


@pytest.mark.parametrize("input_kind", INPUT_KINDS)
def test_crop_targets_paste_back_to_ground_truth(study: Study, input_kind: str) -> None:
    """Un-augmented crop samples equal the inference crop of the full slice; their targets paste back onto the GT."""
    positive = [i for i, s in enumerate(study.labels) if s.any()]
    samples = crop_samples(study, JITTER, input_kind)
    assert len(samples) == len(positive) > 0
    dataset = SegmentationDataset(samples, augment=False)
    slices = study.windowed.source_input(input_kind)
    checked = 0
    for index, (image, target) in zip(positive, dataset, strict=True):
        truth = study.labels[index] > 0
        box = ground_truth_box(study.labels[index])
        torch.testing.assert_close(image, crop_to_input(slices[index], box))
        if input_kind in (HEADER_INPUT, MULTI_WINDOW_INPUT):
            header_channel = crop_to_input(study.windowed.source[index], box)[0]
            assert torch.equal(image[0], header_channel), "channel 0 is the header window in these inputs"
        assert torch.equal(image[1], image[2]) == (input_kind == HEADER_INPUT)
        if truth.sum() < 50:
            continue
        pasted = paste_probability(target.float(), box, truth.shape)
        assert 2 * (pasted & truth).sum() / (pasted.sum() + truth.sum()) >= 0.9
        checked += 1
    assert checked > 0


def test_augmentation_shapes_and_jitter_bounds(study: Study) -> None:
    samples = crop_samples(study, JITTER, MULTI_WINDOW_INPUT)
    image, target = SegmentationDataset(samples, augment=True, jitter=JITTER, seed=3)[0]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target.shape == (224, 224) and target.dtype == torch.long and target.any()
    box = (100.0, 120.0, 140.0, 150.0)
    reach = jitter_reach(box, JITTER)
    for seed in range(50):
        x0, y0, x1, y1 = jitter_box(box, np.random.default_rng(seed), JITTER)
        assert reach[0] < x0 < 102 and reach[1] < y0 < 122 and 138 < x1 < reach[2] and 148 < y1 < reach[3]


@pytest.mark.parametrize(
    ("input_kind", "shape"),
    [(HEADER_INPUT, (224, 224)), (MULTI_WINDOW_INPUT, (3, 224, 224)), (STROKE_INPUT, (3, 224, 224))],
)
def test_whole_slice_samples_include_negatives(study: Study, input_kind: str, shape: tuple[int, ...]) -> None:
    samples = whole_slice_samples(study, 1.0, np.random.default_rng(0), input_kind)
    assert len(samples) == len(study.labels)
    assert all(s.image.shape == shape and s.image.dtype == np.uint8 for s in samples)
    assert sum(s.mask.any() for s in samples) == sum(s.any() for s in study.labels)


@pytest.fixture(scope="module")
def trained(positive_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few MONAI-UNet steps (default AdamW, no warm-up) on 8 crops of one study (validated on the same study).

    The UNet keeps this under a minute on 2 CPU cores; TransDeepLab's own training step is tested in
    test_transdeeplab.py and its export/load path below.
    """
    root = tmp_path_factory.mktemp("segmenter")
    data = data_folder(root / "data", positive_study, ("train", "val"))
    out = root / "model"
    train_main(["--data", str(data), "--out", str(out), "--mode", CROP_MODE, "--network", "monai-unet",
                "--epochs", "3", "--batch", "4", "--max-slices", "8", "--val-slices", "4", "--lr", "0.01",
                "--warmup-steps", "0", "--seed", "0"])
    return out


def test_training_lowers_loss_and_exports(trained: Path) -> None:
    history = torch.load(trained / CHECKPOINT_NAME, weights_only=False)["state"]["history"]
    assert len(history) == 3
    assert history[-1]["loss"] < history[0]["loss"]
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["task"] == "segmentation" and manifest["input_size"] == 224
    assert manifest["training"]["mode"] == CROP_MODE and manifest["training"]["network"] == "monai-unet"
    assert 0 <= manifest["training"]["val_dice"] <= 1
    assert manifest["training"]["augmentation"] == "rot90 + flip + box jitter 10%"
    state = torch.load(trained / WEIGHTS_NAME, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert not HemorrhageSegmenter(trained).whole_slice


def test_resume_with_more_epochs_extends_the_lr_plan(trained: Path, tmp_path: Path) -> None:
    """A run stopped early by its budget continues with a longer plan; a finished poly decay refuses to restart at 0."""
    data = trained.parent / "data"
    common = ["--data", str(data), "--out", str(tmp_path), "--mode", CROP_MODE, "--network", "monai-unet",
              "--batch", "4", "--max-slices", "8", "--val-slices", "4", "--optimizer", "sgd", "--lr", "0.1",
              "--seed", "0"]
    train_main([*common, "--epochs", "3", "--max-minutes", "0.0001"])  # the budget stops it after one epoch
    assert len(torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["state"]["history"]) == 1
    train_main([*common, "--epochs", "4", "--resume"])
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    steps = checkpoint["state"]["steps"]
    assert len(checkpoint["state"]["history"]) == 4 and steps == 4 * (steps // 4)
    assert checkpoint["plan"]["total_steps"] == steps  # the decay ends with the new plan
    with pytest.raises(SystemExit, match="lr plan ended after epoch 4"):
        train_main([*common, "--epochs", "5", "--resume"])
    with pytest.raises(SystemExit, match="made for crops/monai-unet/sgd"):
        train_main([*common[:-6], "--optimizer", "adamw", "--epochs", "5", "--resume"])
    with pytest.raises(SystemExit, match="trained with --jitter 0.1, not 0.25"):
        train_main([*common, "--epochs", "5", "--jitter", "0.25", "--resume"])


def test_more_data_joins_the_training_split_only(trained: Path, positive_study: Path, tmp_path: Path) -> None:
    """--more-data adds further folders' training studies (validation stays --data's) and refuses a leaked study."""
    data = trained.parent / "data"
    more = tmp_path / "more"
    more.mkdir()
    (more / "other_study").symlink_to(positive_study)
    (more / "studies.csv").write_text("study_id,split\nother_study,train\nmore_val,val\n")  # its val: unused
    (more / "more_val").symlink_to(positive_study)
    common = ["--data", str(data), "--mode", CROP_MODE, "--network", "monai-unet", "--epochs", "1", "--batch", "4",
              "--steps-per-epoch", "1", "--val-slices", "4", "--seed", "0"]
    train_main([*common, "--more-data", str(more), "--out", str(tmp_path / "model")])
    one_study = len(load_samples(data, "train", CROP_MODE, MULTI_WINDOW_INPUT))
    described = json.loads((tmp_path / "model" / "manifest.json").read_text())["training"]["data"]
    assert f" + {more}" in described and f"(train split {2 * one_study} slices, val 4)" in described
    with pytest.raises(SystemExit, match="trained with --more-data"):  # a run keeps its training set
        train_main([*common, "--out", str(tmp_path / "model"), "--resume"])
    (more / "studies.csv").write_text("study_id,split\nval_study,train\n")  # --data's validation study
    (more / "val_study").symlink_to(positive_study)
    with pytest.raises(SystemExit, match="val_study are in .* validation or test split"):
        train_main([*common, "--more-data", str(more), "--out", str(tmp_path / "leaked")])
    with pytest.raises(SystemExit, match="train_study are given twice"):
        train_main([*common, "--more-data", str(data), "--out", str(tmp_path / "twice")])


def test_low_density_crops_can_be_drawn_more_often(trained: Path, study: Study, tmp_path: Path) -> None:
    """Each crop of blood knows its blood's median HU (as the evaluation classes slices); --low-density-weight draws
    those under 50 HU more often, says so in the manifest, and a run keeps its weighting across --resume."""
    samples = crop_samples(study, JITTER, MULTI_WINDOW_INPUT)
    densities = slice_densities(study.series.hu, study.labels > 0)
    assert [s.density_hu for s in samples] == densities[~np.isnan(densities)].tolist()
    first = samples[0]
    hyperacute, clotted, blank = (
        SliceSample(first.image, first.mask, first.box, density_hu=45.0),
        SliceSample(first.image, first.mask, first.box, density_hu=LOW_DENSITY_HU),
        SliceSample(first.image, np.zeros_like(first.mask), first.box, score=0.5),  # hemorrhage-free: no density
    )
    assert draw_weights([hyperacute, clotted, blank], 4.0) == [4.0, 1.0, 1.0]
    data = trained.parent / "data"
    common = ["--data", str(data), "--mode", CROP_MODE, "--network", "monai-unet", "--epochs", "1", "--batch", "4",
              "--steps-per-epoch", "1", "--val-slices", "4", "--seed", "0", "--out", str(tmp_path / "model")]
    loaders = make_loaders(parse_args([*common, "--low-density-weight", "4"]))
    sampler = loaders.train_loader.sampler
    assert isinstance(sampler, WeightedRandomSampler) and sampler.num_samples == 4
    assert sampler.weights.tolist() == draw_weights(loaders.train_set.samples, 4.0)
    assert isinstance(make_loaders(parse_args(common)).train_loader.sampler, RandomSampler), "uniform by default"
    train_main([*common, "--low-density-weight", "4"])
    low = sum(s.density_hu < LOW_DENSITY_HU for s in loaders.train_set.samples)
    sampling = json.loads((tmp_path / "model" / "manifest.json").read_text())["training"]["sampling"]
    assert sampling == f"crops of blood under 50 HU drawn 4x as often ({low} of the train slices)"
    with pytest.raises(SystemExit, match="trained with --low-density-weight 4.0, not 1.0"):
        train_main([*common, "--resume"])
    for refused in (["--low-density-weight", "0"], ["--low-density-weight", "2", "--mode", "whole-slice"]):
        with pytest.raises(SystemExit):
            parse_args([*common, *refused])


def test_jitter_option_widens_the_box_jitter_and_the_cached_regions(trained: Path, tmp_path: Path) -> None:
    """--jitter sets how far training moves box edges (to match a detector's box error): the dataset jitters by it,
    the same crops are cached with wider regions around them, and a value outside 0-1 is refused."""
    common = ["--data", str(trained.parent / "data"), "--mode", CROP_MODE, "--network", "monai-unet", "--epochs", "1",
              "--batch", "4", "--steps-per-epoch", "1", "--val-slices", "4", "--out", str(tmp_path / "model")]
    narrow = make_loaders(parse_args(common)).train_set
    wide = make_loaders(parse_args([*common, "--jitter", "0.25"])).train_set
    assert narrow.jitter == JITTER and wide.jitter == 0.25
    assert len(wide.samples) == len(narrow.samples) > 0
    for small, large in zip(narrow.samples, wide.samples, strict=True):  # same crops, wider cached regions
        assert large.mask.shape[0] >= small.mask.shape[0] and large.mask.shape[1] >= small.mask.shape[1]
        (x0, y0, x1, y1), (u0, v0, u1, v1) = large.box, small.box
        assert (x1 - x0, y1 - y0) == (u1 - u0, v1 - v0), "the same box, placed in a larger region"
    assert sum(s.mask.size for s in wide.samples) > sum(s.mask.size for s in narrow.samples)
    with pytest.raises(SystemExit):
        parse_args([*common, "--jitter", "1.5"])


def test_lr_plans() -> None:
    """Warm-up rises linearly to lr0, cosine ends at the floor, poly at 0; the paper's plan has no warm-up."""
    cosine = LrPlan("warmup-cosine", 3e-4, total_steps=100, warmup_steps=10)
    assert cosine.lr(0) == pytest.approx(3e-5) and cosine.lr(9) == pytest.approx(3e-4)
    assert cosine.lr(10) == pytest.approx(3e-4) and cosine.lr(100) == pytest.approx(3e-4 * FLOOR)
    assert all(cosine.lr(s) >= cosine.lr(s + 1) for s in range(10, 100))
    poly = LrPlan("poly", 0.01, total_steps=50)
    assert poly.lr(0) == pytest.approx(0.01) and poly.lr(50) == 0.0 and poly.finished(50)


def test_precision_choice() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None and autocast_dtype(cpu, "bf16") == torch.bfloat16
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(ValueError):
        autocast_dtype(cpu, "fp16")


def in_box(mask: np.ndarray, box: tuple) -> bool:
    row0, row1, col0, col1 = pixel_bounds(box, *mask.shape)
    outside = mask.copy()
    outside[row0:row1, col0:col1] = False
    return not outside.any()


def test_segment_skips_none_and_stays_in_box(trained: Path, study: Study) -> None:
    boxes = [ground_truth_box(s) for s in study.labels]
    chosen = [i for i, box in enumerate(boxes) if box is None][:2] + [i for i, box in enumerate(boxes) if box][:4]
    segmenter = HemorrhageSegmenter(trained)
    assert segmenter.input == MULTI_WINDOW_INPUT, "training's default input"
    windowed = study.windowed.source_input(segmenter.input)[chosen]
    masks = segmenter.segment(windowed, [boxes[i] for i in chosen], batch_size=4)
    assert masks.shape == (len(chosen), *study.labels.shape[1:]) and masks.dtype == bool
    assert not masks[:2].any()
    assert all(in_box(mask, boxes[i]) for mask, i in zip(masks[2:], chosen[2:], strict=True))


def test_crop_memo_runs_each_crop_once(trained: Path, study: Study) -> None:
    """``--choose-guard`` segments a study under many box sets through ``CropMemo``: the masks are the plain
    segmenter's, and a crop seen before is not run again."""
    from evaluation.guard_choice import CropMemo

    plain = HemorrhageSegmenter(trained, precision="fp32")
    memo = CropMemo(plain)
    chosen = [i for i, s in enumerate(study.labels) if s.any()][:3]
    windowed = study.windowed.source_input(plain.input)[chosen]
    boxes = [ground_truth_box(study.labels[i]) for i in chosen]
    wider = [(x0 - 6.0, y0 - 6.0, x1 + 6.0, y1 + 6.0) for x0, y0, x1, y1 in boxes]
    for entries, memo_size in (([boxes[0], boxes[1], None], 2), ([boxes[0], [boxes[1], wider[1]], wider[2]], 4)):
        masks = memo.segment(windowed, entries)
        assert len(memo.memo) == memo_size, "only the crops not seen before are added"
        assert masks.any() and np.array_equal(masks, plain.segment(windowed, entries))
    memo.forget()
    assert not memo.memo


def test_transdeeplab_export_loads_as_float32(tmp_path: Path, study: Study) -> None:
    """A float16 TransDeepLab export loads back into float32 weights equal to the rounded originals."""
    torch.manual_seed(0)
    network = build_network("transdeeplab")
    folder = tmp_path / "transdeeplab"
    folder.mkdir()
    torch.save(half_state(network), folder / WEIGHTS_NAME)
    ModelManifest("t", "0", ARCHITECTURES["transdeeplab"], 224, CLASSES, "segmentation",
                  {"mode": CROP_MODE, "network": "transdeeplab"}).save(folder)
    segmenter = HemorrhageSegmenter(folder)
    loaded = segmenter.network.state_dict()
    for key, value in network.state_dict().items():
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value.half().float() if value.is_floating_point() else value)
    index = next(i for i, s in enumerate(study.labels) if s.any())
    box = ground_truth_box(study.labels[index])
    masks = segmenter.segment(study.windowed.source[index:index + 2], [box, None])
    assert in_box(masks[0], box) and not masks[1].any()


def test_constant_models_fill_box_or_slice(tmp_path: Path, study: Study) -> None:
    """An always-foreground model gives exactly the box (crop model) or the whole slice (whole-slice model)."""
    windowed = study.windowed.source[:4]
    boxes = [(10.0, 20.0, 60.0, 90.5), None, whole_slice_box(windowed.shape[1:]), (300.0, 301.0, 301.0, 302.0)]
    masks = HemorrhageSegmenter(constant_model(tmp_path / "crops", CROP_MODE)).segment(windowed, boxes)
    for mask, box in zip(masks, boxes, strict=True):
        expected = np.zeros(mask.shape, dtype=bool)
        if box is not None:
            row0, row1, col0, col1 = pixel_bounds(box, *mask.shape)
            expected[row0:row1, col0:col1] = True
        assert np.array_equal(mask, expected)
    whole = HemorrhageSegmenter(constant_model(tmp_path / "whole", WHOLE_SLICE_MODE))
    assert whole.segment(windowed, [None] * 4).all()


def test_fixed_windows_keep_blood_apart_from_bone() -> None:
    """Clotted blood (85 HU) is as white as bone in a brain header window; the subdural channel tells them apart."""
    hu = np.array([[[35.0, 85.0, 1200.0]]])
    header = apply_window(hu, 40.0, 80.0)
    assert header.tolist() == [[[112, 255, 255]]]
    first, brain, subdural = channel_input(header, hu, MULTI_WINDOW_INPUT, 5.0)[0, :, 0]
    assert first.tolist() == header[0, 0].tolist() and brain.tolist() == [112, 255, 255]
    assert subdural[0] < subdural[1] < subdural[2] == 255


def test_stroke_input_doubles_the_contrast_of_hyperacute_blood() -> None:
    """Hyperacute blood (46 HU) against grey matter (40 HU): the stroke channel spreads them twice as far apart as
    the brain window does; the other two channels are the fixed brain and subdural windows, not the header's."""
    hu = np.array([[[40.0, 46.0, 85.0, 1200.0]]])
    bone_header = apply_window(hu, 400.0, 2000.0)  # a bone-window header: must not reach a stroke network
    stroke, brain, subdural = channel_input(bone_header, hu, STROKE_INPUT, 5.0)[0, :, 0].astype(int)
    assert stroke.tolist() == apply_window(hu, *STROKE_WINDOW)[0, 0].tolist()
    assert brain.tolist() == apply_window(hu, *BRAIN_WINDOW)[0, 0].tolist()
    assert subdural.tolist() == apply_window(hu, *SUBDURAL_WINDOW)[0, 0].tolist()
    assert stroke[1] - stroke[0] >= 2 * (brain[1] - brain[0]) - 1 > 0
    with pytest.raises(ValueError, match="unknown multi-window network input"):
        channel_input(bone_header, hu, HEADER_INPUT, 5.0)


def test_segmenter_takes_the_input_its_manifest_names(tmp_path: Path, study: Study) -> None:
    """A multi-window segmenter gets (N, 3, H, W) slices from the pipeline and refuses grey ones; an unknown input
    in the manifest is refused when the model loads."""
    folder = constant_model(tmp_path / "multi", CROP_MODE)
    manifest = ModelManifest.load(folder)
    manifest.training["input"] = MULTI_WINDOW_INPUT
    manifest.save(folder)
    segmenter = HemorrhageSegmenter(folder)
    index = next(i for i, s in enumerate(study.labels) if s.any())
    box = ground_truth_box(study.labels[index])
    boxes = [[box] if i == index else [] for i in range(len(study.labels))]
    masks = pipeline.segment(segmenter, study.windowed, boxes)
    assert masks.shape == study.labels.shape and masks[index].any() and in_box(masks[index], box)
    assert masks.sum() == masks[index].sum()
    with pytest.raises(ValueError, match="takes 4-D slices"):
        segmenter.segment(study.windowed.source, boxes)
    with pytest.raises(ValueError, match="takes 4-D slices"):
        next(segmenter.crop_masks(study.windowed.source, [(index, box)]))
    manifest.training["input"] = "bone-window"
    manifest.save(folder)
    with pytest.raises(ModelError, match="input 'bone-window' unsupported"):
        HemorrhageSegmenter(folder)


def test_slice_dice_iou_on_hand_made_masks() -> None:
    truth = np.zeros((4, 8, 8), dtype=bool)
    truth[0, :4] = truth[1, :4] = truth[2, :4] = True
    predicted = np.zeros_like(truth)
    predicted[0, :4] = True  # identical
    predicted[1, 4:] = True  # disjoint
    predicted[2, :2] = True  # half: Dice 2·16/(16+32), IoU 16/32
    predicted[3, 0, 0] = True  # GT-empty slice
    dice, iou = slice_dice_iou(predicted, truth)
    np.testing.assert_allclose(dice[:3], [1.0, 0.0, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(iou[:3], [1.0, 0.0, 0.5], rtol=1e-6)
    assert np.isnan(dice[3]) and np.isnan(iou[3])
    from monai.metrics import compute_iou

    rng = np.random.default_rng(0)  # IoU is derived from Dice: it must be MONAI's own IoU
    noisy, noisy_truth = rng.random((6, 16, 16)) < 0.3, rng.random((6, 16, 16)) < 0.4
    monai_iou = compute_iou(torch.from_numpy(noisy)[:, None].float(), torch.from_numpy(noisy_truth)[:, None].float(),
                            include_background=True, ignore_empty=True)[:, 0].numpy()
    np.testing.assert_allclose(slice_dice_iou(noisy, noisy_truth)[1], monai_iou, rtol=1e-5)
    scores = Scores()
    scores.add(predicted, truth, voxel_ml=0.5, seconds=2.0)
    summary = scores.summary()
    assert summary["positive_slices"] == 3 and summary["fp_slices"] == 1 and summary["negative_slices"] == 1
    assert summary["slice_dice"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert summary["pooled_dice"] == pytest.approx(2 * 48 / (81 + 96))
    assert summary["volume_error_ml"] == pytest.approx(abs(81 - 96) * 0.5)
    assert summary["seconds_per_slice"] == pytest.approx(0.5)
    scores.add(truth, truth, voxel_ml=0.5, seconds=0.0)  # exact: error 0
    scores.add(predicted, truth, voxel_ml=2.0, seconds=0.0)  # four times the first study's error
    errors = [abs(81 - 96) * 0.5, 0.0, abs(81 - 96) * 2.0]
    assert scores.summary()["volume_error_ml"] == pytest.approx(np.mean(errors))
    assert scores.summary()["median_volume_error_ml"] == pytest.approx(abs(81 - 96) * 0.5), "the issue's target"
    assert pooled_dice(0, 0, 0) == 1.0


def test_study_sensitivity_specificity() -> None:
    assert sensitivity_specificity([True, True, False, False], [True, False, True, False]) == (0.5, 0.5)
    sensitivity, specificity = sensitivity_specificity([True], [True])
    assert sensitivity == 1.0 and np.isnan(specificity)


def test_detection_matching_and_map() -> None:
    truth = np.array([[10, 10, 30, 30]], dtype=float)
    shifted = np.array([[10, 10, 30, 30], [12, 10, 32, 30], [10, 10, 30, 30]], dtype=float)
    correct = match_detections(box_overlaps(truth, shifted), np.array([0, 0, 1]), np.array([0]))
    assert correct[0].all()  # the exact box takes the only ground truth at every threshold
    assert not correct[1:].any()  # one-to-one; the third has the wrong class
    iou = 18 * 20 / (2 * 400 - 18 * 20)  # 0.818: a true positive up to IoU 0.8
    alone = match_detections(box_overlaps(truth, shifted[1:2]), np.array([0]), np.array([0]))[0]
    assert alone.tolist() == [t <= iou for t in np.linspace(0.5, 0.95, 10)]

    class Found:
        def __init__(self, subtype: int, box: tuple) -> None:
            self.subtype, self.confidence, self.box = subtype, 0.9, box

    records = DetectionRecords()
    label_slice = np.zeros((64, 64), dtype=np.uint8)
    label_slice[5:15, 20:40] = 3  # subtype 2, box (20, 5, 40, 15)
    records.add_slice([Found(2, (20.0, 5.0, 40.0, 15.0))], label_slice)
    map50, map50_95 = records.mean_ap()
    assert map50 > 0.99 and map50_95 > 0.99


def test_evaluation_command(tmp_path: Path, positive_study: Path) -> None:
    """The CLI on one test study with always-foreground models: oracle fills GT boxes, whole-slice flags every slice."""
    data = data_folder(tmp_path / "data", positive_study, ("test",))
    crops = constant_model(tmp_path / "crops", CROP_MODE)
    whole = constant_model(tmp_path / "whole", WHOLE_SLICE_MODE)
    out = tmp_path / "results"
    evaluate_main(["--data", str(data), "--detector", str(tmp_path / "missing"), "--segmenter", str(crops),
                   "--single-stage", str(whole), "--out", str(out)])
    results = json.loads((out / "evaluation.json").read_text())
    assert set(results["rows"]) == {"oracle", "oracle+guard", "oracle-cluster", "oracle-cluster+guard", "single-stage",
                                    "single-stage+guard"}
    oracle, single = results["rows"]["oracle"], results["rows"]["single-stage"]
    assert oracle["fp_slices"] == 0 and 0 < oracle["slice_dice"] < 1 and oracle["study_sensitivity"] == 1.0
    assert single["fp_slices"] == single["negative_slices"] > 0 and single["study_specificity"] is None
    assert "GT boxes + TransDeepLab (oracle)" in (out / "evaluation.md").read_text()


def test_negative_crops_are_the_detectors_merged_boxes_on_blood_free_slices(
    positive_study: Path, negative_study: Path
) -> None:
    """Hemorrhage-free crops: each is the merged box of the detector's boxes (every one the app could keep: its extend
    confidence or above) on one slice without blood, in slice order, cropped as inference crops it, with an empty
    target and the slice's top score; slices with blood give none."""
    from ichseg.boxes import merge_boxes
    from ichseg.detector import HemorrhageDetector
    from training.segmenter_negatives import NegativeCrops, hardest_crops

    detector_dir = Path(__file__).resolve().parents[1] / "models" / "detector"
    negatives = NegativeCrops(detector_dir, MULTI_WINDOW_INPUT, JITTER)
    reference = HemorrhageDetector(detector_dir)
    assert negatives.description == f"ich-yolov5-detector {reference.manifest.version}, boxes ≥ 0.1"  # v0.6.0
    crops_of_both = []
    for folder in (negative_study, positive_study):
        study = load_study(folder)
        samples = negatives(study)
        found = reference.detect(study.windowed.detector_input(reference.input))
        sx, sy = study.windowed.scale
        expected = [  # (slice, merged box on the source grid, top score) of each blood-free slice it fires on
            (index, merge_boxes((d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy) for d in slice_found),
             max(d.confidence for d in slice_found))
            for index, slice_found in enumerate(found) if slice_found and not study.labels[index].any()
        ]
        assert len(samples) == len(expected)
        dataset = SegmentationDataset(samples, augment=False)
        for sample, (image, target), (index, box, score) in zip(samples, dataset, expected, strict=True):
            assert sample.score == pytest.approx(score) and score >= reference.extend_confidence
            source = study.windowed.source_input(MULTI_WINDOW_INPUT)[index]
            torch.testing.assert_close(image, crop_to_input(source, box))
            assert not target.any() and not sample.mask.any()
        crops_of_both += samples
    assert crops_of_both, "the bundled detector boxes some blood-free slice of the two test studies"
    blood = crop_samples(load_study(positive_study), JITTER, MULTI_WINDOW_INPUT)
    hardest = hardest_crops([*blood, *crops_of_both], 2)
    scores = sorted((s.score for s in crops_of_both if s.score is not None), reverse=True)
    assert [s.score for s in hardest] == scores[:2]


def test_training_with_negative_crops_records_them_and_keeps_them(
    trained: Path, negative_study: Path, tmp_path: Path
) -> None:
    """--negative-crops adds the hardest hemorrhage-free crops (share × crops of blood, at most all there are), the
    manifest says so, the run folder records them, a resumed run cuts the recorded ones again (no detector pass) and
    must keep detector and share, and whole-slice mode refuses them."""
    from training.segmenter_negatives import RECORD_NAME, NegativeCrops
    from training.train_segmenter import make_loaders, parse_args

    data = tmp_path / "data"  # the positive study for training and validation, and a negative one for training
    shutil.copytree(trained.parent / "data", data, symlinks=True)
    (data / "negative_study").symlink_to(negative_study)
    with (data / "studies.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow(["negative_study", "train", 0, "", 0])
    detector_dir = Path(__file__).resolve().parents[1] / "models" / "detector"
    common = ["--data", str(data), "--mode", CROP_MODE, "--network", "monai-unet", "--epochs", "1", "--batch", "4",
              "--steps-per-epoch", "1", "--val-slices", "4", "--seed", "0", "--out", str(tmp_path / "model")]
    train_main([*common, "--negative-crops", str(detector_dir), "--negative-share", "0.5"])
    blood = len(load_samples(data, "train", CROP_MODE, MULTI_WINDOW_INPUT))
    training_studies = study_ids(data, "train")  # the hemorrhage-free slices of the positive one count too
    find = NegativeCrops(detector_dir, MULTI_WINDOW_INPUT, JITTER)
    available = sum(len(find(load_study(data / study_id))) for study_id in training_studies)
    state = torch.load(tmp_path / "model" / CHECKPOINT_NAME, weights_only=False)["state"]
    assert state["negative_samples"] == min(round(0.5 * blood), available) > 0
    assert state["train_samples"] == blood + state["negative_samples"]
    training = json.loads((tmp_path / "model" / "manifest.json").read_text())["training"]
    assert training["negative_crops"].startswith(f"{state['negative_samples']} of the train slices are ")
    record_path = tmp_path / "model" / RECORD_NAME
    record = json.loads(record_path.read_text())
    assert len(record["crops"]) == state["negative_samples"] and record["share"] == 0.5
    assert "negative_study" in {crop["study"] for crop in record["crops"]} <= set(training_studies)
    assert [crop["score"] for crop in record["crops"]] == sorted((c["score"] for c in record["crops"]), reverse=True)

    def negatives_of(*extra: str) -> list:
        train_set = make_loaders(parse_args([*common, "--negative-crops", str(detector_dir), "--negative-share",
                                             "0.5", *extra])).train_set
        return [s for s in train_set.samples if s.score is not None]

    fresh, resumed = negatives_of(), negatives_of("--resume")
    assert [s.origin for s in resumed] == [s.origin for s in fresh] and [s.score for s in resumed] == [
        s.score for s in fresh], "a resumed run trains on the crops it chose"
    for cut_again, detected in zip(resumed, fresh, strict=True):
        np.testing.assert_array_equal(cut_again.image, detected.image)
    record["crops"] = record["crops"][:1]  # what --resume cuts is the record, not a new detector pass
    record_path.write_text(json.dumps(record))
    assert [s.origin.slice_index for s in negatives_of("--resume")] == [record["crops"][0]["slice"]]
    other_share = ["--negative-crops", str(detector_dir), "--negative-share", "0.25"]
    with pytest.raises(SystemExit, match=f"{RECORD_NAME}: trained with --negative-crops"):  # before loading
        train_main([*common, *other_share, "--epochs", "2", "--resume"])
    record_path.unlink()  # a run from before the record: the checkpoint still refuses, and no record is left behind
    for changed in ([], other_share):
        with pytest.raises(SystemExit, match=f"{CHECKPOINT_NAME}: trained with --negative-crops"):
            train_main([*common, *changed, "--epochs", "2", "--resume"])
    assert not record_path.exists()
    with pytest.raises(SystemExit) as refused:
        train_main([*common[:2], "--mode", WHOLE_SLICE_MODE, "--negative-crops", str(detector_dir),
                    "--out", str(tmp_path / "whole")])
    assert refused.value.code == 2


def test_hu_shift_option_shifts_each_window_channel_of_the_training_crops(trained: Path, tmp_path: Path) -> None:
    """--hu-shift draws one calibration offset per crop, after the same rotation and flip: inside each window the
    change is that offset over the channel's width (header and brain 80 HU, subdural 200 HU), clipped pixels stay,
    validation crops are left alone, and an offset that is no longer a calibration is refused. --hu-noise adds one
    HU field to every channel at each window's scale, leaves the geometry as it was, and is bounded."""
    common = ["--data", str(trained.parent / "data"), "--mode", CROP_MODE, "--network", "monai-unet", "--epochs", "1",
              "--batch", "4", "--steps-per-epoch", "1", "--val-slices", "4", "--out", str(tmp_path / "model")]
    plain = make_loaders(parse_args(common))
    shifted = make_loaders(parse_args([*common, "--hu-shift", "8"]))
    assert shifted.train_set.hu_shift == 8.0 and shifted.train_set.widths == (80.0, 80.0, 200.0)
    offsets = []
    for index in range(min(4, len(plain.train_set))):
        before, target = plain.train_set[index]
        after, same_target = shifted.train_set[index]
        assert torch.equal(target, same_target), "the shift moves intensities, not geometry"
        inside = (before > 0) & (before < 1) & (after > 0) & (after < 1)
        assert inside[1].sum() > 100 and inside[2].sum() > 100
        brain, subdural = ((after - before)[c][inside[c]] for c in (1, 2))
        assert float(brain.std()) < 1e-5 and float(subdural.std()) < 1e-5, "one offset per crop"
        assert float(subdural.mean()) == pytest.approx(float(brain.mean()) * 80 / 200, abs=1e-4)
        assert torch.equal(before[1][before[1] >= 1], after[1][before[1] >= 1]), "bone stays white"
        offsets.append(float(brain.mean()) * 80)
    assert all(abs(offset) <= 8 + 1e-3 for offset in offsets) and len({round(o, 2) for o in offsets}) > 1
    image, _ = shifted.val_loader.dataset[0]
    assert torch.equal(image, plain.val_loader.dataset[0][0]), "validation crops are not augmented"
    with pytest.raises(SystemExit):
        parse_args([*common, "--hu-shift", "50"])
    noisy = make_loaders(parse_args([*common, "--hu-noise", "10"]))
    spreads = []
    for index in range(min(4, len(plain.train_set))):
        before, target = plain.train_set[index]
        after, same_target = noisy.train_set[index]
        assert torch.equal(target, same_target), "noise from its own stream: the geometry draws stay as they were"
        inside = (before > 0.05) & (before < 0.95)
        brain, subdural = ((after - before)[c][inside[c]] for c in (1, 2))
        assert float(brain.std()) * 80 <= 10.5, "at most 10 HU of noise in the brain window"
        assert float(brain.std()) == pytest.approx(float(subdural.std()) * 200 / 80, rel=0.25), "one HU field"
        spreads.append(float(brain.std()) * 80)
    assert max(spreads) > 1.0, "noise was added (HU)"
    image, _ = noisy.val_loader.dataset[0]
    assert torch.equal(image, plain.val_loader.dataset[0][0]), "validation crops are not augmented"
    with pytest.raises(SystemExit):
        parse_args([*common, "--hu-noise", "50"])
