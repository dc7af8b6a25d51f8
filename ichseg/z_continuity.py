"""Hysteresis across slices: a sure box starts a finding, weaker boxes that continue it in 3D are believed too.

Why: a hemorrhage spans several slices, and the detector is surest on its middle slices; its thin top and bottom
slices score lower. One threshold must choose between missing them and believing every weak box on mimics. As in
Canny's edge hysteresis, a detection at ``seed`` confidence or above is kept; one at ``extend`` or above is kept only
when its box overlaps a kept box on the same or an adjacent slice (transitively), so weak boxes that continue a sure
finding are kept and isolated weak boxes are not. ``extend == seed`` is the plain threshold. Adjacency counts slices,
not millimetres, and any shared area continues a finding (chosen on phantoms of 0.625–5 mm slices).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Protocol, TypeVar

from ichseg.boxes import Box


class Scored(Protocol):
    """What the hysteresis reads of a detection (``ichseg.detector.Detection``)."""

    @property
    def confidence(self) -> float: ...

    @property
    def box(self) -> Box: ...


D = TypeVar("D", bound=Scored)


def _overlap(a: Box, b: Box) -> bool:
    """The boxes share area (touching edges do not count)."""
    return max(a[0], b[0]) < min(a[2], b[2]) and max(a[1], b[1]) < min(a[3], b[3])


def continue_findings(detections: Sequence[Sequence[D]], seed: float, extend: float) -> list[list[D]]:
    """Per slice (in slice order), the detections kept by hysteresis; each slice's kept ones in their input order.

    Each kept box is compared only with the weak boxes still waiting on its own and its two neighbouring slices, and
    a weak box stops waiting once kept: linear in the boxes for the few boxes per slice of an operating point.
    """
    if not 0.0 <= extend <= seed:
        raise ValueError(f"extend confidence {extend} must lie between 0 and the seed confidence {seed}")
    if extend == seed:
        return [[d for d in found if d.confidence >= seed] for found in detections]
    kept = [[d.confidence >= seed for d in found] for found in detections]
    waiting = [[i for i, d in enumerate(found) if extend <= d.confidence < seed] for found in detections]
    queue = deque((z, i) for z, flags in enumerate(kept) for i, flag in enumerate(flags) if flag)
    while queue:
        z, i = queue.popleft()
        box = detections[z][i].box
        for near in (z - 1, z, z + 1):
            if not 0 <= near < len(detections) or not waiting[near]:
                continue
            joined = [j for j in waiting[near] if _overlap(box, detections[near][j].box)]
            for j in joined:
                kept[near][j] = True
                queue.append((near, j))
            if joined:
                waiting[near] = [j for j in waiting[near] if not kept[near][j]]
    return [[d for d, flag in zip(found, flags, strict=True) if flag] for found, flags in zip(detections, kept,
                                                                                               strict=True)]
