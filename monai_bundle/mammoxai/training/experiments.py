"""Experiments made of bundle runs: fine-tune with ``configs/train.json``, score with ``configs/evaluate.json``.

The building blocks of ``scripts/compare_strategies.py`` (initialisation strategies by labelled fraction, after
the Pittsburgh study, J Digit Imaging 2020) and ``scripts/domain_shift.py`` (transfer to an unseen X-ray system,
after Shen et al., Sci Rep 2019): a nested, class-stratified labelled subset, and one train-then-evaluate run
whose every setting is a config override, so an experiment runs exactly what a user of the bundle runs.

An experiment is dozens of fine-tunes, and hours on a GPU; ``--resume`` continues an interrupted one. Each run
records what it was made from (``run.json``: its overrides and the SHA-1 of its manifest and starting weights) once
its evaluation report is written, and a resumed experiment reuses exactly the runs whose record matches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shlex
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import monai.bundle
import numpy as np

from mammoxai.cli import bundle_config_files, exit_status, run_bundle
from mammoxai.data.cache import update_with_file
from mammoxai.data.dataset import LabelMap
from mammoxai.data.manifest import read_manifest
from mammoxai.errors import MammoXAIError
from mammoxai.io.atomic import atomic_write_bytes
from mammoxai.io.preprocess import FIELDS_OF_VIEW, INTENSITY_SCALINGS, check_field_of_view, check_intensity_scaling
from mammoxai.metrics import paired_auc_difference
from mammoxai.training.classification import held_out_patients, patient_key, patient_strata, selects
from mammoxai.training.finetune import check_labels
from mammoxai.training.settings import check_settings

logger = logging.getLogger(__name__)

__all__ = [
    "experiment_main",
    "TASKS",
    "HOLDOUT",
    "PRETRAIN_CHECKS",
    "TRAIN_CHECKS",
    "EVALUATE_CHECKS",
    "is_held_out",
    "outside_holdout",
    "labelled_subset",
    "check_task_labels",
    "add_run_arguments",
    "require_epochs",
    "distinct",
    "repeat_seeds",
    "read_study_manifest",
    "earlier_results",
    "claim_out",
    "run_settings",
    "check_bundle_run",
    "check_evaluation",
    "bundle_run",
    "train_and_evaluate",
    "run_record",
    "finished_run",
    "auc_difference",
    "across_seeds",
]

TASKS: dict[str, dict[str, Any]] = {
    "3class": {"class_names": ["normal", "benign", "malignant"], "label_map": {"recalled_benign": "benign"}},
    "binary": {
        "class_names": ["other", "malignant"],
        "label_map": {"normal": "other", "benign": "other", "recalled_benign": "other"},
    },
}
"""train.json ``class_names`` and ``label_map`` of the two tasks of the Pittsburgh study: 3-class (negative /
recalled-benign / malignant) and binary (malignant vs the rest)."""

PRETRAIN_CHECKS = ("run_settings", "torch_device")
"""pretrain.json components that check a run's settings without reading an image (:func:`check_bundle_run`)."""

TRAIN_CHECKS = ("run_settings", "torch_device", "finetune_network_def")
"""train.json components that check a fine-tune's settings and load its starting weights without reading an image
(:func:`check_bundle_run`; the experiments train ``finetune_network_def``)."""

EVALUATE_CHECKS = ("evaluation_settings",)
"""evaluate.json components that check an evaluation's settings (bootstrap resamples, operating points) without
reading an image or a checkpoint (:func:`check_evaluation`)."""

HOLDOUT = {"split": "test"}
"""The records every experiment scores and never trains on (the test split of synthetic and VinDr sets)."""


def is_held_out(record: Mapping[str, Any]) -> bool:
    """Whether a record is in the held-out test split (:data:`HOLDOUT`), as train.json and evaluate.json read it
    (:func:`~mammoxai.training.classification.selects`)."""
    return selects(HOLDOUT, record)


def outside_holdout(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records of the patients with no held-out record: what any run of an experiment may learn from.

    A held-out patient's other images (a prior study marked ``training``) are left out too, as train.json leaves
    them out (:func:`~mammoxai.training.classification.patient_split`): pretrained or counted on, they would put
    a test patient in the model, or in the numbers of patients trained on, that no run trains on.
    """
    unseen = held_out_patients(records, HOLDOUT)
    return [dict(record) for record in records if patient_key(record) not in unseen]


def labelled_subset(
    records: Sequence[Mapping[str, Any]],
    fraction: float,
    seed: int = 0,
    label_key: str = "case_label",
    label_map: Mapping[str, str] | None = None,
    option: str = "fraction",
) -> list[dict[str, Any]]:
    """The held-out test records plus ``fraction`` of the other patients (:func:`outside_holdout`: a held-out
    patient's other images are neither drawn nor kept), stratified by each patient's rarest class, at least two
    patients per class (so training and validation both see it). An image naming no patient goes with its study, or
    alone, as in the patient split, so the views of one study are drawn together.

    The draw is nested: patients are ranked once per class by the seed, as the patient split ranks them
    (:func:`~mammoxai.training.classification.patient_strata`), and a fraction takes the first of them, so a larger
    fraction adds patients to a smaller one and the comparison across fractions is not confounded by different
    patients. Because of the two-patient minimum a small fraction of a small set takes more than asked: report the
    patients drawn, not the fraction.

    Raises:
        MammoXAIError: ``fraction`` is not in (0, 1]; the message names it as ``option`` (the command-line option
            that gave it).
    """
    if not 0.0 < fraction <= 1.0:
        raise MammoXAIError(option, f"is {fraction:g}", "use a share of the patients in (0, 1], e.g. 0.25")
    label_map = LabelMap(label_map)
    held_out = [dict(r) for r in records if is_held_out(r)]
    by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in outside_holdout(records):
        if record.get(label_key) not in (None, ""):
            by_patient[patient_key(record)].append(record)
    chosen = []
    for patients in patient_strata(by_patient, label_map, seed, label_key):
        chosen += patients[: min(len(patients), max(2, math.ceil(fraction * len(patients))))]
    return [record for patient in sorted(chosen) for record in by_patient[patient]] + held_out


def check_task_labels(
    records: Sequence[Mapping[str, Any]], task: str, source: str, label_key: str = "case_label"
) -> None:
    """Refuse training records that the runs of ``task`` (:data:`TASKS`) cannot learn from: none labelled, a label
    that is no class of the task, or a class without an image.

    ``train.json`` refuses the same, but only when its run starts, which in an experiment comes after metadata
    pretraining or another run; the experiment scripts call this on their training data before the first run.

    Args:
        records: the records one run will train on.
        task: a key of :data:`TASKS`.
        source: where the records come from, shown first in the message (e.g. the manifest and the split).
        label_key: the record field holding the label.

    Raises:
        MammoXAIError: naming ``source`` and the missing labels or classes.
    """
    class_names = TASKS[task]["class_names"]
    label_map = LabelMap(TASKS[task]["label_map"], class_names)
    labels = [label_map(record[label_key]) for record in records if record.get(label_key) not in (None, "")]
    if not labels:
        raise MammoXAIError(
            source,
            f"has no {label_key} (no image is labelled)",
            "join labels to the manifest: python -m mammoxai.data.manifest <folder> --out manifest.csv --labels <csv>",
        )
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        problem = f"has {label_key} {unknown}, which are not classes of the {task} task ({', '.join(class_names)})"
        raise MammoXAIError(source, problem, "use the labels normal, benign, recalled_benign and malignant")
    check_labels([class_names.index(label) for label in labels], class_names, source)


def add_run_arguments(parser: argparse.ArgumentParser, bundle_root: Path) -> None:
    """The command-line options every experiment script shares: how each bundle run trains and is scored."""
    parser.add_argument("--backbone", default="mammo_cnn")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image_size", nargs=2, type=int, default=[256, 208])
    parser.add_argument(
        "--intensity_scaling", default="breast_percentiles",
        help=f"how every run, pretraining included, scales its images ({' or '.join(INTENSITY_SCALINGS)}); "
        "starting weights must have been trained with the same",
    )  # fmt: skip
    parser.add_argument(
        "--field_of_view", default="breast",
        help=f"what every run, pretraining included, puts on the grid ({' or '.join(FIELDS_OF_VIEW)}); starting "
        "weights must have been trained with the same",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n_bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds", nargs="+", type=int,
        help="repeat the experiment with each seed (new data draw and initialisation per seed; default: --seed once)",
    )  # fmt: skip
    earlier = parser.add_mutually_exclusive_group()
    earlier.add_argument(
        "--overwrite", action="store_true", help="replace the runs and report of an earlier experiment in --out"
    )
    earlier.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted experiment in --out: keep its finished runs of the same settings, do the rest",
    )  # fmt: skip
    parser.add_argument("--bundle_root", default=str(bundle_root))


def require_epochs(args: argparse.Namespace, *options: str) -> None:
    """Refuse an epoch count below 1 in the ``options`` of ``args`` (e.g. ``"epochs"``, ``"adapt_epochs"``).

    The bundle run refuses it too, but only when that run starts (the adaptation runs come after the source
    training), and under its config key ``epochs``, which is not the option the user typed.

    Raises:
        MammoXAIError: naming the first such option.
    """
    for option in options:
        value = getattr(args, option)
        if value < 1:
            raise MammoXAIError(f"--{option}", f"is {value}", "train for at least 1 epoch")


def distinct(values: Sequence[Any], option: str) -> list[Any]:
    """The values of a command-line option whose every value names its own runs (and run folders).

    A repeated value would run into the folder of its first run, and stop there at the end of that run's
    training, when ``SafeCheckpointSaver`` finds the model it has just written.

    Raises:
        MammoXAIError: a value is given more than once (floats compared as the run folders name them, ``%g``).
    """
    names = [f"{value:g}" if isinstance(value, float) else str(value) for value in values]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise MammoXAIError(option, f"gives {', '.join(repeated)} more than once", "give each value once")
    return list(values)


def repeat_seeds(args: argparse.Namespace) -> list[int]:
    """The seeds an experiment runs with: ``--seeds``, else ``--seed`` once.

    Every seed is checked here, before the first run: the bundle runs' own check sees only the seed of the run
    about to start, so a wrong later seed stopped the experiment after minutes of pretraining and training.

    Raises:
        MammoXAIError: ``--seeds`` repeats a seed (see :func:`distinct`), or a seed is not a whole number of 0 or
            more.
    """
    option = "--seeds" if args.seeds else "--seed"
    seeds = distinct(args.seeds or [args.seed], option)
    for seed in seeds:
        try:
            check_settings(seed=seed)
        except MammoXAIError as error:
            raise MammoXAIError(option, error.problem, f"e.g. {option} 0") from None
    return seeds


def read_study_manifest(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``<dataset_dir>/manifest.csv``.

    Raises:
        MammoXAIError: the folder has no manifest.
    """
    manifest = Path(dataset_dir) / "manifest.csv"
    if not manifest.is_file():
        raise MammoXAIError(
            manifest,
            "manifest not found",
            "pass --dataset_dir, a folder written by mammoxai.data.synth or build_manifest",
        )
    return read_manifest(manifest)


def earlier_results(out: Path, reused: Sequence[str | Path | None] = ()) -> list[str]:
    """What an earlier experiment into ``out`` left that a new one would replace: its ``report.json``, and the
    checkpoints (``*.pt``) under ``runs/`` outside the folders of the ``reused`` weights files, which the new
    experiment starts from (e.g. a pretraining an earlier run into the same ``out`` wrote). Manifests, logs and
    the preprocessing cache are not results: a new run rewrites or reuses them. Paths are relative to ``out``."""
    kept = {Path(path).resolve().parent for path in reused if path}
    checkpoints = [path for path in sorted((out / "runs").rglob("*.pt")) if path.resolve().parent not in kept]
    report = ["report.json"] if (out / "report.json").exists() else []
    return report + [str(path.relative_to(out)) for path in checkpoints]


def claim_out(
    out: Path, overwrite: bool, reused: Sequence[str | Path | None] = (), fix: str | None = None, resume: bool = False
) -> None:
    """Refuse an ``--out`` that holds an earlier experiment's results (:func:`earlier_results`), unless
    ``--overwrite``, or ``--resume``, which reuses those of its runs that match (:func:`train_and_evaluate`).

    Checked before the first run, so that a repeated command stops at once with this message instead of at its
    first bundle run, whose checkpoint folder already holds a model (``SafeCheckpointSaver``); with
    ``--overwrite`` the bundle runs replace their earlier checkpoints (:func:`run_settings`). A run that stopped
    before its first checkpoint (a wrong setting, a crash in the first epoch) left no result, so the corrected
    command runs without ``--overwrite``.

    Args:
        out: the experiment's report folder.
        overwrite: ``--overwrite``.
        reused: weights files the new experiment starts from (``None`` entries are skipped).
        fix: another way out, added to the message (e.g. how to reuse a result instead of replacing it).
        resume: ``--resume``.

    Raises:
        MammoXAIError: ``out`` holds results and neither ``overwrite`` nor ``resume`` is set.
    """
    results = earlier_results(out, reused)
    if results and not (overwrite or resume):
        named = results[:2] + ([f"{len(results) - 2} more checkpoints"] if len(results) > 2 else [])
        listed = f"{', '.join(named[:-1])} and {named[-1]}" if len(named) > 1 else named[0]
        problem = f"holds {listed} of an earlier experiment"
        fixes = [
            "pass --overwrite to replace them",
            "--resume to keep its finished runs and do the rest",
            *([fix] if fix else []),
            "give another --out",
        ]
        raise MammoXAIError(f"--out {out}", problem, f"{', '.join(fixes[:-1])}, or {fixes[-1]}")


def run_settings(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """train.json overrides shared by every run of an experiment (options of :func:`add_run_arguments`, the
    task's classes), with one preprocessing cache under ``out`` for all of them.

    One intensity scaling and field of view for every run: a network must see the model input it was trained on, so
    a fine-tune from a pretraining, or an evaluation, under another would be refused when it starts.

    Raises:
        MammoXAIError: an unknown ``--intensity_scaling`` or ``--field_of_view``, before any run.
    """
    return {
        "backbone": args.backbone,
        "epochs": args.epochs,
        "image_size": list(args.image_size),
        "intensity_scaling": check_intensity_scaling(args.intensity_scaling, "--intensity_scaling"),
        "field_of_view": check_field_of_view(args.field_of_view, "--field_of_view"),
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": args.device,
        "seed": args.seed,
        "cache_dir": str(out / "cache"),
        "overwrite": args.overwrite,
        "holdout": HOLDOUT,
        **TASKS[args.task],
    }


def check_bundle_run(configs: Sequence[str], bundle_root: Path, components: Sequence[str], **overrides: Any) -> None:
    """Build ``components`` of the bundle run that :func:`bundle_run` would start with the same arguments, and
    nothing else: the config's own checks of its settings and starting weights, made for every planned run
    before the first one spends minutes training.

    Only components that read no image belong here (:data:`TRAIN_CHECKS`, :data:`PRETRAIN_CHECKS`): the run's
    ``run_settings`` (epochs, batch size, workers), ``torch_device``, and train.json's ``finetune_network_def``
    (the network with its ``init_weights`` loaded: a missing file, or a classifier passed for a pretraining
    checkpoint, is refused here).

    Raises:
        MammoXAIError: what the component refuses (behind MONAI's wrapper; :func:`mammoxai.cli.exit_status`
            prints it as one line).
    """
    parser = monai.bundle.ConfigParser()
    parser.read_config([str(file) for file in bundle_config_files(bundle_root, configs)])
    parser.update({"bundle_root": str(bundle_root), **overrides})
    for component in components:
        parser.get_parsed_content(component)


def check_evaluation(bundle_root: Path, settings: Mapping[str, Any], n_bootstrap: int) -> None:
    """Check the evaluation settings of every :func:`train_and_evaluate` run (:data:`EVALUATE_CHECKS`) before the
    first training: found by the first evaluation, a wrong ``--n_bootstrap`` stopped the experiment after its first
    fine-tune, whose model then blocked the corrected command.

    Args:
        bundle_root: the bundle whose configs run.
        settings: train.json overrides shared by all runs (:func:`run_settings`).
        n_bootstrap: bootstrap resamples of the evaluations.

    Raises:
        MammoXAIError: what evaluate.json refuses (see :func:`check_bundle_run`).
    """
    check_bundle_run(["train.json", "evaluate.json"], bundle_root, EVALUATE_CHECKS, **settings, n_bootstrap=n_bootstrap)


def bundle_run(configs: Sequence[str], bundle_root: Path, **overrides: Any) -> None:
    """Run the bundle's ``configs`` (merged in order) in this process with top-level ``overrides``."""
    run_bundle(bundle_config_files(bundle_root, configs), bundle_root, overrides)


def train_and_evaluate(
    bundle_root: Path,
    manifest: Path,
    work: Path,
    strategy: Mapping[str, Any],
    settings: Mapping[str, Any],
    n_bootstrap: int,
    command: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune with ``train.json`` on ``manifest`` and evaluate the result on its held-out records.

    The run's record (``work/run.json``, :func:`run_record`) is written once the report is: with ``resume``, a run
    whose record matches this one's is not run again, and its report is returned.

    Args:
        bundle_root: the bundle whose configs run.
        manifest: training, validation and held-out (:data:`HOLDOUT`) records.
        work: folder of this run: ``models/model.pt``, logs, ``evaluation/report.*``.
        strategy: train.json overrides of this run (``init``, ``init_weights``, ``freeze``, ...).
        settings: train.json overrides shared by all runs (sizes, epochs, classes, device).
        n_bootstrap: bootstrap resamples of the evaluation.
        command: the experiment's command, recorded in the evaluation report (the bundle run happens in this
            process, so its own command line would be the experiment script's arguments under another name).
        resume: reuse this run if an earlier experiment finished it with the same record; otherwise run it,
            replacing what an unfinished attempt left in ``work``.

    Returns:
        the evaluation report's JSON document (``tables["binary"][0]``: the image-level AUC and interval,
        sensitivity, specificity and counts; ``values["scores"]``: every held-out image's probabilities).

    Raises:
        MammoXAIError: with ``resume``, ``work`` holds a finished run of other settings, data or weights.
    """
    overrides = {
        **settings,
        **strategy,
        "manifest": str(manifest),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work),
        "network_def": "@finetune_network_def",
    }
    record, report = run_record(overrides, n_bootstrap), work / "evaluation" / "report.json"
    if resume:
        if finished_run(work, record):
            logger.info("resume: %s finished earlier with the same settings, data and weights; reusing it", work.name)
            return json.loads(report.read_text())
        overrides["overwrite"] = True  # what is in work is this run's own unfinished attempt
    (work / "run.json").unlink(missing_ok=True)
    bundle_run(["train.json"], bundle_root, **overrides)
    bundle_run(
        ["train.json", "evaluate.json"],
        bundle_root,
        **overrides,
        checkpoints=[str(work / "models" / "model.pt")],
        evaluation_dir=str(work / "evaluation"),
        eval_where=HOLDOUT,
        n_bootstrap=n_bootstrap,
        **({"command": f"{command} (run {work.name})"} if command else {}),
    )
    atomic_write_bytes(work / "run.json", json.dumps(record, indent=2).encode())
    return json.loads(report.read_text())


def run_record(overrides: Mapping[str, Any], n_bootstrap: int) -> dict[str, Any]:
    """What a run's result depends on: its train.json overrides (but ``overwrite`` and ``num_workers``), the
    evaluation's bootstrap count, and the SHA-1 of its manifest and of its starting weights, so a manifest or a
    pretraining made again under the same name is not mistaken for the one the run used."""
    settings = {key: value for key, value in overrides.items() if key not in ("overwrite", "num_workers")}
    files = {"manifest": settings.get("manifest"), "init_weights": settings.get("init_weights")}
    digests = {f"{name}_sha1": update_with_file(hashlib.sha1(), path).hexdigest() for name, path in files.items()
               if path}  # fmt: skip
    return json.loads(json.dumps({**settings, "n_bootstrap": n_bootstrap, **digests}, sort_keys=True))


def finished_run(work: Path, record: Mapping[str, Any]) -> bool:
    """Whether ``work`` holds a finished run (its ``run.json`` and evaluation report) made with ``record``.

    Raises:
        MammoXAIError: it holds a finished run made with another record: resuming would mix two experiments.
    """
    path, report = work / "run.json", work / "evaluation" / "report.json"
    if not (path.is_file() and report.is_file()):
        return False
    earlier = json.loads(path.read_text())
    if earlier != record:
        changed = sorted(key for key in {*earlier, *record} if earlier.get(key) != record.get(key))
        problem = f"holds a finished run made with other settings, data or weights ({', '.join(changed)})"
        raise MammoXAIError(
            work, problem, "run the earlier command to resume it, pass --overwrite, or give another --out"
        )
    return True


def auc_difference(
    report: Mapping[str, Any],
    reference: Mapping[str, Any],
    positive: int,
    n_bootstrap: int,
    seed: int = 0,
) -> dict[str, float]:
    """Test AUC of one run minus that of a reference run, with a paired patient-bootstrap 95 % interval.

    Runs of one experiment are scored on the same held-out images, so their difference is read from one paired
    resampling (:func:`~mammoxai.metrics.paired_auc_difference`), not from two separate intervals.

    Args:
        report, reference: evaluation reports of :func:`train_and_evaluate`.
        positive: index of the positive class (malignant) in the probabilities.
        n_bootstrap, seed: bootstrap resamples and their seed.

    Raises:
        MammoXAIError: the two reports did not score the same images.
    """
    scores, reference_scores = report["values"]["scores"], reference["values"]["scores"]
    if scores["paths"] != reference_scores["paths"]:
        raise MammoXAIError(
            "AUC difference", "the two runs scored different images", "score both on the same held-out records"
        )
    y_true = np.asarray(scores["labels"]) == positive
    difference = paired_auc_difference(
        y_true,
        np.asarray(scores["probabilities"])[:, positive],
        np.asarray(reference_scores["probabilities"])[:, positive],
        groups=scores["patients"],
        n=n_bootstrap,
        seed=seed,
    )
    return {"auc_difference": difference.estimate, "difference_low": difference.low, "difference_high": difference.high}


def across_seeds(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], value: str, low: str | None = None
) -> list[dict[str, Any]]:
    """Spread of ``value`` over repeated runs (seeds) of each setting: one row per distinct ``keys`` tuple.

    A bootstrap interval covers the test patients' sampling only; whether a result survives another labelled draw
    and another initialisation is read from its repeats. Each row gives the number of runs, the mean, the sample
    standard deviation (0 for one run) and the range of ``value``. For a difference (``low`` names the column of
    its interval's lower bound) it also counts the runs above 0 and the runs whose whole interval is above 0.

    Args:
        rows: one row per run, with the ``keys`` columns and ``value`` (``None`` where it could not be computed).
        keys: the columns that name a setting, e.g. ``("strategy", "fraction")``.
        value: the column to summarise, e.g. ``"auc"`` or ``"auc_difference"``.
        low: the lower-bound column of ``value``'s interval, for differences (e.g. ``"difference_low"``).
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[key] for key in keys)].append(row)
    summary = []
    for setting, group in groups.items():
        values = np.array([row[value] for row in group if row.get(value) is not None], dtype=np.float64)
        row = {**dict(zip(keys, setting, strict=True)), "runs": len(group)}
        row.update(
            {"mean": values.mean(), "sd": values.std(ddof=1) if values.size > 1 else 0.0, "min": values.min(), "max": values.max()}
            if values.size
            else dict.fromkeys(("mean", "sd", "min", "max"))
        )  # fmt: skip
        if low is not None:
            row["above_0"] = int((values > 0).sum())
            row["interval_above_0"] = sum(1 for run in group if run.get(low) is not None and run[low] > 0)
        summary.append({key: float(item) if isinstance(item, np.floating) else item for key, item in row.items()})
    return summary


def experiment_main(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    experiment: Callable[[argparse.Namespace, str], object],
    script: str,
) -> int:
    """The ``main`` of an experiment script: parse ``argv``, run ``experiment(args, command)`` with the command line
    that reproduces it (written into the report), and return the exit status of :func:`~mammoxai.cli.exit_status`.

    Args:
        argv: the arguments; ``None`` reads ``sys.argv``.
        parser: the script's argument parser; its ``--out`` folder receives ``report.md``.
        experiment: runs the experiment and writes the report.
        script: the script's path from the repository root, e.g. ``"scripts/domain_shift.py"``.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    status = exit_status(lambda: experiment(args, shlex.join(["python", script, *arguments])))
    if status == 0:
        print(f"report written to {Path(args.out) / 'report.md'}")
    return status
