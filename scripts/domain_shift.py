#!/usr/bin/env python
"""Domain shift: train on some X-ray systems, test on a held-out one, then fine-tune with a small part of it.

Images of another vendor differ in contrast, noise and processing, and a classifier trained on one set of systems
often loses AUC on a new one; Shen et al. (Sci Rep 2019, doi:10.1038/s41598-019-48995-4) recovered it on a new
device (INbreast) by fine-tuning with a small labelled set. This script runs that transfer experiment with the
bundle's own configs on a study set:

1. the patients imaged on ``--target_system`` are split, class-stratified, into an *adaptation* part
   (``--adapt_fraction`` of them, at least two per class) and a *test* part; every other patient is *source*;
2. ``source``: fine-tune on the source patients (``train.json``, init ``--init``), score the target test part;
3. ``source + adaptation``: continue from that model (init ``classifier``) on the adaptation part;
4. ``adaptation only``: train from scratch on the adaptation part alone, the baseline the transfer must beat.

All three are scored on the same target test patients (AUC with a patient-bootstrap 95 % interval), and the
adapted model is compared with the other two by paired AUC differences. ``--seeds 0 1 2`` repeats the whole
experiment with a new split of the target patients and new initialisations per seed, and adds the spread of the
differences over the seeds. Example::

    python scripts/domain_shift.py --dataset_dir synth --out eval/domain_shift \\
        --target_system "Castellan Systems Veritas M" --epochs 30 --adapt_epochs 10

Writes ``report.json``, ``report.md`` and ``auc_by_setting.png`` into ``--out``; runs go to ``--out/runs``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mammoxai.cli import BUNDLE_ROOT, exit_status
from mammoxai.data.manifest import write_manifest
from mammoxai.errors import MammoXAIError
from mammoxai.reports import Report, bar_figure
from mammoxai.training.experiments import (
    HOLDOUT,
    TASKS,
    across_seeds,
    add_run_arguments,
    auc_difference,
    claim_out,
    labelled_subset,
    read_study_manifest,
    repeat_seeds,
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
        MammoXAIError: ``target_system`` images no patient, or leaves no source or no test patient.
    """
    systems = sorted({str(record.get(system_key)) for record in records})
    target_patients = {record.get("patient_id") for record in records if str(record.get(system_key)) == target_system}
    if not target_patients:
        raise MammoXAIError(
            f"--target_system {target_system!r}", f"is not a {system_key} of the data", f"use one of {systems}"
        )
    training = {key: "training" for key in HOLDOUT}
    source = [{**record, **training} for record in records if record.get("patient_id") not in target_patients]
    target = [{**record, **training} for record in records if record.get("patient_id") in target_patients]
    adaptation = labelled_subset(target, adapt_fraction, seed, label_map=label_map)
    chosen = {record["path"] for record in adaptation}
    test = [{**record, **HOLDOUT} for record in target if record["path"] not in chosen]
    if not source or not test:
        problem = f"leaves {len(source)} source and {len(test)} target test images"
        raise MammoXAIError(
            f"--target_system {target_system!r}", problem, "lower --adapt_fraction or pick another system"
        )
    return source, adaptation, test


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset_dir", required=True, help="study folder with manifest.csv")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument(
        "--target_system", required=True, help="the held-out X-ray system (manifest column xray_system)"
    )
    parser.add_argument("--adapt_fraction", type=float, default=0.25, help="share of its patients used for fine-tuning")
    parser.add_argument("--task", choices=list(TASKS), default="binary")
    parser.add_argument("--init", default="scratch", choices=["scratch", "pretrained", "external", "incremental"])
    parser.add_argument("--init_weights", help="weights file of --init (not for scratch)")
    parser.add_argument("--adapt_epochs", type=int, default=10)
    add_run_arguments(parser, BUNDLE_ROOT)
    return parser


def run(args: argparse.Namespace, command: str) -> Report:
    """The experiment of the module docstring, once per seed; returns the written report."""
    bundle_root, out = Path(args.bundle_root).resolve(), Path(args.out).resolve()
    task = TASKS[args.task]
    records = read_study_manifest(args.dataset_dir)
    seeds = repeat_seeds(args)
    splits = {
        seed: split_by_system(records, args.target_system, args.adapt_fraction, seed, label_map=task["label_map"])
        for seed in seeds
    }  # every split is checked before the first training starts
    claim_out(out, args.overwrite)
    settings = run_settings(args, out)
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
            ("source", source, source_manifest, {"init": args.init, "init_weights": args.init_weights}, seed_settings),
            ("source + adaptation", adaptation, adapt_manifest, {"init": "classifier", "init_weights": source_model}, adapt_settings),
            ("adaptation only", adaptation, adapt_manifest, {"init": "scratch"}, adapt_settings),
        ]  # fmt: skip
        reports = {}
        for name, trained_on, subset, strategy, step_settings in plan:
            logger.info("seed %d, %s: training on %s", seed, name, subset.name)
            work = runs / name.replace(" + ", "_").replace(" ", "_")
            reports[name] = train_and_evaluate(bundle_root, subset, work, strategy, step_settings, args.n_bootstrap, command)
            result = reports[name]["tables"]["binary"][0]
            patients = len({record.get("patient_id") for record in trained_on})
            rows.append({"setting": name, "seed": seed, "training_images": len(trained_on), "training_patients": patients, **result})
        differences += [
            {"comparison": f"{name} - {reference}", "seed": seed, **auc_difference(reports[name], reports[reference], positive, args.n_bootstrap, args.seed)}
            for name, reference in COMPARISONS
        ]  # fmt: skip
    report = Report(
        f"Domain shift to {args.target_system}",
        f"Task {args.task}, backbone {args.backbone}, init {args.init}; {args.epochs} epochs on the source systems, "
        f"{args.adapt_epochs} on the adaptation part ({args.adapt_fraction:g} of the target patients). The rows of a seed "
        "are scored on the same images, those of the target patients outside its adaptation part; AUC is malignant "
        "vs rest with a 95 % patient-bootstrap interval.",
        command=command,
    )
    columns = ["setting", "seed", "training_images", "training_patients", "images", "positives", "auc", "auc_low", "auc_high"]
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
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    status = exit_status(lambda: run(args, shlex.join(["python", "scripts/domain_shift.py", *arguments])))
    if status == 0:
        print(f"report written to {Path(args.out) / 'report.md'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
