"""Lesion annotations (boxes, optional masks) in the one table format MammoXAI reads and writes.

The format is VinDr-Mammo's ``finding_annotations.csv`` (Nguyen et al., "VinDr-Mammo: A large-scale
benchmark dataset for computer-aided diagnosis in full-field digital mammography", Sci Data 2023): one row
per box with ``image_id``, ``finding_categories``, ``finding_birads`` and ``xmin, ymin, xmax, ymax`` in pixels
of the original image. The synthetic phantoms write it, VinDr ships it, and the CBIS-DDSM reader converts its
ROI masks into it, so localisation metrics (pointing game, CorRELAX F1) read a single format.

Boxes are continuous ``(x0, y0, x1, y1)`` coordinates, the convention of
:class:`~mammoxai.io.geometry.ImageGeometry`: a box covering pixel columns 3..7 has ``x0 = 3, x1 = 8``, and
``geometry.to_model_boxes`` maps it onto the model grid exactly.

Which image a row is on: :func:`match_findings` (by ``image_id`` / ``sop_uid`` or the file's name or path, as a label
CSV names it), not a dictionary keyed by ``image_id`` as written, which drops the rows that name their image otherwise.

Example:
    findings = read_findings("vindr/finding_annotations.csv")
    per_record = match_findings(records, findings, "vindr/finding_annotations.csv")  # one list per record
    classes = [[box_class(finding) for finding in found] for found in per_record]  # "mass", ... per record
"""

from __future__ import annotations

import ast
import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammoxai.data.dataset import class_key
from mammoxai.data.manifest import ImageIndex, is_missing, read_table, relative_path
from mammoxai.errors import MammoXAIError

__all__ = [
    "LESION_CLASSES",
    "Finding",
    "finding_class",
    "box_class",
    "parse_birads",
    "read_findings",
    "write_findings",
    "match_findings",
    "check_image_shape",
]

#: the classes of CorRELAX's lesion-crop classifier (Mellado et al., Frontiers in Oncology 2025), in its order:
#: VinDr-Mammo's finding categories grouped into masses, calcifications, every other finding, and no finding
LESION_CLASSES: tuple[str, ...] = ("mass", "calcification", "other", "no_finding")

_COLUMNS = (
    "image_id", "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax", "label", "mask", "height",
    "width",
)  # fmt: skip
_BOX = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class Finding:
    """One annotated lesion.

    Args:
        image_id: the image it is on (the manifest's ``image_id``).
        categories: e.g. ("Mass",), ("Suspicious Calcification",), VinDr-Mammo's vocabulary.
        box: (x0, y0, x1, y1) in continuous pixel coordinates of the original image.
        birads: BI-RADS assessment of the finding ("0".."5", "4A", ...), when given.
        label: case label of the finding when pathology is known ("malignant", "benign", "recalled_benign").
        mask: path of a lesion mask image (same size as the mammogram, non-zero inside), when there is one.
        image_shape: (height, width) of the image the box was drawn on, when the CSV says (VinDr-Mammo's ``height``
            and ``width`` columns); :func:`check_image_shape` compares it with the file scored. Not compared
            between findings: it describes the image, not the lesion.
    """

    image_id: str
    categories: tuple[str, ...]
    box: tuple[float, float, float, float]
    birads: str | None = None
    label: str | None = None
    mask: str | None = None
    image_shape: tuple[int, int] | None = field(default=None, compare=False)


def finding_class(categories: Iterable[str]) -> str:
    """The :data:`LESION_CLASSES` name of a finding's VinDr-Mammo categories.

    "Mass" is a mass, "Suspicious Calcification" (or any "... Calcification") a calcification, "No Finding" or
    nothing is ``no_finding``, and the rest (asymmetries, architectural distortion, lymph nodes, skin changes) is
    ``other``. A finding with several categories takes its first mass or calcification category, else ``other``.
    Categories are read as class names are (:func:`~mammoxai.data.dataset.class_key`): "No_Finding" and
    "no  finding" are no finding, not ``other``.
    """
    named = [class_key(category) for category in categories if str(category).strip()]
    for category in named:
        if category == "mass":
            return "mass"
        if category.endswith("calcification") or category.endswith("calcifications"):
            return "calcification"
    return "other" if any(category != class_key("no_finding") for category in named) else "no_finding"


def box_class(finding: Finding, source: object = "finding annotations") -> str:
    """The :data:`LESION_CLASSES` name of an annotated box, refused when the box names no category.

    :func:`finding_class` reads no category as no finding, which is right for a row without a box; a box is drawn
    around something. Read the same way, a CSV whose ``finding_categories`` column is missing or named otherwise
    (``category``) made every lesion a "no finding" crop to train on and left it out of the saliency evaluation.

    Raises:
        MammoXAIError: the finding has a box but no category.
    """
    if not finding.categories:
        problem = f"the box {finding.box} of image {finding.image_id} has no finding_categories"
        fix = "give each box its categories in a finding_categories column, as VinDr-Mammo does: ['Mass']"
        raise MammoXAIError(source, problem, fix)
    return finding_class(finding.categories)


def parse_birads(value: object) -> str | None:
    """The BI-RADS category of "BI-RADS 4", "4" or 4 as "4"; None when empty. Sub-categories stay ("4A")."""
    text = str(value if value is not None else "").strip().upper().replace("BI-RADS", "").strip()
    return text or None


def read_findings(csv_path: str | os.PathLike) -> list[Finding]:
    """The boxes of a VinDr-style finding CSV; rows without a box ("No Finding", box cells empty or NA) are skipped.

    A row with only some of its box cells filled, or whose box is not ``0 <= xmin < xmax``, ``0 <= ymin < ymax``
    in finite pixel coordinates (swapped corners, a "nan" from a spreadsheet), is refused rather than skipped or
    kept: a localisation metric would silently lose the lesion or score against a box that is not there.

    Raises:
        MammoXAIError: the file is missing, lacks ``image_id`` or a box column, or a row has no image id, a partial
            or malformed box, or an unreadable category list.
    """
    csv_path = Path(csv_path)
    rows = read_table(csv_path, ("image_id", *_BOX), "expected VinDr-Mammo finding columns")
    findings = []
    for row in rows:
        line, cells = row.line, [row.number_text(column) for column in _BOX]
        if all(is_missing(cell) for cell in cells):  # "No Finding", its box written empty or NA
            continue
        if not row["image_id"]:
            raise MammoXAIError(csv_path, f"line {line} has a box but no image_id", "fill it in or delete the row")
        mask = row.get("mask") or ""  # empty, or "NA" as R and spreadsheets write it: no mask file
        findings.append(
            Finding(
                image_id=row["image_id"],
                categories=_parse_categories(row.get("finding_categories"), csv_path, line),
                box=_parse_box(cells, csv_path, line),
                birads=parse_birads(row.get("finding_birads")),
                label=row.get("label") or None,
                mask=None if is_missing(mask) else os.path.normpath(csv_path.parent / mask),
                image_shape=_parse_shape(row.get("height"), row.get("width"), csv_path, line),
            )
        )
    return findings


def _parse_shape(height: str | None, width: str | None, csv_path: Path, line: int) -> tuple[int, int] | None:
    """(height, width) of a row's image when both cells are filled, refused unless two positive pixel counts."""
    if not height or not width:
        return None
    try:
        shape = (int(float(height)), int(float(width)))
    except ValueError:
        shape = (0, 0)
    if min(shape) <= 0:
        problem = f"line {line} has height x width {height!r} x {width!r}, not a size in pixels"
        raise MammoXAIError(csv_path, problem, "give the image's rows and columns, or leave both empty")
    return shape


def check_image_shape(finding: Finding, shape: Sequence[int] | None, image: object, source: object) -> None:
    """Refuse a finding whose CSV gives its image another size than the file ``image`` scored (``shape``: rows,
    columns; None: unknown, not checked).

    Boxes are in pixels of the image they were drawn on. Published tables keep the size of the original download
    (VinDr-Mammo's ``height`` and ``width``); on a copy of another size (images converted to smaller PNGs, a
    different export) every box lands on other anatomy, and most still lie inside the image, so nothing else
    would show it.

    Raises:
        MammoXAIError: the sizes differ.
    """
    if finding.image_shape is None or shape is None or tuple(int(side) for side in shape) == finding.image_shape:
        return
    (height, width), (rows, columns) = finding.image_shape, shape
    problem = (
        f"gives image {finding.image_id} as {height}x{width} pixels, but {image} has {rows}x{columns}: "
        "its boxes are in pixels of another copy of the image"
    )
    fix = (
        f"scale xmin, xmax by {columns}/{width} and ymin, ymax by {rows}/{height} and correct height and width, "
        "or score the images the boxes were drawn on"
    )
    raise MammoXAIError(source, problem, fix)


def _parse_box(cells: list[str], csv_path: Path, line: int) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a row's box cells, refused unless a finite, non-empty box in the image quadrant.

    The cells are read as a comma-separated file writes them (:meth:`~mammoxai.data.manifest.TableRow.number_text`):
    "66,5" of a file separated by semicolons, as spreadsheets save CSV where the decimal mark is the comma, is 66.5;
    read with a point, such a box was refused.
    """
    fix = "give all four of xmin, ymin, xmax, ymax in pixels of the original image, or none for no finding"
    try:
        box = tuple(float(cell) for cell in cells)
    except ValueError as error:
        raise MammoXAIError(csv_path, f"line {line} has a non-numeric or partial box {cells}", fix) from error
    x0, y0, x1, y1 = box
    if not all(math.isfinite(value) for value in box) or not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise MammoXAIError(csv_path, f"line {line} has the box {cells}, not 0 <= xmin < xmax, 0 <= ymin < ymax", fix)
    return x0, y0, x1, y1


def write_findings(findings: Iterable[Finding], csv_path: str | os.PathLike) -> Path:
    """Write findings as a VinDr-style CSV (plus ``label`` and ``mask`` columns; masks relative to the CSV), with each
    finding's ``image_shape`` in VinDr's ``height`` and ``width`` columns, so that :func:`check_image_shape` still
    refuses the boxes on an image of another size after the round trip."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(_COLUMNS)
        for finding in findings:
            mask = relative_path(finding.mask, csv_path.parent) if finding.mask else ""
            writer.writerow(
                [
                    finding.image_id,
                    repr(list(finding.categories)),
                    f"BI-RADS {finding.birads}" if finding.birads else "",
                    *finding.box,
                    finding.label or "",
                    mask,
                    *(finding.image_shape or ("", "")),
                ]
            )
    return csv_path


def match_findings(
    records: Sequence[Mapping[str, Any]], findings: Iterable[Finding], source: object = "finding annotations"
) -> list[list[Finding]]:
    """The findings of each record, in the records' order; a finding naming no record is left out.

    A finding names its image as a label CSV's id does (:class:`~mammoxai.data.manifest.ImageIndex`): by the record's
    ``image_id`` or ``sop_uid``, or by the image file's name or path under any folder above it, with or without its
    extension (``case1.png``, ``case1``, ``Mass-Training_P_00001_LEFT_CC/1-1.png``), as written, else in any case
    (``CASE1.PNG``). VinDr-Mammo's ``image_id`` is the file stem while a manifest names a DICOM file by its SOP
    Instance UID, data sets that repeat one file name in every case folder name an image by its path, and ids typed
    into a spreadsheet change case. Matched only as written, such a finding was left out without a word: its lesion
    went unscored, and a lesion image without its boxes gave "no finding" crops drawn on the lesion.

    Raises:
        MammoXAIError: an id names several records (one file name in two folders): which image is meant cannot be
            told.
    """
    index = ImageIndex(records, str(source))
    matched: list[list[Finding]] = [[] for _ in records]
    for finding in findings:
        for position in index.find(finding.image_id):
            matched[position].append(finding)
    return matched


def _parse_categories(text: str | None, csv_path: Path, line: int) -> tuple[str, ...]:
    """VinDr writes Python list literals ("['Mass', 'Suspicious Calcification']"); plain text is one category.

    Raises:
        MammoXAIError: the cell starts like a list but is not one (a cut-off or hand-edited cell), which read as
            text would become a category no finding class knows.
    """
    text = (text or "").strip()
    if not text.startswith("["):
        return (text,) if text else ()
    try:
        items = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        items = None
    if not isinstance(items, list):
        problem = f"line {line} has finding_categories {text!r}, not a list"
        raise MammoXAIError(csv_path, problem, "write it as VinDr-Mammo does: ['Mass', 'Suspicious Calcification']")
    return tuple(str(item).strip() for item in items)
