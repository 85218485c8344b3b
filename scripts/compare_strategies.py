#!/usr/bin/env python
"""Train and evaluate initialisation strategies side by side at several labelled fractions: the Pittsburgh
experiment (J Digit Imaging 2020: scratch vs natural-image vs medical vs incremental pretraining, AUC 0.68-0.77)
on your own study set.

For every labelled fraction (e.g. 5 %, 25 %, 100 % of the patients outside the held-out test split, drawn
stratified by class and nested, so the 5 % patients are among the 25 % ones) and every strategy, the bundle's
``configs/train.json`` fine-tunes a :class:`~mammoxai.nets.BackboneClassifier` and ``configs/evaluate.json``
scores it on the same held-out test patients. The table and plot give the test ROC AUC (malignant vs rest) with
its patient-bootstrap 95 % interval per strategy and fraction, and each strategy's AUC minus scratch's at the
same fraction with a paired interval (both scored on the same patients, so the paired interval is the one that
says whether a start beat scratch). That interval covers the test patients' sampling, not training noise:
``--seeds 0 1 2`` repeats every run with a new labelled draw and initialisation per seed (the metadata pretraining
runs once) and adds the mean, spread and sign counts over the seeds. ``--max_minutes`` bounds the experiment's time:
no seed is started that, at the mean time per seed so far, would end past it (the first always runs), and the report
covers the seeds that finished and says which were left out.

Strategies (``--strategies``): ``scratch``; ``pretrained`` (metadata-pretrained backbone); ``pretrained_frozen``
(the same with the stem frozen); ``external`` (``--external_weights``, e.g. ImageNet weights on disk);
``incremental`` (``--incremental_weights``: a pretrained.pt that pretraining started from external weights).
Without ``--pretrained`` the metadata pretraining is run first, by ``configs/pretrain.json``, on the images of the
non-test patients (it needs no labels), into ``--out/runs/pretrain``. Every run - that pretraining, each fine-tune
and each evaluation - scales its images by ``--intensity_scaling`` and frames them by ``--field_of_view``
(:func:`~mammoxai.io.preprocess.prepare_image`), so the strategies are compared on one model input; starting weights
that record another are refused before any run.

The options, the manifest (labels, a test split), each strategy's settings and starting weights and the
evaluation's settings are checked before that pretraining, so a wrong command stops at once and leaves ``--out``
as it was. ``--overwrite`` is needed only where an earlier experiment left results (its report or checkpoints);
where a run stopped after its pretraining, ``--pretrained <out>/runs/pretrain/pretrained.pt`` continues from it
instead. ``--resume`` continues an interrupted experiment with the same command: the pretraining resumes from its
last epoch (or is kept, when it had finished) and every fine-tune that had written its evaluation is reused.

Example (tiny CPU run; use the defaults of the configs on a GPU)::

    python scripts/compare_strategies.py --dataset_dir synth --out eval/strategies --fractions 0.25 1.0 \\
        --epochs 2 --pretrain_epochs 2 --image_size 64 48

Writes ``report.json``, ``report.md`` and ``auc_by_fraction.png`` into ``--out``; runs go to ``--out/runs``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mammoxai.cli import BUNDLE_ROOT
from mammoxai.data.manifest import write_manifest
from mammoxai.errors import MammoXAIError
from mammoxai.reports import Report
from mammoxai.training.classification import patient_key
from mammoxai.training.experiments import (
    HOLDOUT,
    PRETRAIN_CHECKS,
    TASKS,
    TRAIN_CHECKS,
    across_seeds,
    add_run_arguments,
    auc_difference,
    bundle_run,
    check_bundle_run,
    check_evaluation,
    check_task_labels,
    claim_out,
    distinct,
    earlier_results,
    experiment_main,
    is_held_out,
    labelled_subset,
    outside_holdout,
    read_study_manifest,
    repeat_seeds,
    require_epochs,
    run_settings,
    train_and_evaluate,
)
from mammoxai.training.settings import another_would_overrun, check_settings

logger = logging.getLogger("compare_strategies")

#: strategy -> train.json overrides; "weights" names the command-line option that gives init_weights
STRATEGIES: dict[str, dict[str, Any]] = {
    "scratch": {"init": "scratch"},
    "pretrained": {"init": "pretrained", "weights": "pretrained"},
    "pretrained_frozen": {"init": "pretrained", "weights": "pretrained", "freeze": "stem"},
    "external": {"init": "external", "weights": "external_weights"},
    "incremental": {"init": "incremental", "weights": "incremental_weights"},
}


def pretrain_overrides(manifest: Path, work: Path, settings: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    """``configs/pretrain.json`` overrides of the metadata pretraining on ``manifest`` into ``work``, with the
    experiment's shared settings; the checkpoint is ``work/pretrained.pt``."""
    keys = ["backbone", "image_size", "intensity_scaling", "field_of_view", "batch_size", "num_workers", "device"]
    keys += ["seed"]
    keys += ["cache_dir", "overwrite"]
    shared = {key: settings[key] for key in keys if key in settings}
    return {**shared, "manifest": str(manifest), "ckpt_dir": str(work), "output_dir": str(work), "epochs": epochs}


def strategy_overrides(name: str, weights: Mapping[str, str | None]) -> dict[str, Any]:
    """``configs/train.json`` overrides of strategy ``name`` (:data:`STRATEGIES`), its ``init_weights`` taken from
    ``weights`` (command-line option -> file)."""
    strategy = {key: value for key, value in STRATEGIES[name].items() if key != "weights"}
    if "weights" in STRATEGIES[name]:
        strategy["init_weights"] = weights[STRATEGIES[name]["weights"]]
    return strategy


def starting_weights(args: argparse.Namespace, strategies: Sequence[str]) -> dict[str, str | None]:
    """The weights files of the command line, by option (``pretrained``, ``external_weights``,
    ``incremental_weights``), checked before any fine-tune rather than when the first strategy that needs one
    starts.

    Raises:
        MammoXAIError: a strategy's option is not given (``--pretrained`` may be left out: the script then
            pretrains), or a given file does not exist.
    """
    weights = {option: getattr(args, option) for option in ("pretrained", "external_weights", "incremental_weights")}
    for name in strategies:
        option = STRATEGIES[name].get("weights")
        if option not in (None, "pretrained") and not weights[option]:
            raise MammoXAIError(
                f"strategy {name!r}", f"needs --{option}", f"pass --{option} <local weights file> or drop {name}"
            )
    for option, path in weights.items():
        if path and not Path(path).is_file():
            raise MammoXAIError(path, f"--{option} file not found", "pass an existing weights file")
    return weights


def comparison_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Test AUC with its 95 % interval against the labelled fraction, one colour per strategy: a point per run
    (seed), joined through the mean over seeds. Each fraction's tick also gives the patients drawn for it, which
    the two-patient minimum per class makes more than the fraction of a small set."""
    figure = Figure(figsize=(5.5, 4.0))
    axes = figure.add_subplot()
    strategies = list(dict.fromkeys(row["strategy"] for row in rows))
    fractions = sorted({row["fraction"] for row in rows})
    seeds = sorted({row["seed"] for row in rows})
    for offset, name in zip(np.linspace(-0.03, 0.03, len(strategies)), strategies, strict=True):
        mine = [row for row in rows if row["strategy"] == name]
        x = (
            np.log10([row["fraction"] for row in mine])
            + offset
            + 0.004 * np.array([seeds.index(row["seed"]) for row in mine])
        )
        auc, low, high = (
            np.array([np.nan if row[key] is None else row[key] for row in mine], dtype=np.float64)
            for key in ("auc", "auc_low", "auc_high")
        )
        errors = np.nan_to_num(np.stack([auc - low, high - auc]).clip(min=0.0))
        points = axes.errorbar(x, auc, yerr=errors, fmt="o", capsize=3, alpha=0.6 if len(seeds) > 1 else 1.0)
        means = [np.nanmean([a for a, row in zip(auc, mine, strict=True) if row["fraction"] == f]) for f in fractions]
        axes.plot(np.log10(fractions) + offset, means, color=points.lines[0].get_color(), label=name)
    drawn = {f: sorted({row["labelled_patients"] for row in rows if row["fraction"] == f}) for f in fractions}
    total = rows[0]["available_patients"]
    ticks = [f"{100 * f:g} %\n({'/'.join(map(str, drawn[f]))} of {total})" for f in fractions]
    axes.set_xticks(np.log10(fractions), ticks)
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("labelled share of the training patients (patients drawn)")
    axes.set_ylabel("test ROC AUC (malignant vs rest), 95 % CI")
    axes.set_title("Initialisation strategies" + (f", {len(seeds)} seeds (line: their mean)" if len(seeds) > 1 else ""))
    axes.legend(loc="lower right")
    return figure


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset_dir", required=True, help="study folder with manifest.csv (split column: 'test' is held out)"
    )
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--strategies", nargs="+", default=["scratch", "pretrained"], choices=list(STRATEGIES))
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.25, 1.0])
    parser.add_argument("--task", choices=list(TASKS), default="3class")
    parser.add_argument("--pretrained", help="metadata-pretraining checkpoint (default: pretrain here first)")
    parser.add_argument("--external_weights", help="local state dict of the backbone, for the external strategy")
    parser.add_argument("--incremental_weights", help="pretrained.pt started from external weights, for incremental")
    parser.add_argument("--pretrain_epochs", type=int, default=30)
    parser.add_argument(
        "--max_minutes", type=float, help="start no seed that would end past this many minutes (default: no limit)"
    )
    add_run_arguments(parser, BUNDLE_ROOT)
    return parser


def compare(args: argparse.Namespace, command: str) -> Report:
    """Run every strategy at every fraction and return the report (see the module docstring).

    Everything that can be checked without training is checked before the metadata pretraining and the first
    fine-tune: the options, the manifest's labels and test split, every labelled draw, each strategy's settings
    and starting weights as train.json reads them, and the evaluation's settings as evaluate.json reads them. A
    command refused this way leaves nothing in ``--out`` that blocks the corrected one.
    """
    start = time.monotonic()
    if args.max_minutes is not None:
        check_settings(max_minutes=args.max_minutes)
    bundle_root, out = Path(args.bundle_root).resolve(), Path(args.out).resolve()
    manifest = Path(args.dataset_dir) / "manifest.csv"
    records = read_study_manifest(args.dataset_dir)
    task = TASKS[args.task]
    strategies, fractions = distinct(args.strategies, "--strategies"), sorted(distinct(args.fractions, "--fractions"))
    seeds = repeat_seeds(args)
    weights = starting_weights(args, strategies)
    pretraining = any(STRATEGIES[name].get("weights") == "pretrained" for name in strategies) and not args.pretrained
    require_epochs(args, "epochs", *(["pretrain_epochs"] if pretraining else []))
    outside_test = outside_holdout(records)
    check_task_labels(outside_test, args.task, f"{manifest} (patients outside the test split)")
    if not any(is_held_out(record) for record in records):
        raise MammoXAIError(
            manifest,
            f"has no held-out test records ({HOLDOUT}), on which every model is scored",
            "add a split column that marks the patients to score with 'test', as mammoxai.data.synth manifests do",
        )
    subsets = {
        (seed, fraction): labelled_subset(records, fraction, seed, label_map=task["label_map"], option="--fractions")
        for seed in seeds
        for fraction in fractions
    }
    labelled = labelled_subset(records, 1.0, label_map=task["label_map"])
    available = len({patient_key(record) for record in labelled if not is_held_out(record)})
    settings = run_settings(args, out)
    pretrain_work = out / "runs" / "pretrain"
    pretrain_manifest = out / "runs" / "pretrain_manifest.csv"
    if pretraining:
        overrides = pretrain_overrides(pretrain_manifest, pretrain_work, settings, args.pretrain_epochs)
        overrides["resume"] = args.resume
        check_bundle_run(["pretrain.json"], bundle_root, PRETRAIN_CHECKS, **overrides)
    for name in strategies:
        if not (pretraining and STRATEGIES[name].get("weights") == "pretrained"):  # else its weights are not made yet
            check_bundle_run(["train.json"], bundle_root, TRAIN_CHECKS, **settings, **strategy_overrides(name, weights))
    check_evaluation(bundle_root, settings, args.n_bootstrap)
    reuse, reuse_fix = pretrain_work / "pretrained.pt", None  # an earlier run's pretraining need not be redone
    if pretraining and reuse.is_file() and not args.resume:
        reuse_fix = (
            f"--overwrite --pretrained {reuse} to replace all but its pretraining"
            if earlier_results(out, [reuse])
            else f"--pretrained {reuse} to reuse its pretraining"
        )
    claim_out(out, args.overwrite, list(weights.values()), reuse_fix, args.resume)

    if pretraining:
        logger.info("metadata pretraining on %d images of the non-test patients", len(outside_test))
        write_manifest(outside_test, pretrain_manifest)
        bundle_run(["pretrain.json"], bundle_root, **overrides)
        weights["pretrained"] = str(reuse)
    rows, reports, finished = [], {}, []
    seeds_start = time.monotonic()  # the minutes left once the pretraining is done, judged by the seeds' mean time
    left = None if args.max_minutes is None else args.max_minutes - (seeds_start - start) / 60
    for (seed, fraction), subset in subsets.items():
        if fraction == fractions[0] and another_would_overrun(seeds_start, len(finished), left):
            logger.warning("max_minutes (%g): another seed would end past it; seeds %s left out", args.max_minutes,
                           seeds[len(finished):])  # fmt: skip
            break
        subset_manifest = write_manifest(subset, out / "runs" / f"labelled_{fraction:g}_seed{seed}.csv")
        trained_on = [record for record in subset if not is_held_out(record)]
        counts = {
            "labelled_patients": len({patient_key(record) for record in trained_on}),
            "available_patients": available,
            "labelled_images": len(trained_on),
        }
        for name in strategies:
            logger.info(
                "seed %d, strategy %s, fraction %g: %d of the %d labelled patients",
                seed, name, fraction, counts["labelled_patients"], counts["available_patients"],
            )  # fmt: skip
            work = out / "runs" / f"{name}_{fraction:g}_seed{seed}"
            strategy = strategy_overrides(name, weights)
            reports[name, fraction, seed] = train_and_evaluate(
                bundle_root, subset_manifest, work, strategy, {**settings, "seed": seed}, args.n_bootstrap, command,
                resume=args.resume,
            )  # fmt: skip
            result = reports[name, fraction, seed]["tables"]["binary"][0]
            rows.append({"strategy": name, "fraction": fraction, "seed": seed, **counts, **result})
        if fraction == fractions[-1]:
            finished.append(seed)
    report = Report(
        "Initialisation strategies by labelled fraction",
        f"Task {args.task}, backbone {args.backbone}, {args.epochs} fine-tuning epochs at "
        f"{args.image_size[0]}x{args.image_size[1]}, intensity scaling {args.intensity_scaling}, field of view "
        f"{args.field_of_view} "
        "(every pretraining and fine-tune); "
        f"every model is scored on the same held-out test patients ({HOLDOUT}). AUC is malignant vs rest with a 95 % "
        "patient-bootstrap interval."
        + (
            f" Seeds {seeds[len(finished):]} were left out: another seed would have ended past max_minutes "
            f"({args.max_minutes:g})."
            if len(finished) < len(seeds)
            else ""
        ),
        command=command,
    )
    report.add_table(
        "strategies", rows,
        title="Test AUC per strategy, labelled fraction and seed (fraction: the share asked for; labelled_patients of "
        "the available_patients outside the test split were drawn, at least two per class, and trained on "
        "labelled_images; the test columns count the held-out images scored)",
        columns=[
            *("strategy", "fraction", "seed", "labelled_patients", "available_patients", "labelled_images"),
            *("images", "positives", "auc", "auc_low", "auc_high", "sensitivity", "specificity"),
        ],
    )  # fmt: skip
    report.add_values("seeds", {"asked": seeds, "run": finished, "max_minutes": args.max_minutes}, title="Seeds")
    repeated = len(finished) > 1
    if repeated:
        report.add_table(
            "auc_across_seeds", across_seeds(rows, ("strategy", "fraction"), "auc"),
            title="Test AUC over the seeds: mean, sample SD and range (the spread of training and labelled draw)",
        )  # fmt: skip
    if "scratch" in strategies:
        positive = task["class_names"].index("malignant")
        differences = [
            {
                "strategy": name,
                "fraction": fraction,
                "seed": seed,
                **auc_difference(
                    reports[name, fraction, seed],
                    reports["scratch", fraction, seed],
                    positive,
                    args.n_bootstrap,
                    args.seed,
                ),
            }
            for name, fraction, seed in reports
            if name != "scratch"
        ]
        report.add_table(
            "difference_from_scratch", differences,
            title="Test AUC minus scratch's at the same fraction and seed, paired patient-bootstrap 95 % interval (an "
            "interval above 0: better than scratch beyond the test set's sampling noise, for that seed)",
        )  # fmt: skip
        if repeated:
            report.add_table(
                "difference_across_seeds",
                across_seeds(differences, ("strategy", "fraction"), "auc_difference", low="difference_low"),
                title="AUC minus scratch's over the seeds: mean, sample SD, range, seeds above 0 and seeds whose "
                "paired interval is above 0",
            )  # fmt: skip
    report.add_values("weights", {key: value or "" for key, value in weights.items()}, title="Starting weights")
    report.add_figure("auc_by_fraction", comparison_figure(rows), title="AUC by labelled fraction")
    report.write(out)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return experiment_main(argv, _parser(), compare, "scripts/compare_strategies.py")


if __name__ == "__main__":
    sys.exit(main())
