"""Cut one synthetic head into an axial CT acquisition: pose, field of view, slices, blur and noise.

Returns the HU volume and the per-voxel subtype labels on the same grid (0 background, k+1 subtype k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synthetic.anatomy import TISSUES, HeadAnatomy
from synthetic.hemorrhage import Lesion, sample_lesions

MATRIX = 512
SLICE_THICKNESS = 5.0


@dataclass
class Acquisition:
    """Scanner-side parameters of one study."""

    slice_count: int
    pixel_spacing: float  # mm, square pixels
    first_slice_w: float  # head w of the lowest slice centre
    rotation: np.ndarray  # 3x3, patient → head coordinates
    offset: np.ndarray  # head centre in patient coordinates (x, y, z), mm
    noise_sigma: float  # HU
    blur_sigma: float  # pixels

    @classmethod
    def sample(cls, rng: np.random.Generator, anatomy: HeadAnatomy) -> "Acquisition":
        top = anatomy.vertex + rng.uniform(-5, 5)
        lowest = anatomy.skull_base_height - rng.uniform(20, 40)  # from the posterior fossa to the vertex
        slices = int(np.clip(round((top - lowest) / SLICE_THICKNESS) + 1, 24, 36))
        first = top - SLICE_THICKNESS * (slices - 1)
        yaw, pitch, roll = np.radians([rng.uniform(-15, 15), rng.uniform(-10, 10), rng.uniform(-5, 5)])
        return cls(
            slice_count=slices,
            pixel_spacing=rng.uniform(0.40, 0.49),
            first_slice_w=first,
            rotation=_rotation(yaw, pitch, roll),
            offset=np.array([rng.uniform(-12, 12), rng.uniform(-15, 15), rng.uniform(-50, 50)]),
            noise_sigma=rng.uniform(3, 10),
            blur_sigma=rng.uniform(0.4, 0.9),
        )

    def slice_z(self, index: int) -> float:
        """Patient z of slice ``index`` (ascending, inferior → superior)."""
        return float(self.offset[2] + self.first_slice_w + SLICE_THICKNESS * index)

    @property
    def first_pixel_xy(self) -> tuple[float, float]:
        """Patient x, y of the centre of the top-left pixel (the image centre is the patient origin)."""
        half = (MATRIX - 1) / 2.0 * self.pixel_spacing
        return -half, -half


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cz, sz, cx, sx, cy, sy = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return about_z @ about_x @ about_y


@dataclass
class SyntheticHead:
    """One study's anatomy, lesions and acquisition, ready to render."""

    anatomy: HeadAnatomy
    lesions: list[Lesion]
    acquisition: Acquisition

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "SyntheticHead":
        anatomy = HeadAnatomy.sample(rng)
        lesions = sample_lesions(anatomy, rng)
        return cls(anatomy, lesions, Acquisition.sample(rng, anatomy))

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(HU float32, subtype labels uint8, tissue codes uint8), each (slices, 512, 512), ascending in z."""
        acq = self.acquisition
        x0, y0 = acq.first_pixel_xy
        axis = np.arange(MATRIX, dtype=np.float32) * np.float32(acq.pixel_spacing)
        y, x = np.meshgrid(y0 + axis, x0 + axis, indexing="ij")
        hu = np.empty((acq.slice_count, MATRIX, MATRIX), dtype=np.float32)
        labels = np.zeros(hu.shape, dtype=np.uint8)
        tissues = np.zeros(hu.shape, dtype=np.uint8)
        rot = acq.rotation.astype(np.float32)
        for index in range(acq.slice_count):
            z = acq.slice_z(index)
            px, py, pz = x - acq.offset[0], y - acq.offset[1], np.float32(z - acq.offset[2])
            u = rot[0, 0] * px + rot[0, 1] * py + rot[0, 2] * pz
            v = rot[1, 0] * px + rot[1, 1] * py + rot[1, 2] * pz
            w = rot[2, 0] * px + rot[2, 1] * py + rot[2, 2] * pz
            fields = self.anatomy.slice_fields(u, v, w)
            slice_hu, tissue = fields["hu"], fields["tissue"]
            for lesion in self.lesions:
                oedema = lesion.oedema(fields, u, v, w)
                slice_hu[oedema] = np.minimum(slice_hu[oedema], lesion.oedema_hu)
                tissue[oedema] = TISSUES["oedema"]
            for lesion in self.lesions:
                blood = lesion.region(fields, u, v, w)
                slice_hu[blood] = lesion.blood_hu + 2.0 * self.anatomy.texture_waves(u[blood], v[blood], w[blood])
                tissue[blood] = TISSUES["blood"]
                labels[index][blood] = lesion.subtype + 1
            hu[index], tissues[index] = slice_hu, tissue
        hu = ndimage.gaussian_filter(hu, sigma=(0, acq.blur_sigma, acq.blur_sigma))
        noise = ndimage.gaussian_filter(rng.normal(size=hu.shape).astype(np.float32), sigma=(0, 0.6, 0.6))
        hu += noise * np.float32(acq.noise_sigma / noise.std())  # mildly correlated noise of the sampled sigma
        return hu, labels, tissues
