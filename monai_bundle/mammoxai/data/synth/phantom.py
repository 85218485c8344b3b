"""Breast anatomy: a 3-D fibroglandular model per breast, and its projection onto a CC or MLO exposure.

Each breast lives in its own *breast coordinates*: ``a`` in [0, 1] from the chest wall to the nipple, ``b`` in
[-1, 1] from medial to lateral and ``c`` in [-1, 1] from inferior to superior. The breast body is the solid of
revolution ``b**2 + c**2 <= R(a)**2`` with ``R(a) = (1 - a**p) ** (1 / p)``; compression is what maps it onto
the uniform slab the detector sees, so every ray through the interior crosses the full compressed thickness.

The fibroglandular tissue is a thresholded 3-D power-law random field (mammographic parenchyma has a power-law
spectrum with exponent close to 3: Burgess et al., Med Phys 2001) concentrated by a smooth envelope in the
upper-outer, retro-areolar region, with a subcutaneous and retromammary fat layer. Cooper's ligaments are the
thin shells around the zero set of a second field. A CC view projects this volume along ``c``; an MLO view
projects it along a direction tilted by the C-arm angle in the ``b``-``c`` plane, so all views of a breast - and
its prior studies - show the same tissue, seen from the angle of the exposure. This is what makes "same patient"
learnable from pixels, as metadata pretraining asks (Litchfield et al., SPIE 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["powerlaw_field", "BreastModel", "ViewLayout", "Anatomy", "render_anatomy"]


def powerlaw_field(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    beta: float,
    cutoff: float = 0.02,
    stretch: tuple[float, ...] | None = None,
) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field with power spectrum ``(|k|**2 + cutoff**2) ** (-beta / 2)``.

    Args:
        rng: random generator.
        shape: grid shape (any number of dimensions).
        beta: spectral exponent (about 3 for breast parenchyma).
        cutoff: frequency (cycles per sample) below which the spectrum is flat, so the field has no huge
            single blob; larger values give finer texture.
        stretch: per-axis frequency multipliers; a value above 1 elongates structures along that axis.
    """
    stretch = stretch or (1.0,) * len(shape)
    axes = [np.fft.fftfreq(n) * s for n, s in zip(shape[:-1], stretch[:-1], strict=True)]
    axes.append(np.fft.rfftfreq(shape[-1]) * stretch[-1])
    k2 = sum(np.square(f).reshape([-1 if i == d else 1 for i in range(len(shape))]) for d, f in enumerate(axes))
    amplitude = (k2 + cutoff**2) ** (-beta / 4.0)
    spectrum = amplitude * (rng.standard_normal(amplitude.shape) + 1j * rng.standard_normal(amplitude.shape))
    field = np.fft.irfftn(spectrum, s=shape)
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


#: volumetric fibroglandular fraction by BI-RADS density category A..D (fatty .. extremely dense).
_GLANDULAR_FRACTION = (0.07, 0.15, 0.27, 0.42)


@dataclass
class BreastModel:
    """The anatomy of one breast, fixed for life: every view and every study of that breast renders from it.

    Args:
        exponent: ``p`` of the body outline ``R(a) = (1 - a**p) ** (1 / p)``: about 2 is round, larger is boxier.
        wobble: (K, 2) amplitudes and phases of harmonics that make the skin outline irregular.
        skin_mm: skin thickness.
        density_volume: (na, nb, nc) fibroglandular fraction per voxel of breast coordinates, zero outside the body.
        texture: fine 2-D parenchymal texture per view ("CC", "MLO") on the projection grid, unit variance.

    Example:
        model = BreastModel.sample(np.random.default_rng(0), density=2)
        glandular = model.glandular_map("MLO", theta_deg=45.0)
    """

    exponent: float
    wobble: np.ndarray
    skin_mm: float
    density_volume: np.ndarray
    texture: dict[str, np.ndarray]

    @classmethod
    def sample(
        cls,
        rng: np.random.Generator,
        density: int,
        volume_shape: tuple[int, int, int] = (40, 64, 64),
        map_shape: tuple[int, int] = (160, 256),
    ) -> BreastModel:
        """Draw a breast of BI-RADS density ``density`` (0..3 for A..D).

        Args:
            rng: random generator; the same generator state gives the same breast.
            density: BI-RADS density category as 0..3; sets the volumetric glandular fraction.
            volume_shape: voxels along (a, b, c).
            map_shape: samples along (a, t) of the projected glandular map and its fine texture.
        """
        exponent = rng.uniform(1.8, 2.8)
        wobble = np.stack([rng.uniform(0.0, 0.025, 5), rng.uniform(0.0, 2 * np.pi, 5)], axis=1)
        a, b, c = _voxel_coordinates(volume_shape)
        radius = (1.0 - a**exponent) ** (1.0 / exponent)
        radial = np.sqrt(b**2 + c**2)
        body = radial <= radius
        # the glandular envelope: retro-areolar, biased to the upper-outer quadrant, fat below the skin and
        # in front of the chest wall
        depth_centre, depth_width = rng.uniform(0.35, 0.55), rng.uniform(0.28, 0.42)
        lateral, superior = rng.uniform(0.0, 0.3), rng.uniform(0.0, 0.25)
        spread = rng.uniform(0.4, 0.55) + 0.05 * density
        envelope = np.exp(
            -(((a - depth_centre) / depth_width) ** 2) - ((b - lateral) ** 2 + (c - superior) ** 2) / (2 * spread**2)
        )
        envelope = envelope * _smoothstep((radius - radial) / 0.18) * _smoothstep(a / 0.12)
        # ducts and lobes converge on the nipple: a field elongated along a, sampled in coordinates scaled by the
        # body radius, so its streaks follow the narrowing body toward the nipple
        streaks = powerlaw_field(rng, volume_shape, beta=3.3, stretch=(0.4, 1.0, 1.0))
        na, nb, nc = volume_shape
        scaled = np.broadcast_arrays(
            a * na - 0.5, (b / radius + 1.0) * nb / 2.0 - 0.5, (c / radius + 1.0) * nc / 2.0 - 0.5
        )
        streaks = ndimage.map_coordinates(streaks, np.stack(scaled).reshape(3, -1), order=1, mode="nearest").reshape(
            volume_shape
        )
        score = streaks + 2.5 * envelope
        fraction = np.clip(_GLANDULAR_FRACTION[density] * rng.uniform(0.8, 1.2), 0.03, 0.6)
        threshold = np.quantile(score[body], 1.0 - fraction)
        gland = 1.0 / (1.0 + np.exp(-(score - threshold) / 0.15))
        ligaments = np.exp(-((powerlaw_field(rng, volume_shape, beta=3.0, cutoff=0.05) / 0.1) ** 2))
        volume = np.where(body, gland + 0.35 * ligaments * (1.0 - gland), 0.0).astype(np.float32)
        texture = {view: powerlaw_field(rng, map_shape, beta=2.6, cutoff=0.04) for view in ("CC", "MLO")}
        return cls(exponent, wobble, rng.uniform(1.2, 2.0), volume, texture)

    def glandular_map(self, view: str, theta_deg: float) -> np.ndarray:
        """Fibroglandular fraction of the path through each point of the projection grid.

        The grid spans ``a`` in [0, 1] (axis 0) and the in-plane coordinate ``t = b cos(theta) + c sin(theta)``
        in [-1, 1] (axis 1); rays run along ``s = -b sin(theta) + c cos(theta)``. ``theta`` is 0 for CC.

        Args:
            view: "CC" or "MLO", picks the fine texture.
            theta_deg: projection angle in degrees.
        """
        na, nb, nc = self.density_volume.shape
        theta = np.deg2rad(theta_deg)
        steps = nc
        a = (np.arange(na) + 0.5) / na
        t = -1.0 + (np.arange(nb) + 0.5) * 2.0 / nb
        s = -1.0 + (np.arange(steps) + 0.5) * 2.0 / steps
        aa, tt, ss = np.meshgrid(a, t, s, indexing="ij")
        b = tt * np.cos(theta) - ss * np.sin(theta)
        c = tt * np.sin(theta) + ss * np.cos(theta)
        coordinates = np.stack([aa * na - 0.5, (b + 1.0) * nb / 2.0 - 0.5, (c + 1.0) * nc / 2.0 - 0.5])
        along_ray = ndimage.map_coordinates(self.density_volume, coordinates.reshape(3, -1), order=1, cval=0.0)
        path = along_ray.reshape(aa.shape).sum(axis=2) * (2.0 / steps)
        radius = (1.0 - a[:, None] ** self.exponent) ** (1.0 / self.exponent)
        chord = 2.0 * np.sqrt(np.clip(radius**2 - t[None, :] ** 2, 0.0, None))
        coarse = path / (chord + 0.05)
        texture = self.texture[view]
        fine = ndimage.zoom(coarse, np.divide(texture.shape, coarse.shape), order=3, grid_mode=True, mode="nearest")
        fine = np.clip(fine, 0.0, 1.0)
        fine = fine + 0.15 * np.sqrt(fine * (1.0 - fine) + 0.01) * texture
        return np.clip(fine, 0.0, 1.0).astype(np.float32)

    def outline_wobble(self, angle: np.ndarray) -> np.ndarray:
        """Relative change of the outline radius at polar angle ``angle`` (radians) around the chest-wall centre."""
        k = np.arange(2, 2 + len(self.wobble))[:, None]
        return (self.wobble[:, :1] * np.cos(k * angle[None, :] + self.wobble[:, 1:])).sum(axis=0)


def _voxel_coordinates(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    na, nb, nc = shape
    a = ((np.arange(na) + 0.5) / na)[:, None, None]
    b = (-1.0 + (np.arange(nb) + 0.5) * 2.0 / nb)[None, :, None]
    c = (-1.0 + (np.arange(nc) + 0.5) * 2.0 / nc)[None, None, :]
    return a, b, c


@dataclass(frozen=True)
class ViewLayout:
    """Where a breast lies on one exposure, in millimetres of the canonical frame.

    The canonical frame has the chest wall on the left edge (``x = 0``), the nipple toward +x, and lateral (CC) or
    superior (MLO) up; a right breast is mirrored into the file afterwards. Breast coordinates map to it by
    ``x = a * depth_mm`` and ``y = centre_mm - t * height_mm / 2``.

    Args:
        view: "CC" or "MLO".
        depth_mm: chest wall to nipple.
        height_mm: extent of the breast body along y.
        centre_mm: y of ``t = 0``.
        theta_deg: projection angle: 0 for CC, the C-arm angle for MLO.
        thickness_mm: compressed thickness.
        pectoral: (width at the top edge, height along the chest wall, edge exponent) in mm of the pectoral
            muscle triangle in the upper chest-wall corner (MLO), or None.
        axilla_mm: x where the axillary tail meets the top edge (MLO), or None.
    """

    view: str
    depth_mm: float
    height_mm: float
    centre_mm: float
    theta_deg: float
    thickness_mm: float
    pectoral: tuple[float, float, float] | None = None
    axilla_mm: float | None = None

    def project(self, point: tuple[float, float, float]) -> tuple[float, float]:
        """(x, y) in mm of a point (a, b, c) in breast coordinates."""
        a, b, c = point
        theta = np.deg2rad(self.theta_deg)
        t = b * np.cos(theta) + c * np.sin(theta)
        return a * self.depth_mm, self.centre_mm - t * self.height_mm / 2.0

    def in_plane_mm(self, offset_mm: tuple[float, float, float]) -> tuple[float, float]:
        """(dx, dy) in mm on the image of a small physical offset (along a, b, c) in the breast."""
        da, db, dc = offset_mm
        theta = np.deg2rad(self.theta_deg)
        return da, -(db * np.cos(theta) + dc * np.sin(theta))

    def pectoral_edge_mm(self, y: np.ndarray) -> np.ndarray:
        """x of the pectoral muscle's edge at heights ``y`` (0 where there is no muscle)."""
        if self.pectoral is None:
            return np.zeros_like(y)
        width, height, exponent = self.pectoral
        return width * np.clip(1.0 - y / height, 0.0, 1.0) ** exponent

    def radius(self, x: np.ndarray, y: np.ndarray, exponent: float) -> np.ndarray:
        """Normalised outline radius of the breast body: below 1 inside, 1 on the skin."""
        a = np.maximum(x / self.depth_mm, 0.0)
        t = (self.centre_mm - y) / (self.height_mm / 2.0)
        return (a**exponent + np.abs(t) ** exponent) ** (1.0 / exponent)


@dataclass
class Anatomy:
    """Path lengths through one exposure's breast, per pixel of the canonical frame.

    Args:
        mask: the breast (skin included).
        thickness: mm of breast along each ray (the compressed thickness inside, rolling off at the edge).
        skin: mm of skin along each ray.
        muscle: mm of pectoral muscle along each ray.
        glandular: fibroglandular fraction of the remaining (fat + gland) path.
    """

    mask: np.ndarray
    thickness: np.ndarray
    skin: np.ndarray
    muscle: np.ndarray
    glandular: np.ndarray


def _chord(distance: np.ndarray, thickness: float) -> np.ndarray:
    """Path through a compressed breast whose free edge is a half-cylinder of diameter ``thickness``, at
    ``distance`` mm in from the edge."""
    d = np.clip(distance, 0.0, thickness / 2.0)
    return 2.0 * np.sqrt(d * (thickness - d))


def render_anatomy(model: BreastModel, layout: ViewLayout, shape: tuple[int, int], spacing_mm: float) -> Anatomy:
    """Rasterise one exposure of ``model`` onto a ``shape`` grid with square pixels of ``spacing_mm``.

    Args:
        model: the breast.
        layout: where it lies on this exposure.
        shape: (rows, columns) of the image.
        spacing_mm: pixel spacing.
    """
    rows, cols = shape
    x = ((np.arange(cols) + 0.5) * spacing_mm)[None, :].astype(np.float32)
    y = ((np.arange(rows) + 0.5) * spacing_mm)[:, None].astype(np.float32)
    radius = layout.radius(x, y, model.exponent)
    angle = np.arctan2((layout.centre_mm - y) / (layout.height_mm / 2.0), x / layout.depth_mm)
    table = np.linspace(-np.pi / 2, np.pi / 2, 257)
    radius = radius * (1.0 + np.interp(angle, table, model.outline_wobble(table)))
    mask = radius < 1.0
    if layout.axilla_mm is not None:
        # the axillary tail runs from the top edge down to the body along the chest-wall side
        reach = (
            layout.axilla_mm
            + (0.9 * layout.depth_mm - layout.axilla_mm) * np.clip(y / layout.centre_mm, 0.0, 1.0) ** 0.9
        )
        mask |= (y < layout.centre_mm) & (x < reach)
    distance = ndimage.distance_transform_edt(mask, sampling=spacing_mm).astype(np.float32)
    thickness = np.where(mask, _chord(distance, layout.thickness_mm), 0.0).astype(np.float32)
    inner = _chord(distance - model.skin_mm, layout.thickness_mm - 2.0 * model.skin_mm)
    skin = np.where(mask, thickness - inner, 0.0).astype(np.float32)
    muscle = np.zeros_like(thickness)
    if layout.pectoral is not None:
        width, height, _ = layout.pectoral
        depth = (layout.pectoral_edge_mm(y) - x) * height / np.hypot(width, height)
        profile = _smoothstep(depth / 2.0) * (0.75 + 0.25 * np.clip(depth / (0.3 * width), 0.0, 1.0))
        muscle = np.where(mask & (depth > 0), inner * profile, 0.0).astype(np.float32)
    glandular = np.zeros_like(thickness)
    inside = np.nonzero(mask)
    a = x[0, inside[1]] / layout.depth_mm
    t = (layout.centre_mm - y[inside[0], 0]) / (layout.height_mm / 2.0)
    gland_map = model.glandular_map(layout.view, layout.theta_deg)
    na, nt = gland_map.shape
    coordinates = np.stack([a * na - 0.5, (t + 1.0) * nt / 2.0 - 0.5])
    glandular[inside] = ndimage.map_coordinates(gland_map, coordinates, order=1, cval=0.0)
    return Anatomy(mask=mask, thickness=thickness, skin=skin, muscle=muscle, glandular=glandular)
