"""Synthesize a screening cohort: plan it, render patients (in parallel if asked), write the two tables."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from mammoxai.data.synth.cohort import plan_cohort
from mammoxai.data.synth.study import synthesize_patient
from mammoxai.data.synth.vendors import SYSTEMS
from mammoxai.errors import MammoXAIError, check_output_path, first_of

__all__ = ["FINDING_COLUMNS", "MIN_SIZE", "synthesize"]

#: columns of ``finding_annotations.csv``: VinDr-Mammo's, then the finding's case label and its mask file
FINDING_COLUMNS: tuple[str, ...] = (
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width", "breast_birads",
    "breast_density", "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax", "split", "label", "mask",
)  # fmt: skip

#: smallest ``size``: JPEG 2000 needs 32 pixels on the short side of the smallest detector
MIN_SIZE = 128

_OUTPUTS = ("P*_S*_*.dcm", "manifest.csv", "finding_annotations.csv", "masks/*.png")
#: what a MONAI Label server keeps in its studies folder: labels filed under image ids (file stems), which new
#: images of the same names would inherit, and the index that ties them together
_SERVER_FILES = ("labels/", "datastore_v2.json")


def synthesize(
    out: str | os.PathLike,
    patients: int = 100,
    seed: int = 0,
    size: int = 1024,
    workers: int = 1,
    prevalence: Mapping[str, float] | None = None,
    prior_fraction: float = 0.25,
    test_fraction: float = 0.2,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic screening cohort into ``out`` and return the path of its ``manifest.csv``.

    ``out`` receives, flat, one DICOM file per image named ``<patient>_S<study>_<L|R>_<CC|MLO>.dcm`` (studies
    numbered chronologically, so a prior is ``S1``), ``manifest.csv`` (one record per image, see
    :mod:`mammoxai.data.manifest`), ``finding_annotations.csv`` (VinDr-Mammo format, one row per lesion per image,
    "No Finding" rows for the rest) and ``masks/<SOPInstanceUID>.png`` (8-bit, 255 inside lesions, same size and
    orientation as the image). The same arguments give the same files, whatever ``workers`` is.

    Labels: ``case_label`` is per image - the outcome of the lesions *that breast* shows (normal when none) - so
    a whole-image classifier learns from the pixels it sees; ``study_label`` is the outcome of the whole study.
    ``prevalence`` sets the mix of study outcomes of the current studies.

    Args:
        out: output folder (created if needed).
        patients: number of patients; each has one current study of four views (L/R x CC/MLO).
        seed: the cohort's seed.
        size: rows of the largest detector's images; the other systems keep their real matrix proportions and
            relative pixel pitch (see :meth:`~mammoxai.data.synth.vendors.XraySystem.shape_and_spacing`).
        workers: processes rendering patients in parallel.
        prevalence: study outcome -> share, e.g. ``{"normal": 0.4, "benign": 0.2, "recalled_benign": 0.15,
            "malignant": 0.25}`` (the default).
        prior_fraction: share of patients that also have a prior study one or two years earlier.
        test_fraction: share of patients in the ``test`` split (the rest are ``training``).
        overwrite: replace the cohort an earlier run wrote into ``out``: delete the DICOM files and masks its
            ``manifest.csv`` lists, and the two CSVs, instead of refusing to touch them. Other files of the
            names a run writes (``P*_S*_*.dcm``, ``masks/*.png``) are never deleted, and nothing else in ``out``
            is touched.
        progress: show a progress bar.

    Raises:
        MammoXAIError: an argument is out of range, ``out`` is a file, ``out`` holds a MONAI Label server's
            ``labels/`` or ``datastore_v2.json``, or it holds files of the names a run writes and ``overwrite``
            is False or the earlier run's ``manifest.csv`` does not list them all.

    Example:
        manifest = synthesize("synth", patients=20, seed=1, size=512)
    """
    from mammoxai.data.manifest import write_manifest  # imported here so worker processes stay free of torch

    if size < MIN_SIZE:
        raise MammoXAIError("size", f"is {size}", f"use at least {MIN_SIZE} pixels")
    if workers < 1:
        raise MammoXAIError("workers", f"is {workers}", "use at least 1")
    plans = plan_cohort(patients, seed, [system.key for system in SYSTEMS], prevalence, prior_fraction, test_fraction)
    out = Path(out)
    _clear(out, overwrite)  # after every argument is checked: an overwrite deletes the earlier cohort
    (out / "masks").mkdir(parents=True, exist_ok=True)
    render = partial(synthesize_patient, seed=seed, size=size, out=out)
    bar = partial(tqdm, total=len(plans), desc="patients", unit="patient", disable=not progress)
    if workers == 1:
        results = list(bar(map(render, plans)))
    else:
        with ProcessPoolExecutor(min(workers, len(plans)), mp_context=get_context("spawn")) as pool:
            results = list(bar(pool.map(render, plans)))
    records = [record for patient_records, _ in results for record in patient_records]
    findings = [row for _, patient_rows in results for row in patient_rows]
    manifest = write_manifest(records, out / "manifest.csv")
    with open(out / "finding_annotations.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, FINDING_COLUMNS)
        writer.writeheader()
        writer.writerows(findings)
    return manifest


def _clear(out: Path, overwrite: bool) -> None:
    """Refuse to mix two cohorts in one folder; with ``overwrite``, delete the files an earlier run wrote.

    What an earlier run wrote is what its ``manifest.csv`` lists: a file of the same name pattern that it does not
    list (a user's ``masks/*.png``, what an interrupted run left) is refused, not deleted. A MONAI Label server's
    labels are refused whatever ``overwrite`` says: they are a clinician's work, not something a rerun writes
    again, and left in place they would describe the new images that take the old names.
    """
    check_output_path(out, "out", "give a folder for the synthetic studies")
    served = [name for name in _SERVER_FILES if (out / name).exists()]
    if served:
        problem = f"holds {' and '.join(served)} of a MONAI Label server, whose labels new images would inherit"
        raise MammoXAIError(out, problem, "choose an empty folder, or delete them first")
    earlier = [path for pattern in _OUTPUTS for path in sorted(out.glob(pattern))]
    if earlier and not overwrite:
        problem = f"already holds files of the names a synthetic cohort writes ({_names(earlier, out)})"
        fix = "pass another folder, or overwrite=True (--overwrite) to delete those an earlier run wrote"
        raise MammoXAIError(out, problem, fix)
    listed = _written_earlier(out)
    unlisted = [path for path in earlier if path not in listed]
    if unlisted:
        problem = "holds files of the names a synthetic cohort writes that no earlier run's manifest.csv lists"
        raise MammoXAIError(out, f"{problem} ({_names(unlisted, out)})", "move them away, or pass another folder")
    for path in earlier:
        path.unlink()


def _written_earlier(out: Path) -> set[Path]:
    """The files an earlier run wrote into ``out``: the two CSVs and the images and masks its ``manifest.csv``
    lists; none when ``out`` holds no manifest of a synthetic cohort (with ``path`` and ``mask`` columns)."""
    from mammoxai.data.manifest import read_table

    try:
        rows = read_table(out / "manifest.csv", ("path", "mask"))
    except MammoXAIError:
        return set()
    listed = {out / row[column] for row in rows for column in ("path", "mask") if row[column]}
    return listed | {out / "manifest.csv", out / "finding_annotations.csv"}


def _names(paths: list[Path], out: Path) -> str:
    """The first three of ``paths``, relative to ``out``, and how many more."""
    return first_of([path.relative_to(out).as_posix() for path in paths], 3)
