"""Evaluate a fine-tuned malignancy classifier (or an ensemble of them) on held-out patients, honestly.

What a screening classifier is judged by, after the two studies behind issue 5 (Shen et al., "Deep Learning to
Improve Breast Cancer Detection on Screening Mammography", Sci Rep 2019, doi:10.1038/s41598-019-48995-4, who
report per-image AUC of single models and of four-model averages; and the Pittsburgh pretraining study, J Digit
Imaging 2020, binary and 3-class):

* ROC AUC of the positive class (malignant vs the rest) with a **patient-cluster** bootstrap 95 % interval
  (:func:`mammoxai.metrics.bootstrap_ci`): images of one patient are correlated and count as one unit;
* sensitivity and specificity at a chosen threshold, and at the threshold that reaches a target specificity
  (screening programmes fix the recall rate and ask how many cancers are found);
* per-class one-vs-rest AUC for a 3-class model (negative / recalled-benign / malignant);
* calibration of the positive-class probability: a reliability diagram and the expected calibration error
  (Naeini et al., AAAI 2015; Guo et al., "On Calibration of Modern Neural Networks", ICML 2017);
* a per-device (X-ray system) breakdown, since a model can be good on one vendor's images and poor on another's;
* which cancers it finds: the positive images split by a record field (``lesion_types``: spiculated masses,
  calcifications, ...), each kind scored against every negative image;
* the metadata heads of the served :class:`~mammoxai.nets.MetadataClassifier` against the header: per field,
  agreement, balanced accuracy and the majority baseline, and how many images would raise a QC flag (a confident
  disagreement) - on headers that are right, the false alarms a user would see;
* exam-level scores: the views of one breast (CC + MLO) or one study aggregated by ``max`` or ``mean``;
* ensembles: the softmax probabilities of N checkpoints averaged (Shen et al.'s four-model average).

The report (:class:`mammoxai.reports.Report`) is written as ``report.json``, ``report.md``, ``roc.png`` and
``reliability.png``. ``configs/evaluate.json`` is merged over ``configs/train.json`` (the model-zoo convention),
so the network, classes and label map are the ones training used::

    python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --dataset_dir <studies>

or, from anywhere, ``python scripts/evaluate.py --dataset_dir <studies> [--checkpoints '["a.pt", "b.pt"]']``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve
from torch import nn
from tqdm import tqdm

from mammoxai.cli import run_bundle_config
from mammoxai.data.dataset import class_index, setting_mapping
from mammoxai.errors import MammoXAIError, check_output_path, parse_names
from mammoxai.io.fields import UNKNOWN, MetadataLabelSpace
from mammoxai.metrics import bootstrap_ci, roc_auc
from mammoxai.nets.finetune import MetadataClassifier, load_checkpoint
from mammoxai.reports import Report, roc_figure
from mammoxai.training.classification import patient_key, selects
from mammoxai.training.evaluate_pretrain import field_metrics
from mammoxai.training.multiview import MultiViewDataset, check_views
from mammoxai.training.pretrain import record_metadata

logger = logging.getLogger(__name__)

__all__ = [
    "select_records",
    "load_checkpoints",
    "predict_probabilities",
    "sensitivity_specificity",
    "threshold_for_specificity",
    "calibration_bins",
    "reliability_figure",
    "aggregate_exams",
    "binary_metrics",
    "ClassifierEvaluator",
    "main",
]

TRAIN_COMMAND = "python -m monai.bundle run --config_file configs/train.json --dataset_dir <studies>"

# the columns of :func:`binary_metrics` that every binary table shows, whatever its rows are (level, device)
_BINARY_COLUMNS = ["images", "positives", "patients", "auc", "auc_low", "auc_high", "sensitivity", "specificity"]


def select_records(
    records: Sequence[Mapping[str, Any]], where: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The records whose fields equal every ``field: value`` of ``where`` (all records when it is empty).

    ``where`` is the training config's ``holdout`` (e.g. ``{"split": "test"}``): the images training never saw,
    selected as training holds them out (:func:`~mammoxai.training.classification.selects`).

    Raises:
        MammoXAIError: no record matches.
    """
    where = setting_mapping(where, "eval_where")
    kept = [dict(record) for record in records if selects(where, record)]
    if not kept:
        raise MammoXAIError(
            f"evaluation records {where}", f"match none of {len(records)} records", "check eval_where / holdout"
        )
    return kept


def load_checkpoints(
    network: nn.Module,
    paths: Sequence[str | Path] | str | Path,
    image_size: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    views: Sequence[str] | None = None,
    intensity_scaling: str | None = None,
    field_of_view: str | None = None,
) -> list[nn.Module]:
    """One copy of ``network`` per checkpoint, with its weights loaded and in eval mode: the ensemble members.

    A checkpoint is a state dict, or a dict holding one under ``"model"`` (what ``train.json``'s
    ``CheckpointSaver`` writes, with the training grid, intensity scaling and field of view, class names and views,
    which must equal ``image_size``, ``intensity_scaling``, ``field_of_view``, ``class_names`` and ``views`` when
    both are known, and the view fusion, which must be ``network``'s). A model scored on images made otherwise than
    it was trained on gives numbers and no error, so every member must have been trained on the model input the
    evaluation reads.

    Raises:
        MammoXAIError: no path, a missing file, weights that do not fit ``network`` (another architecture, class
            count, or one image per sample where the network fuses views, or the other way round) or were trained on
            another grid, intensity scaling or field of view, or with other class names, views or view fusion; the message names the
            file.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    views = check_views(views)
    if not paths:
        raise MammoXAIError("checkpoints", "is empty", "give the model.pt (or several, for an ensemble) to evaluate")
    members = []
    for path in map(Path, paths):
        if not path.is_file():
            raise MammoXAIError(path, "checkpoint not found", f"train one first: {TRAIN_COMMAND}")
        member = load_checkpoint(
            copy.deepcopy(network),
            path,
            "does not fit the configured network",
            "evaluate with the network_def, class_names and views it was trained with",
            image_size=image_size,
            class_names=class_names,
            views=views,
            intensity_scaling=intensity_scaling,
            field_of_view=field_of_view,
        )
        members.append(member.eval())
    return members


def predict_probabilities(
    members: Sequence[nn.Module],
    dataloader: torch.utils.data.DataLoader,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(N, C) class probabilities, the mean of the members' softmax outputs, in the data set's order; and, when
    every member has metadata heads (:class:`~mammoxai.nets.MetadataClassifier`), field → (N, k) probabilities of
    its heads from the same pass, averaged the same way (an empty dict otherwise).

    Averaging probabilities rather than logits keeps each member's confidence on the same scale.

    Raises:
        MammoXAIError: the loader is empty or does not return the images in data-set order (a shuffling loader
            would pair every score with another image's label).
    """
    device = torch.device(device)
    members = [member.to(device).eval() for member in members]
    with_heads = all(isinstance(member, MetadataClassifier) for member in members)
    paths: list[str] = []
    batches: list[torch.Tensor] = []
    field_batches: dict[str, list[torch.Tensor]] = defaultdict(list)
    with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        for batch in tqdm(dataloader, desc="scoring", unit="batch", disable=None):
            images = batch["image"].to(device)
            outputs = [
                member.forward_with_metadata(images) if with_heads else (member(images), {}) for member in members
            ]
            batches.append(_mean_softmax([logits for logits, _ in outputs]))
            for name in outputs[0][1]:
                field_batches[name].append(_mean_softmax([fields[name] for _, fields in outputs]))
            paths.extend(batch["path"])
    if not paths:
        raise MammoXAIError("evaluation data set", "is empty", "check the manifest and eval_where")
    if paths != [str(record["path"]) for record in dataloader.dataset.data]:
        raise MammoXAIError("dataloader", "does not return the images in data-set order", "set shuffle to false")
    fields = {name: torch.cat(parts).numpy().astype(np.float64) for name, parts in field_batches.items()}
    return torch.cat(batches).numpy().astype(np.float64), fields


def _mean_softmax(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean over ensemble members of their softmax probabilities, on the CPU."""
    return torch.stack([member.float().softmax(1) for member in logits]).mean(0).cpu()


def sensitivity_specificity(
    y_true: Sequence[int] | np.ndarray, y_score: Sequence[float] | np.ndarray, threshold: float
) -> tuple[float, float]:
    """(sensitivity, specificity) when a score ``>= threshold`` is called positive; NaN for an absent class."""
    y_true, called = np.asarray(y_true).astype(bool), np.asarray(y_score) >= threshold
    sensitivity = called[y_true].mean() if y_true.any() else math.nan
    specificity = (~called[~y_true]).mean() if (~y_true).any() else math.nan
    return float(sensitivity), float(specificity)


def threshold_for_specificity(
    y_true: Sequence[int] | np.ndarray, y_score: Sequence[float] | np.ndarray, target: float
) -> float:
    """The lowest threshold (so the highest sensitivity) whose specificity is at least ``target``; NaN without
    negatives. Chosen on the data it is applied to, the sensitivity there is optimistic on small sets."""
    y_true, y_score = np.asarray(y_true).astype(bool), np.asarray(y_score, dtype=np.float64)
    negatives = np.sort(y_score[~y_true])
    if not negatives.size:
        return math.nan
    candidates = np.append(np.unique(y_score), np.nextafter(y_score.max(), np.inf))
    specificity = np.searchsorted(negatives, candidates, side="left") / negatives.size  # share of negatives below
    return float(candidates[np.argmax(specificity >= target)])


def calibration_bins(
    y_true: Sequence[int] | np.ndarray, probability: Sequence[float] | np.ndarray, n_bins: int = 10
) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error of a probability, and its reliability table over ``n_bins`` equal-width bins.

    ECE = sum over bins of (images in bin / images) * |observed positive rate - mean probability| (Naeini et al.,
    AAAI 2015). A model whose 0.8 means "malignant 80 % of the time" has ECE 0; a reader deciding on the score
    needs that, and a high AUC does not imply it.

    Returns:
        ``(ece, rows)``: one row per non-empty bin with ``low``, ``high``, ``images``, ``mean_probability`` and
        ``observed_rate``.
    """
    y_true, probability = np.asarray(y_true, dtype=np.float64), np.asarray(probability, dtype=np.float64)
    if not y_true.size:
        return math.nan, []
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(probability, edges[1:-1], right=True), 0, n_bins - 1)
    rows, ece = [], 0.0
    for b in range(n_bins):
        members = index == b
        if members.any():
            mean_probability, observed = probability[members].mean(), y_true[members].mean()
            ece += members.mean() * abs(observed - mean_probability)
            rows.append(
                {
                    "low": edges[b],
                    "high": edges[b + 1],
                    "images": int(members.sum()),
                    "mean_probability": mean_probability,
                    "observed_rate": observed,
                }
            )
    return float(ece), rows


def reliability_figure(rows: Sequence[Mapping[str, Any]], ece: float, title: str) -> Figure:
    """Reliability diagram: observed positive rate against mean predicted probability per bin, with the diagonal
    of perfect calibration; marker area grows with the number of images in the bin."""
    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="perfectly calibrated")
    if rows:
        sizes = np.asarray([row["images"] for row in rows], dtype=np.float64)
        axes.plot([row["mean_probability"] for row in rows], [row["observed_rate"] for row in rows], color="tab:blue")
        axes.scatter(
            [row["mean_probability"] for row in rows],
            [row["observed_rate"] for row in rows],
            s=20 + 180 * sizes / sizes.max(),
            color="tab:blue",
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("mean predicted probability")
    axes.set_ylabel("observed positive rate")
    axes.set_title(f"{title} (ECE {ece:.3f})")
    axes.legend(loc="upper left")
    return figure


#: ``exam_aggregation`` -> how an exam's image scores become its score
_EXAM_REDUCTIONS: dict[str, Callable[[np.ndarray], Any]] = {"max": np.max, "mean": np.mean}


def _exam_reduction(how: str) -> Callable[[np.ndarray], Any]:
    """The reduction ``exam_aggregation`` names.

    Raises:
        MammoXAIError: ``how`` is not ``max`` or ``mean``.
    """
    if how not in _EXAM_REDUCTIONS:
        raise MammoXAIError("exam_aggregation", f"is {how!r}", "use 'max' or 'mean'")
    return _EXAM_REDUCTIONS[how]


def aggregate_exams(
    records: Sequence[Mapping[str, Any]], scores: np.ndarray, labels: np.ndarray, keys: Sequence[str], how: str = "max"
) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Exam-level scores: the images sharing the values of ``keys`` (e.g. ``study_uid`` and ``laterality``: the
    CC and MLO of one breast) become one exam, scored by the ``max`` or ``mean`` of their scores.

    ``max`` follows the reader, who recalls on the most suspicious view; ``mean`` rewards a finding seen in both
    views. An exam is positive when any of its images is.

    An exam never spans patients: the images are grouped within their ``patient_id``, and an image with an empty
    value of a key (a manifest whose ``study_uid`` is blank for some rows) is an exam of its own, with a warning.
    Grouped on the blank value, every such image of one side, whatever its patient, would be one "exam" scored
    by the most suspicious of them.

    Returns:
        ``(exam ids, scores, labels, patients)`` in first-appearance order.

    Raises:
        MammoXAIError: ``how`` is not ``max`` or ``mean``.
    """
    reduce = _exam_reduction(how)
    members: dict[tuple[str, str], list[int]] = defaultdict(list)
    alone = 0
    for index, record in enumerate(records):
        values = [str(record.get(key) or "") for key in keys]
        if not all(values):
            values, alone = [str(record.get("path") or index)], alone + 1
        members[(str(record.get("patient_id") or ""), "/".join(values))].append(index)
    if alone:
        logger.warning(
            "%d of %d images have no value of an exam key %s: each is scored as an exam of its own",
            alone,
            len(records),
            list(keys),
        )
    groups = list(members.values())
    exams = [exam for _, exam in members]
    if len(set(exams)) < len(exams):  # one key value in several patients: name the exam by its patient too
        exams = [f"{patient}/{exam}" for patient, exam in members]
    exam_scores = np.array([reduce(scores[group]) for group in groups])
    exam_labels = np.array([int(labels[group].max()) for group in groups])
    patients = [patient or patient_key(records[group[0]]) for (patient, _), group in members.items()]
    return exams, exam_scores, exam_labels, patients


def binary_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    patients: Sequence[str],
    threshold: float = 0.5,
    target_specificity: float = 0.9,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC with a patient-cluster bootstrap interval, and sensitivity / specificity (with intervals) at
    ``threshold`` and at the threshold reaching ``target_specificity``."""
    y_true, y_score = np.asarray(y_true).astype(np.int64), np.asarray(y_score, dtype=np.float64)
    auc = bootstrap_ci(roc_auc, y_true, y_score, n=n_bootstrap, seed=seed, groups=patients)
    values: dict[str, Any] = {
        "images": int(y_true.size),
        "positives": int(y_true.sum()),
        "patients": len(set(patients)),
        "auc": auc.estimate,
        "auc_low": auc.low,
        "auc_high": auc.high,
    }
    operating_points = {"": threshold, "_at_target": threshold_for_specificity(y_true, y_score, target_specificity)}
    for suffix, point in operating_points.items():
        for position, name in enumerate(("sensitivity", "specificity")):
            interval = bootstrap_ci(
                lambda t, s, p=point, i=position: sensitivity_specificity(t, s, p)[i],
                y_true,
                y_score,
                n=n_bootstrap,
                seed=seed,
                groups=patients,
            )
            values.update(
                {
                    f"{name}{suffix}": interval.estimate,
                    f"{name}{suffix}_low": interval.low,
                    f"{name}{suffix}_high": interval.high,
                }
            )
    values.update(
        threshold=threshold, target_specificity=target_specificity, threshold_at_target=operating_points["_at_target"]
    )
    return values


class ClassifierEvaluator:
    """Score held-out images with one checkpoint or an ensemble, and write the evaluation report.

    Args:
        members: the networks (:func:`load_checkpoints`); their softmax probabilities are averaged.
        dataloader: a non-shuffling loader over a :class:`~mammoxai.data.dataset.MammogramDataset` of labelled
            held-out images (unlabelled images, label -1, are left out).
        class_names: the classes, in output order.
        positive_class: the class scored as "positive" (default ``"malignant"``); every binary metric is this
            class against the rest. It matches a class regardless of case and spacing, as labels do
            (:class:`~mammoxai.data.dataset.LabelMap`): matched as written, ``--positive_class Malignant`` was
            refused where the label "Malignant" is the class "malignant".
        output_dir: the report folder.
        device, amp: where and how to run the networks.
        threshold: operating point on the positive-class probability.
        target_specificity: the specificity whose threshold is also reported.
        exam_keys: record fields that identify an exam (default the breast: ``study_uid`` and ``laterality``); one
            name is a list of one (:func:`~mammoxai.errors.parse_names`).
        exam_aggregation: ``max`` or ``mean`` of an exam's image scores.
        device_key: record field that names the X-ray system for the per-device breakdown.
        breakdown_keys: record fields that split the positive images into kinds (default ``lesion_types``); per
            field, each kind is scored against every negative image. A field no record has is skipped.
        metadata_label_space: the fields of the members' metadata heads (train.json's ``metadata_label_space``);
            with it, and members that have heads, the heads are scored against each image's header.
        qc_min_probability: the probability from which a disagreement with the header is a QC flag (as in
            ``configs/inference.json``).
        calibration_bins: bins of the reliability diagram.
        n_bootstrap, seed: bootstrap resamples and their seed.
        checkpoints: the checkpoint paths, for the record.
        command: the command that produced the report, for the record.
        eval_where: the selection the records were chosen by (``configs/evaluate.json``'s ``eval_where``), for
            the report's first line. An empty one scores every record of the manifest, and on the manifest a model
            was trained with ``holdout`` ``{}`` that includes its training and validation images: the report then
            says so and a warning is logged, instead of calling them held out.

    Raises:
        MammoXAIError: a setting no evaluation can use (``positive_class``, ``exam_keys``, ``exam_aggregation``,
            ``breakdown_keys``, ``output_dir``), before any image is scored.

    Example:
        members = load_checkpoints(MammoClassifier(num_classes=3), ["models/model.pt"])
        ClassifierEvaluator(members, loader, ["normal", "benign", "malignant"], output_dir="eval/classifier").run()
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        dataloader: torch.utils.data.DataLoader,
        class_names: Sequence[str],
        positive_class: str = "malignant",
        output_dir: str | Path = "eval/classifier",
        device: torch.device | str = "cpu",
        amp: bool = False,
        threshold: float = 0.5,
        target_specificity: float = 0.9,
        exam_keys: Sequence[str] | str = ("study_uid", "laterality"),
        exam_aggregation: str = "max",
        device_key: str = "xray_system",
        breakdown_keys: Sequence[str] | str = ("lesion_types",),
        metadata_label_space: MetadataLabelSpace | None = None,
        qc_min_probability: float = 0.9,
        calibration_bins: int = 10,
        n_bootstrap: int = 1000,
        seed: int = 0,
        checkpoints: Sequence[str] | str = (),
        command: str | None = None,
        eval_where: Mapping[str, Any] | None = None,
    ) -> None:
        self.class_names = list(class_names)
        self.positive = class_index(positive_class, self.class_names, "positive_class", "name one of class_names")
        self.members, self.dataloader = list(members), dataloader
        self.output_dir = check_output_path(output_dir, "evaluation_dir", "give a folder for the report")
        self.device, self.amp = torch.device(device), amp
        self.threshold, self.target_specificity = threshold, target_specificity
        self.exam_keys = parse_names(exam_keys, "exam_keys", ["study_uid", "laterality"])
        _exam_reduction(exam_aggregation)  # refused here, not after the whole test set was scored
        self.exam_aggregation, self.device_key = exam_aggregation, device_key
        self.breakdown_keys = parse_names(breakdown_keys, "breakdown_keys", ["lesion_types", "density"])
        self.metadata_label_space, self.qc_min_probability = metadata_label_space, qc_min_probability
        self.n_bins, self.n_bootstrap, self.seed = calibration_bins, n_bootstrap, seed
        self.checkpoints = [checkpoints] if isinstance(checkpoints, str) else [str(path) for path in checkpoints]
        self.command, self.eval_where = command, eval_where
        if eval_where is not None and not eval_where:
            logger.warning(
                "eval_where is empty: every record of the manifest is scored, including any image the checkpoint "
                'was trained or validated on; give the held-out records, e.g. --eval_where \'{"split": "test"}\', '
                "unless this manifest is another data set"
            )

    def run(self) -> dict[str, Any]:
        """Evaluate, write the report, and return its JSON document."""
        dataset = self.dataloader.dataset
        self._check_record_keys(dataset.data)
        probabilities, field_probabilities = predict_probabilities(self.members, self.dataloader, self.device, self.amp)
        labels = np.asarray(dataset.labels)
        labelled = labels >= 0
        if not labelled.any():
            raise MammoXAIError(
                "evaluation data set", "has no labelled image", "check label_key and the manifest's labels"
            )
        records = [record for record, keep in zip(dataset.data, labelled, strict=True) if keep]
        labels, probabilities = labels[labelled], probabilities[labelled]
        report = self._report(records, labels, probabilities)
        if field_probabilities and self.metadata_label_space is not None:
            fields = {name: values[labelled] for name, values in field_probabilities.items()}
            self._add_metadata_heads(report, records, fields)
        report.write(self.output_dir)
        logger.info("classifier evaluation written to %s", self.output_dir)
        return report.to_dict()

    def _binary(self, y_true: np.ndarray, y_score: np.ndarray, patients: Sequence[str]) -> dict[str, Any]:
        return binary_metrics(
            y_true, y_score, patients, self.threshold, self.target_specificity, self.n_bootstrap, self.seed
        )

    def _check_record_keys(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Refuse exam keys no record has, before any image is scored; warn of breakdown keys no record has.

        A missing exam key would group every image of a study (or every image) as one exam and report an exam AUC
        of the wrong exams. A missing device or breakdown column only empties its section (every image "unknown"),
        and the default ``xray_system`` column is absent from manifests built without the synthetic generator.
        """
        columns = set().union(*(record.keys() for record in records)) if records else set()
        missing = [key for key in self.exam_keys if key not in columns]
        if missing:
            raise MammoXAIError(
                f"exam_keys {missing}",
                "are columns of no evaluated image",
                f"use columns of the manifest: {sorted(columns)}",
            )
        for setting, key in [
            ("device_key", self.device_key),
            *(("breakdown_keys", key) for key in self.breakdown_keys),
        ]:
            if key not in columns:
                logger.warning(
                    "%s %r is a column of no evaluated image: its breakdown reports every image as unknown",
                    setting,
                    key,
                )

    def _sample_name(self) -> str:
        """What one scored sample is: a breast when a multi-view network fuses its views, otherwise an image."""
        return "breast" if isinstance(self.dataloader.dataset, MultiViewDataset) else "image"

    def _report(self, records: list[dict[str, Any]], labels: np.ndarray, probabilities: np.ndarray) -> Report:
        positive_name, sample = self.class_names[self.positive], self._sample_name()
        patients = [patient_key(record) for record in records]
        y_true, y_score = (labels == self.positive).astype(np.int64), probabilities[:, self.positive]
        members = len(self.members)
        scorer = f"an ensemble of {members} checkpoints (mean probability)" if members > 1 else "one checkpoint"
        held_out, everything = "held-out ", ""
        if self.eval_where is not None and not self.eval_where:
            held_out = ""
            everything = ", every record of the manifest (eval_where is empty: images training used are scored too)"
        report = Report(
            "Malignancy classifier evaluation",
            f"{len(records)} labelled {held_out}{sample}s of {len(set(patients))} patients{everything}, scored by "
            f"{scorer}. "
            f"Binary metrics are {positive_name} against the rest on the {positive_name} probability; intervals are "
            "95 % patient-cluster bootstrap intervals.",
            command=self.command,
            device=self.device,
        )
        image_values = {"level": sample, **self._binary(y_true, y_score, patients)}
        exams, exam_scores, exam_labels, exam_patients = aggregate_exams(
            records, y_score, y_true, self.exam_keys, self.exam_aggregation
        )
        exam_level = f"exam ({'+'.join(self.exam_keys)}, {self.exam_aggregation})"
        exam_values = {"level": exam_level, **self._binary(exam_labels, exam_scores, exam_patients)}
        report.add_table(
            "binary",
            [image_values, exam_values],
            title=f"{positive_name} vs rest",
            columns=[
                "level",
                *_BINARY_COLUMNS,
                "threshold_at_target",
                "sensitivity_at_target",
                "specificity_at_target",
            ],
        )
        report.add_text(
            "How to read it",
            f"An exam is the images of one patient sharing {' and '.join(self.exam_keys)}, scored by the "
            f"{self.exam_aggregation} of their scores and positive when any image is (its row counts exams as images). "
            "Sensitivity and "
            f"specificity are at the fixed threshold {self.threshold}; the _at_target columns at the lowest threshold "
            f"reaching specificity {self.target_specificity} on these images, chosen on the data it is applied to "
            "and so optimistic on small sets. report.json holds every interval."
            + (
                f" Each sample is a breast, its views {'+'.join(self.dataloader.dataset.views)} scored together by the "
                "network: the images columns count breasts."
                if sample == "breast"
                else ""
            ),
        )
        if len(self.class_names) > 2:
            rows = []
            for index, name in enumerate(self.class_names):
                interval = bootstrap_ci(
                    roc_auc,
                    labels == index,
                    probabilities[:, index],
                    n=self.n_bootstrap,
                    seed=self.seed,
                    groups=patients,
                )
                rows.append(
                    {
                        "class": name,
                        "images": int((labels == index).sum()),
                        "auc": interval.estimate,
                        "auc_low": interval.low,
                        "auc_high": interval.high,
                    }
                )
            macro = bootstrap_ci(roc_auc, labels, probabilities, n=self.n_bootstrap, seed=self.seed, groups=patients)
            rows.append(
                {
                    "class": "macro average",
                    "images": len(labels),
                    "auc": macro.estimate,
                    "auc_low": macro.low,
                    "auc_high": macro.high,
                }
            )
            report.add_table("per_class", rows, title="One-vs-rest AUC per class")
        ece, bins = calibration_bins(y_true, y_score, self.n_bins)
        report.add_values(
            "calibration", {"ece": ece, "bins": self.n_bins}, title=f"Calibration of the {positive_name} probability"
        )
        report.add_table("reliability_bins", bins, title="Reliability bins")
        device_rows = []
        devices = [str(record.get(self.device_key) or "unknown") for record in records]
        for name in sorted(set(devices)):
            chosen = np.asarray([device == name for device in devices])
            device_patients = [patient for patient, keep in zip(patients, chosen, strict=True) if keep]
            device_rows.append(
                {self.device_key: name, **self._binary(y_true[chosen], y_score[chosen], device_patients)}
            )
        report.add_table(
            "per_device",
            device_rows,
            title=f"Per device ({self.device_key})",
            columns=[self.device_key, *_BINARY_COLUMNS],
        )
        for key in self.breakdown_keys:
            if any(key in record for record in records):
                report.add_table(
                    f"positives_by_{key}",
                    self._positive_kinds(records, key, y_true, y_score, patients),
                    title=f"{positive_name} {sample}s by {key}, each kind against every non-{positive_name} {sample}",
                    columns=[key, *_BINARY_COLUMNS],
                )
        curves = {}
        for name, truth, score, values in (
            (sample, y_true, y_score, image_values),
            ("exam", exam_labels, exam_scores, exam_values),
        ):
            if np.unique(truth).size == 2:
                fpr, tpr, _ = roc_curve(truth, score)
                curves[name] = (fpr, tpr, values["auc"])
        if curves:
            report.add_figure("roc", roc_figure(curves, f"{positive_name} vs rest"), title="ROC")
        report.add_figure(
            "reliability", reliability_figure(bins, ece, f"{positive_name} probability"), title="Reliability diagram"
        )
        report.add_data("checkpoints", self.checkpoints)
        report.add_data(
            "scores",
            {
                "paths": [str(record["path"]) for record in records],
                "patients": patients,
                "labels": labels,
                "probabilities": probabilities,
            },
        )
        report.add_data("exam_scores", {"exams": exams, "labels": exam_labels, "scores": exam_scores})
        return report

    def _positive_kinds(
        self,
        records: Sequence[Mapping[str, Any]],
        key: str,
        y_true: np.ndarray,
        y_score: np.ndarray,
        patients: Sequence[str],
    ) -> list[dict[str, Any]]:
        """Binary metrics of each value of ``key`` among the positive images, against all negative images.

        A spiculated mass and a calcification cluster are both "malignant", but a classifier can find one and miss
        the other; the overall AUC averages them by their prevalence in the test set and hides which it is.
        """
        kinds = np.asarray([str(record.get(key) or "unspecified") for record in records])
        rows = []
        for kind in sorted(set(kinds[y_true == 1])):
            chosen = (y_true == 0) | (kinds == kind)
            kind_patients = [patient for patient, keep in zip(patients, chosen, strict=True) if keep]
            rows.append({key: kind, **self._binary(y_true[chosen], y_score[chosen], kind_patients)})
        return rows

    def _add_metadata_heads(
        self, report: Report, records: Sequence[Mapping[str, Any]], probabilities: Mapping[str, np.ndarray]
    ) -> None:
        """Per field, the heads' agreement with the header and the QC flags they would raise on these images.

        A flag is what the predictor raises (:class:`mammoxai.inference.MammogramPredictor`): the header gives the
        field, the heads predict another class, with probability at least ``qc_min_probability``.
        """
        space = self.metadata_label_space
        encoded = [space.encode(record_metadata(record)) for record in records]
        targets = {name: np.asarray([labels[name] for labels in encoded]) for name in space.fields}
        patients = [patient_key(record) for record in records]
        log_probabilities = {name: torch.as_tensor(values).log() for name, values in probabilities.items()}
        rows, _ = field_metrics(space, log_probabilities, targets, patients, self.n_bootstrap, self.seed)
        for row in rows:
            field_probabilities, truth = probabilities[row["field"]], targets[row["field"]]
            flagged = (
                (truth != UNKNOWN)
                & (field_probabilities.argmax(1) != truth)
                & (field_probabilities.max(1) >= self.qc_min_probability)
            )
            row.update(qc_flags=int(flagged.sum()), qc_flag_rate=float(flagged.sum() / max(row["images"], 1)))
        columns = ["field", "images", "accuracy", "accuracy_low", "accuracy_high", "balanced_accuracy"]
        report.add_table(
            "metadata_heads",
            rows,
            title="Metadata heads against the header",
            columns=[*columns, "majority_baseline", "qc_flags", "qc_flag_rate"],
        )
        report.add_text(
            "How to read the metadata heads",
            "accuracy is the share of images (with the field in their header) whose head predicts the header's class, "
            "with a patient-bootstrap 95 % interval; majority_baseline is what always predicting the commonest class "
            f"would score. qc_flags counts images whose head disagrees with the header at probability >= "
            f"{self.qc_min_probability}, the QC flags a prediction would carry: on correct headers, false alarms.",
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/evaluate.py --dataset_dir <studies> [--checkpoints '["models/model.pt"]'] [--key value ...]``

    Runs ``configs/train.json`` merged with ``configs/evaluate.json`` of the bundle, from any folder; a user error
    is one line on stderr and exit status 1.
    """
    return run_bundle_config(["train.json", "evaluate.json"], argv, program="python scripts/evaluate.py")
