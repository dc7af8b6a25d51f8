"""Acute hemorrhages of the five subtypes as 3D shapes in head coordinates, painted over the anatomy.

Each lesion is a 3D region evaluated on the same grid as the anatomy, so slicing stays coherent. Shapes and
places follow the subtypes' textbook appearance: epidural = biconvex lens on the inner table, subdural =
crescent along the convexity, subarachnoid = blood in sulci and basal cisterns, intraparenchymal = ovoid or
lobulated clot with an oedema rim, intraventricular = dependent (posterior, patient supine) ventricular blood.

Harder cases are drawn too: thin subdurals (2–4 mm), subarachnoid blood in one or two sulci, tiny
intraparenchymal clots (< 0.5 mL), intraventricular blood layering in the occipital horns, hyperacute blood
(35–50 HU) and mixed density (unclotted swirls, or a haematocrit fluid level with the dense part dependent,
i.e. posterior = +v for a supine patient). About half of the studies have no hemorrhage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ichseg.subtypes import SUBTYPES
from synthetic.anatomy import HeadAnatomy, PlaneWaves

Fields = dict[str, np.ndarray]


@dataclass
class Lesion:
    """One hemorrhage: its subtype index, blood density and 3D shape parameters."""

    subtype: int
    blood_hu: float
    centre: np.ndarray  # head coordinates (mm)
    size: float  # main radius (mm)
    thickness: float  # maximal thickness (extra-axial) or secondary radius (mm)
    waves: PlaneWaves  # irregularity of the outline
    oedema_hu: float = 20.0  # perihematomal oedema density (intraparenchymal only)
    mix: str = "uniform"  # "uniform", "swirl" (hyperacute unclotted swirls) or "level" (fluid level)
    low_hu: float = 45.0  # density of the swirls / of the non-dependent layer
    variant: str = "classic"  # how it was drawn: classic, thin, sulcal, tiny, layering

    def density(self, texture: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """HU of the blood at the given voxels (``texture``: the head's slow density field there)."""
        hu = self.blood_hu + 2.0 * texture
        if self.mix == "swirl":
            swirl = self.waves(2.5 * u, 2.5 * v, 2.5 * w)
            hu = np.where(swirl > 0.3, self.low_hu + 2.0 * texture, hu)
        elif self.mix == "level":  # serum anteriorly (non-dependent), cells posteriorly (dependent, +v)
            hu = np.where(v < self.centre[1], self.low_hu + 2.0 * texture, hu)
        return hu.astype(np.float32)

    @property
    def name(self) -> str:
        return SUBTYPES[self.subtype]

    def region(self, fields: Fields, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Voxels of this slice filled with blood."""
        du, dv, dw = u - self.centre[0], v - self.centre[1], w - self.centre[2]
        distance = np.sqrt(du * du + dv * dv + dw * dw)
        wobble = 1.0 + 0.12 * self.waves(u, v, w)
        cavity, depth = fields["cavity"], fields["inner_depth"]
        name = self.name
        if name == "epidural":
            reach = self.thickness * (1.0 - (distance / (self.size * wobble)) ** 2)
            return cavity & (depth < reach)
        if name == "subdural":
            reach = self.thickness * (1.0 - (distance / (self.size * wobble)) ** 4)
            return cavity & (depth < reach)
        if name == "subarachnoid":
            return fields["csf_spaces"] & (distance < self.size * wobble)
        if name == "intraparenchymal":
            return (fields["brain"] | fields["csf_spaces"]) & (self._ellipsoid(du, dv, dw) < wobble)
        # intraventricular: the dependent part of the ventricles near the centre, below a fluid level
        return fields["ventricles"] & (dv > -self.thickness) & (distance < self.size * wobble)

    def _ellipsoid(self, du: np.ndarray, dv: np.ndarray, dw: np.ndarray) -> np.ndarray:
        return np.sqrt((du / self.size) ** 2 + (dv / self.thickness) ** 2 + (dw / (0.8 * self.size)) ** 2)

    def oedema(self, fields: Fields, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Perihematomal oedema rim (intraparenchymal only): a shell 2–6 mm around the clot."""
        if self.name != "intraparenchymal":
            return np.zeros(u.shape, dtype=bool)
        du, dv, dw = u - self.centre[0], v - self.centre[1], w - self.centre[2]
        shell = 1.0 + min(6.0, 0.3 * self.size) / self.size
        return fields["brain"] & (self._ellipsoid(du, dv, dw) < shell * (1.0 + 0.12 * self.waves(u, v, w)))


def _surface_point(anatomy: HeadAnatomy, rng: np.random.Generator, w_range: tuple[float, float]) -> np.ndarray:
    """A point just inside the inner table, at a random direction and height."""
    a, b, c = anatomy.semi_axes
    w = rng.uniform(*w_range)
    angle = rng.uniform(0, 2 * np.pi)
    shrink = np.sqrt(max(1.0 - (w / c) ** 2, 0.05))
    inset = anatomy.scalp_thickness + anatomy.skull_thickness + 1.0
    return np.array([(a * shrink - inset) * np.cos(angle), (b * shrink - inset) * np.sin(angle), w])


def _mix(rng: np.random.Generator, lesion: Lesion) -> Lesion:
    """Hyperacute and mixed-density variants of a lesion's density."""
    draw = rng.random()
    if draw < 0.1:  # hyperacute: unclotted blood, barely denser than grey matter
        lesion.blood_hu = rng.uniform(38, 50)
    elif draw < 0.3:
        lesion.mix, lesion.low_hu = "swirl", rng.uniform(35, 50)
    elif draw < 0.4 and lesion.name in ("intraparenchymal", "subdural", "intraventricular"):
        lesion.mix, lesion.low_hu = "level", rng.uniform(35, 50)
        lesion.blood_hu = max(lesion.blood_hu, rng.uniform(65, 85))
    return lesion


def sample_lesion(anatomy: HeadAnatomy, rng: np.random.Generator, subtype: int) -> Lesion:
    """A lesion of the given subtype at a plausible place and size for this head."""
    return _mix(rng, _sample_shape(anatomy, rng, subtype))


def _sample_shape(anatomy: HeadAnatomy, rng: np.random.Generator, subtype: int) -> Lesion:
    name = SUBTYPES[subtype]
    base = anatomy.skull_base_height
    waves = PlaneWaves.sample(rng, 6, (15, 45))
    blood = rng.uniform(55, 85)
    hard = rng.random()
    if name == "epidural":
        centre = _surface_point(anatomy, rng, (base + 15, anatomy.vertex - 25))
        return Lesion(subtype, blood, centre, rng.uniform(22, 38), rng.uniform(6, 20), waves)
    if name == "subdural":
        centre = _surface_point(anatomy, rng, (base + 20, anatomy.vertex - 30))
        if hard < 0.35:  # thin subdural along the convexity or the tentorium/falx
            return Lesion(
                subtype, rng.uniform(50, 80), centre, rng.uniform(40, 70), rng.uniform(2, 4), waves, variant="thin"
            )
        return Lesion(subtype, rng.uniform(50, 80), centre, rng.uniform(45, 75), rng.uniform(4, 14), waves)
    if name == "subarachnoid":
        if hard < 0.3:  # a little blood in one or two convexity sulci
            centre = _surface_point(anatomy, rng, (base + 25, anatomy.vertex - 20)) * np.array([0.93, 0.93, 1.0])
            return Lesion(subtype, rng.uniform(50, 75), centre, rng.uniform(6, 12), 0.0, waves, variant="sulcal")
        if rng.random() < 0.5:  # basal cisterns (aneurysmal pattern)
            centre = np.array([rng.uniform(-8, 8), rng.uniform(-10, 10), base + 8.0])
        else:  # convexity sulci (traumatic pattern)
            centre = _surface_point(anatomy, rng, (base + 25, anatomy.vertex - 20)) * np.array([0.9, 0.9, 1.0])
        return Lesion(subtype, rng.uniform(45, 70), centre, rng.uniform(18, 40), 0.0, waves)
    if name == "intraparenchymal":
        if rng.random() < 0.5:  # deep (basal ganglia / thalamus, hypertensive)
            centre = np.array(
                [rng.choice([-1, 1]) * rng.uniform(14, 28), rng.uniform(-12, 12), rng.uniform(base + 25, base + 45)]
            )
        else:  # lobar
            a, b, _ = anatomy.semi_axes
            angle = rng.uniform(0, 2 * np.pi)
            reach = rng.uniform(0.35, 0.6)
            centre = np.array(
                [a * reach * np.cos(angle), b * reach * np.sin(angle), rng.uniform(base + 30, anatomy.vertex - 35)]
            )
        if hard < 0.25:  # tiny clot, < 0.5 mL
            radius = rng.uniform(2.5, 4.2)
            return Lesion(subtype, rng.uniform(60, 85), centre, radius, radius * rng.uniform(0.7, 1.1), waves,
                          rng.uniform(18, 25), variant="tiny")
        radius = rng.uniform(6, 22)
        return Lesion(
            subtype, rng.uniform(60, 90), centre, radius, radius * rng.uniform(0.6, 1.3), waves, rng.uniform(15, 25)
        )
    if hard < 0.5:  # layering in both occipital horns below a fluid level (dependent = posterior)
        centre = np.array([0.0, rng.uniform(22, 32), anatomy.ventricle_height - 4.0])
        return Lesion(subtype, rng.uniform(55, 80), centre, 60.0, 0.0, waves, variant="layering")
    centre = np.array([rng.choice([-1, 1]) * 10.0, rng.uniform(15, 30), anatomy.ventricle_height - 3.0])
    return Lesion(subtype, rng.uniform(50, 80), centre, rng.uniform(25, 45), rng.uniform(-5, 20), waves)


#: Share of studies without any hemorrhage (the product must stay silent on these, mimics included).
NEGATIVE_FRACTION = 0.5


def sample_lesions(anatomy: HeadAnatomy, rng: np.random.Generator) -> list[Lesion]:
    """0–3 lesions of mixed subtypes; NEGATIVE_FRACTION of studies have none."""
    if rng.random() < NEGATIVE_FRACTION:
        return []
    count = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
    return [sample_lesion(anatomy, rng, int(rng.integers(len(SUBTYPES)))) for _ in range(count)]
