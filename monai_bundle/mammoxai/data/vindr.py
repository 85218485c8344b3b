"""VinDr-Mammo as manifest records and findings.

VinDr-Mammo (Nguyen et al., Sci Data 2023; PhysioNet) ships 20,000 full-field digital mammograms of 5,000
exams as ``images/<study_id>/<image_id>.dicom`` with two tables next to the folder:
``breast-level_annotations.csv`` (one row per image: study_id, series_id, image_id, laterality, view_position,
height, width, breast_birads, breast_density, split) and ``finding_annotations.csv`` (one row per box, same
columns plus finding_categories, finding_birads, xmin, ymin, xmax, ymax).

Case labels: VinDr-Mammo has no pathology, only the breast-level BI-RADS assessment, so
:data:`BIRADS_CASE_LABELS` maps it onto MammoXAI's case labels as a proxy - BI-RADS 1 (negative) is
``normal``; 2 (benign finding) and 3 (probably benign, < 2 % malignancy) are ``benign``; 4 (suspicious) and
5 (highly suggestive of malignancy), for which biopsy is recommended, are ``malignant``. A "malignant" VinDr
label therefore means *suspicious enough for biopsy*, not proven cancer; say so when quoting results.

Example:
    records, findings = read_vindr("physionet.org/files/vindr-mammo/1.0.0", split="training")
    dataset = MammogramDataset(records, image_size=(512, 416), class_names=["normal", "benign", "malignant"])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mammoxai.data.findings import Finding, parse_birads, read_findings
from mammoxai.data.manifest import (
    TableRow,
    check_unique,
    normalise_density,
    normalise_laterality,
    read_record,
    read_table,
    report_unusable,
)
from mammoxai.errors import MammoXAIError

__all__ = ["BIRADS_CASE_LABELS", "read_vindr"]

#: breast-level BI-RADS -> case label (see the module docstring for why this is a proxy).
BIRADS_CASE_LABELS: dict[str, str] = {"1": "normal", "2": "benign", "3": "benign", "4": "malignant", "5": "malignant"}

_BREAST_CSV = "breast-level_annotations.csv"
_FINDING_CSV = "finding_annotations.csv"
_REQUIRED = ("study_id", "series_id", "image_id", "laterality", "view_position", "height", "width", "breast_birads")


def read_vindr(
    root: str | os.PathLike, split: str | None = None, strict: bool = True, read_headers: bool = False
) -> tuple[list[dict[str, Any]], list[Finding]]:
    """Manifest records and lesion boxes of a VinDr-Mammo download.

    Every value the records are built from is checked, because a wrong one would not fail later but train on a
    wrong label: a breast BI-RADS outside "BI-RADS 1".."BI-RADS 5", a laterality other than L / R, a density
    other than "DENSITY A".."DENSITY D", a height or width that is not a positive number and an image listed
    twice stop the reader with the line or image at fault; so do (``strict``) a finding on an image the
    breast-level table does not list and a box reaching past its image's height or width.

    Args:
        root: the folder holding ``images/`` and the two annotation CSVs.
        split: keep only "training" or "test" images (VinDr's own split); None keeps all.
        strict: images listed in the CSV but absent under ``images/``, findings on images the breast-level CSV
            does not list and boxes reaching outside their image raise (True) or are skipped with a warning
            (False, for partial downloads).
        read_headers: also read each DICOM header (fast, no pixels) for the fields the CSV lacks - patient id,
            manufacturer, thickness, compression force, kVp, age - as metadata pretraining needs them.

    Returns:
        records: one per image, with ``image_id`` = VinDr's image_id, ``study_uid`` / ``series_uid`` = its
            study_id / series_id, ``birads`` ("1".."5"), ``density`` ("A".."D"), ``case_label`` and ``split``.
        findings: the boxes on those images, in original pixel coordinates.

    Raises:
        MammoXAIError: a CSV is missing or malformed (see above), ``split`` names no split of the CSV, or no
            listed image is present.
    """
    root = Path(root)
    breast_csv = root / _BREAST_CSV
    rows = read_table(breast_csv, _REQUIRED, "pass the VinDr-Mammo folder (with its breast-level CSV)")
    splits = sorted({row.get("split", "") for row in rows} - {""})
    if split is not None and split not in splits:
        raise MammoXAIError(breast_csv, f"has no image of split {split!r} (splits: {', '.join(splits) or 'none'})",
                            "pass split= one of those, or None for all")  # fmt: skip
    every = [_breast_record(root, row, breast_csv) for row in rows]
    check_unique(every, breast_csv, "keep one row per image")
    records, missing = [], []
    for record in every:
        if split is not None and record["split"] != split:
            continue
        if not Path(record["path"]).is_file():
            missing.append(str(Path(record["path"]).relative_to(root)))
            continue
        records.append({**read_record(record["path"]), **record} if read_headers else record)
    report_unusable(breast_csv, f"images are missing under {root / 'images'}", missing, strict, "download them")
    if not every:
        raise MammoXAIError(breast_csv, "lists no image", "pass the breast-level CSV of the download")
    if not records:
        raise MammoXAIError(root / "images", f"holds none of the {len(missing)} images listed", "download them")
    shapes = {record["image_id"]: (record["rows"], record["cols"]) for record in every}
    findings = _findings(root / _FINDING_CSV, shapes, strict)
    kept = {record["image_id"] for record in records}
    return records, [finding for finding in findings if finding.image_id in kept]


def _breast_record(root: Path, row: TableRow, breast_csv: Path) -> dict[str, Any]:
    """The record of one breast-level row, refused when a value it needs is missing or outside VinDr's vocabulary."""
    birads, laterality = parse_birads(row["breast_birads"]), normalise_laterality(row["laterality"])
    problems = [f"{column} is empty" for column in ("study_id", "image_id") if not row[column]]
    if birads not in BIRADS_CASE_LABELS:
        problems.append(f"breast_birads is {row['breast_birads']!r}, not BI-RADS 1..5")
    if laterality is None:
        problems.append(f"laterality is {row['laterality']!r}, not L or R")
    density = normalise_density(row.get("breast_density"))
    if row.get("breast_density") and density is None:
        problems.append(f"breast_density is {row['breast_density']!r}, not DENSITY A..D")
    try:
        rows, cols = int(float(row["height"])), int(float(row["width"]))
    except ValueError:
        rows = cols = 0
    if rows <= 0 or cols <= 0:
        problems.append(f"height x width is {row['height']!r} x {row['width']!r}, not a size in pixels")
    if problems:
        raise MammoXAIError(
            breast_csv, f"line {row.line}: {'; '.join(problems)}", "fix the row as VinDr-Mammo wrote it"
        )
    return {
        "path": str(root / "images" / row["study_id"] / f"{row['image_id']}.dicom"),
        "image_id": row["image_id"],
        "study_uid": row["study_id"],
        "series_uid": row["series_id"],
        "laterality": laterality,
        "view": row["view_position"].upper(),
        "rows": rows,
        "cols": cols,
        "birads": birads,
        "density": density,
        "case_label": BIRADS_CASE_LABELS[birads],
        "split": row.get("split") or None,
    }


def _findings(finding_csv: Path, shapes: dict[str, tuple[int, int]], strict: bool) -> list[Finding]:
    """The boxes of ``finding_csv`` on images of the breast-level table (``shapes``: image_id -> (height, width)).

    A finding on an image that table does not list, or a box reaching past its image's width or height, points at
    no lesion the model could be scored on; both are reported (:func:`report_unusable`) and never kept.
    """
    findings, unknown, outside = [], [], []
    for finding in read_findings(finding_csv):
        if finding.image_id not in shapes:
            unknown.append(finding.image_id)
        elif finding.box[2] > shapes[finding.image_id][1] or finding.box[3] > shapes[finding.image_id][0]:
            outside.append(f"{finding.image_id} {finding.box} (image {shapes[finding.image_id]})")
        else:
            findings.append(finding)
    report_unusable(finding_csv, f"findings are on images not in {_BREAST_CSV}", unknown, strict, "check image_id")
    report_unusable(finding_csv, "boxes reach outside their image", outside, strict, "check xmin..ymax")
    return findings
