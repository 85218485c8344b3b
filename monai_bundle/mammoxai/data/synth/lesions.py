"""Lesions whose morphology decides the case label, as the BI-RADS lexicon ties the two together.

Masses are ellipsoids in the breast; their margin carries the diagnosis: circumscribed round or oval masses are
benign, oval masses with indistinct margins are recalled and biopsied benign, spiculated masses are malignant.
A mass's density, the lexicon's third descriptor, leans the same way: most carcinomas are denser than an equal
volume of fibroglandular tissue, most benign masses are not (Woods et al., Radiology 2011;258:417-425).
Calcification clusters follow the same logic through particle morphology: punctate (benign), amorphous
(recalled, benign at biopsy), pleomorphic or fine-linear branching (malignant) (ACR BI-RADS Atlas, 5th ed., 2013).

A lesion is a 3-D object at a point of breast coordinates (see :mod:`.phantom`), so it appears in both the CC and
the MLO view of its breast at the same distance from the chest wall, and a benign lesion - stable over time,
which is what makes it benign - appears unchanged on the prior study. Each rendering returns the lesion's
path lengths (soft tissue and calcium, in mm, for the attenuation model) and its ground-truth mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mammoxai.data.synth.imaging import Attenuation
from mammoxai.data.synth.phantom import BreastModel, ViewLayout

__all__ = [
    "LesionKind",
    "KINDS",
    "FINDINGS",
    "Lesion",
    "LesionImage",
    "mass_density",
    "render_lesion",
    "place_lesions",
]

_MASS, _CALCIFICATION = "Mass", "Suspicious Calcification"


@dataclass(frozen=True)
class LesionKind:
    """A lesion morphology and what it means.

    Args:
        name: identifier, written to the manifest's ``lesion_types``.
        category: VinDr-Mammo finding category ("Mass" or "Suspicious Calcification").
        outcome: case label of a breast that has it ("benign", "recalled_benign", "malignant").
        birads: the BI-RADS assessments a radiologist gives it; one is drawn per lesion.
        size_mm: (min, max) diameter of a mass, or of the extent of a calcification cluster.
        persistent: stable over years (benign), so present on a prior study; new findings are not.
        high_density: probability that a mass of this kind is high density (see :func:`mass_density`);
            unused for calcifications.
    """

    name: str
    category: str
    outcome: str
    birads: tuple[str, ...]
    size_mm: tuple[float, float]
    persistent: bool
    high_density: float = 0.0

    @property
    def is_mass(self) -> bool:
        return self.category == _MASS


KINDS: dict[str, LesionKind] = {
    kind.name: kind
    for kind in (
        LesionKind("round_circumscribed_mass", _MASS, "benign", ("2",), (8.0, 16.0), True, 0.22),
        LesionKind("oval_circumscribed_mass", _MASS, "benign", ("2",), (10.0, 22.0), True, 0.22),
        LesionKind("punctate_calcifications", _CALCIFICATION, "benign", ("2",), (4.0, 9.0), True),
        LesionKind("oval_indistinct_mass", _MASS, "recalled_benign", ("3", "4"), (10.0, 20.0), False, 0.22),
        LesionKind("amorphous_calcifications", _CALCIFICATION, "recalled_benign", ("3", "4"), (6.0, 12.0), False),
        # screen-detected invasive carcinomas are mostly T1 (<= 20 mm) with a tail of T2 (20-50 mm; AJCC Cancer
        # Staging Manual, 8th ed., 2017); 15-30 mm, T1c to small T2, is the conspicuous part of that range, the
        # part a whole-breast grid of about 1 mm per pixel resolves
        LesionKind("spiculated_mass", _MASS, "malignant", ("4", "5"), (15.0, 30.0), False, 0.70),
        LesionKind("pleomorphic_calcifications", _CALCIFICATION, "malignant", ("4", "5"), (6.0, 14.0), False),
        LesionKind("fine_linear_calcifications", _CALCIFICATION, "malignant", ("5",), (8.0, 16.0), False),
    )
}

#: case label -> (lesion kinds found together, probability) options; "normal" has no lesion.
FINDINGS: dict[str, tuple[tuple[tuple[str, ...], float], ...]] = {
    "normal": (((), 1.0),),
    "benign": (
        (("round_circumscribed_mass",), 0.35),
        (("oval_circumscribed_mass",), 0.35),
        (("punctate_calcifications",), 0.3),
    ),
    "recalled_benign": ((("oval_indistinct_mass",), 0.55), (("amorphous_calcifications",), 0.45)),
    "malignant": (
        (("spiculated_mass",), 0.45),
        (("pleomorphic_calcifications",), 0.25),
        (("fine_linear_calcifications",), 0.15),
        (("spiculated_mass", "pleomorphic_calcifications"), 0.15),
    ),
}

_VIEW_CODES = {"CC": 1, "MLO": 2}


@dataclass(frozen=True)
class Lesion:
    """One lesion of one breast.

    Args:
        kind: its morphology.
        centre: position in breast coordinates (a, b, c).
        size_mm: mass diameter or cluster extent.
        seed: seeds its shape, so every rendering of the lesion (both views, prior studies) agrees.
        birads: the finding's BI-RADS assessment ("2".."5").
        density: excess attenuation of a mass over fat, relative to fibroglandular tissue (1: equal density);
            see :func:`mass_density`.
    """

    kind: LesionKind
    centre: tuple[float, float, float]
    size_mm: float
    seed: int
    birads: str
    density: float = 1.0

    @property
    def reach_mm(self) -> float:
        """Distance from the centre within which the lesion and its mask lie, on any view."""
        radius = self.size_mm / 2.0
        if not self.kind.is_mass:
            return radius + 5.5  # particle lengths and the mask margin
        if self.kind.name == "spiculated_mass":
            return radius * 3.3  # spicules reach up to three radii
        return radius * 1.6 + 1.0  # irregular outline and blurred margin


@dataclass
class LesionImage:
    """One lesion on one exposure, in the window of the canonical image that holds it.

    Args:
        window: (row0, col0, row1, col1), half-open, of the image the arrays cover.
        soft_mm: path through lesion soft tissue (mass, spicules), in mm of the attenuation model's lesion
            tissue (:attr:`.imaging.Attenuation.mass`): a mass of another density has the equivalent path.
        calcium_mm: path through calcium.
        mask: the ground-truth lesion region.
    """

    window: tuple[int, int, int, int]
    soft_mm: np.ndarray
    calcium_mm: np.ndarray
    mask: np.ndarray


def mass_density(kind: LesionKind, rng: np.random.Generator) -> float:
    """Draw the BI-RADS density of a mass of ``kind``, as its excess attenuation over fat relative to
    fibroglandular tissue.

    The lexicon grades a mass against an equal volume of fibroglandular tissue (ACR BI-RADS Atlas, 5th ed., 2013).
    High density is a suspicious feature: Woods et al. (Radiology 2011;258:417-425) found 70.2 % of high-density
    masses malignant against 22.3 % of isodense or low-density ones, an odds ratio of about 8; drawing high density
    for 70 % of malignant and 22 % of benign masses (:attr:`LesionKind.high_density`) reproduces that odds ratio.
    A high-density mass attenuates 1.4-1.9 times as much as glandular tissue above fat (around the attenuation
    model's lesion tissue, 1.7 times); an isodense one 0.9-1.1 times. Low-density (fat-containing) masses are
    benign by appearance and are not drawn.
    """
    if rng.uniform() < kind.high_density:
        return float(rng.uniform(1.4, 1.9))
    return float(rng.uniform(0.9, 1.1))


def render_lesion(lesion: Lesion, layout: ViewLayout, shape: tuple[int, int], spacing_mm: float) -> LesionImage:
    """Rasterise ``lesion`` on one exposure (canonical frame, ``shape`` pixels of ``spacing_mm``)."""
    x_mm, y_mm = layout.project(lesion.centre)
    reach = lesion.reach_mm + 3.0 * spacing_mm
    rows, cols = shape
    row0, row1 = max(0, int((y_mm - reach) / spacing_mm)), min(rows, int(np.ceil((y_mm + reach) / spacing_mm)))
    col0, col1 = max(0, int((x_mm - reach) / spacing_mm)), min(cols, int(np.ceil((x_mm + reach) / spacing_mm)))
    # millimetre offsets of the window's pixel centres from the lesion centre
    dy = ((np.arange(row0, row1) + 0.5) * spacing_mm - y_mm)[:, None]
    dx = ((np.arange(col0, col1) + 0.5) * spacing_mm - x_mm)[None, :]
    shape_rng = np.random.default_rng([lesion.seed, 0])
    view_rng = np.random.default_rng([lesion.seed, _VIEW_CODES[layout.view]])
    zeros = np.zeros((row1 - row0, col1 - col0), np.float32)
    if lesion.kind.is_mass:
        soft, mask = _mass(lesion, dx, dy, spacing_mm, shape_rng, view_rng)
        soft *= lesion.density * _GLAND_PER_LESION_TISSUE
        calcium = zeros
    else:
        calcium, mask = _cluster(lesion, layout, dx, dy, spacing_mm, shape_rng)
        soft = zeros
    mask |= (np.abs(dx) <= spacing_mm / 2.0) & (np.abs(dy) <= spacing_mm / 2.0)  # however small, it has a box
    return LesionImage((row0, col0, row1, col1), soft.astype(np.float32), calcium.astype(np.float32), mask)


# excess attenuation over fat of fibroglandular tissue per mm of lesion tissue; the same at every beam energy
_REFERENCE = Attenuation.at(28.0)
_GLAND_PER_LESION_TISSUE = (_REFERENCE.gland - _REFERENCE.fat) / (_REFERENCE.mass - _REFERENCE.fat)

# per mass kind: (min, max) short-to-long axis ratio, outline irregularity, margin blur as a fraction of the radius
_MASS_SHAPES = {
    "round_circumscribed_mass": ((0.88, 1.0), 0.025, 0.0),
    "oval_circumscribed_mass": ((0.5, 0.72), 0.025, 0.0),
    "oval_indistinct_mass": ((0.55, 0.8), 0.06, 0.2),
    "spiculated_mass": ((0.75, 1.0), 0.14, 0.06),
}


def _mass(
    lesion: Lesion,
    dx: np.ndarray,
    dy: np.ndarray,
    spacing_mm: float,
    shape_rng: np.random.Generator,
    view_rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoidal mass with an irregular outline; margin by kind (sharp, blurred, or spiculated)."""
    name = lesion.kind.name
    radius = lesion.size_mm / 2.0
    aspects, irregularity, blur = _MASS_SHAPES[name]
    aspect = shape_rng.uniform(*aspects)
    harmonics = np.stack([shape_rng.uniform(0, irregularity, 4), shape_rng.uniform(0, 2 * np.pi, 4)], axis=1)
    orientation = view_rng.uniform(0, np.pi)
    u = dx * np.cos(orientation) + dy * np.sin(orientation)
    v = -dx * np.sin(orientation) + dy * np.cos(orientation)
    angle = np.arctan2(v, u)
    outline = 1.0 + sum(amplitude * np.cos((k + 2) * angle + phase) for k, (amplitude, phase) in enumerate(harmonics))
    rho = np.sqrt((u / radius) ** 2 + (v / (aspect * radius)) ** 2) / outline
    soft = 2.0 * radius * np.sqrt(aspect) * np.sqrt(np.clip(1.0 - rho**2, 0.0, None))
    mask = rho <= 1.0
    soft = ndimage.gaussian_filter(soft, blur * radius / spacing_mm) if blur else soft
    if name == "spiculated_mass":
        spicules, spicule_mask = _spicules(radius, dx, dy, spacing_mm, view_rng)
        soft = np.maximum(soft, spicules)
        mask |= spicule_mask
    return soft, mask


def _spicules(
    radius: float, dx: np.ndarray, dy: np.ndarray, spacing_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Thin tapering strands radiating from the core, as the desmoplastic reaction of an invasive cancer draws them.

    A strand is a thin sheet of fibrous tissue, a few millimetres deep along the beam, so its path length is that
    depth across its projected width. Strands are 0.9-1.6 mm wide at the core and reach one to 2.4 radii beyond it:
    the coarse spicules that make a carcinoma stellate on a screening image, still visible on a whole-breast grid of
    about 1 mm per pixel, where finer strands would vanish and leave the mass looking circumscribed.
    """
    count = rng.integers(10, 21)
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    path = np.zeros(np.broadcast_shapes(dx.shape, dy.shape), np.float32)
    mask = np.zeros(path.shape, bool)
    for angle in angles:
        length = radius * rng.uniform(1.0, 2.4)
        width, depth = rng.uniform(0.9, 1.6), rng.uniform(4.0, 8.0)
        direction = np.array([np.cos(angle), np.sin(angle)])
        start = 0.8 * radius * direction
        along = np.clip(((dx - start[0]) * direction[0] + (dy - start[1]) * direction[1]) / length, 0.0, 1.0)
        across = np.hypot(dx - start[0] - along * length * direction[0], dy - start[1] - along * length * direction[1])
        local_width = width * (1.0 - along) + 0.3 * along
        profile = np.sqrt(np.clip(1.0 - (2.0 * across / local_width) ** 2, 0.0, None))
        path = np.maximum(path, depth * (1.0 - 0.6 * along) * profile)
        mask |= across <= np.maximum(local_width / 2.0, 0.6 * spacing_mm)
    return path, mask


# particle count range, particle radius range (mm), elongation (length / diameter) range, calcium density scale
_PARTICLES = {
    "punctate_calcifications": ((4, 12), (0.2, 0.35), (0.0, 0.0), 1.0),
    "amorphous_calcifications": ((15, 35), (0.12, 0.2), (0.0, 0.0), 0.7),
    "pleomorphic_calcifications": ((8, 25), (0.1, 0.3), (0.0, 2.5), 1.0),
    "fine_linear_calcifications": ((5, 10), (0.1, 0.2), (5.0, 12.0), 1.0),
}


def _cluster(
    lesion: Lesion, layout: ViewLayout, dx: np.ndarray, dy: np.ndarray, spacing_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A calcification cluster: 3-D particles projected onto this view as Gaussian spots of conserved calcium volume.

    Conserving volume means a particle smaller than a pixel gets fainter rather than vanishing or staying
    artificially bright, so low-resolution systems show small calcifications the way real ones do.
    """
    counts, radii, elongation, density = _PARTICLES[lesion.kind.name]
    count = rng.integers(counts[0], counts[1] + 1)
    extent = lesion.size_mm / 2.0
    linear = lesion.kind.name == "fine_linear_calcifications"
    # fine-linear calcifications fill a duct: a segment running toward the nipple; the others a rounded cluster
    scale = np.array([1.0, 0.3, 0.3]) if linear else np.ones(3)
    offsets = rng.normal(size=(count, 3))  # uniform in the (stretched) ball of the cluster's extent
    offsets /= np.linalg.norm(offsets, axis=1, keepdims=True)
    offsets *= rng.uniform(0, 1, (count, 1)) ** (1 / 3) * extent * scale
    radius = rng.uniform(*radii, count)
    length = rng.uniform(*elongation, count) * 2.0 * radius
    directions = rng.normal(size=(count, 3)) * (np.array([1.0, 0.25, 0.25]) if linear else 1.0)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    calcium = np.zeros(np.broadcast_shapes(dx.shape, dy.shape), np.float32)
    near = np.zeros(calcium.shape, bool)
    floor = 0.6 * spacing_mm
    for offset, r, ell, direction in zip(offsets, radius, length, directions, strict=True):
        cx, cy = layout.in_plane_mm(tuple(offset))
        px, py = layout.in_plane_mm(tuple(direction))
        projected = ell * np.hypot(px, py)
        angle = np.arctan2(py, px)
        u = (dx - cx) * np.cos(angle) + (dy - cy) * np.sin(angle)
        v = -(dx - cx) * np.sin(angle) + (dy - cy) * np.cos(angle)
        sigma_along = max(np.hypot(projected / 2.5, r), floor)
        sigma_across = max(r, floor)
        volume = density * (4.0 / 3.0 * np.pi * r**3 + np.pi * r**2 * ell)
        calcium += (
            volume
            / (2 * np.pi * sigma_along * sigma_across)
            * np.exp(-0.5 * ((u / sigma_along) ** 2 + (v / sigma_across) ** 2))
        )
        margin = max(1.0, 1.5 * spacing_mm)
        near |= ((np.abs(u) <= projected / 2.0 + margin) & (np.abs(v) <= margin)) | (np.hypot(u, v) <= margin + r)
    return calcium, near


def place_lesions(
    names: Sequence[str],
    model: BreastModel,
    views: Sequence[tuple[ViewLayout, tuple[int, int], float]],
    rng: np.random.Generator,
) -> list[Lesion]:
    """Put lesions of the given kinds where they lie inside the breast on every listed exposure.

    A position is accepted when, on each view, the lesion with its reach stays clear of the skin, the image edge
    and the pectoral muscle; glandular tissue is preferred, as that is where carcinomas and fibroadenomas arise.
    A lesion that fits nowhere (a very small breast) is shrunk until it does.

    Args:
        names: lesion kinds, see :data:`KINDS`.
        model: the breast.
        views: (layout, image shape, pixel spacing) of every exposure the lesions must appear on.
        rng: random generator.
    """
    lesions: list[Lesion] = []
    peak = model.density_volume.max() + 1e-6
    for name in names:
        kind = KINDS[name]
        size = rng.uniform(*kind.size_mm)
        seed = int(rng.integers(2**31))
        birads = str(rng.choice(kind.birads))
        density = mass_density(kind, rng) if kind.is_mass else 1.0
        for attempt in range(4000):
            if attempt and attempt % 400 == 0:
                size *= 0.85
            a = rng.uniform(0.2, 0.85)
            radial = (1.0 - a**model.exponent) ** (1.0 / model.exponent) * 0.7 * np.sqrt(rng.uniform())
            angle = rng.uniform(0, 2 * np.pi)
            centre = (a, radial * np.cos(angle), radial * np.sin(angle))
            lesion = Lesion(kind, centre, size, seed, birads, density)
            if rng.uniform() > 0.25 + 0.75 * _density_at(model, centre) / peak:
                continue
            if all(_fits(lesion, model, *view) for view in views) and all(
                _apart(lesion, other, views) for other in lesions
            ):
                lesions.append(lesion)
                break
        else:
            raise RuntimeError(f"no room for a {name} in a breast of {[view[0] for view in views]}")
    return lesions


def _density_at(model: BreastModel, point: tuple[float, float, float]) -> float:
    na, nb, nc = model.density_volume.shape
    a, b, c = point
    index = (min(int(a * na), na - 1), min(int((b + 1) / 2 * nb), nb - 1), min(int((c + 1) / 2 * nc), nc - 1))
    return float(model.density_volume[index])


def _fits(lesion: Lesion, model: BreastModel, layout: ViewLayout, shape: tuple[int, int], spacing_mm: float) -> bool:
    x, y = layout.project(lesion.centre)
    reach = lesion.reach_mm + 3.0
    height_mm, width_mm = shape[0] * spacing_mm, shape[1] * spacing_mm
    if not (reach <= x <= width_mm - reach and reach <= y <= height_mm - reach):
        return False
    margin = 1.0 - (reach + 2.0) / min(layout.depth_mm, layout.height_mm / 2.0)
    if layout.radius(np.float64(x), np.float64(y), model.exponent) > margin:
        return False
    return x - reach > layout.pectoral_edge_mm(np.float64(y - reach))


def _apart(lesion: Lesion, other: Lesion, views: Sequence[tuple[ViewLayout, tuple[int, int], float]]) -> bool:
    """Two lesions of one breast must not overlap on any view, so each box outlines one finding."""
    for layout, _, _ in views:
        x0, y0 = layout.project(lesion.centre)
        x1, y1 = layout.project(other.centre)
        if np.hypot(x1 - x0, y1 - y0) < lesion.reach_mm + other.reach_mm:
            return False
    return True
