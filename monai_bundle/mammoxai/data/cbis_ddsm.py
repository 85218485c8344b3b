"""CBIS-DDSM as manifest records and findings.

CBIS-DDSM (Lee et al., "A curated mammography data set for use in computer-aided detection and diagnosis
research", Sci Data 2017; TCIA) is the decimated, re-curated DDSM the whole-image classifier of Shen et al.
(Sci Rep 2019) was trained on. A TCIA download is one folder per image, e.g.
``Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-74994/1.000000-full mammogram images-24515/1-1.dcm``, and one
per abnormality, ``Mass-Training_P_00001_LEFT_CC_1/...``, holding the lesion's ROI mask and its cropped patch
as two DICOM files. Four description CSVs (``mass_case_description_train_set.csv``,
``calc_case_description_test_set.csv``, ...) give one row per abnormality: patient_id, breast density,
left or right breast, image view, abnormality id / type, assessment, pathology, subtlety and the three
file paths.

The paths in the CSVs do not match the download (they name UID folders and ``000000.dcm``), and which of
``1-1.dcm`` / ``1-2.dcm`` is the mask varies, so this reader trusts only the first path component - the folder
name, which is stable - and recognises the mask as the DICOM of the abnormality folder that has the full
image's size (the crop is smaller).

Case labels follow the negative / recalled-benign / malignant classes of the J Digit Imaging 2020
pretraining study, via :data:`PATHOLOGY_CASE_LABELS`: ``MALIGNANT`` -> ``malignant``; ``BENIGN`` (recalled,
worked up, proven benign) -> ``recalled_benign``; ``BENIGN_WITHOUT_CALLBACK`` (benign without a recall) ->
``benign``. An image with several abnormalities takes the most severe label (malignant > recalled_benign >
benign). CBIS-DDSM has no normal images.

A mammogram with both a mass and calcifications is in the download twice, as ``Mass-..._P_00001_LEFT_CC`` and
``Calc-..._P_00001_LEFT_CC``: one scan, and the mass and calcification sets were split into training and test
separately. Listed twice, the scan would be trained on twice or, split both ways, trained on and then scored. So
the copies become one record (the first folder's), with every abnormality's finding, the most severe label, and
the test split when either copy is in it. Patients whose other images still fall on both sides of the published
split are counted in a warning.

Example:
    records, findings = read_cbis_ddsm("CBIS-DDSM/")
    write_manifest(records, "cbis/manifest.csv")
    write_findings(findings, "cbis/finding_annotations.csv")
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from tqdm import tqdm

from mammoxai.data.findings import Finding, parse_birads
from mammoxai.data.manifest import normalise_density, normalise_laterality, read_record, read_table, report_unusable
from mammoxai.errors import MammoXAIError
from mammoxai.io.dicom import read_dicom_mask

__all__ = ["PATHOLOGY_CASE_LABELS", "read_cbis_ddsm", "mask_box"]

logger = logging.getLogger(__name__)

#: CBIS-DDSM pathology -> case label (see the module docstring).
PATHOLOGY_CASE_LABELS: dict[str, str] = {
    "MALIGNANT": "malignant",
    "BENIGN": "recalled_benign",
    "BENIGN_WITHOUT_CALLBACK": "benign",
}
_SEVERITY = ("benign", "recalled_benign", "malignant")
_CATEGORIES = {"mass": "Mass", "calcification": "Suspicious Calcification"}
_REDOWNLOAD = "re-download the abnormality folder"
_FOLDER = re.compile(r"^(Mass|Calc)-(Training|Test)_(P_\d+)_(LEFT|RIGHT)_(CC|MLO)(?:_\d+)?$")
_REQUIRED = (
    "patient_id", "left_or_right_breast", "image_view", "abnormality_type", "pathology", "image_file_path",
    "roi_mask_file_path",
)  # fmt: skip


def read_cbis_ddsm(
    root: str | os.PathLike, description_csvs: Sequence[str | os.PathLike] | None = None, strict: bool = True
) -> tuple[list[dict[str, Any]], list[Finding]]:
    """Manifest records and lesion boxes of a CBIS-DDSM download.

    Args:
        root: the folder the TCIA download went into (searched recursively for the image folders).
        description_csvs: the case description CSVs to read; default: every ``*case_description*.csv`` under
            ``root``.
        strict: an image whose folder or ROI mask is missing or unusable raises (True) or is skipped with a
            warning (False, for partial downloads). Either way every such image is named.

    Returns:
        records: one per full mammogram, ``image_id`` = its folder name (``Mass-Training_P_00001_LEFT_CC``),
            with ``patient_id`` ("P_00001"), ``density`` ("A".."D"), ``birads`` (highest assessment),
            ``case_label``, ``abnormality`` ("mass", "calcification", or "calcification+mass" for a scan in both
            sets) and ``split`` ("training" / "test").
        findings: one per abnormality, the box of its ROI mask and the mask's path.

    Raises:
        MammoXAIError: no description CSV, CSVs that list no abnormality or one abnormality twice (a repeated row,
            a CSV downloaded twice), or (``strict``) an image that cannot be used - its folder or ROI mask missing,
            an unknown pathology, or a ROI mask folder of another image on its row; the mass and calcification
            copies of one scan differ in size.
    """
    root = Path(root)
    csv_paths = [Path(path) for path in description_csvs or sorted(root.rglob("*case_description*.csv"))]
    if not csv_paths:
        raise MammoXAIError(root, "holds no *case_description*.csv", "pass description_csvs= or put them in the folder")
    rows_by_image = _rows_by_image(csv_paths)
    folders = _index_folders(root)
    records, findings, unusable = [], [], []
    for image_id in tqdm(sorted(rows_by_image), desc="reading CBIS-DDSM", unit="image", disable=None):
        try:
            record, image_findings = _read_image(image_id, rows_by_image[image_id], folders)
        except MammoXAIError as error:
            unusable.append(str(error))
            continue
        records.append(record)
        findings.extend(image_findings)
    report_unusable(root, "images could not be used", unusable, strict, "complete the download or correct their rows")
    records, findings = _one_record_per_scan(records, findings)
    _warn_of_patients_in_both_splits(records)
    return records, findings


def _one_record_per_scan(
    records: list[dict[str, Any]], findings: list[Finding]
) -> tuple[list[dict[str, Any]], list[Finding]]:
    """Merge the mass and calcification copies of one scan (patient, side, view) into its first record.

    Raises:
        MammoXAIError: two copies differ in size, so they cannot be one scan and their boxes would not agree.
    """
    copies: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        copies[record["patient_id"], record["laterality"], record["view"]].append(record)
    kept, merged_into = [], {}
    for scan in copies.values():
        first = scan[0]
        for other in scan[1:]:
            if (other["rows"], other["cols"]) != (first["rows"], first["cols"]):
                problem = (
                    f"is {other['rows']}x{other['cols']}, its copy {first['image_id']} {first['rows']}x{first['cols']}"
                )
                raise MammoXAIError(other["image_id"], problem, "re-download both image folders")
            merged_into[other["image_id"]] = first["image_id"]
        assessments = [record["birads"] for record in scan if record["birads"]]
        first.update(
            birads=max(assessments, default=None),
            case_label=max((record["case_label"] for record in scan), key=_SEVERITY.index),
            abnormality="+".join(sorted({record["abnormality"] for record in scan})),
            split="test" if any(record["split"] == "test" for record in scan) else first["split"],
        )
        kept.append(first)
    if merged_into:
        logger.info("CBIS-DDSM: %d scans listed as both mass and calcification cases are read once", len(merged_into))
    moved = [
        dataclasses.replace(finding, image_id=merged_into.get(finding.image_id, finding.image_id))
        for finding in findings
    ]
    return kept, moved


def _warn_of_patients_in_both_splits(records: list[dict[str, Any]]) -> None:
    splits: dict[str, set[str]] = defaultdict(set)
    for record in records:
        splits[record["patient_id"]].add(record["split"])
    both = sorted(patient for patient, names in splits.items() if len(names) > 1)
    if both:
        logger.warning(
            "CBIS-DDSM: %d patients (%s) have images in both the training and the test split, as published; a model "
            "trained on the training split has seen other images of these test patients",
            len(both),
            ", ".join(both[:5]) + (" ..." if len(both) > 5 else ""),
        )


def _rows_by_image(csv_paths: Sequence[Path]) -> dict[str, list[dict[str, str]]]:
    """The description rows of every image folder, each abnormality (ROI mask folder) once.

    A row listed twice - a repeated line, or a CSV downloaded twice ("mass_case_description_train_set (1).csv")
    under ``root`` - would box the lesion twice and count it twice in localisation metrics, so it is refused.

    Raises:
        MammoXAIError: a CSV cannot be read, the CSVs list no abnormality, or one abnormality is listed twice.
    """
    rows_by_image: dict[str, list[dict[str, str]]] = {}
    listed_in: dict[str, Path] = {}
    for csv_path in csv_paths:
        # the mass and calc CSVs spell some columns differently ("breast_density" / "breast density")
        for row in read_table(csv_path, _REQUIRED, "pass CBIS-DDSM case description CSVs", rename=_column_name):
            abnormality = _folder_name(row["roi_mask_file_path"])
            if abnormality in listed_in:
                problem = f"lists the abnormality {abnormality} again (also in {listed_in[abnormality]})"
                raise MammoXAIError(csv_path, problem, "keep one row per abnormality: delete the repeat or the copy")
            listed_in[abnormality] = csv_path
            rows_by_image.setdefault(_folder_name(row["image_file_path"]), []).append(row)
    if not rows_by_image:
        raise MammoXAIError(", ".join(map(str, csv_paths)), "list no abnormality", "pass the CSVs of the download")
    return rows_by_image


def mask_box(path: str | os.PathLike) -> tuple[float, float, float, float]:
    """The (x0, y0, x1, y1) box around the non-zero pixels of a DICOM ROI mask, in continuous coordinates.

    The mask is read by :func:`~mammoxai.io.dicom.read_dicom_mask`, as the saliency evaluation reads it from the
    findings' ``mask`` column, so the box and the mask inside it agree.
    """
    inside = read_dicom_mask(path)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        raise MammoXAIError(path, "is an empty ROI mask", _REDOWNLOAD)
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _read_image(
    image_id: str, rows: list[dict[str, str]], folders: dict[str, Path]
) -> tuple[dict[str, Any], list[Finding]]:
    match = _FOLDER.match(image_id)
    if match is None:
        raise MammoXAIError(image_id, "is not a CBIS-DDSM image folder name", "check the image file path column")
    record = read_record(_dicom_files(image_id, folders, expected=1)[0])
    shape = (record["rows"], record["cols"])
    findings, labels = [], []
    for row in rows:
        pathology = row["pathology"].upper()
        if pathology not in PATHOLOGY_CASE_LABELS:
            expected = f"expected one of {sorted(PATHOLOGY_CASE_LABELS)}"
            raise MammoXAIError(image_id, f"has pathology {row['pathology']!r}", expected)
        labels.append(PATHOLOGY_CASE_LABELS[pathology])
        abnormality = _folder_name(row["roi_mask_file_path"])
        if not abnormality.startswith(f"{image_id}_"):  # a row whose cells were shifted or pasted from another
            raise MammoXAIError(image_id, f"has the ROI mask folder {abnormality}", "check its ROI mask file path")
        mask = _find_mask(abnormality, folders, shape)
        category = _CATEGORIES.get(row["abnormality_type"].lower(), row["abnormality_type"])
        birads = parse_birads(row.get("assessment"))
        findings.append(Finding(image_id, (category,), mask_box(mask), birads, labels[-1], str(mask)))
    assessments = [finding.birads for finding in findings if finding.birads]
    record.update(
        image_id=image_id,
        patient_id=match.group(3),
        laterality=normalise_laterality(match.group(4)),
        view=match.group(5),
        density=normalise_density(rows[0].get("breast_density")),
        birads=max(assessments, default=None),
        case_label=max(labels, key=_SEVERITY.index),
        abnormality="mass" if match.group(1) == "Mass" else "calcification",
        split=match.group(2).lower(),
    )
    return record, findings


def _find_mask(folder_name: str, folders: dict[str, Path], shape: tuple[int, int]) -> Path:
    """The ROI mask among an abnormality folder's DICOM files: the one as large as the mammogram."""
    candidates = [path for path in _dicom_files(folder_name, folders) if _dicom_shape(path) == shape]
    if len(candidates) != 1:
        raise MammoXAIError(
            folder_name,
            f"has {len(candidates)} DICOM files of the mammogram's size {shape}, expected one ROI mask",
            _REDOWNLOAD,
        )
    return candidates[0]


def _dicom_shape(path: Path) -> tuple[int, int]:
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises many types on damaged input; all mean the same to the user
        raise MammoXAIError(path, f"is not a readable DICOM file ({error})", _REDOWNLOAD) from error
    return int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))


def _dicom_files(folder_name: str, folders: dict[str, Path], expected: int | None = None) -> list[Path]:
    if folder_name not in folders:
        raise MammoXAIError(folder_name, "folder is missing", "download it")
    files = sorted(folders[folder_name].rglob("*.dcm"))
    if not files or (expected is not None and len(files) != expected):
        problem = f"holds {len(files)} DICOM files, expected {expected or 'some'}"
        raise MammoXAIError(folders[folder_name], problem, "re-download it")
    return files


def _index_folders(root: Path) -> dict[str, Path]:
    """Every CBIS-DDSM image or abnormality folder under ``root`` by name (one walk, however deep the download)."""
    folders: dict[str, Path] = {}
    for parent, dirs, _ in os.walk(root):
        for name in dirs:
            if _FOLDER.match(name):
                folders.setdefault(name, Path(parent, name))
        dirs[:] = [name for name in dirs if not _FOLDER.match(name)]  # the DICOMs inside are found by rglob later
    return folders


def _column_name(header: str) -> str:
    """A header cell as a column name: "left or right breast" -> "left_or_right_breast"."""
    return re.sub(r"\s+", "_", header.lower())


def _folder_name(csv_path_cell: str) -> str:
    """First component of a CSV file path cell; the cells may carry quotes, backslashes or a trailing newline."""
    return csv_path_cell.strip().strip('"').replace("\\", "/").split("/")[0]
