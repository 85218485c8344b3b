#!/usr/bin/env python
"""Domain shift: train on some X-ray systems, test on a held-out one, then fine-tune with a small part of it.

Images of another vendor differ in contrast, noise and processing, and a classifier trained on one set of systems
often loses AUC on a new one; Shen et al. (Sci Rep 2019, doi:10.1038/s41598-019-48995-4) recovered it on a new
device (INbreast) by fine-tuning with a small labelled set. This script runs that transfer experiment with the
bundle's own configs on a study set:

1. the patients imaged on ``--target_system`` (a value of the manifest column ``--system_column``, by default
   ``xray_system``) are split, class-stratified, into an *adaptation* part (``--adapt_fraction`` of them, at least
   two per class; the report gives the patients drawn) and a *test* part; every other patient is *source*;
2. ``source``: fine-tune on the source patients (``train.json``, init ``--init``), score the target test part;
3. ``source + adaptation``: continue from that model (init ``classifier``) on the adaptation part;
4. ``adaptation only``: train from scratch on the adaptation part alone, the baseline the transfer must beat.

Every run scales its images by ``--intensity_scaling`` and frames them by ``--field_of_view``, and pretrained
``--init_weights`` must have been trained with the same. All three are scored on the same target test patients (AUC
with a patient-bootstrap 95 % interval), and the adapted model is compared with the other two by paired AUC
differences. ``--seeds 0 1 2`` repeats the whole experiment with a new split of the target patients and new
initialisations per seed, and adds the spread of the differences over the seeds; ``--resume`` continues an
interrupted experiment with the same command, reusing every run that had written its evaluation. Example::

    python scripts/domain_shift.py --dataset_dir synth --out eval/domain_shift \\
        --target_system "Castellan Systems Veritas M" --epochs 30 --adapt_epochs 10

Writes ``report.json``, ``report.md`` and ``auc_by_setting.png`` into ``--out``; runs go to ``--out/runs``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mammoxai.cli import BUNDLE_ROOT
from mammoxai.data.manifest import write_manifest
from mammoxai.errors import MammoXAIError
from mammoxai.reports import Report, bar_figure
from mammoxai.training.classification import patient_key
from mammoxai.training.experiments import (
    HOLDOUT,
    TASKS,
    TRAIN_CHECKS,
    across_seeds,
    add_run_arguments,
    auc_difference,
    check_bundle_run,
    check_evaluation,
    check_task_labels,
    claim_out,
    experiment_main,
    labelled_subset,
    read_study_manifest,
    repeat_seeds,
    require_epochs,
    run_settings,
    train_and_evaluate,
)

logger = logging.getLogger("domain_shift")

#: (setting, reference) pairs whose AUC difference is reported: did adaptation recover what the shift cost, and
#: did the source model's knowledge beat training on the small target set alone
COMPARISONS = [("source + adaptation", "source"), ("source + adaptation", "adaptation only")]


def split_by_system(
    records: Sequence[Mapping[str, Any]],
    target_system: str,
    adapt_fraction: float,
    seed: int = 0,
    system_key: str = "xray_system",
    label_map: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(source, adaptation, target test)`` records; a patient belongs to the target when any image of theirs is
    from ``target_system``. Source and adaptation records are marked for training, target test ones with
    :data:`HOLDOUT`, so a manifest of ``source + test`` or ``adaptation + test`` trains and scores as intended.

    Raises:
        MammoXAIError: no record has a ``system_key``, ``target_system`` images no patient, ``adapt_fraction`` is
            not in (0, 1], or the split leaves no source or no test patient.
    """
    if not any(record.get(system_key) not in (None, "") for record in records):
        raise MammoXAIError(
            f"--system_column {system_key}",
            "is not a column of the manifest (or every cell is empty), so no image has an X-ray system",
            "name the manifest column that tells the systems apart, e.g. --system_column model",
        )
    systems = sorted({str(record[system_key]) for record in records if record.get(system_key) not in (None, "")})
    target_patients = {patient_key(record) for record in records if str(record.get(system_key)) == target_system}
    if not target_patients:
        raise MammoXAIError(
            f"--target_system {target_system!r}", f"is no {system_key} of the data", f"use one of {systems}"
        )
    training = dict.fromkeys(HOLDOUT, "training")
    source = [{**record, **training} for record in records if patient_key(record) not in target_patients]
    target = [{**record, **training} for record in records if patient_key(record) in target_patients]
    adaptation = labelled_subset(target, adapt_fraction, seed, label_map=label_map, option="--adapt_fraction")
    chosen = _patients(adaptation)  # whole patients: an unlabelled image of theirs is not a test image
    test = [{**record, **HOLDOUT} for record in target if patient_key(record) not in chosen]
    if not source or not test:
        problem = f"leaves {len(source)} source and {len(test)} target test images"
        raise MammoXAIError(
            f"--target_system {target_system!r}", problem, "lower --adapt_fraction or pick another system"
        )
    return source, adaptation, test


def _patients(records: Sequence[Mapping[str, Any]]) -> set[str]:
    """The patients of ``records`` (:func:`~mammoxai.training.classification.patient_key`)."""
    return {patient_key(record) for record in records}


def adaptation_share(splits: Mapping[int, tuple[list[dict[str, Any]], ...]]) -> str:
    """The adaptation part as drawn, e.g. "4 of the 6 target patients, 8 images": the two-patient minimum per
    class makes it more than ``--adapt_fraction`` of a small target. Seeds that drew differently are listed."""
    shares = {
        seed: f"{len(_patients(adaptation))} of the {len(_patients(adaptation) | _patients(test))} target patients, "
        f"{len(adaptation)} images"
        for seed, (_, adaptation, test) in splits.items()
    }
    if len(set(shares.values())) == 1:
        return next(iter(shares.values()))
    return "; ".join(f"seed {seed}: {share}" for seed, share in shares.items())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset_dir", required=True, help="study folder with manifest.csv")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--target_system", required=True, help="the held-out X-ray system (a value of --system_column)")
    parser.add_argument(
        "--system_column", default="xray_system",
        help="manifest column naming each image's X-ray system (mammoxai.data.synth writes xray_system; a manifest of "
        "python -m mammoxai.data.manifest has manufacturer and model)",
    )  # fmt: skip
    parser.add_argument("--adapt_fraction", type=float, default=0.25, help="share of its patients used for fine-tuning")
    parser.add_argument("--task", choices=list(TASKS), default="binary")
    parser.add_argument("--init", default="scratch", choices=["scratch", "pretrained", "external", "incremental"])
    parser.add_argument("--init_weights", help="weights file of --init (not for scratch)")
    parser.add_argument("--adapt_epochs", type=int, default=10)
    add_run_arguments(parser, BUNDLE_ROOT)
    return parser


def check_init(args: argparse.Namespace) -> None:
    """Refuse an ``--init`` without its ``--init_weights``, and ``--init_weights`` with ``--init scratch``, which
    would train from random weights while the user believes a file was loaded.

    Raises:
        MammoXAIError: naming the option to add or drop.
    """
    if args.init == "scratch" and args.init_weights:
        raise MammoXAIError(
            f"--init_weights {args.init_weights}",
            "is given, but --init scratch starts from random weights",
            "drop --init_weights, or pass the --init it is for (pretrained, external or incremental)",
        )
    if args.init != "scratch" and not args.init_weights:
        raise MammoXAIError(f"--init {args.init}", "needs --init_weights", "pass --init_weights <weights file>")


def run(args: argparse.Namespace, command: str) -> Report:
    """The experiment of the module docstring, once per seed; returns the written report.

    Everything that can be checked without training is checked before the first run: the options, every seed's
    split and the labels of each training set, the source run's settings and starting weights as train.json
    reads them, and the evaluation's settings as evaluate.json reads them. A command refused this way leaves
    nothing in ``--out`` that blocks the corrected one.
    """
    bundle_root, out = Path(args.bundle_root).resolve(), Path(args.out).resolve()
    task = TASKS[args.task]
    require_epochs(args, "epochs", "adapt_epochs")
    check_init(args)
    manifest = Path(args.dataset_dir) / "manifest.csv"
    records = read_study_manifest(args.dataset_dir)
    seeds = repeat_seeds(args)
    splits = {
        seed: split_by_system(
            records, args.target_system, args.adapt_fraction, seed, args.system_column, label_map=task["label_map"]
        )
        for seed in seeds
    }
    for seed, (source, adaptation, _) in splits.items():
        check_task_labels(source, args.task, f"{manifest} (source systems)")
        check_task_labels(adaptation, args.task, f"{manifest} (adaptation part of {args.target_system}, seed {seed})")
    settings = run_settings(args, out)
    source_init = {"init": args.init, "init_weights": args.init_weights}
    check_bundle_run(["train.json"], bundle_root, TRAIN_CHECKS, **settings, **source_init)
    check_evaluation(bundle_root, settings, args.n_bootstrap)
    claim_out(out, args.overwrite, [args.init_weights], resume=args.resume)
    positive = task["class_names"].index("malignant")
    rows, differences = [], []
    for seed, (source, adaptation, test) in splits.items():
        runs = out / "runs" / f"seed{seed}"
        seed_settings = {**settings, "seed": seed}
        source_manifest = write_manifest(source + test, runs / "source.csv")
        adapt_manifest = write_manifest(adaptation + test, runs / "adaptation.csv")
        adapt_settings = {**seed_settings, "epochs": args.adapt_epochs}
        source_model = str(runs / "source" / "models" / "model.pt")
        plan = [
            ("source", source, source_manifest, source_init, seed_settings),
            ("source + adaptation", adaptation, adapt_manifest, {"init": "classifier", "init_weights": source_model},
             adapt_settings),
            ("adaptation only", adaptation, adapt_manifest, {"init": "scratch"}, adapt_settings),
        ]  # fmt: skip
        reports = {}
        for name, trained_on, subset, strategy, step_settings in plan:
            logger.info("seed %d, %s: training on %s", seed, name, subset.name)
            work = runs / name.replace(" + ", "_").replace(" ", "_")
            reports[name] = train_and_evaluate(
                bundle_root, subset, work, strategy, step_settings, args.n_bootstrap, command, resume=args.resume
            )
            result = reports[name]["tables"]["binary"][0]
            patients = len(_patients(trained_on))
            rows.append(
                {
                    "setting": name,
                    "seed": seed,
                    "training_images": len(trained_on),
                    "training_patients": patients,
                    **result,
                }
            )
        differences += [
            {
                "comparison": f"{name} - {reference}",
                "seed": seed,
                **auc_difference(reports[name], reports[reference], positive, args.n_bootstrap, args.seed),
            }
            for name, reference in COMPARISONS
        ]
    report = Report(
        f"Domain shift to {args.target_system}",
        f"Task {args.task}, backbone {args.backbone}, init {args.init}, intensity scaling {args.intensity_scaling}, "
        f"field of view {args.field_of_view} (every run); {args.epochs} epochs on the source systems, "
        f"{args.adapt_epochs} on the adaptation part: {adaptation_share(splits)} (asked: --adapt_fraction "
        f"{args.adapt_fraction:g}, with at least two patients per class). The rows of a seed are scored on the same "
        "images, those of the target patients outside its adaptation part; AUC is malignant vs rest with a 95 % "
        "patient-bootstrap interval.",
        command=command,
    )
    columns = [
        "setting",
        "seed",
        "training_images",
        "training_patients",
        "images",
        "positives",
        "auc",
        "auc_low",
        "auc_high",
    ]
    report.add_table(
        "settings", rows, title="Target test AUC (training counts: the run's own data; 'source + adaptation' starts "
        "from the source model)", columns=[*columns, "sensitivity", "specificity"],
    )  # fmt: skip
    report.add_table(
        "differences", differences,
        title="AUC differences on the same target test patients, paired patient-bootstrap 95 % interval (test "
        "sampling only; the spread over seeds is the next table when several ran)",
    )  # fmt: skip
    if len(seeds) > 1:
        report.add_table(
            "differences_across_seeds", across_seeds(differences, ("comparison",), "auc_difference", low="difference_low"),
            title="AUC differences over the seeds: mean, sample SD, range, seeds above 0 and seeds whose paired "
            "interval is above 0",
        )  # fmt: skip
    figure = bar_figure(
        [row["setting"] if len(seeds) == 1 else f"{row['setting']}, seed {row['seed']}" for row in rows],
        [row["auc"] if row["auc"] is not None else float("nan") for row in rows],
        f"Test AUC on {args.target_system}",
        "ROC AUC (95 % CI)",
        low=[row["auc_low"] if row["auc_low"] is not None else float("nan") for row in rows],
        high=[row["auc_high"] if row["auc_high"] is not None else float("nan") for row in rows],
    )
    report.add_figure("auc_by_setting", figure, title="AUC by setting")
    report.write(out)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return experiment_main(argv, _parser(), run, "scripts/domain_shift.py")


if __name__ == "__main__":
    sys.exit(main())
