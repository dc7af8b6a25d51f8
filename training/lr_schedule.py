"""Learning-rate plans for the segmenter, as pure functions of the step: resumable by recording the step only.

* ``poly`` — the paper's (TransDeepLab's public trainer): ``lr0·(1 − step/total)^0.9``, meant for SGD 0.01 on an
  ImageNet-initialised Swin.
* ``warmup-cosine`` — linear warm-up to ``lr0``, then cosine decay to ``FLOOR``·lr0: the usual plan for AdamW on a
  transformer trained from random initialisation (measured here: 0.83 crop Dice after 100 steps vs 0.73 for SGD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

POLY_POWER = 0.9
FLOOR = 0.01  # cosine ends at 1 % of lr0, not 0: a resumed, extended plan keeps learning
SHAPES = ("poly", "warmup-cosine")


@dataclass(frozen=True)
class LrPlan:
    """``lr0`` at full strength, shaped over ``total_steps`` (``warmup_steps`` of them rising linearly)."""

    shape: str
    lr0: float
    total_steps: int
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"lr shape must be one of {SHAPES}, got {self.shape!r}")

    def lr(self, step: int) -> float:
        """The lr of optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr0 * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.shape == "poly":
            return self.lr0 * (1.0 - progress) ** POLY_POWER
        return self.lr0 * (FLOOR + (1.0 - FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def finished(self, step: int) -> bool:
        """True once the plan has reached its end (a poly plan is then at lr 0)."""
        return step >= self.total_steps
