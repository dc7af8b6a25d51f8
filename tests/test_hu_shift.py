"""The calibration-shift augmentation both trainings use (training.hu_shift)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ichseg.windowing import HEADER_INPUT, MULTI_WINDOW_INPUT, STROKE_INPUT
from training.hu_shift import UltralyticsHuShift, channel_widths, shift_windowed


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
    """The detector's images are written and loaded as BGR: the subdural window (200 HU wide) is channel 0."""
    image = np.full((4, 4, 3), 100, np.uint8)
    random.seed(3)
    offset = random.uniform(-8.0, 8.0)
    random.seed(3)
    labels = UltralyticsHuShift(8.0, MULTI_WINDOW_INPUT)({"img": image})
    expected = [round(100 + offset * 255 / width) for width in (200.0, 80.0, 80.0)]
    assert labels["img"][0, 0].tolist() == expected and image[0, 0].tolist() == [100, 100, 100], "cache untouched"
