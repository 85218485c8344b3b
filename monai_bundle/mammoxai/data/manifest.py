"""Dataset manifests: one row per image with its identifiers, view, header facts and (optionally) labels.

A manifest is a list of plain ``dict`` records, the MONAI "datalist" idiom, so it feeds
:class:`~mammoxai.data.dataset.MammogramDataset`, ``monai.data.partition_dataset`` and a CSV file alike. Column
names are shared with the manifest that ``python -m mammoxai.data.synth`` writes, so a folder of synthetic
phantoms, a hospital export and a public data set all end up in the same table.

Example:
    manifest = build_manifest("exports/", label_csv="labels.csv", id_column="sop_uid")
    write_manifest(manifest.records, "exports/manifest.csv")
    records = read_manifest("exports/manifest.csv")

From the command line (unreadable files are logged and left out, the manifest is written anyway; an existing
``--out`` is replaced only with ``--overwrite``)::

    python -m mammoxai.data.manifest exports/ --out exports/manifest.csv --labels labels.csv --id-column sop_uid
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mammoxai.errors import MammoXAIError, check_output_path, first_of
from mammoxai.io import dicom, read_mammogram, sniff_format

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_COLUMNS",
    "HEADER_COLUMNS",
    "Manifest",
    "build_manifest",
    "find_images",
    "read_record",
    "record_shape",
    "record_header",
    "join_labels",
    "ImageIndex",
    "is_missing",
    "normalise_laterality",
    "normalise_density",
    "report_unusable",
    "write_manifest",
    "read_manifest",
    "check_unique",
    "relative_path",
    "read_table",
]

#: manifest column -> DICOM keyword, for the header fields the rest of MammoXAI uses (metadata pretraining
#: targets, patient/study matching, QC). Values are kept as the header gives them (``age`` is "056Y").
HEADER_COLUMNS: dict[str, str] = {
    "patient_id": "PatientID",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID",
    "study_date": "StudyDate",
    "modality": "Modality",
    "presentation_intent": "PresentationIntentType",
    "manufacturer": "Manufacturer",
    "model": "ManufacturerModelName",
    "thickness_mm": "BodyPartThickness",
    "compression_force_n": "CompressionForce",
    "kvp": "KVP",
    "age": "PatientAge",
    "anode": "AnodeTargetMaterial",
    "filter": "FilterMaterial",
}

#: column order of a written manifest; columns outside this list (labels, density, split, ...) follow.
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "image_id", "laterality", "view", "rows", "cols", *HEADER_COLUMNS)

# Typed columns: everything else is read back as text, so identifiers such as "00123" keep their zeros.
_INT_COLUMNS = frozenset({"rows", "cols"})
_FLOAT_COLUMNS = frozenset({"thickness_mm", "compression_force_n", "kvp"})

_DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
_IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".pgm"})
_LATERALITY = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}
_DENSITY = {"1": "A", "2": "B", "3": "C", "4": "D"}
#: cell texts that mean "no value" (upper-cased): what R, pandas and spreadsheets write for a missing value. Read
#: as text they would be a value: a patient "NA" owning every image without one, a view "N/A" counted as present.
#: "None" is not among them: as a finding or a label it may be a value ("no abnormality").
_MISSING = frozenset({"NA", "N/A", "#N/A", "<NA>", "NAN", "NULL"})
#: the fields a label CSV column supplies when its header names one in another case or spacing ("Laterality",
#: "Patient ID", "KVP"), as INbreast's and many spreadsheets' headers are written
_KNOWN_COLUMNS = frozenset({*MANIFEST_COLUMNS, "density", "case_label", "split"})
#: record fields that describe the scanned file itself, which a label CSV never replaces (see :func:`join_labels`)
_FILE_COLUMNS = ("path", "image_id", "rows", "cols")
#: columns that name an image, a patient, a study or a series: text as written, a comma included (an id "12,5" read
#: as "12.5" would name nothing)
_ID_COLUMNS = frozenset({"path", "image_id", "patient_id", "study_uid", "series_uid", "sop_uid"})
#: a number written with a decimal comma ("28,5", "-0,25", "1,5E-3")
_DECIMAL_COMMA = re.compile(r"[+-]?(\d+,\d*|,\d+)([eE][+-]?\d+)?")
#: a number whose commas may group thousands ("1,234", "12,345,678") as well as mark a decimal; not "0,085", since
#: no group of thousands starts with a zero
_THOUSANDS = re.compile(r"[+-]?[1-9]\d{0,2}(,\d{3})+")


@dataclass
class Manifest:
    """The records built from a folder, and the files that could not be read.

    Args:
        records: one dict per readable image (see :data:`MANIFEST_COLUMNS`).
        errors: path of each unreadable file -> the :class:`MammoXAIError` message saying why.
        masks: image files left out unread because they are named after the SOP Instance UID of a DICOM image
            in the folder: its lesion mask (``masks/<SOPInstanceUID>.png`` of a synthetic cohort) or a copy.
    """

    records: list[dict[str, Any]]
    errors: dict[str, str] = field(default_factory=dict)
    masks: list[str] = field(default_factory=list)


# -- reading images ---------------------------------------------------------------------------------------------
def find_images(folder: str | os.PathLike, exclude: Sequence[str] = ()) -> Iterator[Path]:
    """Yield, in sorted order, every mammogram file under ``folder`` (recursively).

    DICOM is recognised by suffix (.dcm, .dicom, .dic) or, for other names as PACS exports and older archives
    write them (``IM0001``, ``1.2.840.113619.2.55.3.604``), by content (:func:`mammoxai.io.sniff_format`: the
    ``DICM`` marker, or a preamble-less DICOM stream); PNG / TIFF / PGM by suffix. Hidden files and folders, CSV files and
    anything else are ignored, as are paths (relative to ``folder``, "/"-separated) matching a shell pattern in
    ``exclude``: files stored beside the images that are not mammograms, e.g. ``exclude=["masks/*"]``.
    Links to folders are followed, since a data set is often assembled from links to where the images lie; each
    real folder is walked once, so a link back up does not loop and two links to one folder do not list it twice.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MammoXAIError(folder, "is not a folder", "pass the folder that holds the images")
    walked = {os.path.realpath(folder)}
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in sorted(dirs) if not d.startswith(".") and _first_visit(Path(parent, d), walked)]
        for name in sorted(files):
            path = Path(parent, name)
            suffix = path.suffix.lower()
            if name.startswith(".") or any(fnmatch(path.relative_to(folder).as_posix(), p) for p in exclude):
                continue
            if suffix in _DICOM_SUFFIXES or suffix in _IMAGE_SUFFIXES or _is_dicom_by_content(path):
                yield path


def _first_visit(folder: Path, walked: set[str]) -> bool:
    """Whether the real folder behind ``folder`` is not in ``walked`` yet; adds it."""
    real = os.path.realpath(folder)
    if real in walked:
        return False
    walked.add(real)
    return True


def _is_image_file(path: Path) -> bool:
    """Whether ``path`` is a PNG / TIFF / PGM file, not DICOM."""
    return path.suffix.lower() in _IMAGE_SUFFIXES


def _is_dicom_by_content(path: Path) -> bool:
    try:
        return sniff_format(path) == "dicom"
    except MammoXAIError:  # empty or unreadable: nothing says it is an image
        return False


def read_record(path: str | os.PathLike, header_only: bool = True) -> dict[str, Any]:
    """The manifest record of one image file.

    Args:
        path: a DICOM, PNG, TIFF or PGM file.
        header_only: for DICOM, read the header with ``pydicom.dcmread(stop_before_pixels=True)`` instead of
            decoding the image. On a large archive this is one to two orders of magnitude faster (a 50 MB
            JPEG 2000 mammogram costs a few kB of reading), but a file whose *pixel data* is broken is only
            found when the image is first loaded for training. ``False`` runs the full
            :func:`mammoxai.io.read_mammogram` on every file, which validates everything once, up front.
            Other formats have no header and are always read in full.

    Raises:
        MammoXAIError: the file cannot be read as a mammogram.
    """
    path = Path(path)
    if header_only and sniff_format(path) == "dicom":  # by content: a .dcm that is really a PNG is read as one
        return _record_from_dicom_header(path)
    mammogram = read_mammogram(path)
    return _record(path, mammogram.laterality, mammogram.view, mammogram.shape, mammogram.header)


def _record_from_dicom_header(path: Path) -> dict[str, Any]:
    dataset = dicom.read_dicom_header(path)  # refuses what read_mammogram refuses, with the reader's message
    header = dicom.header_fields(dataset, path)
    return _record(path, dicom.laterality(dataset), dicom.view(dataset), (header["Rows"], header["Columns"]), header)


def _record(
    path: Path, laterality: str | None, view: str | None, shape: tuple[int, int], header: Mapping[str, Any]
) -> dict[str, Any]:
    """Named by SOP Instance UID when the file has one, else by file stem."""
    record = {"path": str(path), "laterality": laterality, "view": view, "rows": shape[0], "cols": shape[1]}
    record.update({column: header.get(keyword) for column, keyword in HEADER_COLUMNS.items()})
    record["image_id"] = record["sop_uid"] or path.stem
    return record


def normalise_laterality(value: Any) -> str | None:
    """Laterality as "L" / "R" from the spellings data sets use ("L", "left", "RIGHT", ...); None otherwise."""
    return _LATERALITY.get(str(value).strip().upper()) if value is not None else None


def normalise_density(value: Any) -> str | None:
    """BI-RADS breast density as "A".."D" from "DENSITY C" (VinDr-Mammo), "3" / 3 (CBIS-DDSM) or "c"."""
    text = str(value if value is not None else "").strip().upper().replace("DENSITY", "").strip()
    return _DENSITY.get(text, text if text in _DENSITY.values() else None)


def record_header(record: Mapping[str, Any]) -> dict[str, Any]:
    """The header fields of a record keyed by DICOM keyword, as :class:`~mammoxai.io.Mammogram` carries them.

    Lets metadata targets (``MetadataLabelSpace.encode(header)``) be computed from a manifest without opening a
    single image.
    """
    header = {keyword: record.get(column) for column, keyword in HEADER_COLUMNS.items()}
    header["ImageLaterality"] = record.get("laterality")
    header["ViewPosition"] = record.get("view")
    return {keyword: value for keyword, value in header.items() if value is not None}


# -- building ---------------------------------------------------------------------------------------------------
def build_manifest(
    folder: str | os.PathLike,
    label_csv: str | os.PathLike | None = None,
    id_column: str | Sequence[str] = "sop_uid",
    column_map: Mapping[str, str] | None = None,
    strict: bool = True,
    on_error: str = "collect",
    header_only: bool = True,
    exclude: Sequence[str] = (),
) -> Manifest:
    """One record per mammogram under ``folder``, optionally joined with a CSV of labels.

    A PNG / TIFF / PGM file named after the SOP Instance UID of a DICOM image found in the same scan is left out
    unread (see :attr:`Manifest.masks`): it is that image's lesion mask, as a synthetic cohort keeps them in
    ``masks/<SOPInstanceUID>.png``, or a copy of it; listed, it would be a second image of the same ``image_id``,
    inheriting the DICOM image's findings and labels.

    An image file (PNG, TIFF, PGM) has no UID and is named by its file stem; where stems repeat, as in data sets
    that keep one ``1-1.png`` per case folder, those files are named by their path under ``folder`` without the
    suffix (``Mass-Training_P_00001_LEFT_CC/1-1``) instead. A DICOM image exported twice (same SOP Instance UID) is
    refused (:func:`check_unique`): the manifest could not be read back.

    Args:
        folder: searched recursively, see :func:`find_images`.
        exclude: shell patterns of paths under ``folder`` that are not mammograms, see :func:`find_images`.
        label_csv: optional CSV whose columns supply or override record fields (case label, density, view, ...);
            joined as in :func:`join_labels`.
        id_column: the CSV column(s) that identify an image; see :func:`join_labels`.
        column_map: renames CSV columns to manifest fields before joining, e.g. ``{"image view": "view"}``.
        strict: whether CSV rows that match no image are an error (True) or a warning (False).
        on_error: ``"collect"`` (default) records each unreadable file in :attr:`Manifest.errors`, logs a
            summary and goes on with the rest; ``"raise"`` stops at the first one.
        header_only: DICOM header fast path, see :func:`read_record`.

    Raises:
        MammoXAIError: the folder holds no readable image, ``on_error="raise"`` and a file is bad, two files
            have one ``image_id``, or the label CSV cannot be joined.
    """
    if on_error not in ("collect", "raise"):
        raise MammoXAIError("on_error", f"is {on_error!r}", 'use "collect" or "raise"')
    manifest = Manifest(records=[])
    paths = list(find_images(folder, exclude))
    records: dict[Path, dict[str, Any]] = {}
    uids: set[str] = set()
    # DICOM files first (the sort is stable), so that every SOP Instance UID is known before the first image file
    for path in tqdm(sorted(paths, key=_is_image_file), desc="reading headers", unit="image", disable=None):
        if _is_image_file(path) and path.stem in uids:
            manifest.masks.append(str(path))
            continue
        try:
            record = read_record(path, header_only=header_only)
        except MammoXAIError as error:
            if on_error == "raise":
                raise
            manifest.errors[str(path)] = str(error)
        else:
            records[path] = record
            if record["sop_uid"]:
                uids.add(record["sop_uid"])
    manifest.records = [records[path] for path in paths if path in records]
    if manifest.masks:
        logger.info("%d masks named after the SOP Instance UID of a DICOM image are left out", len(manifest.masks))
    if manifest.errors:
        logger.warning(
            "%d of %d files under %s could not be read and are left out:\n%s",
            len(manifest.errors),
            len(manifest.errors) + len(manifest.records),
            folder,
            "\n".join(manifest.errors.values()),
        )
    if not manifest.records:
        raise MammoXAIError(folder, "holds no readable mammogram (DICOM, PNG, TIFF or PGM)", "check the folder")
    _name_repeated_stems_by_path(manifest.records, Path(folder))
    check_unique(manifest.records, folder, "delete the copies, or leave them out with exclude= (--exclude)")
    if label_csv is not None:
        manifest.records = join_labels(manifest.records, label_csv, id_column, column_map=column_map, strict=strict)
    return manifest


def _name_repeated_stems_by_path(records: Sequence[dict[str, Any]], folder: Path) -> None:
    """Give files without a SOP Instance UID whose stem names another image too their path under ``folder``."""
    counts = Counter(record["image_id"] for record in records)
    for record in records:
        if not record["sop_uid"] and counts[record["image_id"]] > 1:
            record["image_id"] = Path(record["path"]).relative_to(folder).with_suffix("").as_posix()


# -- joining labels ---------------------------------------------------------------------------------------------
def join_labels(
    records: Sequence[Mapping[str, Any]],
    label_csv: str | os.PathLike,
    id_column: str | Sequence[str] = "sop_uid",
    column_map: Mapping[str, str] | None = None,
    strict: bool = True,
) -> list[dict[str, Any]]:
    """Records with the fields of their row in ``label_csv`` merged in (non-empty CSV cells win).

    Public data sets often ship PNG / PGM images whose only metadata is such a CSV (patient, laterality, view,
    density, label), so a column may supply or override any header or label field; laterality spellings
    ("LEFT", "l") become "L" / "R", views are upper-cased, and a ``density`` column's BI-RADS densities written as
    in CBIS-DDSM ("3") or VinDr-Mammo ("DENSITY C") become "A".."D". A header names a manifest field in any case
    or spacing ("Laterality", "Patient ID"). An empty cell, or one holding a missing-value marker as R, pandas and
    spreadsheets write them ("NA", "N/A", "NaN", "null", "#N/A"), supplies nothing.

    The fields that describe the file itself are never replaced: ``path`` (where the file was found; a label
    CSV's own ``path`` column, e.g. in a copy of another manifest, is relative to wherever that CSV was written,
    so it is ignored), ``image_id`` (the image's name in finding tables) and the measured ``rows`` / ``cols``.
    A row that gives another ``image_id``, ``rows`` or ``cols`` than its image has describes a different image
    and is an error, except in an id column, whose value only has to name the image.

    Args:
        records: manifest records.
        label_csv: the CSV file.
        id_column: either one column holding, per row, an image's SOP Instance UID, its ``image_id``, its
            file name or its path under any folder above it (``P000/a.png``, "/" or "\\" separated), with or
            without extension, in any case where the exact spelling names no image - each must name one image;
            or several columns that are all manifest fields, e.g. ``("patient_id", "laterality", "view")``, in
            which case a row labels every image that agrees on all of them (prior exams of the same breast and view
            included).
        column_map: renames CSV columns to manifest fields before anything else, e.g.
            ``{"left or right breast": "laterality", "pathology": "case_label"}``.
        strict: CSV rows that match no image raise (True) or warn (False); their ids are listed either way.
            Images without a row keep their fields and get no label.

    Raises:
        MammoXAIError: the CSV is missing or lacks the id column(s), an id appears on rows that disagree, rows
            naming one image by different ids disagree, an id matches several images, a row disagrees with its
            image's ``image_id``, ``rows`` or ``cols``, or (``strict``) a row matches no image.
    """
    columns = tuple(_field_name(column) for column in ((id_column,) if isinstance(id_column, str) else id_column))
    rows = _read_label_rows(Path(label_csv), columns, column_map or {})
    index = ImageIndex(records, label_csv, columns)
    joined = [dict(record) for record in records]
    unmatched = []
    labelled_by: dict[int, tuple[tuple[str, ...], dict[str, Any]]] = {}
    for key, values in rows.items():
        matches = index.find(key)
        fields = {name: value for name, value in values.items() if name not in columns}
        for i in matches:
            _check_one_labelling(labelled_by.setdefault(i, (key, fields)), (key, fields), joined[i], label_csv)
            joined[i].update(_label_fields(joined[i], values, columns, label_csv))
        if not matches:
            unmatched.append(key[0] if len(key) == 1 else "/".join(key))
    what = f"of {len(rows)} rows match no image by {'+'.join(columns)}"
    report_unusable(label_csv, what, unmatched, strict, "check the id column")
    return joined


def _check_one_labelling(
    first: tuple[tuple[str, ...], dict[str, Any]],
    row: tuple[tuple[str, ...], dict[str, Any]],
    record: Mapping[str, Any],
    label_csv: str | os.PathLike,
) -> None:
    """Refuse two rows that name one image by different ids (``a.png`` and ``a``, its UID and its file name) and
    give it different fields: merged in CSV order, the later row would silently win.

    Raises:
        MammoXAIError: naming both ids and the image.
    """
    (first_key, first_fields), (key, fields) = first, row
    if key != first_key and fields != first_fields:
        problem = f"rows {'/'.join(first_key)!r} and {'/'.join(key)!r} both name {record['path']} and disagree"
        raise MammoXAIError(label_csv, problem, "keep one row per image")


def _label_fields(
    record: Mapping[str, Any], values: Mapping[str, Any], id_columns: tuple[str, ...], label_csv: str | os.PathLike
) -> dict[str, Any]:
    """The fields of a label row to merge into ``record``: all but those describing the file (``_FILE_COLUMNS``).

    Raises:
        MammoXAIError: the row gives the image another ``image_id``, ``rows`` or ``cols`` (outside an id column).
    """
    for column in _FILE_COLUMNS[1:]:
        scanned = record.get(column)
        if column in values and column not in id_columns and scanned is not None and values[column] != scanned:
            problem = f"the row of {record['path']} gives {column} {values[column]!r}, but the image has {scanned!r}"
            raise MammoXAIError(label_csv, problem, f"check the id column, or delete the {column!r} column")
    return {name: value for name, value in values.items() if name not in _FILE_COLUMNS}


def report_unusable(source: str | os.PathLike, what: str, items: Sequence[str], strict: bool, fix: str) -> None:
    """Raise (``strict``) or warn that ``items`` (CSV rows, image files) could not be used, listing the first ten.

    The one policy every manifest reader follows for annotations that point at nothing: a user who downloaded
    part of a data set passes ``strict=False`` and gets the rest with a warning; everyone else gets an error
    before training on a silently shrunken data set.
    """
    if not items:
        return
    problem = f"{len(items)} {what}: {first_of(items, 10)}"
    if strict:
        skip = "or pass strict=False (a bundle config: --strict false; python -m mammoxai.data.manifest: --lenient) to skip them"
        raise MammoXAIError(source, problem, f"{fix}, {skip}")
    warnings.warn(f"{source}: {problem}; they are skipped", stacklevel=3)


def _read_label_rows(
    label_csv: Path, columns: tuple[str, ...], column_map: Mapping[str, str]
) -> dict[tuple[str, ...], dict[str, Any]]:
    """CSV rows keyed by their id, cells parsed like manifest cells, empty cells dropped."""
    fix = (
        "name the column that identifies each image with id_column= (a bundle config: --label_id_column, "
        "python -m mammoxai.data.manifest: --id-column)"
    )  # each way in, as report_unusable names strict: a bundle user has no id_column= to pass
    rows = read_table(label_csv, columns, fix, rename=lambda name: _field_name(column_map.get(name, name)))
    keyed: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        values = {name: value for name, value in _parse_row(row, label_csv, columns).items() if value is not None}
        key = tuple(str(values.get(column, "")) for column in columns)
        if not all(key):
            raise MammoXAIError(label_csv, f"line {row.line} has an empty id ({'+'.join(columns)})", "fill it in")
        if key in keyed and keyed[key] != values:
            raise MammoXAIError(label_csv, f"id {'/'.join(key)!r} is on rows that disagree", "keep one row per image")
        keyed[key] = values
    return keyed


def _field_name(name: str) -> str:
    """A label CSV header as the manifest field it names in any case or spacing (``"Patient ID"`` ->
    ``"patient_id"``, ``"View"`` -> ``"view"``); other headers unchanged. Read as written, such a column was
    joined under its own name, and the field it supplies stayed missing."""
    key = "_".join(name.lower().split())
    return key if key in _KNOWN_COLUMNS else name


class ImageIndex:
    """Which manifest records an image id written in a CSV names: the one rule of the label join
    (:func:`join_labels`) and the finding tables (:func:`~mammoxai.data.findings.match_findings`).

    An id of one column names an image by its ``sop_uid``, its ``image_id``, or its file: the file name or any
    longer trailing part of its path (``a.png``, ``P000/a.png``, ``images/P000/a.png``, "/" or "\\" separated), with
    or without the extension. A manifest names a DICOM image by its SOP Instance UID while VinDr-Mammo's tables name
    the file by its stem; public data sets name an image by its path under the download's root, the only unique name
    where one file name repeats in every case folder (CBIS-DDSM's ``Mass-Training_P_00001_LEFT_CC/1-1.png``), and
    which folder that root is the CSV does not say. Where the id as written names no image it is compared regardless
    of case, as a case-insensitive file system (Windows, macOS) names files and as ids typed into a spreadsheet
    change: ``IMG_001.PNG`` names ``IMG_001.png``. An id that names several images (``1-1.png`` in two case folders)
    is refused: which one is meant cannot be told. When the label join and the finding match each had a rule of
    their own, a finding CSV naming images by their path matched nothing and its lesions went unscored, while the
    label CSV of the same images joined.

    Ids of several columns, e.g. ``("patient_id", "laterality", "view")``, name every image that agrees on all of
    them as written: the prior exams of one breast and view are meant, and patients ``AB1`` and ``Ab1`` are two.

    Args:
        records: manifest records.
        source: the CSV the ids come from, named in errors.
        columns: the CSV column(s) holding the ids: one column of any name, or several manifest fields.

    Example:
        index = ImageIndex(records, "finding_annotations.csv")
        index.find("Mass-Training_P_00001_LEFT_CC/1-1.png")  # [position of that record]
    """

    def __init__(
        self, records: Sequence[Mapping[str, Any]], source: str | os.PathLike, columns: Sequence[str] = ("image_id",)
    ):
        self.records, self.source, self.columns = records, source, tuple(columns)
        self._exact: dict[tuple[str, ...], list[int]] = {}
        self._folded: dict[tuple[str, ...], list[int]] = {}
        for i, record in enumerate(records):
            for key in self._keys(record):
                self._exact.setdefault(key, []).append(i)
                if len(self.columns) == 1 and i not in self._folded.get(_folded(key), ()):
                    self._folded.setdefault(_folded(key), []).append(i)

    def _keys(self, record: Mapping[str, Any]) -> set[tuple[str, ...]]:
        if len(self.columns) > 1:
            return {tuple(str(record.get(column) or "") for column in self.columns)}
        names = {record.get("sop_uid"), record.get("image_id"), *_path_names(Path(str(record.get("path") or "")))}
        return {(str(name),) for name in names if name}

    def find(self, key: str | Sequence[str]) -> list[int]:
        """The positions of the records ``key`` (one id, or one value per column) names, none when it names none.

        Raises:
            MammoXAIError: a one-column id names several images, naming the CSV, the id, the images and the fix.
        """
        key = _id_key((key,) if isinstance(key, str) else tuple(key))
        if len(self.columns) > 1:
            return self._exact.get(key, [])
        matches = self._exact.get(key) or self._folded.get(_folded(key), [])
        if len(matches) > 1:
            paths = sorted(str(self.records[i].get("path")) for i in matches)
            problem = f"{self.columns[0]} {key[0]!r} names {len(matches)} images ({first_of(paths, 3)})"
            fix = "name each image by a unique id: its manifest image_id, or its path under the data set's folder"
            raise MammoXAIError(self.source, problem, fix)
        return matches


def _path_names(path: Path) -> set[str]:
    """The names a CSV may give an image file by: its name and every longer trailing part of its path, each with and
    without the extension (``a.png``, ``a``, ``P000/a.png``, ``P000/a``, ``images/P000/a.png``, ...).

    A suffix of digits is no extension but the last part of a UID a file is named by (``1.2.840.1``): the UID
    without it (``1.2.840``) names no image.
    """
    parts = path.parts
    tails = [Path(*parts[start:]) for start in range(len(parts))]
    names = {tail.as_posix() for tail in tails}
    if not path.suffix[1:].isdigit():
        names |= {tail.with_suffix("").as_posix() for tail in tails}
    return names


def _folded(key: tuple[str, ...]) -> tuple[str, ...]:
    """An id compared regardless of case (see :class:`ImageIndex`), only where the id as written names nothing."""
    return tuple(part.casefold() for part in key)


def _id_key(key: tuple[str, ...]) -> tuple[str, ...]:
    """A CSV id as :class:`ImageIndex` names images: a path written with Windows separators or from ``./``."""
    if len(key) != 1:
        return key
    text = key[0].replace("\\", "/")
    return (text[2:] if text.startswith("./") else text,)


# -- CSV files --------------------------------------------------------------------------------------------------
def write_manifest(records: Sequence[Mapping[str, Any]], csv_path: str | os.PathLike) -> Path:
    """Write records to ``csv_path``; paths are stored relative to the CSV's folder so the pair can move together.

    Known columns come first in :data:`MANIFEST_COLUMNS` order, other fields follow in order of appearance;
    ``None`` is written as an empty cell.

    Raises:
        MammoXAIError: ``csv_path`` is a folder, or a folder above it is a file.
    """
    csv_path = check_output_path(csv_path, "manifest", "give the CSV file to write, e.g. manifest.csv", folder=False)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    present = dict.fromkeys(key for record in records for key in record)
    header = [column for column in MANIFEST_COLUMNS if column in present]
    header += [column for column in present if column not in MANIFEST_COLUMNS]
    with open(csv_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for record in records:
            row = dict(record, path=relative_path(record["path"], csv_path.parent))
            writer.writerow(["" if row.get(column) is None else row[column] for column in header])
    return csv_path


def read_manifest(csv_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records from a manifest CSV, with paths resolved against the CSV's folder (the inverse of
    :func:`write_manifest`; "/" or "\\" separated): counts and measurements come back as numbers, empty cells as
    ``None``, everything else as text.

    A manifest that lists one image twice - a repeated row, or two rows with the same ``path`` or ``image_id`` -
    is refused (:func:`check_unique`), not read: training would weight that image double, and when the copies
    fall on both sides of a split, validate on an image it trained on. Every reader of a manifest (training,
    evaluation, the MONAI Label trainer) comes through here.

    Raises:
        MammoXAIError: the file is not a manifest, a row has no path or a cell that cannot be parsed, or an image
            is listed twice.
    """
    csv_path = Path(csv_path)
    records = []
    fix = "a manifest is written by write_manifest or python -m mammoxai.data.manifest"
    for row in read_table(csv_path, ("path",), fix):
        record = _parse_row(row, csv_path)
        if record["path"] is None:
            raise MammoXAIError(csv_path, f"line {row.line} has no path", "fill in the image file or delete the row")
        record["path"] = os.path.normpath(csv_path.parent / _portable_path(record["path"]))
        records.append(record)
    check_unique(records, csv_path, "keep one row per image: rebuild the manifest, or delete the repeated rows")
    return records


def _portable_path(text: str) -> str:
    """A manifest's path cell with "\\" read as a separator where the system does not read it so: a manifest written
    on Windows (``images\\P000\\a.png``) otherwise names files that exist nowhere on Linux or macOS."""
    return text if os.sep == "\\" else text.replace("\\", "/")


def check_unique(records: Sequence[Mapping[str, Any]], source: str | os.PathLike, fix: str) -> None:
    """Refuse records that list one image more than once: the same ``path``, or the same ``image_id``.

    Either way the image would be seen twice per epoch (and could land in both the training and the validation
    split), and an ``image_id`` names one image to the finding tables and the label CSVs, so it must be unique.

    Raises:
        MammoXAIError: naming ``source``, the repeated paths or ids (the first ten) and how often each occurs.
    """
    for column in ("path", "image_id"):
        values = [str(record[column]) for record in records if record.get(column) is not None]
        counts = Counter(values)
        repeated = [f"{value} ({counts[value]} times)" for value in dict.fromkeys(values) if counts[value] > 1]
        if repeated:
            raise MammoXAIError(source, f"lists the same {column} more than once: {first_of(repeated, 10)}", fix)


class TableRow(dict):
    """One CSV data row as {column: stripped text}, knowing the file line it starts on and the columns whose
    numbers the file writes with a decimal comma (:attr:`decimal_comma`, see :func:`read_table`).

    Readers name that line in their errors; counting data rows instead is off after a blank line or a quoted cell
    holding a line break, and the user opens the file at the wrong row. A reader that takes a cell as a number reads
    it through :meth:`number_text`, so "28,5" of a semicolon-separated file is 28.5 as "28.5" of a comma-separated
    one is.
    """

    def __init__(self, cells: Iterable[tuple[str, str]], line: int, decimal_comma: Iterable[str] = ()):
        super().__init__(cells)
        self.line = line
        self.decimal_comma = frozenset(decimal_comma)

    def number_text(self, column: str) -> str:
        """The cell of ``column`` as a comma-separated file writes it: a number with a decimal comma ("28,5") in a
        column written so, with a point ("28.5"); any other cell, text or a number, as it is."""
        text = self[column]
        return text.replace(",", ".") if column in self.decimal_comma and _DECIMAL_COMMA.fullmatch(text) else text


def read_table(
    csv_path: str | os.PathLike,
    required: Sequence[str] = (),
    fix: str = "check the file",
    rename: Callable[[str], str] | None = None,
) -> list[TableRow]:
    """Rows of a CSV file as {column: stripped text} with their line (``row.line``); blank lines are dropped.

    Cells are separated by commas, or by semicolons or tabs where the header row has more of those: spreadsheets save
    "CSV" with semicolons in the locales whose decimal mark is the comma (most of Europe), and tab-separated text
    is what a table copied out of one is. Every row must have one cell per column (empty cells past the last
    column, as spreadsheets leave them, are allowed): a row with more or fewer cells has a stray separator, and
    read by position its cells would land in the wrong columns. Each row knows the columns whose numbers are written
    with a decimal comma (:func:`_decimal_comma_columns`).

    Args:
        csv_path: the file; UTF-8, with or without the byte-order mark Excel writes, any line endings.
        required: columns (named after ``rename``) that must be present.
        fix: what to tell the user when one is missing.
        rename: maps each header cell to the column name used, e.g. to merge spellings of one column.

    Raises:
        MammoXAIError: the file is missing, empty or not CSV text, is separated by something other than commas,
            semicolons or tabs, names a column twice, lacks a required column (the message lists those it has), or has a row whose
            cells do not match the header.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MammoXAIError(csv_path, "does not exist", "check the path")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as stream:
            separator = _separator(stream.readline())
            stream.seek(0)
            reader = csv.reader(stream, delimiter=separator)
            lines, start = [], 1
            for row in reader:  # with the line each row starts on: a quoted cell may hold line breaks
                lines.append((start, row))
                start = reader.line_num + 1
    except (UnicodeDecodeError, csv.Error) as error:  # an image or a spreadsheet passed for the CSV
        raise MammoXAIError(csv_path, "is not a CSV text file", "pass a CSV file saved as UTF-8 text") from error
    if not lines:
        raise MammoXAIError(csv_path, "is empty", "a header row is needed")
    header = [(rename or str)(name.strip()) for name in lines[0][1]]
    _check_header(csv_path, header, required, fix)
    rows = [(line, [cell.strip() for cell in row]) for line, row in lines[1:] if any(cell.strip() for cell in row)]
    decimal_comma = _decimal_comma_columns(separator, header, [cells for _, cells in rows])
    return [_table_row(csv_path, header, line, cells, separator, decimal_comma) for line, cells in rows]


def _separator(header_line: str) -> str:
    """The cell separator of a CSV file, told by its header row: the commonest of comma, semicolon and tab outside
    quoted names (``"finding (mass; calc)"`` holds no separator), a comma on a tie and for a one-column file."""
    unquoted = re.sub(r'"[^"]*"', "", header_line)
    counts = {separator: unquoted.count(separator) for separator in ",;\t"}
    return max(counts, key=counts.__getitem__)


def _decimal_comma_columns(separator: str, header: list[str], rows: list[list[str]]) -> frozenset[str]:
    """The columns of a file whose numbers are written with a decimal comma ("28,5" for 28.5).

    Every column of a semicolon-separated file: spreadsheets separate cells so where the comma is the decimal mark.
    No column of a comma-separated file, whose numbers cannot hold an unquoted comma, and whose quoted "1,234" groups
    thousands. A tab-separated file is a table copied out of a spreadsheet in either locale, so each column tells:
    it is read with a decimal comma when one of its cells can be nothing else ("28,5"; not "1,234", which may group
    thousands) and none holds a point, as a column written with decimal points ("28.5", "1,234.5") does.
    """
    if separator != "\t":
        return frozenset(header if separator == ";" else ())
    columns = [[row[i] for row in rows if i < len(row)] for i in range(len(header))]
    return frozenset(
        name
        for name, cells in zip(header, columns, strict=True)
        if not any("." in cell for cell in cells)
        and any(_DECIMAL_COMMA.fullmatch(cell) and not _THOUSANDS.fullmatch(cell) for cell in cells)
    )


def _check_header(csv_path: Path, header: list[str], required: Sequence[str], fix: str) -> None:
    """Refuse a header that names a column twice (one would silently hide the other) or lacks a required one."""
    named = [name for name in header if name]
    repeated = sorted({name for name in named if named.count(name) > 1})
    if repeated:
        problem = f"names the column(s) {', '.join(map(repr, repeated))} more than once"
        raise MammoXAIError(csv_path, problem, "delete or rename the extra columns")
    missing = [column for column in required if column not in header]
    if not missing:
        return
    problem = f"has no column {', '.join(map(repr, missing))} (columns: {', '.join(header)})"
    if len(header) == 1 and "|" in header[0]:
        problem += "; its columns are separated by '|', not by commas, semicolons or tabs"
        fix = "save it as comma-separated CSV, e.g. a spreadsheet's CSV UTF-8 format"
    raise MammoXAIError(csv_path, problem, fix)


def _table_row(
    csv_path: Path, header: list[str], line: int, cells: list[str], separator: str, decimal_comma: frozenset[str]
) -> TableRow:
    """One data row as {column: stripped text}, refused when its (stripped) cells do not line up with the header."""
    extra = cells[len(header) :]
    if len(cells) < len(header) or any(extra):
        problem = f"line {line} has {len(cells)} cells, the header has {len(header)} columns"
        name = {",": "comma", ";": "semicolon", "\t": "tab"}[separator]
        fix = (
            f"give every row one cell per column, {name}-separated as the header is; quote cells that contain a {name}"
        )
        raise MammoXAIError(csv_path, problem, fix)
    return TableRow(zip(header, cells, strict=False), line, decimal_comma)


def record_shape(record: Mapping[str, Any]) -> tuple[int, int] | None:
    """(rows, columns) of a manifest record's image, when the record gives them (a hand-made manifest may not)."""
    rows, columns = record.get("rows"), record.get("cols")
    return (int(rows), int(columns)) if rows and columns else None


def is_missing(text: str) -> bool:
    """Whether a CSV cell holds no value: empty, or a missing-value marker as R, pandas and spreadsheets write one
    ("NA", "N/A", "NaN", "null", "#N/A")."""
    return not text or text.upper() in _MISSING


def _parse_row(row: TableRow, csv_path: Path, id_columns: Iterable[str] = ()) -> dict[str, Any]:
    """A manifest or label CSV row as record values (:func:`_parse_cell`), its numbers as a comma-separated file
    writes them (:meth:`TableRow.number_text`), so the file gives the records its comma-separated twin gives.

    A value every later reader takes as a number then reads as one: an age or an extra column that a metadata field
    bins (:class:`~mammoxai.io.fields.BinnedField`) as well as the typed columns. Left as "28,5", such a value read as
    none, and the image silently went unlabelled. Identifiers (:data:`_ID_COLUMNS`, the join's ``id_columns``) stay
    as written.
    """
    ids = _ID_COLUMNS.union(id_columns)
    cells = {name: text if name in ids else row.number_text(name) for name, text in row.items()}
    return {name: _parse_cell(name, text, csv_path) for name, text in cells.items()}


def _parse_cell(column: str, text: str, csv_path: Path) -> Any:
    """A manifest cell as the record value: None when empty or a missing-value marker ("NA", "N/A", "null", ...),
    normalised laterality / view / BI-RADS density ("3", "DENSITY C" -> "C"), typed numbers; other text as it is."""
    if is_missing(text):
        return None
    if column == "laterality":
        return normalise_laterality(text) or text
    if column == "view":
        return text.upper()
    if column == "density":  # one spelling whichever data set's CSV it came from
        return normalise_density(text) or text
    try:
        if column in _INT_COLUMNS:
            return int(float(text))
        if column in _FLOAT_COLUMNS:
            return float(text)
    except ValueError as error:
        raise MammoXAIError(csv_path, f"column {column!r} holds {text!r}, not a number", "fix the cell") from error
    return text


def relative_path(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """``path`` relative to ``folder`` with "/" separators, for CSV files that travel with their images."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()
    except ValueError:  # another drive on Windows: keep it absolute
        return Path(path).as_posix()


# -- command line -----------------------------------------------------------------------------------------------
def parse_renames(renames: Sequence[str]) -> dict[str, str]:
    """``--rename`` arguments ``COLUMN=FIELD`` as the ``column_map`` of :func:`join_labels`.

    Raises:
        MammoXAIError: an argument without ``=`` or with an empty side.
    """
    column_map = {}
    for rename in renames:
        column, _, field_name = (part.strip() for part in rename.partition("="))
        if not column or not field_name:
            raise MammoXAIError(f"--rename {rename!r}", "is not COLUMN=FIELD", "e.g. --rename 'ACR=density'")
        column_map[column] = field_name
    return column_map


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mammoxai.data.manifest", description="Write a manifest CSV for a folder of mammograms."
    )
    parser.add_argument("folder", help="folder searched recursively for DICOM / PNG / TIFF / PGM files")
    parser.add_argument("--out", required=True, help="manifest CSV to write (paths are stored relative to it)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")
    parser.add_argument("--labels", help="CSV of labels / fields to join")
    parser.add_argument("--id-column", nargs="+", default=["sop_uid"], help="label CSV column(s) naming each image")
    parser.add_argument(
        "--rename",
        nargs="+",
        default=[],
        metavar="COLUMN=FIELD",
        help="label CSV columns to read as manifest fields, e.g. 'ACR=density' 'image view=view'",
    )
    parser.add_argument("--lenient", action="store_true", help="warn instead of failing on label rows without an image")
    parser.add_argument("--full-read", action="store_true", help="decode every image instead of reading headers only")
    parser.add_argument("--exclude", nargs="+", default=[], help="shell patterns of paths to skip, e.g. 'masks/*'")
    args = parser.parse_args(argv)
    try:
        fix = "give the CSV file to write, e.g. --out exports/manifest.csv"
        # before minutes of reading headers; an existing one may be the labelled manifest.csv of a synthetic cohort
        check_output_path(args.out, "--out", fix, folder=False, overwrite=args.overwrite)
        manifest = build_manifest(
            args.folder,
            label_csv=args.labels,
            id_column=args.id_column,
            column_map=parse_renames(args.rename),
            strict=not args.lenient,
            header_only=not args.full_read,
            exclude=args.exclude,
        )
    except MammoXAIError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    write_manifest(manifest.records, args.out)
    skipped = f", {len(manifest.errors)} unreadable files skipped (listed above)" if manifest.errors else ""
    if manifest.masks:
        skipped += f", {len(manifest.masks)} masks named after a DICOM image's SOP Instance UID left out"
    print(f"{len(manifest.records)} images -> {args.out}{skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
