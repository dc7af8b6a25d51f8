"""A 3D non-contrast head phantom in Hounsfield units, evaluated slice by slice.

The head is defined analytically in head coordinates (mm; u → patient left, v → posterior, w → superior),
so any axial slice can be cut from the same 3D head and neighbouring slices agree. Every random choice
(head size and shape, skull thickness, ventricle size, gyral pattern, pose) comes from one numpy Generator.

Coverage is craniocaudal, from below the skull base to the vertex. Below the anterior cranial fossa floor
(``skull_base_height``, B) the head holds: the orbits (fat, globes ≈ 10 HU, lenses ≈ 120 HU) with the
ethmoid air cells between them, the sphenoid sinus, the nasal cavity and maxillary sinuses at the lowest
levels; the middle cranial fossae (temporal lobes); the clivus; the petrous temporal bones (> 1500 HU,
wedges running antero-medially) with the mastoid air cells behind them; and, under the tentorium, the
posterior fossa (cerebellum with grey/white folia, vermis, fourth ventricle, brainstem, prepontine cistern).
The dural venous sinuses (superior sagittal, transverse, straight) are blood-dense but are not hemorrhage.

Tissue values follow typical adult non-contrast CT: air −1000, fat ≈ −100, skin/galea ≈ 40, cortical bone
700–1500, petrous bone 1600–2400, diploe 250–600, grey matter 35–45, white matter 22–32, CSF 0–15,
falx ≈ 60, tentorium 50–65, venous sinus blood 40–65, globe ≈ 10, lens ≈ 120.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Tissue codes of the phantom's tissue map (lesion codes are added by the renderer). New codes are appended,
#: so the old codes keep their numbers. Only "blood" is hemorrhage; every other code is labelled 0.
TISSUES: dict[str, int] = {
    name: code
    for code, name in enumerate((
        "air", "skin", "fat", "cortical bone", "diploe", "skull base", "sinus air", "grey matter", "white matter",
        "csf", "falx", "oedema", "blood",
        # skull base and posterior fossa anatomy
        "petrous bone", "mastoid air cells", "globe", "lens", "brainstem", "tentorium", "muscle",
        # hemorrhage mimics (label 0)
        "venous sinus", "pineal calcification", "choroid plexus calcification", "basal ganglia calcification",
        "dural calcification", "scalp haematoma", "soft-tissue swelling",
    ))
}

#: Tissue codes that imitate hemorrhage on CT but are not intracranial blood (label 0 in the ground truth).
MIMICS: tuple[str, ...] = (
    "venous sinus", "pineal calcification", "choroid plexus calcification", "basal ganglia calcification",
    "dural calcification", "scalp haematoma", "soft-tissue swelling", "tentorium", "falx", "petrous bone",
)


@dataclass
class PlaneWaves:
    """A smooth random 3D field: a sum of cosines with random directions, wavelengths and phases."""

    vectors: np.ndarray  # (k, 3) wave vectors, rad/mm
    phases: np.ndarray  # (k,)

    @classmethod
    def sample(cls, rng: np.random.Generator, count: int, wavelength: tuple[float, float]) -> PlaneWaves:
        directions = rng.normal(size=(count, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lengths = rng.uniform(*wavelength, size=count)
        return cls(directions * (2 * np.pi / lengths)[:, None], rng.uniform(0, 2 * np.pi, size=count))

    def __call__(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Field value, normalised to unit variance.

        On a full slice grid the field is evaluated every 4th pixel and interpolated: wavelengths are ≥ 10 mm
        (≥ 20 pixels), and this is where the generator spends most of its time.
        """
        if u.ndim == 2 and u.shape[0] % 4 == 0 and u.shape[1] % 4 == 0 and u.shape[0] >= 64:
            coarse = self._evaluate(u[::4, ::4], v[::4, ::4], w[::4, ::4])
            return cv2.resize(coarse, (u.shape[1], u.shape[0]), interpolation=cv2.INTER_LINEAR)
        return self._evaluate(u, v, w)

    def _evaluate(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        total = np.zeros(np.broadcast(u, v, w).shape, dtype=np.float32)
        for (ku, kv, kw), phase in zip(self.vectors, self.phases, strict=True):
            total += np.cos(ku * u + kv * v + kw * w + phase, dtype=np.float32)
        return total * np.float32(np.sqrt(2.0 / len(self.phases)))


def _honeycomb(
    u: np.ndarray, v: np.ndarray, w: np.ndarray, cell: float, septum: float, phase: np.ndarray
) -> np.ndarray:
    """True inside air cells of a bony honeycomb of ``cell`` mm with septa ``septum`` (fraction of a cell)."""
    k = np.float32(np.pi / cell)
    a = np.abs(np.sin(k * u + phase[0] + 0.6 * np.sin(k * 0.7 * w + phase[2])))
    b = np.abs(np.sin(k * v + phase[1] + 0.6 * np.sin(k * 0.7 * u + phase[0])))
    c = np.abs(np.sin(k * w + phase[2] + 0.6 * np.sin(k * 0.7 * v + phase[1])))
    return (a > septum) & (b > septum) & (c > septum)


def _near_segment(u, v, w, start, end, reach: float) -> np.ndarray:
    """Cheap pre-selection: voxels inside the bounding box of the segment start→end grown by ``reach`` mm."""
    low, high = np.minimum(start, end) - reach, np.maximum(start, end) + reach
    if float(w.min()) > high[2] or float(w.max()) < low[2]:
        return np.zeros(u.shape, dtype=bool)
    return (u > low[0]) & (u < high[0]) & (v > low[1]) & (v < high[1]) & (w > low[2]) & (w < high[2])


def _segment_distance(u, v, w, start, end):
    """Distance to the segment start→end and the position t ∈ [0, 1] of the closest point along it."""
    d = np.asarray(end, dtype=np.float32) - np.asarray(start, dtype=np.float32)
    pu, pv, pw = u - start[0], v - start[1], w - start[2]
    t = np.clip((pu * d[0] + pv * d[1] + pw * d[2]) / float(d @ d), 0.0, 1.0)
    du, dv, dw = pu - t * d[0], pv - t * d[1], pw - t * d[2]
    return np.sqrt(du * du + dv * dv + dw * dw), t, (du, dv, dw)


@dataclass
class HeadAnatomy:
    """Sampled parameters of one head; ``slice_fields`` evaluates it on a grid of head coordinates."""

    semi_axes: np.ndarray  # outer head ellipsoid (a lateral, b antero-posterior, c superior) mm
    shape_waves: PlaneWaves  # low-frequency bumps of the head outline
    scalp_thickness: float
    skull_thickness: float  # mean; varies with direction
    skull_waves: PlaneWaves
    cortical_hu: float
    diploe_hu: float
    extra_axial_csf: float  # mm of CSF between inner table and cortex (atrophy)
    cortex_thickness: float
    grey_hu: float
    white_hu: float
    csf_hu: float
    sulcal_waves: PlaneWaves  # zero-crossings of this field are sulci
    sulcal_width: float
    ventricle_scale: float
    ventricle_height: float  # w of the lateral ventricles' centre
    texture_waves: PlaneWaves
    skull_base_height: float  # below this w the anterior cranial fossa floor rises
    # skull base, orbits and posterior fossa
    petrous_hu: float = 1900.0
    petrous_size: float = 1.0
    mastoid_cell: float = 3.5  # mm; pneumatisation of the mastoid air cells
    mastoid_septum: float = 0.25  # septum fraction of a cell (sclerotic mastoids: larger)
    honeycomb_phase: np.ndarray | None = None
    globe_hu: float = 10.0
    lens_hu: float = 120.0
    globe_radius: float = 12.0
    folia_waves: PlaneWaves | None = None  # cerebellar folia
    tentorium_height: float = 26.0  # mm above the skull base at the incisura
    tentorium_hu: float = 58.0
    falx_hu: float = 65.0
    sinus_hu: float = 50.0  # dural venous sinuses (dense in high haematocrit)
    sinus_size: float = 1.0
    muscle_hu: float = 50.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> HeadAnatomy:
        age_atrophy = rng.uniform(0.0, 1.0)
        head = cls(
            semi_axes=np.array([rng.uniform(68, 80), rng.uniform(86, 100), rng.uniform(80, 92)]),
            shape_waves=PlaneWaves.sample(rng, 6, (120, 260)),
            scalp_thickness=rng.uniform(3.5, 7.0),
            skull_thickness=rng.uniform(5.0, 8.5),
            skull_waves=PlaneWaves.sample(rng, 6, (60, 160)),
            cortical_hu=rng.uniform(900, 1500),
            diploe_hu=rng.uniform(250, 600),
            extra_axial_csf=0.6 + 3.0 * age_atrophy * rng.uniform(0.3, 1.0),
            cortex_thickness=rng.uniform(2.5, 4.0),
            grey_hu=rng.uniform(36, 44),
            white_hu=rng.uniform(23, 31),
            csf_hu=rng.uniform(2, 12),
            sulcal_waves=PlaneWaves.sample(rng, 14, (18, 34)),
            sulcal_width=rng.uniform(0.05, 0.10) + 0.08 * age_atrophy,
            ventricle_scale=rng.uniform(0.7, 1.0) + 0.6 * age_atrophy,
            ventricle_height=rng.uniform(8, 20),
            texture_waves=PlaneWaves.sample(rng, 8, (10, 40)),
            skull_base_height=rng.uniform(-30, -20),
        )
        # Drawn after the original parameters, so the first draws of a seed stay what they were.
        head.petrous_hu = rng.uniform(1600, 2400)
        head.petrous_size = rng.uniform(0.85, 1.15)
        head.mastoid_cell = rng.uniform(2.5, 5.0)
        head.mastoid_septum = rng.choice([rng.uniform(0.15, 0.3), rng.uniform(0.4, 0.7)], p=[0.8, 0.2])
        head.honeycomb_phase = rng.uniform(0, np.pi, size=3).astype(np.float32)
        head.globe_hu = rng.uniform(6, 15)
        head.lens_hu = rng.uniform(100, 135)
        head.globe_radius = rng.uniform(11.0, 12.5)
        head.folia_waves = PlaneWaves.sample(rng, 10, (10, 16))
        head.tentorium_height = rng.uniform(22, 30)
        head.tentorium_hu = rng.uniform(50, 65)
        head.falx_hu = rng.uniform(55, 70)
        head.sinus_hu = rng.uniform(40, 65)
        head.sinus_size = rng.uniform(0.8, 1.3)
        head.muscle_hu = rng.uniform(45, 58)
        return head

    @property
    def vertex(self) -> float:
        """Highest w of the head (top of the scalp)."""
        return float(self.semi_axes[2])

    def outer_depth(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Depth (mm) below the scalp surface along the ray from the head centre; negative outside."""
        a, b, c = self.semi_axes
        radius = np.sqrt(u * u + v * v + w * w) + 1e-3
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2) + 1e-6
        rho *= 1.0 + 0.025 * self.shape_waves(u, v, w)
        return radius / rho - radius

    def skull_thickness_at(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Skull thickness: thinner at the temporal squama, thicker frontally and occipitally."""
        radial = np.sqrt(u * u + v * v) + 1e-3
        temporal = np.clip(np.abs(u) / radial, 0, 1) ** 4 * np.clip(1.0 - np.abs(w) / 60.0, 0, 1)
        thickness = self.skull_thickness * (1.0 + 0.15 * self.skull_waves(u, v, w)) - 2.5 * temporal
        return np.maximum(thickness, 2.0)

    def lateral_ventricles(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Two curved ellipsoids (bodies bending down into the occipital horns), plus the third ventricle."""
        s = self.ventricle_scale
        h = self.ventricle_height
        bend = h - 0.004 * (v - 5.0) ** 2  # roof curves down anteriorly and posteriorly
        inside = np.zeros(u.shape, dtype=bool)
        for side in (-1.0, 1.0):
            centre_u = side * (7.0 + 3.0 * s) + side * 0.08 * np.clip(v, 0, None)
            r = ((u - centre_u) / (6.0 * s)) ** 2 + ((v - 2.0) / 36.0) ** 2 + ((w - bend) / (7.0 * s)) ** 2
            inside |= r < 1.0
        third = (np.abs(u) < 1.0 + 0.8 * s) & (np.abs(v + 2.0) < 12.0) & (np.abs(w - (h - 18.0)) < 8.0)
        return inside | third

    # Landmarks of the skull base and posterior fossa (head coordinates, mm), shared with the mimics.
    def atrium(self, side: float) -> np.ndarray:
        """Centre of a lateral ventricle's atrium (trigone), where the choroid plexus calcifies."""
        s, h = self.ventricle_scale, self.ventricle_height
        v = 26.0
        return np.array([side * (7.0 + 3.0 * s + 0.08 * v), v, h - 0.004 * (v - 5.0) ** 2])

    def pineal(self) -> np.ndarray:
        """The pineal gland: midline, just behind the third ventricle."""
        return np.array([0.0, 12.0, self.ventricle_height - 15.0])

    def globus_pallidus(self, side: float) -> np.ndarray:
        return np.array([side * 17.0, -1.0, self.ventricle_height - 12.0])

    def clivus_v(self, w: np.ndarray) -> np.ndarray:
        """v of the clivus' posterior surface line, sloping back from the dorsum sellae to the foramen magnum."""
        return -6.0 + 0.45 * np.clip(self.skull_base_height - w, 0, None)

    def tentorium_w(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Height of the tentorium: a tent rising from the transverse sinuses to the incisura."""
        radial = np.sqrt(u * u + (0.8 * (v - 8.0)) ** 2)
        return self.skull_base_height + self.tentorium_height - 0.4 * radial - 0.8 * np.clip(8.0 - v, 0, None)

    def petrous_axes(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(apex, lateral end) of each petrous ridge: wedges running antero-medially."""
        base, k = self.skull_base_height, self.petrous_size
        return [
            (np.array([side * 13.0, -4.0, base - 8.0]),
             np.array([side * (13.0 + 33.0 * k), -4.0 + 26.0 * k, base - 14.0]))
            for side in (-1.0, 1.0)
        ]

    def cistern(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Perimesencephalic and suprasellar cisterns: CSF ring around the midbrain near the skull base."""
        band = np.clip(1.0 - np.abs(w - (self.skull_base_height + 8.0)) / 9.0, 0, 1)
        midbrain = ((u / 13.0) ** 2 + ((v - 8.0) / 15.0) ** 2) ** 0.5
        ring = (midbrain > 1.0) & (midbrain < 1.0 + 0.35 * band)
        suprasellar = ((u / 10.0) ** 2 + ((v + 12.0) / 7.0) ** 2 < 1.0) & (band > 0.3)
        return (ring | suprasellar) & (band > 0)

    def tissue_hu(self) -> np.ndarray:
        """Mean HU of each tissue code of this head (index = code)."""
        table = np.zeros(len(TISSUES), dtype=np.float32)
        for name, value in {
            "air": -1000.0, "skin": 40.0, "fat": -95.0, "cortical bone": self.cortical_hu, "diploe": self.diploe_hu,
            "skull base": self.diploe_hu + 300.0, "sinus air": -950.0, "grey matter": self.grey_hu,
            "white matter": self.white_hu, "csf": self.csf_hu, "falx": self.falx_hu,
            "petrous bone": self.petrous_hu, "mastoid air cells": -900.0, "globe": self.globe_hu, "lens": self.lens_hu,
            "brainstem": self.white_hu + 4.0, "tentorium": self.tentorium_hu, "muscle": self.muscle_hu,
            "venous sinus": self.sinus_hu,
        }.items():
            table[TISSUES[name]] = value
        return table

    def slice_fields(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
        """Tissue codes and HU of healthy tissue, plus the masks lesions need (cavity, brain, CSF, depth)."""
        depth = self.outer_depth(u, v, w)
        scalp = self.scalp_thickness
        skull = self.skull_thickness_at(u, v, w)
        inner_depth = depth - scalp - skull  # depth below the inner table
        tissue = np.full(u.shape, TISSUES["air"], dtype=np.uint8)

        in_scalp = (depth >= 0) & (depth < scalp)
        tissue[in_scalp] = TISSUES["fat"]
        tissue[in_scalp & ((depth < 1.5) | (depth > scalp - 1.0))] = TISSUES["skin"]  # skin and galea

        in_skull = (depth >= scalp) & (inner_depth < 0)
        into_bone = (depth - scalp) / skull
        table = (into_bone < 0.28) | (into_bone > 0.72)
        tissue[in_skull] = np.where(table[in_skull], TISSUES["cortical bone"], TISSUES["diploe"])

        cavity = inner_depth >= 0
        base = self.skull_base_height
        low_slice = float(np.min(w)) < base + self.tentorium_height + 6.0
        infratentorial = np.zeros(u.shape, dtype=bool)
        tentorium = np.zeros(u.shape, dtype=bool)
        brainstem = np.zeros(u.shape, dtype=bool)
        base_csf = np.zeros(u.shape, dtype=bool)
        cerebellar_grey = np.zeros(u.shape, dtype=bool)
        if low_slice:
            cavity, extra = self._skull_base(u, v, w, depth, inner_depth, cavity, tissue)
            infratentorial, tentorium, brainstem, base_csf, cerebellar_grey = extra

        supratentorial = cavity & ~infratentorial
        csf_layer = cavity & (inner_depth < self.extra_axial_csf)
        cortex_depth = inner_depth - self.extra_axial_csf
        sulcal = self.sulcal_waves(u, v, w)
        sulci = supratentorial & (np.abs(sulcal) < self.sulcal_width) & (cortex_depth < 22.0)
        fissure_half_width = 0.8 + 0.6 * self.ventricle_scale
        fissure = supratentorial & (np.abs(u) < fissure_half_width) & (cortex_depth < 45.0) & (w > base + 10)
        falx = supratentorial & (np.abs(u) < 0.5) & (cortex_depth < 40.0) & (w > base + 20)
        ventricles = supratentorial & self.lateral_ventricles(u, v, w)
        cisterns = cavity & self.cistern(u, v, w) & ~brainstem
        csf = csf_layer | sulci | fissure | ventricles | cisterns | base_csf

        grey = supratentorial & (
            (cortex_depth < self.cortex_thickness) | (np.abs(sulcal) < self.sulcal_width + 0.25) & (cortex_depth < 24.0)
        )
        deep_grey = supratentorial & (
            ((np.abs(u) - 20.0) / 9.0) ** 2 + ((v + 2.0) / 14.0) ** 2 + ((w - self.ventricle_height + 12) / 10.0) ** 2
            < 1.0
        )
        tissue[cavity] = TISSUES["white matter"]
        tissue[grey | deep_grey | cerebellar_grey] = TISSUES["grey matter"]
        tissue[brainstem] = TISSUES["brainstem"]
        tissue[csf] = TISSUES["csf"]
        tissue[falx] = TISSUES["falx"]
        tissue[tentorium] = TISSUES["tentorium"]
        sinus = self._venous_sinuses(u, v, w, inner_depth, cavity, low_slice)
        tissue[sinus] = TISSUES["venous sinus"]
        hu = self.tissue_hu()[tissue]
        textured = cavity & ~falx & ~tentorium & ~sinus  # slow density variation of brain and CSF (±1.5 HU)
        hu[textured] += 1.5 * self.texture_waves(u, v, w)[textured]
        dura = falx | tentorium | sinus
        return {
            "hu": hu,
            "tissue": tissue,
            "cavity": cavity,
            "brain": cavity & ~csf & ~dura,
            "csf_spaces": (sulci | cisterns | fissure | csf_layer | base_csf) & ~dura,
            "ventricles": ventricles,
            "inner_depth": inner_depth,
            "depth": depth,
            "scalp": in_scalp,
        }

    def _skull_base(self, u, v, w, depth, inner_depth, cavity, tissue):
        """Paint the skull base into ``tissue``; returns the narrowed cavity and the posterior-fossa masks."""
        a, b, c = self.semi_axes
        base = self.skull_base_height
        drop = np.clip(base - w, 0, None)
        below = drop > 0
        inside_head = depth >= 1.5  # under the skin

        # Posterior fossa: under the tentorium, behind the clivus and the petrous ridges.
        tent_w = self.tentorium_w(u, v)
        petrous_line = -4.0 + 0.79 * np.clip(np.abs(u) - 13.0, 0, None)
        v_front = np.where(below, np.maximum(self.clivus_v(w) + 4.0, petrous_line), -12.0)
        infratentorial = cavity & (w < tent_w) & (v > v_front)
        radial = np.sqrt(u * u + (0.8 * (v - 8.0)) ** 2)
        tentorium = cavity & (np.abs(w - tent_w) < 0.9) & (v > v_front) & (radial > 15.0)

        # Anterior skull base and face: in front of a plane that moves back as the slice goes down.
        face = below & (v < -0.55 * b + 2.2 * drop)
        middle_fossa = (np.abs(u) > 26.0) & (v > -0.42 * b) & (drop < 26.0) & ~infratentorial
        face &= ~middle_fossa
        clivus_v = self.clivus_v(w)
        central = (drop > 3.0) & (np.abs(u) < 20.0) & (v < clivus_v + 4.0) & (v > -0.3 * b) & (drop < 55.0)
        deep = (drop > 27.0) & ~infratentorial & ~face & ~central  # under the middle fossa floor
        # Bone: the fossa floor (a plate along the face plane), the sphenoid body and clivus; soft tissue in front.
        plate = face & (v > -0.55 * b + 2.2 * drop - 5.0) & (drop < 30.0)
        sphenoid_body = central & ((drop < 30.0) | (v > clivus_v - 8.0))
        bone = cavity & (plate | sphenoid_body | (face & (drop < 4.0)))
        tissue[cavity & (face | central | deep)] = TISSUES["muscle"]
        tissue[bone] = TISSUES["skull base"]
        new_cavity = cavity & ~face & ~central & ~deep

        # Sinuses: sphenoid (midline, behind the ethmoids), ethmoid air cells, nasal cavity, maxillary sinuses.
        phase = self.honeycomb_phase if self.honeycomb_phase is not None else np.zeros(3, np.float32)
        front_base = cavity & (face | central)
        sphenoid = (u / 13.0) ** 2 + ((v + 0.2 * b - 4.0) / 10.0) ** 2 + ((w - base + 15.0) / 9.0) ** 2
        tissue[front_base & (sphenoid < 1.4)] = TISSUES["skull base"]
        tissue[front_base & (sphenoid < 1.0) & (np.abs(u) > 0.8)] = TISSUES["sinus air"]
        ethmoid = front_base & (np.abs(u) < 11.0) & (v < -0.3 * b) & (drop > 2.0) & (drop < 32.0)
        if ethmoid.any():
            cells = _honeycomb(u[ethmoid], v[ethmoid], w[ethmoid], 5.0, 0.2, phase)
            tissue[ethmoid] = np.where(cells, TISSUES["sinus air"], TISSUES["skull base"])
        nasal = cavity & face & (np.abs(u) < 12.0) & (np.abs(u) > 1.2) & (drop > 30.0) & (v < -0.25 * b)
        tissue[nasal] = TISSUES["sinus air"]
        for side in (-1.0, 1.0):
            maxillary = ((u - side * 25.0) / 12.0) ** 2 + ((v + 0.5 * b) / 15.0) ** 2 + ((w - base + 46.0) / 15.0) ** 2
            tissue[cavity & face & (maxillary < 1.0)] = TISSUES["skull base"]
            tissue[cavity & face & (maxillary < 0.8)] = TISSUES["sinus air"]

        # Orbits: a fat-filled cone, walled by bone, holding the globe and its lens.
        shrink = np.sqrt(max(1.0 - ((base - 14.0) / c) ** 2, 0.05))
        front = -(b * shrink) + 4.0
        for side in (-1.0, 1.0):
            apex = np.array([side * 12.0, -0.2 * b, base - 12.0])
            opening = np.array([side * 33.0, front + 8.0, base - 14.0])
            near = _near_segment(u, v, w, apex, opening, 22.0) & inside_head & below & (drop < 34.0)
            orbit = np.zeros(u.shape, dtype=bool)
            wall = np.zeros(u.shape, dtype=bool)
            if near.any():
                distance, t, _ = _segment_distance(u[near], v[near], w[near], apex, opening)
                radius = 3.0 + 16.0 * t
                in_orbit = (distance < radius) & (drop[near] < 32.0)
                orbit[near] = in_orbit
                wall[near] = (distance < radius + 2.0) & ~in_orbit & (v[near] > front + 10.0)
            tissue[wall & (tissue != TISSUES["sinus air"])] = TISSUES["skull base"]
            tissue[orbit] = TISSUES["fat"]
            globe_centre = np.array([side * 32.0, front + self.globe_radius + 1.0, base - 14.0])
            g = np.sqrt((u - globe_centre[0]) ** 2 + (v - globe_centre[1]) ** 2 + (w - globe_centre[2]) ** 2)
            globe = inside_head & (g < self.globe_radius)
            tissue[globe] = TISSUES["globe"]
            lens = ((u - globe_centre[0]) / 4.5) ** 2 + ((v - globe_centre[1] + self.globe_radius - 2.5) / 2.0) ** 2 \
                + ((w - globe_centre[2]) / 4.5) ** 2 < 1.0
            tissue[inside_head & lens] = TISSUES["lens"]
            new_cavity &= ~(orbit | wall | globe)

        # Petrous temporal bones: triangular wedges, very dense; mastoid air cells behind their lateral ends.
        for apex, lateral in self.petrous_axes():
            wedge = _near_segment(u, v, w, apex, lateral, 17.0 * self.petrous_size) & (depth >= self.scalp_thickness)
            if wedge.any():
                _, t, (du, dv, dw) = _segment_distance(u[wedge], v[wedge], w[wedge], apex, lateral)
                radius = self.petrous_size * (4.5 + 5.5 * t)
                horizontal = np.sqrt(du * du + dv * dv)
                wedge[wedge] = (dw > -radius) & (dw < 0.8 * radius) & (horizontal < 0.95 * (0.8 * radius - dw))
            tissue[wedge] = TISSUES["petrous bone"]
            new_cavity &= ~wedge
            side = np.sign(apex[0])
            mw = base - 22.0
            m_shrink = np.sqrt(max(1.0 - (mw / c) ** 2, 0.05))
            mastoid_u = side * (a * m_shrink - self.scalp_thickness - 0.5 * self.skull_thickness - 6.0)
            mastoid_centre = np.array([mastoid_u, 30.0, mw])
            m = (((u - mastoid_centre[0]) / 11.0) ** 2 + ((v - mastoid_centre[1]) / 13.0) ** 2
                 + ((w - mastoid_centre[2]) / 14.0) ** 2)
            mastoid = (m < 1.0) & (depth >= self.scalp_thickness)
            if mastoid.any():
                cells = _honeycomb(u[mastoid], v[mastoid], w[mastoid], self.mastoid_cell, self.mastoid_septum, phase)
                tissue[mastoid] = np.where(cells, TISSUES["mastoid air cells"], TISSUES["skull base"])
            new_cavity &= ~mastoid
            infratentorial &= ~mastoid

        # Posterior fossa contents: brainstem in front of the fourth ventricle, cerebellum around them.
        infratentorial &= new_cavity
        stem_v = np.where(below, clivus_v + 14.0, 8.0)
        narrowing = 1.0 - 0.3 * np.clip(drop / 45.0, 0, 1)
        brainstem = (new_cavity & ((u / (12.0 * narrowing)) ** 2 + ((v - stem_v) / (10.0 * narrowing)) ** 2 < 1.0)
                     & (w < base + 12.0))
        prepontine = new_cavity & below & (np.abs(u) < 9.0) & (v > clivus_v + 4.0) & (v < stem_v - 10.0 * narrowing)
        peak = np.clip(1.0 - np.abs(drop - 19.0) / 13.0, 0, 1)
        fourth = infratentorial & (peak > 0) & ((u / (2.0 + 6.0 * peak)) ** 2 + ((v - stem_v - 12.0) / 3.0) ** 2 < 1.0)
        cerebellum = infratentorial & ~brainstem & ~fourth & ~prepontine
        folia = self.folia_waves(u, v, w) if self.folia_waves is not None else np.zeros(u.shape, np.float32)
        hemisphere_core = (
            ((np.abs(u) - 22.0) / 13.0) ** 2 + ((v - stem_v - 24.0) / 13.0) ** 2 + ((w - base + 16.0) / 11.0) ** 2
        ) < 1.0
        cerebellar_grey = cerebellum & ~(hemisphere_core & (folia < 0.3)) & (np.abs(folia) > 0.18)
        cerebellar_csf = cerebellum & (np.abs(folia) < 0.05) & (inner_depth < 12.0)
        cisterna_magna = cerebellum & (np.abs(u) < 5.0) & (v > stem_v + 38.0) & (drop > 22.0)
        base_csf = prepontine | fourth | cerebellar_csf | cisterna_magna
        return new_cavity, (infratentorial, tentorium & new_cavity, brainstem, base_csf & new_cavity, cerebellar_grey)

    def _venous_sinuses(self, u, v, w, inner_depth, cavity, low_slice):
        """Superior sagittal, transverse and straight sinuses: triangular/tubular channels of venous blood."""
        base, k = self.skull_base_height, self.sinus_size
        sss = cavity & (inner_depth < 6.0 * k) & (np.abs(u) < 0.6 * (6.0 * k - inner_depth)) & (w > base + 15.0)
        if not low_slice:
            return sss
        tent_w = self.tentorium_w(u, v)
        transverse = cavity & (inner_depth < 5.0 * k) & (np.abs(w - tent_w) < 3.5 * k) & (v > 5.0)
        b_inner = self.semi_axes[1] - self.scalp_thickness - self.skull_thickness
        start = np.array([0.0, 20.0, base + self.tentorium_height - 3.0])
        end = np.array([0.0, 0.92 * b_inner, base + 4.0])
        straight = cavity & _near_segment(u, v, w, start, end, 2.5 * k)
        if straight.any():
            straight[straight] = _segment_distance(u[straight], v[straight], w[straight], start, end)[0] < 2.5 * k
        return sss | transverse | straight
