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
from mammoxai.data.manifest import normalise_density, normalise_laterality, read_record, read_table, report_unusable

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

    Args:
        root: the folder holding ``images/`` and the two annotation CSVs.
        split: keep only "training" or "test" images (VinDr's own split); None keeps all.
        strict: images listed in the CSV but absent under ``images/`` raise (True) or are skipped with a
            warning (False, for partial downloads).
        read_headers: also read each DICOM header (fast, no pixels) for the fields the CSV lacks - patient id,
            manufacturer, thickness, compression force, kVp, age - as metadata pretraining needs them.

    Returns:
        records: one per image, with ``image_id`` = VinDr's image_id, ``study_uid`` / ``series_uid`` = its
            study_id / series_id, ``birads`` ("1".."5"), ``density`` ("A".."D"), ``case_label`` and ``split``.
        findings: the boxes on those images, in original pixel coordinates.
    """
    root = Path(root)
    records, missing = [], []
    for row in read_table(root / _BREAST_CSV, _REQUIRED, "pass the VinDr-Mammo folder (with its breast-level CSV)"):
        if split is not None and row.get("split") != split:
            continue
        path = root / "images" / row["study_id"] / f"{row['image_id']}.dicom"
        if not path.is_file():
            missing.append(str(path.relative_to(root)))
            continue
        birads = parse_birads(row["breast_birads"])
        record = {
            "path": str(path),
            "image_id": row["image_id"],
            "study_uid": row["study_id"],
            "series_uid": row["series_id"],
            "laterality": normalise_laterality(row["laterality"]),
            "view": row["view_position"].upper(),
            "rows": int(float(row["height"])),
            "cols": int(float(row["width"])),
            "birads": birads,
            "density": normalise_density(row.get("breast_density")),
            "case_label": BIRADS_CASE_LABELS.get(birads or ""),
            "split": row.get("split") or None,
        }
        records.append({**read_record(path), **record} if read_headers else record)
    report_unusable(root / _BREAST_CSV, f"images are missing under {root / 'images'}", missing, strict, "download them")
    kept = {record["image_id"] for record in records}
    findings = [finding for finding in read_findings(root / _FINDING_CSV) if finding.image_id in kept]
    return records, findings
