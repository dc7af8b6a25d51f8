"""Following guarded findings into slices without a box (``ichseg.follow``), with the bundled segmenter on a
generated positive study whose end slices are given no box — the detector's typical miss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichseg import pipeline
from ichseg.boxes import pixel_bounds
from ichseg.follow import BOX_GROWTH, FollowOptions, follow, grown_box, touching
from ichseg.guard import Anatomy, GuardOptions
from ichseg.labelled_study import Study, ground_truth_box, load_study
from ichseg.segmenter import HemorrhageSegmenter

REPO = Path(__file__).resolve().parents[1]
GUARD_DEFAULTS = GuardOptions()


@pytest.fixture(scope="module")
def segmenter(study_root: Path) -> HemorrhageSegmenter:  # after the studies: the generator forks
    return HemorrhageSegmenter(REPO / "models" / "segmenter")


@pytest.fixture(scope="module")
def study(positive_study: Path) -> Study:
    return load_study(positive_study)


def boxes_without_ends(labels: np.ndarray, dropped: int) -> tuple[list[list], list[int]]:
    """Ground-truth boxes on every slice with blood but the first and last ``dropped`` ones (which are returned)."""
    bloody = [z for z in range(len(labels)) if labels[z].any()]
    assert len(bloody) > 2 * dropped + 1, "the test study's hemorrhage spans enough slices"
    ends = bloody[:dropped] + bloody[-dropped:]
    boxes = [[ground_truth_box(labels[z])] if z in bloody and z not in ends else [] for z in range(len(labels))]
    return boxes, ends


def followed_run(segmenter: HemorrhageSegmenter, study: Study, boxes: list[list], follow: FollowOptions,
                 guard: GuardOptions = GUARD_DEFAULTS):
    """Segment in ``boxes``, guard, follow: what ``pipeline.run`` does after the detector."""
    anatomy = pipeline.anatomy_of(study.series, study.windowed) if guard.enabled else None
    unguarded = pipeline.segment(segmenter, study.windowed, boxes)
    mask, report = pipeline.guard(unguarded, study.series, guard, anatomy)
    followed = pipeline.follow_findings(segmenter, study.windowed, boxes, mask, anatomy, guard, follow)
    painted = followed.add_to(boxes, unguarded)[1]
    final, _ = pipeline.guard_followed(followed, painted, mask, report, study.series, guard, anatomy)
    return followed, mask, final


def test_following_recovers_the_end_slices_the_boxes_missed(segmenter, study) -> None:
    truth = study.labels > 0
    boxes, ends = boxes_without_ends(study.labels, 1)
    followed, guarded, final = followed_run(segmenter, study, boxes, FollowOptions(3))
    assert set(followed.boxes) <= {z for z in range(len(boxes)) if not boxes[z]}, "never a slice with a box"
    assert set(followed.boxes) & set(ends), "the end slices without a box are followed into"
    assert not guarded[ends].any(), "without following they are empty"
    hits = final[ends] & truth[ends]
    assert 2 * hits.sum() / (final[ends].sum() + truth[ends].sum()) > 0.3, "and following finds their blood"
    unchanged = [z for z in range(len(boxes)) if z not in followed.boxes]
    assert np.array_equal(final[unchanged], guarded[unchanged]), "other slices keep the guarded mask"
    record = followed.to_json(study.series.voxel_volume_ml)
    assert record["slices"] == sorted(followed.boxes) and record["settings"]["slices"] == 3


def test_following_stops_after_its_slices_and_without_the_guard(segmenter, study) -> None:
    boxes, _ = boxes_without_ends(study.labels, 2)
    boxed = [z for z in range(len(boxes)) if boxes[z]]
    one, _, _ = followed_run(segmenter, study, boxes, FollowOptions(1))
    assert all(min(abs(z - b) for b in boxed) == 1 for z in one.boxes), "one slice beyond a boxed slice at most"
    off, guarded, final = followed_run(segmenter, study, boxes, FollowOptions(0))
    assert not off.boxes and np.array_equal(final, guarded)
    unguarded, _, _ = followed_run(segmenter, study, boxes, FollowOptions(3), GuardOptions(enabled=False))
    assert not unguarded.boxes, "raw findings are never followed"


def test_negative_study_follows_nothing(segmenter, negative_study: Path) -> None:
    study = load_study(negative_study)
    boxes = [[] for _ in range(len(study.labels))]
    middle = len(boxes) // 2
    boxes[middle] = [(180.0, 180.0, 330.0, 330.0)]  # a box on brain without blood: nothing to follow from
    followed, guarded, final = followed_run(segmenter, study, boxes, FollowOptions(3))
    assert not guarded.any() and not followed.boxes and not final.any()


def test_seed_geometry() -> None:
    seed = np.zeros((64, 64), dtype=bool)
    seed[20:30, 10:50] = True
    x0, y0, x1, y1 = grown_box(seed)
    assert (x0, y0) == (10 - BOX_GROWTH * 40 - 1, 20 - BOX_GROWTH * 10 - 1)
    assert (x1, y1) == (50 + BOX_GROWTH * 40 + 1, 30 + BOX_GROWTH * 10 + 1)
    candidate = np.zeros_like(seed)
    candidate[31:35, 12:20] = True  # two rows below the seed: touches it grown by 2 px
    candidate[50:60, 50:60] = True  # far away: not a continuation
    kept = touching(candidate, seed)
    assert kept[31:35, 12:20].all() and not kept[50:60, 50:60].any()


def test_a_slice_between_two_findings_is_tried_from_both_sides() -> None:
    """Lesion A on slices 2–3 (left), lesion B on 4–5 (right), boxes only on 2 and 4: slice 3 tried from B first
    (nothing of B there) must still be followed from A. The 'segmenter' paints the truth inside the box it is given."""
    truth = np.zeros((7, 32, 32), dtype=bool)
    truth[2:4, 10:16, 2:8] = True  # A
    truth[4:6, 10:16, 22:28] = True  # B
    boxes = [[], [], [(2.0, 10.0, 8.0, 16.0)], [], [(22.0, 10.0, 28.0, 16.0)], [], []]
    seeds = np.zeros_like(truth)
    seeds[2], seeds[4] = truth[2], truth[4]
    anatomy = Anatomy(np.ones(truth.shape, bool), np.full(truth.shape, np.inf, np.float32),
                      np.full(truth.shape, 60.0, np.float32), ["ring"] * 7, 0.001)
    tried: list[int] = []

    def segment_boxes(crops: list) -> list[np.ndarray]:
        masks = []
        for index, box in crops:
            tried.append(index)
            row0, row1, col0, col1 = pixel_bounds(box, 32, 32)
            inside = np.zeros(truth.shape[1:], dtype=bool)
            inside[row0:row1, col0:col1] = True
            masks.append(truth[index] & inside)
        return masks

    followed = follow(segment_boxes, boxes, seeds, anatomy, GuardOptions(min_ml=0.0), FollowOptions(3))
    assert sorted(followed.boxes) == [3, 5]
    assert np.array_equal(followed.masks[3], truth[3]) and np.array_equal(followed.masks[5], truth[5])
    assert tried.count(3) == 2 and max(tried) == 6, "3 tried from both sides; 6 tried and found empty"
