"""Stage-2 geometry: crop a box, resize to the segmenter's 224x224, and paste a mask back into the slice.

Training crops ground-truth boxes with these functions and inference crops detector boxes with the same
ones, so the segmenter always sees the input distribution it was trained on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ichseg.boxes import Box, pixel_bounds

CROP_SIZE = 224


def crop_to_input(windowed: np.ndarray, box: Box, size: int = CROP_SIZE) -> torch.Tensor:
    """Windowed uint8 slice, (H, W) grey or (3, H, W) channels → bicubic 3×``size``×``size`` crop of the box, 0-1
    (grey duplicated to the 3 channels)."""
    row0, row1, col0, col1 = pixel_bounds(box, *windowed.shape[-2:])
    crop = torch.from_numpy(np.ascontiguousarray(windowed[..., row0:row1, col0:col1], dtype=np.float32))
    planes = crop[None, None] if crop.ndim == 2 else crop[None]
    resized = F.interpolate(planes, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return (resized[0].clamp(0.0, 255.0) / 255.0).expand(3, size, size).contiguous()


def crop_mask_to_target(mask: np.ndarray, box: Box, size: int = CROP_SIZE) -> torch.Tensor:
    """Binary slice mask → ``size``×``size`` long target of the box (the training label of a crop)."""
    row0, row1, col0, col1 = pixel_bounds(box, *mask.shape)
    crop = torch.from_numpy(np.ascontiguousarray(mask[row0:row1, col0:col1] > 0, dtype=np.float32))
    resized = F.interpolate(crop[None, None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (resized[0, 0] >= 0.5).long()


def paste_probability(
    probability: torch.Tensor, box: Box, shape: tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """Foreground probability of a crop (``size``×``size``) → binary mask of the full slice.

    The probability (not a hard label) is resized back to the box so that the boundary is interpolated
    smoothly before thresholding; pixels outside the box are background.
    """
    row0, row1, col0, col1 = pixel_bounds(box, *shape)
    resized = F.interpolate(
        probability.float()[None, None], size=(row1 - row0, col1 - col0), mode="bilinear", align_corners=False,
        antialias=True,
    )[0, 0]
    mask = np.zeros(shape, dtype=bool)
    mask[row0:row1, col0:col1] = (resized >= threshold).cpu().numpy()
    return mask
