"""The calibration-shift augmentation both trainings use (training.hu_shift)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ichseg.windowing import HEADER_INPUT, MULTI_WINDOW_INPUT, STROKE_INPUT
from training.hu_shift import UltralyticsHuShift, channel_widths, noise_field, shift_windowed


def test_channel_widths_follow_the_input_kinds_windows() -> None:
    assert channel_widths(MULTI_WINDOW_INPUT) == (80.0, 80.0, 200.0)  # header counted as a brain window
    assert channel_widths(STROKE_INPUT) == (40.0, 80.0, 200.0)
    assert channel_widths(HEADER_INPUT) == (80.0,)


def test_a_shift_moves_each_channel_by_offset_over_width_and_keeps_clipped_pixels() -> None:
    image = np.array([[[0, 100, 255, 250]], [[0, 100, 255, 250]]], np.uint8)  # (2 channels, 1, 4)
    shifted = shift_windowed(image, 8.0, (80.0, 200.0), 0, 255.0)
    assert shifted.dtype == np.uint8 and image[0, 0, 1] == 100, "a copy"
    assert shifted[0, 0].tolist() == [0, 126, 255, 255]  # 100 + 8 * 255 / 80 = 125.5; 250 + 25.5 clips
    assert shifted[1, 0].tolist() == [0, 110, 255, 255]  # 100 + 8 * 255 / 200 = 110.2
    down = shift_windowed(image, -8.0, (80.0, 200.0), 0, 255.0)
    assert down[0, 0].tolist() == [0, 74, 255, 224] and down[1, 0].tolist() == [0, 90, 255, 240]
    grey = shift_windowed(np.full((1, 2, 3), 0.5, np.float32), 4.0, (80.0,), -1, 1.0)  # one width for all channels
    assert np.allclose(grey, 0.55)
    with pytest.raises(ValueError, match="2 window widths for an image of 3 channels"):
        shift_windowed(np.zeros((3, 2, 2), np.uint8), 1.0, (80.0, 200.0), 0, 255.0)


def test_the_ultralytics_transform_shifts_bgr_images_as_loaded() -> None:
    """The detector's images are written and loaded as BGR: the subdural window (200 HU wide) is channel 0. One
    offset per image, repeatable under ultralytics' seeding of ``random``."""
    image = np.full((4, 4, 3), 100, np.uint8)
    random.seed(3)
    labels = UltralyticsHuShift(8.0, MULTI_WINDOW_INPUT)({"img": image})
    random.seed(3)
    again = UltralyticsHuShift(8.0, MULTI_WINDOW_INPUT)({"img": image})
    assert np.array_equal(labels["img"], again["img"]) and image[0, 0].tolist() == [100, 100, 100], "cache untouched"
    moved = labels["img"].astype(float) - 100
    assert all(np.ptp(moved[..., c]) == 0 for c in range(3)), "a shift, the same everywhere"
    offset = moved[0, 0, 1] * 80 / 255  # the brain window's channel
    assert 0 < abs(offset) <= 8.1
    assert moved[0, 0, 0] == pytest.approx(offset * 255 / 200, abs=0.6), "the subdural channel moves 80/200 as far"


def test_noise_has_the_drawn_spread_and_grain() -> None:
    rng = np.random.default_rng(0)
    sharp = noise_field((256, 256), 10.0, 0.0, rng)
    soft = noise_field((256, 256), 10.0, 1.5, rng)
    assert sharp.dtype == np.float32 and sharp.std() == pytest.approx(10.0, rel=0.01)
    assert soft.std() == pytest.approx(10.0, rel=0.01)

    def neighbour_correlation(field: np.ndarray) -> float:
        return float(np.corrcoef(field[:, :-1].ravel(), field[:, 1:].ravel())[0, 1])

    assert abs(neighbour_correlation(sharp)) < 0.05 and neighbour_correlation(soft) > 0.6, "grain: white vs smoothed"


def test_the_transform_adds_noise_in_hu_to_each_window_and_keeps_clipped_pixels() -> None:
    """The same HU noise field in every channel, scaled by each window's width; full-scale (bone) pixels stay."""
    image = np.full((128, 128, 3), 120, np.uint8)
    image[:8] = 255  # bone, clipped by every window
    random.seed(1)
    noisy = UltralyticsHuShift(0.0, MULTI_WINDOW_INPUT, max_noise_hu=20.0)({"img": image})["img"].astype(float)
    assert (noisy[:8] == 255).all(), "clipped pixels keep their value"
    brain, subdural = noisy[8:, :, 1] - 120, noisy[8:, :, 0] - 120  # BGR: channel 1 brain (80), 0 subdural (200)
    assert 0 < brain.std() <= 20.0 * 255 / 80 * 1.05
    assert brain.std() / subdural.std() == pytest.approx(200 / 80, rel=0.1), "one HU field, each window's scale"
    assert np.corrcoef(brain.ravel(), subdural.ravel())[0, 1] > 0.9
