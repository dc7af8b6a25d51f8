"""Hemorrhage mimics painted into the phantom: things that are dense on CT but are not intracranial blood.

* physiological calcifications (100–600 HU, small): pineal gland, choroid plexus in the atria, globus pallidus
  (basal ganglia), dural/falcine plaques;
* extracranial collections outside the skull: scalp haematoma (50–80 HU) and soft-tissue swelling (20–45 HU).

The dural venous sinuses, falx, tentorium and petrous bones are part of ``synthetic.anatomy``; the scanner
artefacts (beam hardening, cupping, motion, kernels) are applied by ``synthetic.volume``. All of them carry
label 0 in the ground truth: it holds intracranial blood only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synthetic.anatomy import TISSUES, HeadAnatomy

CALCIFICATIONS = (
    "pineal calcification", "choroid plexus calcification", "basal ganglia calcification", "dural calcification"
)
SCALP_COLLECTIONS = ("scalp haematoma", "soft-tissue swelling")


@dataclass
class Calcification:
    """A small dense ellipsoid (head coordinates, mm)."""

    name: str  # one of CALCIFICATIONS (a tissue name)
    centre: np.ndarray
    radii: np.ndarray  # (3,) semi-axes along u, v, w
    hu: float

    def region(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        du = (u - self.centre[0]) / self.radii[0]
        dv = (v - self.centre[1]) / self.radii[1]
        dw = (w - self.centre[2]) / self.radii[2]
        return du * du + dv * dv + dw * dw < 1.0


@dataclass
class ScalpCollection:
    """A lens-shaped collection in and on the scalp, outside the skull, centred on a point of the scalp surface."""

    name: str  # one of SCALP_COLLECTIONS
    centre: np.ndarray  # on the outer surface of the head
    radius: float  # mm along the surface
    thickness: float  # mm of swelling beyond the normal scalp surface
    hu: float

    def region(
        self, fields: dict[str, np.ndarray], u: np.ndarray, v: np.ndarray, w: np.ndarray, scalp: float
    ) -> np.ndarray:
        """Voxels of the collection: between the outer table and the swollen surface (never inside the skull)."""
        du, dv, dw = u - self.centre[0], v - self.centre[1], w - self.centre[2]
        fraction = np.clip(1.0 - (du * du + dv * dv + dw * dw) / self.radius**2, 0, None)
        depth = fields["depth"]
        return (fraction > 0) & (depth < scalp - 1.0) & (depth > -self.thickness * fraction)


@dataclass
class Mimics:
    """The mimics of one head (any of them may be absent)."""

    calcifications: list[Calcification] = field(default_factory=list)
    scalp: list[ScalpCollection] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return sorted({c.name for c in self.calcifications} | {s.name for s in self.scalp})

    @classmethod
    def sample(cls, rng: np.random.Generator, anatomy: HeadAnatomy, rich: bool = False) -> Mimics:
        """Random mimics; ``rich`` (used for most studies without hemorrhage) makes each more likely."""
        boost = 1.6 if rich else 1.0
        calcifications: list[Calcification] = []
        if rng.random() < min(0.55 * boost, 0.95):
            calcifications.append(Calcification(
                "pineal calcification", anatomy.pineal() + rng.uniform(-1.5, 1.5, 3),
                rng.uniform(1.5, 4.0) * rng.uniform(0.8, 1.2, 3), rng.uniform(150, 600)))
        if rng.random() < min(0.45 * boost, 0.95):
            sides = [-1.0, 1.0] if rng.random() < 0.8 else [float(rng.choice([-1.0, 1.0]))]
            for side in sides:
                calcifications.append(Calcification(
                    "choroid plexus calcification", anatomy.atrium(side) + rng.uniform(-2, 2, 3),
                    np.array([rng.uniform(1.5, 3.5), rng.uniform(2.5, 6.0), rng.uniform(1.5, 3.5)]),
                    rng.uniform(100, 450)))
        if rng.random() < min(0.15 * boost, 0.95):
            for side in (-1.0, 1.0):
                calcifications.append(Calcification(
                    "basal ganglia calcification", anatomy.globus_pallidus(side) + rng.uniform(-2, 2, 3),
                    rng.uniform(1.5, 4.0) * rng.uniform(0.7, 1.3, 3), rng.uniform(100, 350)))
        if rng.random() < min(0.35 * boost, 0.95):
            for _ in range(int(rng.integers(1, 4))):
                centre = np.array([0.0, rng.uniform(-45, 45), anatomy.vertex - rng.uniform(18, 45)])
                calcifications.append(Calcification(
                    "dural calcification", centre,
                    np.array([rng.uniform(0.8, 1.6), rng.uniform(3, 10), rng.uniform(2, 8)]), rng.uniform(200, 600)))
        scalp: list[ScalpCollection] = []
        if rng.random() < min(0.3 * boost, 0.9):
            for _ in range(int(rng.choice([1, 2], p=[0.8, 0.2]))):
                name = SCALP_COLLECTIONS[int(rng.random() < 0.35)]
                hu = rng.uniform(50, 80) if name == "scalp haematoma" else rng.uniform(20, 45)
                scalp.append(ScalpCollection(
                    name, _outer_surface_point(anatomy, rng), rng.uniform(25, 55), rng.uniform(5, 18), hu
                ))
        return cls(calcifications, scalp)

    def paint(
        self, fields: dict[str, np.ndarray], anatomy: HeadAnatomy, u: np.ndarray, v: np.ndarray, w: np.ndarray
    ) -> None:
        """Write the mimics into the slice's tissue and HU maps (in place)."""
        tissue, hu = fields["tissue"], fields["hu"]
        for collection in self.scalp:
            if abs(float(w.mean()) - collection.centre[2]) > collection.radius + 0.5 * float(w.max() - w.min()):
                continue
            region = collection.region(fields, u, v, w, anatomy.scalp_thickness)
            if region.any():
                tissue[region] = TISSUES[collection.name]
                hu[region] = collection.hu
                # the skin is pushed out: the outermost 1.5 mm of the swelling stays skin-dense
                du, dv, dw = u - collection.centre[0], v - collection.centre[1], w - collection.centre[2]
                fraction = np.clip(1.0 - (du * du + dv * dv + dw * dw) / collection.radius**2, 0, None)
                rim = region & (fields["depth"] < 0) & (fields["depth"] < -collection.thickness * fraction + 1.5)
                tissue[rim] = TISSUES["skin"]
                hu[rim] = 40.0
        cavity = fields["cavity"]
        w_low, w_high = float(w.min()), float(w.max())
        for calcification in self.calcifications:
            reach = float(calcification.radii.max())
            if calcification.centre[2] + reach < w_low or calcification.centre[2] - reach > w_high:
                continue
            region = cavity & calcification.region(u, v, w)
            if calcification.name == "choroid plexus calcification":
                region &= fields["ventricles"] | (tissue == TISSUES["csf"])
            if region.any():
                tissue[region] = TISSUES[calcification.name]
                hu[region] = calcification.hu


def _outer_surface_point(anatomy: HeadAnatomy, rng: np.random.Generator) -> np.ndarray:
    """A point on the outer surface of the head, above the skull base."""
    a, b, c = anatomy.semi_axes
    w = rng.uniform(anatomy.skull_base_height + 10, anatomy.vertex - 12)
    angle = rng.uniform(0, 2 * np.pi)
    shrink = np.sqrt(max(1.0 - (w / c) ** 2, 0.05))
    return np.array([a * shrink * np.cos(angle), b * shrink * np.sin(angle), w])
