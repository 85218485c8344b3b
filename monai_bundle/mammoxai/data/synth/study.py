"""One patient's screening history: breasts, studies, exposures, lesions - rendered and written to disk.

Everything about patient ``i`` of a cohort with seed ``s`` comes from random streams keyed by ``(s, i, ...)``,
so the files do not depend on which worker process renders the patient or in what order.
"""

from __future__ import annotations

import datetime
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from mammoxai.data.synth.cohort import CASE_LABELS, PatientPlan
from mammoxai.data.synth.dicom_writer import MammogramHeader, write_mammogram
from mammoxai.data.synth.imaging import acquire
from mammoxai.data.synth.lesions import FINDINGS, KINDS, Lesion, place_lesions, render_lesion
from mammoxai.data.synth.phantom import BreastModel, ViewLayout, render_anatomy
from mammoxai.data.synth.vendors import Exposure, XraySystem, choose_exposure, system_by_key

__all__ = [
    "AGE_RANGE",
    "PatientBody",
    "compress",
    "density_probabilities",
    "draw_body",
    "patient_body",
    "synthesize_patient",
]

_SIDES, _VIEWS = ("L", "R"), ("CC", "MLO")
_CODES = {"L": 1, "R": 2, "CC": 1, "MLO": 2}
# stream identifiers for np.random.default_rng([seed, stream, patient, ...])
_PATIENT, _BREAST, _EXPOSURE, _LESIONS, _NOISE = range(1, 6)
_FIRST_DAY = datetime.date(2019, 1, 2)
_DENSITY_NAMES = "ABCD"
AGE_RANGE = (40, 76)  # screening ages, drawn uniformly; the upper end is exclusive
_NOMINAL_SIZE = 512  # image rows for a layout nobody renders: the size changes the framing, not the compression


@dataclass(frozen=True)
class PatientBody:
    """What a patient brings to every exposure of every study.

    Attributes:
        age: age in years at the current study.
        density: BI-RADS density category, 0..3 for A..D.
        depth_mm: nipple-to-chest-wall depth of the breast.
        height_mm: cranio-caudal extent of the breast.
        thickness_mm: typical compressed thickness; each exposure varies around it.
    """

    age: int
    density: int
    depth_mm: float
    height_mm: float
    thickness_mm: float


@dataclass(frozen=True)
class _Study:
    number: int  # chronological, from 1
    date: datetime.date
    time_s: int  # seconds after midnight of the first exposure
    system: XraySystem
    is_prior: bool


@dataclass(frozen=True)
class _Exposure:
    study: _Study
    side: str
    layout: ViewLayout
    shape: tuple[int, int]
    spacing_mm: float
    compression_force_n: float


def synthesize_patient(
    plan: PatientPlan, seed: int, size: int, out: str | Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Render and write every image of one patient.

    Args:
        plan: the patient's plan from :func:`~mammoxai.data.synth.cohort.plan_cohort`.
        seed: cohort seed.
        size: rows of the largest detector's images (see :meth:`XraySystem.shape_and_spacing`).
        out: folder for the DICOM files; masks go to ``out/masks``.

    Returns:
        The manifest records and the VinDr-style finding rows of the patient's images.
    """
    out = Path(out)
    rng = np.random.default_rng([seed, _PATIENT, plan.index])
    body = draw_body(rng)
    current = _FIRST_DAY + datetime.timedelta(days=int(rng.integers(0, 5 * 365)))
    birth = current - datetime.timedelta(days=int(body.age * 365.25 + rng.integers(1, 364)))
    studies = [_Study(1, current, int(rng.integers(8 * 3600, 17 * 3600)), system_by_key(plan.system), False)]
    if plan.prior_system is not None:
        earlier = current - datetime.timedelta(days=int(365 * rng.integers(1, 3) + rng.integers(-30, 31)))
        studies = [
            _Study(1, earlier, int(rng.integers(8 * 3600, 17 * 3600)), system_by_key(plan.prior_system), True),
            _Study(2, current, studies[0].time_s, studies[0].system, False),
        ]
    breasts = {
        side: BreastModel.sample(np.random.default_rng([seed, _BREAST, plan.index, _CODES[side]]), body.density)
        for side in _SIDES
    }
    exposures = {
        (study.number, side, view): _expose(
            study,
            side,
            view,
            body,
            size,
            np.random.default_rng([seed, _EXPOSURE, plan.index, study.number, _CODES[side], _CODES[view]]),
        )
        for study in studies
        for side in _SIDES
        for view in _VIEWS
    }
    lesions = _lesions(plan, breasts, exposures, studies, seed)
    records, findings = [], []
    for study in studies:
        shown = {
            side: [lesion for lesion in lesions.get(side, []) if not study.is_prior or lesion.kind.persistent]
            for side in _SIDES
        }
        labels = {side: _worst(lesion.kind.outcome for lesion in shown[side]) for side in _SIDES}
        study_uid = _uid(seed, plan.patient_id, f"S{study.number}")
        for series_number, (side, view) in enumerate(((s, v) for s in _SIDES for v in _VIEWS), start=1):
            exposure = exposures[(study.number, side, view)]
            record, rows = _write_image(
                plan,
                seed,
                study,
                exposure,
                breasts[side],
                shown[side],
                body.density,
                birth,
                study_uid,
                series_number,
                out,
            )
            record["study_label"] = _worst(labels.values())
            records.append(record)
            findings.extend(rows)
    return records, findings


def patient_body(seed: int, index: int) -> PatientBody:
    """The body of patient ``index`` of the cohort with this seed, as :func:`synthesize_patient` draws it."""
    return draw_body(np.random.default_rng([seed, _PATIENT, index]))


def draw_body(rng: np.random.Generator) -> PatientBody:
    """Draw a patient's age, density and breast size; the order of the draws is part of every synthesized file."""
    age = int(rng.integers(*AGE_RANGE))
    density = int(rng.choice(4, p=density_probabilities(age)))
    depth_mm = float(np.clip(rng.normal(95.0, 18.0), 55.0, 150.0))
    height_mm = float(np.clip(depth_mm * rng.uniform(1.55, 2.05), 90.0, 250.0))
    thickness_mm = float(
        np.clip(12.0 + 0.3 * depth_mm + 0.1 * (height_mm - 120.0) + 2.5 * density + rng.normal(0, 4), 20, 95)
    )
    return PatientBody(age, density, depth_mm, height_mm, thickness_mm)


def density_probabilities(age: int) -> np.ndarray:
    """P(BI-RADS density category 0..3 = A..D | age): about 10/40/40/10 %, denser in younger women."""
    logits = np.array([-1.4, 0.0, 0.0, -1.0]) + np.array([-0.6, -0.2, 0.2, 0.6]) * (55.0 - age) / 10.0
    return np.exp(logits) / np.exp(logits).sum()


def compress(body: PatientBody, view: str, system: XraySystem, rng: np.random.Generator) -> tuple[float, float]:
    """Compressed thickness (mm) and compression force (N) of one exposure of this breast, drawn as for an image.

    The force is recorded in the header and nowhere in the pixels; :mod:`mammoxai.data.synth.ceilings` draws it
    again and again for one breast to measure how well any model could predict it.
    """
    exposure = _expose(_Study(1, _FIRST_DAY, 0, system, False), "L", view, body, _NOMINAL_SIZE, rng)
    return exposure.layout.thickness_mm, exposure.compression_force_n


def _expose(study: _Study, side: str, view: str, body: PatientBody, size: int, rng: np.random.Generator) -> _Exposure:
    """Position and compress the breast for one view: layout, thickness and force vary from exposure to exposure."""
    depth_mm, height_mm, thickness_mm = body.depth_mm, body.height_mm, body.thickness_mm
    shape, spacing = study.system.shape_and_spacing(size)
    rows_mm = shape[0] * spacing
    force = 45.0 + 0.6 * depth_mm + 0.15 * (height_mm - 120.0) + rng.normal(0.0, 12.0)
    if view == "CC":
        height = height_mm * rng.normal(1.0, 0.03)
        centre = rows_mm / 2.0 + rng.normal(0.0, 0.03 * rows_mm)
        if height < rows_mm - 4.0:
            centre = float(np.clip(centre, height / 2.0 + 2.0, rows_mm - height / 2.0 - 2.0))
        layout = ViewLayout(
            view="CC",
            depth_mm=depth_mm * rng.normal(1.0, 0.03),
            height_mm=height,
            centre_mm=centre,
            theta_deg=0.0,
            thickness_mm=float(np.clip(thickness_mm + rng.normal(0.0, 2.0), 18.0, 100.0)),
        )
    else:
        depth = depth_mm * rng.uniform(1.02, 1.12)
        height = min(height_mm * rng.uniform(1.05, 1.2), 0.9 * rows_mm)
        top = min(rng.uniform(0.12, 0.25) * rows_mm, rows_mm - 2.0 - height)
        centre = top + height / 2.0
        pectoral = (
            depth * rng.uniform(0.25, 0.42),
            (centre + height / 2.0) * rng.uniform(0.45, 0.7),
            rng.uniform(0.8, 1.25),
        )
        layout = ViewLayout(
            view="MLO",
            depth_mm=depth,
            height_mm=height,
            centre_mm=centre,
            theta_deg=rng.uniform(40.0, 60.0),
            thickness_mm=float(np.clip(thickness_mm + rng.uniform(2.0, 8.0), 18.0, 100.0)),
            pectoral=pectoral,
            axilla_mm=pectoral[0] * rng.uniform(1.3, 1.8),
        )
        force *= rng.uniform(1.05, 1.25)
    return _Exposure(study, side, layout, shape, spacing, float(np.clip(force, 30.0, 200.0)))


def _lesions(
    plan: PatientPlan,
    breasts: dict[str, BreastModel],
    exposures: dict[tuple, _Exposure],
    studies: list[_Study],
    seed: int,
) -> dict[str, list[Lesion]]:
    """The lesions of the current study's outcome, in one breast, placed to show on every view they must."""
    rng = np.random.default_rng([seed, _LESIONS, plan.index])
    options = FINDINGS[plan.outcome]
    names = options[rng.choice(len(options), p=[p for _, p in options])][0]
    if not names:
        return {}
    side = str(rng.choice(_SIDES))
    persistent = all(KINDS[name].persistent for name in names)
    views = [
        (exposure.layout, exposure.shape, exposure.spacing_mm)
        for (number, s, _), exposure in exposures.items()
        if s == side and (number == studies[-1].number or persistent)
    ]
    return {side: place_lesions(names, breasts[side], views, rng)}


def _worst(outcomes) -> str:
    return max(outcomes, key=CASE_LABELS.index, default="normal")


def _uid(seed: int, patient_id: str, *parts: str) -> str:
    """A valid UID that is the same for the same (seed, patient, parts): pydicom hashes the entropy sources."""
    return generate_uid(entropy_srcs=["mammoxai.data.synth", str(seed), patient_id, *parts])


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _age(birth: datetime.date, on: datetime.date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


@dataclass(frozen=True)
class _Image:
    pixels: np.ndarray  # stored values in file orientation
    mask: np.ndarray  # union of the lesion masks
    boxes: list[tuple[int, int, int, int]]  # (x0, y0, x1, y1) per lesion, half-open pixel edges
    technique: Exposure


def _render(
    exposure: _Exposure, breast: BreastModel, lesions: list[Lesion], density: int, rng: np.random.Generator
) -> _Image:
    """Anatomy, lesions, acquisition; then the right breast mirrored into the orientation it is stored in."""
    layout, shape, spacing, system = exposure.layout, exposure.shape, exposure.spacing_mm, exposure.study.system
    anatomy = render_anatomy(breast, layout, shape, spacing)
    soft = np.zeros(shape, np.float32)
    calcium = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    boxes = []
    for lesion in lesions:
        drawn = render_lesion(lesion, layout, shape, spacing)
        r0, c0, r1, c1 = drawn.window
        soft[r0:r1, c0:c1] += drawn.soft_mm
        calcium[r0:r1, c0:c1] += drawn.calcium_mm
        mask[r0:r1, c0:c1] |= drawn.mask
        ys, xs = np.nonzero(drawn.mask)
        boxes.append((int(c0 + xs.min()), int(r0 + ys.min()), int(c0 + xs.max() + 1), int(r0 + ys.max() + 1)))
    technique = choose_exposure(system, layout.thickness_mm, density, rng)
    pixels = acquire(anatomy, soft, calcium, technique, system, layout.thickness_mm, spacing, rng)
    if exposure.side == "R":  # stored with the chest wall on the right, as mammography systems write right breasts
        pixels, mask = pixels[:, ::-1], mask[:, ::-1]
        boxes = [(shape[1] - x1, y0, shape[1] - x0, y1) for x0, y0, x1, y1 in boxes]
    return _Image(np.ascontiguousarray(pixels), np.ascontiguousarray(mask), boxes, technique)


def _write_image(
    plan: PatientPlan,
    seed: int,
    study: _Study,
    exposure: _Exposure,
    breast: BreastModel,
    lesions: list[Lesion],
    density: int,
    birth: datetime.date,
    study_uid: str,
    series_number: int,
    out: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Render one image, write its DICOM file and mask, and return its manifest record and finding rows."""
    layout, shape, spacing, system, side = (
        exposure.layout,
        exposure.shape,
        exposure.spacing_mm,
        study.system,
        exposure.side,
    )
    rng = np.random.default_rng([seed, _NOISE, plan.index, study.number, _CODES[side], _CODES[layout.view]])
    rendered = _render(exposure, breast, lesions, density, rng)
    technique = rendered.technique
    name = f"{plan.patient_id}_S{study.number}_{side}_{layout.view}"
    sop_uid = _uid(seed, plan.patient_id, f"S{study.number}", side, layout.view, "image")
    header = MammogramHeader(
        patient_id=plan.patient_id,
        birth_date=birth.strftime("%Y%m%d"),
        age=_age(birth, study.date),
        study_uid=study_uid,
        series_uid=_uid(seed, plan.patient_id, f"S{study.number}", side, layout.view, "series"),
        sop_uid=sop_uid,
        study_date=study.date.strftime("%Y%m%d"),
        study_time=_clock(study.time_s + 40 * series_number),
        accession=f"{plan.patient_id}S{study.number}",
        series_number=series_number,
        instance_number=1,
        laterality=side,
        view=layout.view,
        angle_deg=layout.theta_deg if side == "L" else -layout.theta_deg,
        spacing_mm=spacing,
        thickness_mm=layout.thickness_mm,
        compression_force_n=exposure.compression_force_n,
        exposure=technique,
        device_serial=f"{system.key[:3].upper()}{zlib.crc32(system.key.encode()) % 90000 + 10000}",
    )
    path = out / f"{name}.dcm"
    write_mammogram(path, rendered.pixels, system, header)
    mask_name = f"masks/{sop_uid}.png"
    Image.fromarray(rendered.mask.astype(np.uint8) * 255).save(out / mask_name)
    label = _worst(lesion.kind.outcome for lesion in lesions)
    birads = max((lesion.birads for lesion in lesions), default="1")
    record = {
        "path": str(path),
        "image_id": sop_uid,
        "laterality": side,
        "view": layout.view,
        "rows": shape[0],
        "cols": shape[1],
        "patient_id": plan.patient_id,
        "study_uid": study_uid,
        "series_uid": header.series_uid,
        "sop_uid": sop_uid,
        "study_date": header.study_date,
        "modality": "MG",
        "presentation_intent": "FOR PRESENTATION",
        "manufacturer": system.manufacturer,
        "model": system.model,
        "thickness_mm": round(layout.thickness_mm, 1),
        "compression_force_n": round(exposure.compression_force_n, 1),
        "kvp": technique.kvp,
        "age": header.age,
        "anode": technique.anode,
        "filter": technique.filter,
        "xray_system": system.name,
        "spacing_mm": round(spacing, 6),
        "bits_stored": system.bits_stored,
        "photometric": system.photometric,
        "transfer_syntax": str(system.transfer_syntax),
        "density": _DENSITY_NAMES[density],
        "case_label": label,
        "birads": birads,
        "is_prior": int(study.is_prior),
        "lesion_types": ";".join(lesion.kind.name for lesion in lesions),
        "mask": mask_name,
        "split": plan.split,
    }
    common = {
        "study_id": study_uid,
        "series_id": header.series_uid,
        "image_id": sop_uid,
        "laterality": side,
        "view_position": layout.view,
        "height": shape[0],
        "width": shape[1],
        "breast_birads": f"BI-RADS {birads}",
        "breast_density": f"DENSITY {_DENSITY_NAMES[density]}",
        "split": plan.split,
        "mask": mask_name,
    }
    rows = [
        {
            **common,
            "finding_categories": repr([lesion.kind.category]),
            "finding_birads": f"BI-RADS {lesion.birads}",
            "xmin": box[0],
            "ymin": box[1],
            "xmax": box[2],
            "ymax": box[3],
            "label": lesion.kind.outcome,
        }
        for lesion, box in zip(lesions, rendered.boxes, strict=True)
    ]
    if not rows:
        rows = [
            {
                **common,
                "finding_categories": "['No Finding']",
                "finding_birads": "",
                "label": "normal",
                "xmin": "",
                "ymin": "",
                "xmax": "",
                "ymax": "",
            }
        ]
    return record, rows
