"""From path lengths to stored pixel values: X-ray attenuation, the detector, and each system's processing.

The log-attenuation of a ray is ``sum(mu_i * path_i)`` over fat, fibroglandular tissue, skin, pectoral muscle,
lesion tissue and calcium, with coefficients that fall with beam energy (Johns & Yaffe, Phys Med Biol 1987
report the fibroglandular/fat contrast shrinking with kVp; calcium, photoelectric-dominated, falls faster).
The detector blurs (MTF) and adds quantum noise whose log-domain standard deviation grows where fewer photons
arrive; the vendor then makes a "for presentation" image: fat-referenced log signal, peripheral equalisation,
unsharp masking, a presentation curve, quantisation to the stored bits, and inversion for MONOCHROME1.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mammoxai.data.synth.phantom import Anatomy
from mammoxai.data.synth.vendors import Exposure, XraySystem

__all__ = ["Attenuation", "acquire", "window_values"]

# attenuation above fat, per mm of compressed thickness, that the presentation maps to white: a third more than
# glandular tissue has at 28 kV (0.035 / mm), so dense tissue is bright but masses and calcifications still show
_FULL_SCALE = 0.047


@dataclass(frozen=True)
class Attenuation:
    """Linear attenuation coefficients in 1/mm at one beam quality.

    Example:
        mu = Attenuation.at(effective_kvp=28.0)   # mu.gland - mu.fat == 0.035
    """

    fat: float
    gland: float
    skin: float
    muscle: float
    mass: float
    calcium: float

    @classmethod
    def at(cls, effective_kvp: float) -> Attenuation:
        soft = (28.0 / effective_kvp) ** 1.3
        calcium = (28.0 / effective_kvp) ** 2.5
        return cls(0.045 * soft, 0.080 * soft, 0.085 * soft, 0.076 * soft, 0.105 * soft, 6.0 * calcium)


def acquire(
    anatomy: Anatomy,
    soft_mm: np.ndarray,
    calcium_mm: np.ndarray,
    exposure: Exposure,
    system: XraySystem,
    thickness_mm: float,
    spacing_mm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Stored pixel values (uint16, canonical frame) of one exposure.

    Args:
        anatomy: path lengths through the breast.
        soft_mm: path through lesion soft tissue, same shape.
        calcium_mm: path through calcium, same shape.
        exposure: the technique (sets the attenuation coefficients).
        system: the X-ray system (detector and processing).
        thickness_mm: compressed thickness.
        spacing_mm: pixel spacing (the unsharp-mask radius is physical).
        rng: random generator for the noise.
    """
    mu = Attenuation.at(exposure.effective_kvp)
    inner = anatomy.thickness - anatomy.skin
    attenuation = (
        mu.fat * inner
        + mu.skin * anatomy.skin
        + (mu.gland - mu.fat) * anatomy.glandular * (inner - anatomy.muscle)
        + (mu.muscle - mu.fat) * anatomy.muscle
        + (mu.mass - mu.fat) * soft_mm
        + mu.calcium * calcium_mm
    )
    detected = _detect(attenuation.astype(np.float32), anatomy, system, thickness_mm, rng)
    presentation = _present(detected, anatomy, mu, system, thickness_mm, spacing_mm)
    return _store(presentation, system)


def _detect(
    attenuation: np.ndarray, anatomy: Anatomy, system: XraySystem, thickness_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Detector blur and quantum noise, in the log domain.

    The exposure control holds the signal behind the typical breast tissue constant, so the noise standard
    deviation is ``system.noise`` there, larger behind denser tissue (fewer photons: sigma ~ 1 / sqrt(N)) and in
    thicker breasts (more scatter).
    """
    if system.blur_px:
        attenuation = ndimage.gaussian_filter(attenuation, system.blur_px)
    region = anatomy.thickness >= 0.9 * thickness_mm
    region = region if region.any() else anatomy.mask
    reference = float(np.median(attenuation[region])) if region.any() else 0.0
    gain = np.clip(np.exp((attenuation - reference) / 2.0), 0.3, 4.0)
    noise = rng.standard_normal(attenuation.shape, dtype=np.float32)
    if system.noise_correlation_px:
        noise = ndimage.gaussian_filter(noise, system.noise_correlation_px)
        noise /= noise.std()
    return attenuation + system.noise * np.sqrt(thickness_mm / 50.0) * gain * noise


def _present(
    detected: np.ndarray, anatomy: Anatomy, mu: Attenuation, system: XraySystem, thickness_mm: float, spacing_mm: float
) -> np.ndarray:
    """The vendor's processing, to presentation values in [0, 1] (0 black)."""
    excess = (detected - mu.fat * anatomy.thickness) / (_FULL_SCALE * thickness_mm)
    reach = max(1.0 - system.equalisation, 0.05)
    fat = system.fat_level * np.clip(anatomy.thickness / (reach * thickness_mm), 0.0, 1.0)
    value = fat + (1.0 - system.fat_level) * excess
    amount, radius_mm = system.unsharp
    if amount:
        value = value + amount * (value - ndimage.gaussian_filter(value, radius_mm / spacing_mm))
    if system.row_pattern:
        pattern = np.random.default_rng(zlib.crc32(system.key.encode())).standard_normal(value.shape[0])
        value = value + system.row_pattern * pattern[:, None].astype(np.float32)
    if system.zero_background:
        value = np.where(anatomy.mask, value, 0.0)
    value = np.clip(value, 0.0, 1.0)
    if system.curve == "gamma":
        return value**system.curve_parameter
    if system.curve == "log":
        return np.log1p(system.curve_parameter * value) / np.log1p(system.curve_parameter)
    if system.curve == "sigmoid":
        width = system.curve_parameter
        low, high = _sigmoid(-0.5 / width), _sigmoid(0.5 / width)
        return (_sigmoid((value - 0.5) / width) - low) / (high - low)
    return value  # "voi": stored linear, the SIGMOID VOI LUT in the header does the rest


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-x))


def _store(presentation: np.ndarray, system: XraySystem) -> np.ndarray:
    stored = np.rint(np.clip(presentation, 0.0, 1.0) * system.max_value).astype(np.uint16)
    return system.max_value - stored if system.photometric == "MONOCHROME1" else stored


def window_values(system: XraySystem) -> tuple[list[float], list[float]]:
    """WindowCenter and WindowWidth values of ``system`` in stored units (DICOM PS3.3 C.11.2.1.2 convention:
    centre ``(max + 1) / 2`` and width ``max + 1`` span the full stored range)."""
    levels = system.max_value + 1
    return [centre * levels for centre, _ in system.windows], [width * levels for _, width in system.windows]
