"""``python -m mammoxai.data.synth`` / ``mammoxai-synth``: write a synthetic screening cohort and summarise it."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence

from mammoxai.data.synth.cohort import CASE_LABELS, DEFAULT_PREVALENCE
from mammoxai.data.synth.generate import MIN_SIZE, synthesize
from mammoxai.errors import MammoXAIError

__all__ = ["main"]


def _prevalence(text: str) -> dict[str, float]:
    """ "normal=0.5,malignant=0.5" -> {"normal": 0.5, "malignant": 0.5}; a label given twice is refused, not the
    last share kept. The shares are checked by :func:`~mammoxai.data.synth.cohort.plan_cohort`."""
    try:
        pairs = [
            (name.strip(), float(share))
            for name, share in (item.split("=") for item in text.split(",") if item.strip())
        ]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not label=share[,label=share...]") from error
    repeated = sorted(name for name, count in Counter(name for name, _ in pairs).items() if count > 1)
    if repeated:
        raise argparse.ArgumentTypeError(f"{text!r} gives {', '.join(repeated)} more than once; give each label once")
    return dict(pairs)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 success, 2 bad arguments)."""
    parser = argparse.ArgumentParser(
        prog="python -m mammoxai.data.synth",
        description="Write synthetic screening mammograms (DICOM), manifest.csv, finding_annotations.csv, masks.",
    )
    parser.add_argument("--out", required=True, help="output folder (flat: DICOM files, two CSVs, masks/)")
    parser.add_argument("--patients", type=int, default=100, help="number of patients (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed; same seed, same files (default 0)")
    parser.add_argument(
        "--size", type=int, default=1024, help=f"rows of the largest detector's images, >= {MIN_SIZE} (default 1024)"
    )
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes (default: up to 2)"
    )
    parser.add_argument(
        "--prevalence",
        type=_prevalence,
        default=DEFAULT_PREVALENCE,
        help="study outcome shares, default " + ",".join(f"{k}={v}" for k, v in DEFAULT_PREVALENCE.items()),
    )
    parser.add_argument(
        "--prior-fraction", type=float, default=0.25, help="share of patients with a prior study (default 0.25)"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of patients in the test split (default 0.2)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the cohort an earlier run wrote into --out: delete the two CSVs and the DICOM files and masks "
        "its manifest.csv lists (other files of those names are refused, never deleted)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = synthesize(
            args.out,
            args.patients,
            args.seed,
            args.size,
            args.workers,
            args.prevalence,
            args.prior_fraction,
            args.test_fraction,
            args.overwrite,
            progress=not args.quiet,
        )
    except MammoXAIError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    from mammoxai.data.manifest import read_manifest

    records = read_manifest(manifest)
    print(_summary(records, seconds, manifest))
    return 0


def _summary(records: list[dict], seconds: float, manifest: os.PathLike) -> str:
    systems = Counter(record["xray_system"] for record in records)
    labels = Counter(record["case_label"] for record in records)
    studies = {record["study_uid"] for record in records}
    priors = {record["study_uid"] for record in records if record["is_prior"] == "1"}
    lines = [
        f"{len(records)} images, {len({r['patient_id'] for r in records})} patients, {len(studies)} studies "
        f"({len(priors)} priors) in {seconds:.1f} s -> {manifest}",
        "images per system: " + ", ".join(f"{name} {count}" for name, count in sorted(systems.items())),
        "images per case label: " + ", ".join(f"{label} {labels[label]}" for label in CASE_LABELS),
    ]
    return "\n".join(lines)
