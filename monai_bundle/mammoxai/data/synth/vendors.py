"""The simulated X-ray systems: what each one writes and how its automatic exposure control picks a technique.

Real full-field digital mammography systems differ in ways a network notices long before it notices anatomy:
detector size and pixel pitch, bits stored, MONOCHROME1 vs MONOCHROME2, the vendor's "for presentation"
processing curve and VOI LUT, noise level and texture (direct a-Se vs CsI scintillator detectors), and the
anode/filter/kVp a thicker or denser breast gets. Metadata pretraining (Litchfield et al., SPIE 2022) learns the
X-ray system from the pixels precisely because of these differences, so every one of them is simulated here.

The manufacturers are fictional; their parameters are in the range real systems use (24 x 29 cm detectors at
0.07-0.1 mm, 10-14 bits, W/Rh, W/Ag, Mo/Mo, Mo/Rh, Rh/Rh target/filter combinations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

__all__ = ["Exposure", "XraySystem", "SYSTEMS", "system_by_key", "choose_exposure"]


@dataclass(frozen=True)
class Exposure:
    """The technique the automatic exposure control chose for one image.

    Args:
        kvp: tube peak voltage in kV.
        anode: AnodeTargetMaterial as DICOM spells it ("TUNGSTEN", "MOLYBDENUM", "RHODIUM").
        filter: FilterMaterial ("RHODIUM", "SILVER", "MOLYBDENUM", ...).
        mas: tube current-time product in mAs.
        organ_dose_mgy: mean glandular dose estimate in mGy.
    """

    kvp: float
    anode: str
    filter: str
    mas: float
    organ_dose_mgy: float

    @property
    def effective_kvp(self) -> float:
        """kVp shifted by how much the target/filter hardens the beam, for the attenuation model."""
        return self.kvp + _BEAM_HARDENING[(self.anode, self.filter)]


# kV added to the nominal kVp to mimic each target/filter's mean energy relative to Mo/Rh.
_BEAM_HARDENING = {
    ("MOLYBDENUM", "MOLYBDENUM"): -2.0,
    ("MOLYBDENUM", "RHODIUM"): 0.0,
    ("RHODIUM", "RHODIUM"): 1.5,
    ("TUNGSTEN", "RHODIUM"): 1.0,
    ("TUNGSTEN", "SILVER"): 3.0,
}


@dataclass(frozen=True)
class XraySystem:
    """One simulated mammography system.

    Args:
        key: short identifier used in file names and tests.
        manufacturer: DICOM Manufacturer.
        model: DICOM ManufacturerModelName.
        native_shape: (rows, columns) of the real detector matrix.
        native_spacing_mm: detector pixel pitch; the written spacing is this scaled to the requested size.
        bits_stored: BitsStored (10, 12 or 14).
        photometric: "MONOCHROME2" (bright = dense) or "MONOCHROME1" (stored inverted).
        transfer_syntax: uncompressed little endian (explicit or implicit VR), RLE or JPEG 2000 lossless.
        curve: the vendor's presentation curve applied before storing: "gamma", "log", "sigmoid", or "voi"
            (pixels stored linear, and the first window written with VOILUTFunction SIGMOID for the reader to
            apply, as some vendors do).
        curve_parameter: gamma exponent, log gain, or sigmoid width (the sigmoid centre is 0.5); unused for "voi".
        windows: (centre, width) pairs as fractions of the stored range, written as WindowCenter/Width.
        noise: quantum noise standard deviation in log-attenuation units behind a 50 mm breast.
        noise_correlation_px: Gaussian correlation length of the noise (scintillators blur it, a-Se does not).
        blur_px: detector MTF as a Gaussian standard deviation in pixels.
        row_pattern: amplitude of fixed-pattern row stripes (gain-calibration residue) in presentation units.
        equalisation: fraction of the breast edge roll-off undone by peripheral equalisation (0 none, 1 full).
        unsharp: (amount, radius in mm) of the vendor's unsharp-mask contrast enhancement.
        fat_level: presentation value of fatty tissue (0 black, 1 white).
        zero_background: whether the system writes air as exact zero (it segments the breast) or leaves noise.
        kvp_range: (min, max) kVp its exposure control uses.
        kvp_at_50mm: kVp chosen for a 50 mm breast of scattered density; rises 0.15 kV per mm and 0.5 kV per
            density category above B.
        techniques: (maximum thickness in mm, anode, filter) in increasing thickness; the first that fits wins.
        detector_type: DetectorType ("DIRECT" for a-Se, "SCINTILLATOR" for CsI).
        writes_pixel_spacing: whether PixelSpacing is written next to ImagerPixelSpacing (older systems omit it).
        software: SoftwareVersions.
    """

    key: str
    manufacturer: str
    model: str
    native_shape: tuple[int, int]
    native_spacing_mm: float
    bits_stored: int
    photometric: str
    transfer_syntax: str
    curve: str
    curve_parameter: float
    windows: tuple[tuple[float, float], ...]
    noise: float
    noise_correlation_px: float
    blur_px: float
    row_pattern: float
    equalisation: float
    unsharp: tuple[float, float]
    fat_level: float
    zero_background: bool
    kvp_range: tuple[int, int]
    kvp_at_50mm: float
    techniques: tuple[tuple[float, str, str], ...]
    detector_type: str
    writes_pixel_spacing: bool
    software: str

    @property
    def name(self) -> str:
        """The X-ray system as metadata pretraining names it: manufacturer and model."""
        return f"{self.manufacturer} {self.model}"

    @property
    def max_value(self) -> int:
        return (1 << self.bits_stored) - 1

    def shape_and_spacing(self, size: int) -> tuple[tuple[int, int], float]:
        """(rows, columns) and pixel spacing in mm when the largest detector of :data:`SYSTEMS` gets ``size`` rows.

        All systems share one scale factor, so field of view in mm and relative pixel pitch stay those of the real
        detectors: a breast is as many millimetres wide on every system, and a smaller detector gives a smaller
        image.
        """
        scale = size / max(max(system.native_shape) for system in SYSTEMS)
        rows, cols = (max(16, round(n * scale)) for n in self.native_shape)
        return (rows, cols), self.native_spacing_mm / scale


SYSTEMS: tuple[XraySystem, ...] = (
    XraySystem(
        key="aurelia_mx7",
        manufacturer="Aurelia Medical",
        model="MX-7",
        native_shape=(4096, 3328),
        native_spacing_mm=0.07,
        bits_stored=12,
        photometric="MONOCHROME2",
        transfer_syntax=ExplicitVRLittleEndian,
        curve="gamma",
        curve_parameter=0.8,
        windows=((0.5, 1.0), (0.56, 0.8)),
        noise=0.035,
        noise_correlation_px=0.0,
        blur_px=0.5,
        row_pattern=0.0,
        equalisation=0.8,
        unsharp=(0.6, 3.0),
        fat_level=0.3,
        zero_background=False,
        kvp_range=(25, 36),
        kvp_at_50mm=29.0,
        techniques=((60.0, "TUNGSTEN", "RHODIUM"), (999.0, "TUNGSTEN", "SILVER")),
        detector_type="DIRECT",
        writes_pixel_spacing=True,
        software="AMX 3.4.1",
    ),
    XraySystem(
        key="borealis_essence",
        manufacturer="Borealis Imaging",
        model="Essence DR",
        native_shape=(2294, 1914),
        native_spacing_mm=0.1,
        bits_stored=14,
        photometric="MONOCHROME1",
        transfer_syntax=JPEG2000Lossless,
        curve="log",
        curve_parameter=3.0,
        windows=((0.5, 1.0),),
        noise=0.05,
        noise_correlation_px=1.1,
        blur_px=0.9,
        row_pattern=0.0,
        equalisation=0.5,
        unsharp=(0.3, 6.0),
        fat_level=0.22,
        zero_background=True,
        kvp_range=(26, 32),
        kvp_at_50mm=28.0,
        techniques=((45.0, "MOLYBDENUM", "MOLYBDENUM"), (60.0, "MOLYBDENUM", "RHODIUM"), (999.0, "RHODIUM", "RHODIUM")),
        detector_type="SCINTILLATOR",
        writes_pixel_spacing=True,
        software="ESS-DR 12.1",
    ),
    XraySystem(
        key="castellan_veritas",
        manufacturer="Castellan Systems",
        model="Veritas M",
        native_shape=(3328, 2560),
        native_spacing_mm=0.085,
        bits_stored=10,
        photometric="MONOCHROME2",
        transfer_syntax=RLELossless,
        curve="voi",
        curve_parameter=0.0,
        windows=((0.5, 0.64),),
        noise=0.03,
        noise_correlation_px=0.7,
        blur_px=0.6,
        row_pattern=0.006,
        equalisation=0.65,
        unsharp=(0.9, 2.0),
        fat_level=0.32,
        zero_background=False,
        kvp_range=(26, 35),
        kvp_at_50mm=30.0,
        techniques=((999.0, "TUNGSTEN", "RHODIUM"),),
        detector_type="DIRECT",
        writes_pixel_spacing=True,
        software="VER 2.0.7",
    ),
    XraySystem(
        key="aurelia_mx5",
        manufacturer="Aurelia Medical",
        model="MX-5",
        native_shape=(3064, 2396),
        native_spacing_mm=0.094,
        bits_stored=12,
        photometric="MONOCHROME2",
        transfer_syntax=ImplicitVRLittleEndian,
        curve="sigmoid",
        curve_parameter=0.2,
        windows=((0.5, 1.0),),
        noise=0.045,
        noise_correlation_px=0.8,
        blur_px=0.8,
        row_pattern=0.0,
        equalisation=0.2,
        unsharp=(0.0, 1.0),
        fat_level=0.2,
        zero_background=False,
        kvp_range=(24, 31),
        kvp_at_50mm=27.0,
        techniques=((50.0, "MOLYBDENUM", "MOLYBDENUM"), (999.0, "MOLYBDENUM", "RHODIUM")),
        detector_type="SCINTILLATOR",
        writes_pixel_spacing=False,
        software="AMX 1.9.0",
    ),
)


def system_by_key(key: str) -> XraySystem:
    """The system of :data:`SYSTEMS` with this key."""
    for system in SYSTEMS:
        if system.key == key:
            return system
    raise KeyError(key)


def choose_exposure(system: XraySystem, thickness_mm: float, density: int, rng: np.random.Generator) -> Exposure:
    """The technique ``system``'s automatic exposure control picks for a breast.

    Thicker and denser breasts get a harder beam (higher kVp, a harder target/filter) and more mAs, as every
    AEC does; the dose estimate follows the mAs.

    Args:
        system: the X-ray system.
        thickness_mm: compressed breast thickness.
        density: BI-RADS density category as 0..3 (A..D).
        rng: random generator for the AEC's small technique-to-technique scatter.
    """
    kvp = system.kvp_at_50mm + 0.15 * (thickness_mm - 50.0) + 0.5 * (density - 1) + rng.normal(0.0, 0.6)
    kvp = float(np.clip(round(kvp), *system.kvp_range))
    anode, filter_ = next((a, f) for limit, a, f in system.techniques if thickness_mm <= limit)
    mas = 60.0 * np.exp(0.035 * (thickness_mm - 50.0)) * (1.0 + 0.12 * density) * (28.0 / kvp) ** 3
    mas *= np.exp(rng.normal(0.0, 0.08))
    dose = 1.3 * np.exp(0.012 * (thickness_mm - 50.0)) * np.exp(rng.normal(0.0, 0.1))
    return Exposure(
        kvp=kvp, anode=anode, filter=filter_, mas=round(float(mas), 1), organ_dose_mgy=round(float(dose), 2)
    )
