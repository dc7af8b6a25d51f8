"""Cut one synthetic head into an axial CT acquisition: pose, field of view, slices, blur and noise.

Returns the HU volume and the per-voxel subtype labels on the same grid (0 background, k+1 subtype k).

Acquisitions vary like a PACS's head CTs: slice thickness 0.625–5 mm (5 mm most often), matrix 512 (sometimes
256 or 768) with the field of view to match, soft/standard/sharp reconstruction kernels (a sharp kernel adds
noise and edge overshoot at bone), noise level, and artefacts that mimic blood: partial volume of bone in thick
slices (each slice averages three planes through its thickness), beam-hardening streaks between the petrous
bones (dark Hounsfield bar with bright borders), cupping (brain 3–15 HU denser under the inner table), and
patient motion (ghosting and blur on some slices). Labels and tissue codes are those of the slice's centre
plane, except that blood whose slab reads as bone (> 150 HU before blur and noise) is left unlabelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from synthetic.anatomy import TISSUES, HeadAnatomy
from synthetic.hemorrhage import Lesion, sample_lesions
from synthetic.mimics import Mimics

MATRIX = 512  # the usual matrix; Acquisition.matrix may differ
SLICE_THICKNESS = 5.0  # the usual thickness; Acquisition.slice_thickness may differ

#: Slice thicknesses (mm) and how often each is drawn: thick axial series dominate, thin ones are rarer.
THICKNESSES = (5.0, 3.0, 2.5, 1.25, 1.0, 0.625)
THICKNESS_P = (0.64, 0.12, 0.12, 0.04, 0.03, 0.05)
#: Header window presets (centre, width); a series carries one, two (brain first) or none.
WINDOW_PRESETS = {"brain": (40.0, 80.0), "subdural": (75.0, 200.0), "stroke": (40.0, 40.0), "bone": (600.0, 2800.0)}
KERNELS = ("SOFT", "STANDARD", "SHARP")
#: Slab-averaged HU above which a voxel with blood at its centre plane is dominated by bone (partial volume)
#: and left unlabelled; the tissue map still says "blood" there.
BONE_DOMINATED_HU = 150.0


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
    slice_thickness: float = SLICE_THICKNESS  # mm; slices are contiguous (spacing = thickness)
    matrix: int = MATRIX
    kernel: str = "STANDARD"
    noise_correlation: float = 0.6  # pixels (sigma of the filter that colours the noise)
    edge_gain: float = 0.0  # unsharp-mask gain of sharp kernels
    cupping_hu: float = 0.0  # brain denser under the inner table by this much (beam hardening)
    cupping_mm: float = 5.0
    streak_hu: float = 0.0  # depth of the dark band between the petrous bones
    streak_mm: float = 3.0
    motion: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # slice → (dy, dx, ghost weight)
    slice_noise: np.ndarray | None = None  # per-slice noise factor
    windows: tuple[tuple[float, float], ...] = ((40.0, 80.0),)  # header presets, primary first; () = none

    @classmethod
    def sample(cls, rng: np.random.Generator, anatomy: HeadAnatomy, max_slices: int | None = None) -> Acquisition:
        top = anatomy.vertex + rng.uniform(-5, 5)
        lowest = anatomy.skull_base_height - rng.uniform(25, 45)  # from below the orbits to the vertex
        thickness = float(rng.choice(THICKNESSES, p=THICKNESS_P))
        if max_slices:  # thinnest allowed thickness whose full coverage fits
            fitting = [t for t in sorted(THICKNESSES) if t >= thickness and (top - lowest) / t + 1 <= max_slices]
            thickness = fitting[0] if fitting else max(THICKNESSES)
        slices = int(round((top - lowest) / thickness) + 1)
        if thickness == SLICE_THICKNESS:
            slices = int(np.clip(slices, 24, 40))
        first = top - thickness * (slices - 1)
        yaw, pitch, roll = np.radians([rng.uniform(-15, 15), rng.uniform(-10, 10), rng.uniform(-5, 5)])
        matrix = int(rng.choice([512, 768, 256], p=[0.86, 0.07, 0.07]))
        if matrix == 512:
            spacing = rng.uniform(0.40, 0.56) if rng.random() < 0.93 else rng.uniform(0.35, 0.60)
        elif matrix == 768:
            spacing = rng.uniform(0.27, 0.33)
        else:
            spacing = rng.uniform(0.85, 1.0)
        kernel = str(rng.choice(KERNELS, p=[0.25, 0.55, 0.2]))
        noise = rng.uniform(3, 10) * min(np.sqrt(SLICE_THICKNESS / thickness), 2.0)  # thin slices are noisier
        if kernel == "SOFT":
            blur, correlation, edge = rng.uniform(0.7, 1.1), 0.9, 0.0
            noise *= 0.8
        elif kernel == "SHARP":
            blur, correlation, edge = rng.uniform(0.3, 0.5), 0.4, rng.uniform(0.3, 0.8)
            noise *= 1.4
        else:
            blur, correlation, edge = rng.uniform(0.4, 0.9), 0.6, 0.0
        motion: dict[int, tuple[float, float, float]] = {}
        if rng.random() < 0.15:
            for index in np.flatnonzero(rng.random(slices) < 0.25):
                angle = rng.uniform(0, 2 * np.pi)
                shift = rng.uniform(1.5, 5.0)
                motion[int(index)] = (shift * np.sin(angle), shift * np.cos(angle), rng.uniform(0.15, 0.35))
        return cls(
            slice_count=slices,
            pixel_spacing=float(spacing),
            first_slice_w=first,
            rotation=_rotation(yaw, pitch, roll),
            offset=np.array([rng.uniform(-12, 12), rng.uniform(-15, 15), rng.uniform(-50, 50)]),
            noise_sigma=float(noise),
            blur_sigma=float(blur),
            slice_thickness=thickness,
            matrix=matrix,
            kernel=kernel,
            noise_correlation=correlation,
            edge_gain=float(edge),
            cupping_hu=float(rng.uniform(3, 15)) if rng.random() < 0.7 else 0.0,
            cupping_mm=float(rng.uniform(3, 8)),
            streak_hu=float(rng.uniform(15, 50)) if rng.random() < 0.75 else 0.0,
            streak_mm=float(rng.uniform(2, 5)),
            motion=motion,
            slice_noise=rng.uniform(0.85, 1.15, slices).astype(np.float32),
            windows=_sample_windows(rng),
        )

    def slice_z(self, index: int) -> float:
        """Patient z of slice ``index`` (ascending, inferior → superior)."""
        return float(self.offset[2] + self.first_slice_w + self.slice_thickness * index)

    @property
    def first_pixel_xy(self) -> tuple[float, float]:
        """Patient x, y of the centre of the top-left pixel (the image centre is the patient origin)."""
        half = (self.matrix - 1) / 2.0 * self.pixel_spacing
        return -half, -half

    @property
    def subplane_offsets(self) -> tuple[float, ...]:
        """Offsets (mm) of the extra planes averaged into a slice (partial volume): thick slices only."""
        if self.slice_thickness >= 2.5:
            return (-self.slice_thickness / 3.0, self.slice_thickness / 3.0)
        return ()


def _sample_windows(rng: np.random.Generator) -> tuple[tuple[float, float], ...]:
    draw = rng.random()
    brain = (float(round(rng.uniform(35, 45))), float(rng.choice([80, 90, 100])))
    if draw < 0.12:
        return ()  # no VOI LUT in any header
    if draw < 0.52:
        return (brain,)
    if draw < 0.64:
        return (brain, WINDOW_PRESETS["bone"])  # multi-valued: brain first
    if draw < 0.80:
        return ((float(rng.choice([75, 80])), 200.0),)  # subdural
    if draw < 0.90:
        return (WINDOW_PRESETS["stroke"],)
    if draw < 0.97:
        return (brain, WINDOW_PRESETS["subdural"])
    return (WINDOW_PRESETS["bone"],)  # a bone-window series (rare)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cz, sz, cx, sx, cy, sy = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return about_z @ about_x @ about_y


@dataclass
class SyntheticHead:
    """One study's anatomy, lesions, mimics and acquisition, ready to render."""

    anatomy: HeadAnatomy
    lesions: list[Lesion]
    acquisition: Acquisition
    mimics: Mimics = field(default_factory=Mimics)

    @classmethod
    def sample(cls, rng: np.random.Generator, max_slices: int | None = None) -> SyntheticHead:
        anatomy = HeadAnatomy.sample(rng)
        lesions = sample_lesions(anatomy, rng)
        acquisition = Acquisition.sample(rng, anatomy, max_slices)
        rich = not lesions and rng.random() < 0.7  # most negative studies are rich in mimics
        return cls(anatomy, lesions, acquisition, Mimics.sample(rng, anatomy, rich))

    def _plane(self, x: np.ndarray, y: np.ndarray, z: float):
        """Fields, head coordinates and painted HU/tissue/labels of one plane at patient z."""
        acq = self.acquisition
        rot = acq.rotation.astype(np.float32)
        px, py, pz = x - np.float32(acq.offset[0]), y - np.float32(acq.offset[1]), np.float32(z - acq.offset[2])
        u = rot[0, 0] * px + rot[0, 1] * py + rot[0, 2] * pz
        v = rot[1, 0] * px + rot[1, 1] * py + rot[1, 2] * pz
        w = rot[2, 0] * px + rot[2, 1] * py + rot[2, 2] * pz
        fields = self.anatomy.slice_fields(u, v, w)
        self.mimics.paint(fields, self.anatomy, u, v, w)
        slice_hu, tissue = fields["hu"], fields["tissue"]
        labels = np.zeros(u.shape, dtype=np.uint8)
        for lesion in self.lesions:
            oedema = lesion.oedema(fields, u, v, w)
            slice_hu[oedema] = np.minimum(slice_hu[oedema], lesion.oedema_hu)
            tissue[oedema] = TISSUES["oedema"]
        for lesion in self.lesions:
            blood = lesion.region(fields, u, v, w)
            if blood.any():
                texture = self.anatomy.texture_waves(u[blood], v[blood], w[blood])
                slice_hu[blood] = lesion.density(texture, u[blood], v[blood], w[blood])
                tissue[blood] = TISSUES["blood"]
                labels[blood] = lesion.subtype + 1
        return fields, labels

    def render(
        self, rng: np.random.Generator, indices: list[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(HU float32, subtype labels uint8, tissue codes uint8), each (slices, matrix, matrix), ascending in z.

        ``indices`` renders only those slices (for quick looks and tests); the default is the whole series.
        """
        acq = self.acquisition
        n = acq.matrix
        chosen = list(range(acq.slice_count)) if indices is None else list(indices)
        x0, y0 = acq.first_pixel_xy
        axis = np.arange(n, dtype=np.float32) * np.float32(acq.pixel_spacing)
        y, x = np.meshgrid(y0 + axis, x0 + axis, indexing="ij")
        hu = np.empty((len(chosen), n, n), dtype=np.float32)
        labels = np.zeros(hu.shape, dtype=np.uint8)
        tissues = np.zeros(hu.shape, dtype=np.uint8)
        offsets = acq.subplane_offsets
        for out, index in enumerate(chosen):
            z = acq.slice_z(index)
            fields, slice_labels = self._plane(x, y, z)
            slice_hu = fields["hu"]
            if offsets:  # partial volume: planes through the slab, at half resolution, averaged in
                total = slice_hu.copy()
                for dz in offsets:
                    side, _ = self._plane(x[::2, ::2], y[::2, ::2], z + dz)
                    total += np.repeat(np.repeat(side["hu"], 2, axis=0), 2, axis=1)[:n, :n]
                slice_hu = total / np.float32(1 + len(offsets))
                # a voxel whose slab reads as bone (blood at the centre, bone above or below) is not marked as
                # blood, as an annotator would not mark it: the label follows what the image shows
                slice_labels[(slice_labels > 0) & (slice_hu > BONE_DOMINATED_HU)] = 0
            slice_hu = self._artefacts(slice_hu, fields)
            hu[out], labels[out], tissues[out] = slice_hu, slice_labels, fields["tissue"]
        hu = ndimage.gaussian_filter(hu, sigma=(0, acq.blur_sigma, acq.blur_sigma))
        if acq.edge_gain:  # sharp kernel: edge overshoot (bright rims inside the skull)
            hu += np.float32(acq.edge_gain) * (hu - ndimage.gaussian_filter(hu, sigma=(0, 1.5, 1.5)))
        for out, index in enumerate(chosen):
            if index in acq.motion:
                dy, dx, weight = acq.motion[index]
                ghost = ndimage.shift(hu[out], (dy, dx), order=1, mode="nearest")
                hu[out] = ndimage.gaussian_filter((1 - weight) * hu[out] + weight * ghost, 0.6)
        noise = ndimage.gaussian_filter(
            rng.normal(size=hu.shape).astype(np.float32), sigma=(0, acq.noise_correlation, acq.noise_correlation)
        )
        factors = acq.slice_noise[chosen] if acq.slice_noise is not None else np.ones(len(chosen), np.float32)
        noise *= np.float32(acq.noise_sigma / noise.std()) * factors[:, None, None].astype(np.float32)
        hu += noise  # correlated noise of the sampled sigma, varying a little from slice to slice
        return hu, labels, tissues

    def _artefacts(self, slice_hu: np.ndarray, fields: dict[str, np.ndarray]) -> np.ndarray:
        """Beam hardening: cupping under the inner table, and the dark band between the petrous bones."""
        acq = self.acquisition
        cavity = fields["cavity"]
        if acq.cupping_hu:
            cupping = acq.cupping_hu * np.exp(-np.maximum(fields["inner_depth"], 0) / acq.cupping_mm)
            slice_hu = slice_hu + np.where(cavity, cupping, 0).astype(np.float32)
        if acq.streak_hu:
            petrous = fields["tissue"] == TISSUES["petrous bone"]
            if petrous.sum() > 40:
                labelled, count = ndimage.label(petrous)
                if count >= 2:
                    sizes = ndimage.sum_labels(petrous, labelled, range(1, count + 1))
                    two = np.argsort(sizes)[-2:] + 1
                    if sizes[two[0] - 1] > 15:
                        (r0, c0), (r1, c1) = ndimage.center_of_mass(petrous, labelled, two)
                        slice_hu = slice_hu + self._bar((r0, c0), (r1, c1), slice_hu.shape, fields["depth"] > 0)
        return slice_hu

    def _bar(self, start, end, shape, inside) -> np.ndarray:
        """Dark band between two bone centroids, with bright edges (a Hounsfield bar), inside the head only."""
        acq = self.acquisition
        rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
        d = np.array(end, np.float32) - np.array(start, np.float32)
        t = np.clip(((rows - start[0]) * d[0] + (cols - start[1]) * d[1]) / float(d @ d), 0, 1)
        distance = np.hypot(rows - start[0] - t * d[0], cols - start[1] - t * d[1]) * acq.pixel_spacing
        width = acq.streak_mm
        taper = np.sin(np.pi * np.clip(t, 0.05, 0.95))  # strongest midway between the bones
        band = (-acq.streak_hu * np.exp(-((distance / width) ** 2))
                + 0.4 * acq.streak_hu * np.exp(-(((distance - 2.2 * width) / width) ** 2)))
        return np.where(inside, band * taper, 0).astype(np.float32)
