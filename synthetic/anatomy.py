"""A 3D non-contrast head phantom in Hounsfield units, evaluated slice by slice.

The head is defined analytically in head coordinates (mm; u → patient left, v → posterior, w → superior),
so any axial slice can be cut from the same 3D head and neighbouring slices agree. Every random choice
(head size and shape, skull thickness, ventricle size, gyral pattern, pose) comes from one numpy Generator.

Tissue values follow typical adult non-contrast CT: air −1000, fat ≈ −100, skin/galea ≈ 40, cortical bone
700–1500, diploe 250–600, grey matter 35–45, white matter 22–32, CSF 0–15, falx ≈ 60.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


#: Tissue codes of the phantom's tissue map (lesion codes are added by the renderer).
TISSUES: dict[str, int] = {
    name: code
    for code, name in enumerate((
        "air", "skin", "fat", "cortical bone", "diploe", "skull base", "sinus air", "grey matter", "white matter",
        "csf", "falx", "oedema", "blood",
    ))
}


@dataclass
class PlaneWaves:
    """A smooth random 3D field: a sum of cosines with random directions, wavelengths and phases."""

    vectors: np.ndarray  # (k, 3) wave vectors, rad/mm
    phases: np.ndarray  # (k,)

    @classmethod
    def sample(cls, rng: np.random.Generator, count: int, wavelength: tuple[float, float]) -> "PlaneWaves":
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
            return ndimage.zoom(coarse, 4, order=1, grid_mode=True, mode="nearest")
        return self._evaluate(u, v, w)

    def _evaluate(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        total = np.zeros(np.broadcast(u, v, w).shape, dtype=np.float32)
        for (ku, kv, kw), phase in zip(self.vectors, self.phases):
            total += np.cos(ku * u + kv * v + kw * w + phase, dtype=np.float32)
        return total * np.float32(np.sqrt(2.0 / len(self.phases)))


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

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "HeadAnatomy":
        age_atrophy = rng.uniform(0.0, 1.0)
        return cls(
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
            "white matter": self.white_hu, "csf": self.csf_hu, "falx": 65.0,
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
        # Skull base: below it the anterior fossa floor (orbital roofs, sphenoid) rises towards the back and the
        # cavity narrows to the middle (temporal) and posterior fossae; sinuses hold air.
        drop = np.clip(self.skull_base_height - w, 0, None)
        floor = (drop > 0) & (v < -0.55 * self.semi_axes[1] + 2.2 * drop)
        floor |= (drop > 6.0) & ((u / (12.0 + 0.6 * drop)) ** 2 + ((v + 20.0) / (22.0 + 0.5 * drop)) ** 2 < 1.0)
        base_bone = cavity & floor
        sinus = base_bone & ((u / 14.0) ** 2 + ((v + 0.7 * self.semi_axes[1]) / 14.0) ** 2 < 1.0) & (drop < 25.0)
        tissue[base_bone] = TISSUES["skull base"]
        tissue[sinus] = TISSUES["sinus air"]
        cavity &= ~floor

        csf_layer = cavity & (inner_depth < self.extra_axial_csf)
        cortex_depth = inner_depth - self.extra_axial_csf
        sulcal = self.sulcal_waves(u, v, w)
        sulci = cavity & (np.abs(sulcal) < self.sulcal_width) & (cortex_depth < 22.0)
        fissure_half_width = 0.8 + 0.6 * self.ventricle_scale
        fissure = cavity & (np.abs(u) < fissure_half_width) & (cortex_depth < 45.0) & (w > self.skull_base_height + 10)
        falx = cavity & (np.abs(u) < 0.5) & (cortex_depth < 40.0) & (w > self.skull_base_height + 20)
        ventricles = cavity & self.lateral_ventricles(u, v, w)
        cisterns = cavity & self.cistern(u, v, w)
        csf = csf_layer | sulci | fissure | ventricles | cisterns

        grey = cavity & ((cortex_depth < self.cortex_thickness) | (np.abs(sulcal) < self.sulcal_width + 0.25) & (cortex_depth < 24.0))
        deep_grey = cavity & (((np.abs(u) - 20.0) / 9.0) ** 2 + ((v + 2.0) / 14.0) ** 2 + ((w - self.ventricle_height + 12) / 10.0) ** 2 < 1.0)
        tissue[cavity] = TISSUES["white matter"]
        tissue[grey | deep_grey] = TISSUES["grey matter"]
        tissue[csf] = TISSUES["csf"]
        tissue[falx] = TISSUES["falx"]
        hu = self.tissue_hu()[tissue]
        textured = cavity & ~falx  # slow density variation of brain and CSF (±1.5 HU)
        hu[textured] += 1.5 * self.texture_waves(u, v, w)[textured]
        return {
            "hu": hu,
            "tissue": tissue,
            "cavity": cavity,
            "brain": cavity & ~csf & ~falx,
            "csf_spaces": (sulci | cisterns | fissure | csf_layer) & ~falx,
            "ventricles": ventricles,
            "inner_depth": inner_depth,
        }
