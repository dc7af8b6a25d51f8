"""Labelled montage of the phantom's skull-base anatomy and hemorrhage mimics:
``python -m synthetic.mimic_montage PNG``.

One head (fixed seed, scanned without tilt) with every mimic switched on, and one thin subdural plus a little
sulcal subarachnoid blood for contrast (outlined in red: the only voxels labelled hemorrhage). Slices are
shown in the brain window (40/80) except the first tile, in a bone window; arrows point at each structure.
Text is drawn with OpenCV's built-in Hershey font (no font files).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from ichseg.atomic_file import atomic_path
from ichseg.subtypes import SUBTYPES
from ichseg.windowing import apply_window
from synthetic.anatomy import TISSUES, PlaneWaves
from synthetic.hemorrhage import Lesion
from synthetic.mimics import Calcification, Mimics, ScalpCollection
from synthetic.volume import SyntheticHead

SEED = 2026
TILE = 420
YELLOW, CYAN, RED = (255, 220, 40), (80, 220, 255), (255, 60, 60)


def _head() -> SyntheticHead:
    rng = np.random.default_rng(SEED)
    head = SyntheticHead.sample(rng)
    acq, anatomy = head.acquisition, head.anatomy
    acq.rotation, acq.offset, acq.motion = np.eye(3), np.zeros(3), {}
    acq.matrix, acq.pixel_spacing, acq.slice_thickness = 512, 0.45, 5.0
    acq.kernel, acq.edge_gain, acq.blur_sigma, acq.noise_sigma, acq.noise_correlation = "STANDARD", 0.0, 0.6, 4.0, 0.6
    acq.cupping_hu, acq.cupping_mm, acq.streak_hu, acq.streak_mm = 12.0, 5.0, 45.0, 3.5
    acq.first_slice_w = anatomy.skull_base_height - 40.0
    acq.slice_count = int((anatomy.vertex - acq.first_slice_w) / 5.0) + 1
    acq.slice_noise = None
    head.mimics = Mimics(
        calcifications=[
            Calcification("pineal calcification", anatomy.pineal(), np.array([3.0, 3.5, 5.0]), 450.0),
            Calcification("choroid plexus calcification", anatomy.atrium(-1.0), np.array([2.5, 4.5, 2.5]), 350.0),
            Calcification("choroid plexus calcification", anatomy.atrium(1.0), np.array([2.5, 4.5, 2.5]), 300.0),
            Calcification("basal ganglia calcification", anatomy.globus_pallidus(-1.0), np.full(3, 2.8), 250.0),
            Calcification("basal ganglia calcification", anatomy.globus_pallidus(1.0), np.full(3, 2.8), 230.0),
            Calcification(
                "dural calcification", np.array([0.0, -25.0, anatomy.vertex - 30.0]), np.array([1.2, 9.0, 7.0]), 500.0
            ),
        ],
        scalp=[ScalpCollection(
            "scalp haematoma",
            np.array([-0.7 * anatomy.semi_axes[0], -0.7 * anatomy.semi_axes[1], anatomy.vertex - 42.0]),
            45.0, 14.0, 68.0,
        )],
    )
    waves = PlaneWaves.sample(rng, 6, (15, 45))
    b = anatomy.semi_axes[1]
    inset = anatomy.scalp_thickness + anatomy.skull_thickness + 1.0
    sdh_w = anatomy.vertex - 45.0
    shrink = np.sqrt(1 - (sdh_w / anatomy.semi_axes[2]) ** 2)
    head.lesions = [
        Lesion(SUBTYPES.index("subdural"), 62.0, np.array([anatomy.semi_axes[0] * shrink - inset, 20.0, sdh_w]),
               55.0, 3.0, waves, variant="thin"),
        Lesion(SUBTYPES.index("subarachnoid"), 60.0, np.array([0.0, -(b * shrink - inset) * 0.93, sdh_w + 8.0]),
               10.0, 0.0, waves, variant="sulcal"),
    ]
    return head


def _point(mask: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of a pixel of the mask nearest its centroid (on the structure itself, even for a crescent)."""
    if not mask.any():
        return None
    components, count = ndimage.label(mask)
    if count > 1:  # the largest piece (e.g. one of two petrous bones)
        sizes = ndimage.sum_labels(mask, components, range(1, count + 1))
        mask = components == int(np.argmax(sizes)) + 1
    rows, cols = np.nonzero(mask)
    r, c = rows.mean(), cols.mean()
    best = np.argmin((rows - r) ** 2 + (cols - c) ** 2)
    return int(cols[best]), int(rows[best])


def _annotate(
    image: np.ndarray, target: tuple[int, int] | None, text: str, anchor: tuple[int, int], colour=YELLOW
) -> None:
    if target is None:
        return
    scale = TILE / 512
    tx, ty = int(target[0] * scale), int(target[1] * scale)
    cv2.arrowedLine(image, anchor, (tx, ty), colour, 1, cv2.LINE_AA, tipLength=0.06)
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.42, 1)
    x = int(np.clip(anchor[0] - w // 2, 2, TILE - w - 2))
    y = anchor[1] - 4 if anchor[1] > TILE // 2 else anchor[1] + h + 4
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)


def _tile(hu: np.ndarray, labels: np.ndarray, window: tuple[float, float], title: str) -> np.ndarray:
    grey = apply_window(hu, *window)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    blood = labels > 0
    rgb[blood & ~ndimage.binary_erosion(blood)] = RED
    rgb = cv2.resize(rgb, (TILE, TILE), interpolation=cv2.INTER_AREA)
    cv2.putText(rgb, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(rgb, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return rgb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m synthetic.mimic_montage", description=__doc__.split("\n\n")[0])
    parser.add_argument("png", type=Path, nargs="?", default=Path("docs/synthetic_mimics.png"))
    args = parser.parse_args(argv)
    head = _head()
    anatomy, acq = head.anatomy, head.acquisition
    base = anatomy.skull_base_height

    def index(w: float) -> int:
        return int(np.clip(round((w - acq.first_slice_w) / acq.slice_thickness), 0, acq.slice_count - 1))

    plan = [  # (head height, window, title, [(tissue or marker, label, anchor)])
        (base - 14.0, (600.0, 2800.0), "skull base, bone window", [
            ("petrous bone", "petrous bone >1500 HU", (330, 400)),
            ("mastoid air cells", "mastoid air cells", (80, 395)),
            ("globe", "globe", (60, 40)), ("sinus air", "ethmoid air cells", (250, 30))]),
        (base - 14.0, (40.0, 80.0), "same slice, brain window", [
            ("streak", "beam hardening (Hounsfield bar)", (210, 300)), ("lens", "lens", (120, 30)),
            ("brainstem", "brainstem", (330, 200))]),
        (base - 24.0, (40.0, 80.0), "posterior fossa", [
            ("grey matter", "cerebellum", (90, 390)), ("fourth", "4th ventricle", (320, 395)),
            ("skull base", "clivus / skull base", (320, 60))]),
        (base + 8.0, (40.0, 80.0), "tentorium level", [
            ("tentorium", "tentorium", (90, 395)), ("venous sinus", "transverse/straight sinus", (300, 405))]),
        (anatomy.pineal()[2] + 2.0, (40.0, 80.0), "calcifications", [
            ("pineal calcification", "pineal", (210, 405)),
            ("basal ganglia calcification", "globus pallidus", (90, 60))]),
        (float(anatomy.atrium(1.0)[2]), (40.0, 80.0), "atria", [
            ("choroid plexus calcification", "choroid plexus", (330, 395)), ("falx", "falx", (210, 30))]),
        (anatomy.vertex - 30.0, (40.0, 80.0), "vault", [
            ("dural calcification", "falx plaque", (300, 40)), ("venous sinus", "superior sagittal sinus", (210, 408)),
            ("cupping", "cupping (denser under skull)", (330, 250))]),
        (anatomy.vertex - 42.0, (40.0, 80.0), "extracranial vs intracranial", [
            ("scalp haematoma", "scalp haematoma (label 0)", (110, 30)),
            ("subdural", "thin SDH (label)", (330, 380), RED),
            ("subarachnoid", "sulcal SAH (label)", (300, 30), RED)]),
    ]
    tiles = []
    for w, window, title, notes in plan:
        i = index(w)
        hu, labels, tissues = head.render(np.random.default_rng(i), [i])
        tile = _tile(hu[0], labels[0], window, f"{title} (w={w:+.0f} mm)")
        for note in notes:
            key, text, anchor = note[:3]
            colour = note[3] if len(note) > 3 else YELLOW
            if key in TISSUES:
                target = _point(tissues[0] == TISSUES[key])
            elif key in SUBTYPES:
                target = _point(labels[0] == SUBTYPES.index(key) + 1)
            elif key == "streak":
                bone = ndimage.label(tissues[0] == TISSUES["petrous bone"])[0]
                centres = ndimage.center_of_mass(bone > 0, bone, [1, 2]) if bone.max() >= 2 else []
                target = None
                if centres:
                    target = (int(np.mean([c[1] for c in centres])), int(np.mean([c[0] for c in centres])))
            elif key == "fourth":
                csf = (tissues[0] == TISSUES["csf"]) & (np.abs(np.arange(512) - 255.5)[None, :] < 12)
                target = _point(csf)
            elif key == "cupping":
                cavity = tissues[0] == TISSUES["grey matter"]
                rows, cols = np.nonzero(cavity)
                target = (int(cols.max()) - 3, int(rows[np.argmax(cols)])) if rows.size else None
            else:
                target = None
            _annotate(tile, target, text, anchor, colour)
        tiles.append(tile)
    columns = 4
    rows = [np.concatenate(tiles[r * columns:(r + 1) * columns], axis=1) for r in range(len(tiles) // columns)]
    sheet = np.concatenate(rows, axis=0)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))[1]
    with atomic_path(args.png) as temporary:
        temporary.write_bytes(encoded.tobytes())
    print(args.png)


if __name__ == "__main__":
    main()
