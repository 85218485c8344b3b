"""Experiments made of bundle runs: fine-tune with ``configs/train.json``, score with ``configs/evaluate.json``.

The building blocks of ``scripts/compare_strategies.py`` (initialisation strategies by labelled fraction, after
the Pittsburgh study, J Digit Imaging 2020) and ``scripts/domain_shift.py`` (transfer to an unseen X-ray system,
after Shen et al., Sci Rep 2019): a nested, class-stratified labelled subset, and one train-then-evaluate run
whose every setting is a config override, so an experiment runs exactly what a user of the bundle runs.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import monai.bundle
import numpy as np

from mammoxai.data.manifest import read_manifest
from mammoxai.errors import MammoXAIError
from mammoxai.metrics import paired_auc_difference

__all__ = [
    "TASKS",
    "HOLDOUT",
    "is_held_out",
    "labelled_subset",
    "add_run_arguments",
    "repeat_seeds",
    "read_study_manifest",
    "claim_out",
    "run_settings",
    "bundle_run",
    "train_and_evaluate",
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

HOLDOUT = {"split": "test"}
"""The records every experiment scores and never trains on (the test split of synthetic and VinDr sets)."""


def is_held_out(record: Mapping[str, Any]) -> bool:
    """Whether a record is in the held-out test split (:data:`HOLDOUT`)."""
    return all(str(record.get(key)) == value for key, value in HOLDOUT.items())


def labelled_subset(
    records: Sequence[Mapping[str, Any]],
    fraction: float,
    seed: int = 0,
    label_key: str = "case_label",
    label_map: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The held-out test records plus ``fraction`` of the other patients, stratified by each patient's rarest
    class, at least two patients per class (so training and validation both see it).

    The draw is nested: patients are ranked once per class by the seed, and a fraction takes the first of them,
    so a larger fraction adds patients to a smaller one and the comparison across fractions is not confounded by
    different patients.
    """
    if not 0.0 < fraction <= 1.0:
        raise MammoXAIError("--fractions", f"has {fraction}", "use fractions in (0, 1], e.g. 0.05 0.25 1.0")
    label_map = dict(label_map or {})
    held_out = [dict(r) for r in records if is_held_out(r)]
    by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if not is_held_out(record) and record.get(label_key) not in (None, ""):
            by_patient[str(record.get("patient_id") or record["path"])].append(dict(record))
    frequency = defaultdict(int)
    for group in by_patient.values():
        for record in group:
            frequency[label_map.get(str(record[label_key]), str(record[label_key]))] += 1
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, group in sorted(by_patient.items()):
        names = {label_map.get(str(record[label_key]), str(record[label_key])) for record in group}
        strata[min(names, key=lambda name: (frequency[name], name))].append(patient)
    rng = random.Random(seed)
    chosen = []
    for _, patients in sorted(strata.items()):
        rng.shuffle(patients)
        chosen += patients[: min(len(patients), max(2, math.ceil(fraction * len(patients))))]
    return [record for patient in sorted(chosen) for record in by_patient[patient]] + held_out


def add_run_arguments(parser: argparse.ArgumentParser, bundle_root: Path) -> None:
    """The command-line options every experiment script shares: how each bundle run trains and is scored."""
    parser.add_argument("--backbone", default="mammo_cnn")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image_size", nargs=2, type=int, default=[256, 208])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n_bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds", nargs="+", type=int,
        help="repeat the experiment with each seed (new data draw and initialisation per seed; default: --seed once)",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the runs and report of an earlier experiment in --out"
    )
    parser.add_argument("--bundle_root", default=str(bundle_root))


def repeat_seeds(args: argparse.Namespace) -> list[int]:
    """The seeds an experiment runs with: ``--seeds``, else ``--seed`` once."""
    return list(args.seeds or [args.seed])


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


def claim_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that holds an earlier experiment's runs or report, unless ``--overwrite``.

    Checked before the first run, so that a repeated command stops at once with this message instead of at its
    first bundle run, whose checkpoint folder already holds a model (``SafeCheckpointSaver``); with
    ``--overwrite`` the bundle runs replace their earlier checkpoints (:func:`run_settings`).

    Raises:
        MammoXAIError: ``out`` holds ``report.json`` or ``runs/`` and ``overwrite`` is not set.
    """
    earlier = [path.name for path in (out / "report.json", out / "runs") if path.exists()]
    if earlier and not overwrite:
        problem = f"holds {' and '.join(earlier)} of an earlier experiment"
        raise MammoXAIError(f"--out {out}", problem, "pass --overwrite to replace them, or give another --out")


def run_settings(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """train.json overrides shared by every run of an experiment (options of :func:`add_run_arguments`, the
    task's classes), with one preprocessing cache under ``out`` for all of them."""
    return {
        "backbone": args.backbone,
        "epochs": args.epochs,
        "image_size": list(args.image_size),
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": args.device,
        "seed": args.seed,
        "cache_dir": str(out / "cache"),
        "overwrite": args.overwrite,
        "holdout": HOLDOUT,
        **TASKS[args.task],
    }


def bundle_run(configs: Sequence[str], bundle_root: Path, **overrides: Any) -> None:
    """Run the bundle's ``configs`` (merged in order) in this process with top-level ``overrides``."""
    files = [str(bundle_root / "configs" / name) for name in configs]
    monai.bundle.run(
        config_file=files if len(files) > 1 else files[0], bundle_root=str(bundle_root), logging_file=False, **overrides
    )


def train_and_evaluate(
    bundle_root: Path,
    manifest: Path,
    work: Path,
    strategy: Mapping[str, Any],
    settings: Mapping[str, Any],
    n_bootstrap: int,
    command: str | None = None,
) -> dict[str, Any]:
    """Fine-tune with ``train.json`` on ``manifest`` and evaluate the result on its held-out records.

    Args:
        bundle_root: the bundle whose configs run.
        manifest: training, validation and held-out (:data:`HOLDOUT`) records.
        work: folder of this run: ``models/model.pt``, logs, ``evaluation/report.*``.
        strategy: train.json overrides of this run (``init``, ``init_weights``, ``freeze``, ...).
        settings: train.json overrides shared by all runs (sizes, epochs, classes, device).
        n_bootstrap: bootstrap resamples of the evaluation.
        command: the experiment's command, recorded in the evaluation report (the bundle run happens in this
            process, so its own command line would be the experiment script's arguments under another name).

    Returns:
        the evaluation report's JSON document (``tables["binary"][0]``: the image-level AUC and interval,
        sensitivity, specificity and counts; ``values["scores"]``: every held-out image's probabilities).
    """
    overrides = {
        **settings,
        **strategy,
        "manifest": str(manifest),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work),
        "network_def": "@finetune_network_def",
    }
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
    return json.loads((work / "evaluation" / "report.json").read_text())


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
        row = {**dict(zip(keys, setting)), "runs": len(group)}
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
