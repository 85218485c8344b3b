"""The pieces ``configs/train.json`` needs beyond MONAI's engines and handlers: a patient-level split, class
weights for an imbalanced screening population, and a validation AUC that stays defined on small sets.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import ROCAUCMetric

from mammoxai.data.dataset import LabelMap, class_key, setting_mapping
from mammoxai.errors import MammoXAIError
from mammoxai.metrics import roc_auc

logger = logging.getLogger(__name__)

__all__ = [
    "patient_key",
    "selects",
    "held_out_patients",
    "patient_strata",
    "patient_split",
    "class_weights",
    "PresentClassesROCAUC",
    "warn_unknown_patients",
]


def warn_unknown_patients(unknown: int, total: int) -> None:
    """Warn that ``unknown`` of ``total`` images name no patient, so the split cannot keep their patient together.

    Such an image goes with its study (or alone), and a patient's other studies, priors included, can then fall on
    both sides of a patient split: validation would see patients it trained on and overstate every score.
    """
    if unknown:
        logger.warning(
            "%d of %d images name no patient: each is split with its study, or alone, so a patient's other studies "
            "can land on both sides and inflate validation; give a patient_id column (or join one with label_csv)",
            unknown, total,
        )  # fmt: skip


def patient_key(record: Mapping[str, Any]) -> str:
    """Who an image is of, as every patient-level step takes it: its ``patient_id``, else its study, else the
    image alone.

    The split, the held-out patients, the bootstrap clusters, the labelled draws and the domain-shift systems all
    key on this: a blank ``patient_id`` shared by every image that names none made them one "patient", and the CC
    and MLO of one study resampled as two independent images narrowed every interval.
    """
    return str(record.get("patient_id") or record.get("study_uid") or record["path"])


def selects(where: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """Whether ``record`` has every ``field: value`` of ``where``, values compared as text (``{"fold": 0}`` selects
    the manifest's ``0``); an empty ``where`` selects every record.

    The one reading of ``train.json``'s ``holdout`` (the records held out) and ``evaluate.json``'s ``eval_where``
    (the records scored, by default that ``holdout``): read otherwise by the two, a record matching one of two keys
    was held out of training and left out of the evaluation, neither trained nor scored.
    """
    return all(str(record.get(key)) == str(value) for key, value in where.items())


def held_out_patients(records: Sequence[Mapping[str, Any]], holdout: Mapping[str, Any]) -> set[str]:
    """The patients (:func:`patient_key`) with a record in ``holdout`` (:func:`selects`; an empty one holds none).

    None of their images may be trained or validated on, those outside the holdout included (a prior study left in
    the training split): the test would score a patient the model has seen.
    """
    return {patient_key(record) for record in records if holdout and selects(holdout, record)}


def _class_of(record: Mapping[str, Any], label_map: LabelMap, label_key: str) -> str:
    """A labelled record's class as the split stratifies and compares it: mapped, then folded by
    :func:`~mammoxai.data.dataset.class_key`, so one class however spelt."""
    return class_key(label_map(record[label_key]))


def patient_strata(
    by_patient: Mapping[str, Sequence[Mapping[str, Any]]], label_map: LabelMap, seed: int, label_key: str = "case_label"
) -> list[list[str]]:
    """The patients of each class in an order drawn by ``seed``: what the patient split and the experiments'
    labelled subsets (:func:`~mammoxai.training.experiments.labelled_subset`) take their patients from.

    A patient is of the rarest class among their images (rarest over all images, ties by name), so a patient with a
    normal and a malignant study counts as malignant and the rare class keeps every patient it has. Classes are
    compared as :func:`~mammoxai.data.dataset.class_key` folds them: one stratum per class, however spelt. The
    strata come in class order, each shuffled in turn by one ``random.Random(seed)``, so a draw is reproducible, and
    taking the first patients of each stratum nests: a larger share adds patients to a smaller one.

    Args:
        by_patient: :func:`patient_key` -> that patient's labelled records.
        label_map: applied to each record's label before stratifying, as training applies it.
        seed: seed of the shuffle.
        label_key: record field holding the label.

    Returns:
        one list of patient keys per class, in class order.
    """
    classes = {
        patient: [_class_of(record, label_map, label_key) for record in group] for patient, group in by_patient.items()
    }
    frequency = Counter(name for names in classes.values() for name in names)
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, names in sorted(classes.items()):
        strata[min(names, key=lambda name: (frequency[name], name))].append(patient)
    ordered = [strata[name] for name in sorted(strata)]
    rng = random.Random(seed)
    for patients in ordered:
        rng.shuffle(patients)
    return ordered


def patient_split(
    records: Sequence[Mapping[str, Any]],
    val_fraction: float = 0.2,
    seed: int = 0,
    label_key: str = "case_label",
    label_map: Mapping[str, str] | None = None,
    holdout: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split labelled records into training and validation sets by patient, stratified by class.

    All images of a patient (both breasts, both views, prior exams) fall on the same side: images of one
    patient share anatomy and acquisition, so splitting them would leak and inflate validation scores. Patients
    are stratified by their rarest class (rarest over all images, :func:`patient_strata`), and every class with at
    least two patients gets at least one validation patient, so the validation AUC of each class is defined.
    ``monai.data.partition_dataset_classes`` rounds such small classes down to none.

    Records without a label, and the held-out test records (``holdout``), are left out of both sets, and so are
    the other records of a held-out patient (a prior study in the training split of a patient whose current study
    is in the test split, as in CBIS-DDSM's published split): trained on, they would put the patient's anatomy in
    the model that the test split then scores as unseen. A record is held out when it has every ``field: value`` of
    ``holdout``, values compared as text (:func:`selects`), exactly the records ``configs/evaluate.json`` scores.

    Args:
        records: manifest records with ``patient_id`` (``study_uid`` or ``path`` stand in when it is missing).
        val_fraction: share of each class's patients used for validation.
        seed: seed of the shuffle, so a split is reproducible.
        label_key: record field holding the label.
        label_map: raw label -> class name (e.g. ``{"recalled_benign": "benign"}``), applied before stratifying as
            training applies it (:class:`~mammoxai.data.dataset.LabelMap`).
        holdout: field -> value of the records kept for the final test and never trained or validated on, e.g.
            ``{"split": "test"}`` for the test split of ``mammoxai.data.synth`` and VinDr-Mammo manifests; with
            several fields, the records that have all of them.

    Returns:
        ``(train_records, val_records)``.

    Raises:
        MammoXAIError: no record has the ``label_key`` column, or the labelled records are of fewer than two
            patients.
    """
    if not 0.0 < val_fraction < 1.0:
        raise MammoXAIError("val_fraction", f"is {val_fraction}", "use a fraction between 0 and 1, e.g. 0.2")
    if records and not any(label_key in record for record in records):  # a wrong column, not too few labels
        fix = "give a manifest with this column, set label_key to the column of labels, or join them with label_csv"
        raise MammoXAIError(label_key, f"none of the {len(records)} records has this column", fix)
    label_map = LabelMap(label_map)
    holdout = setting_mapping(holdout, "holdout")
    unseen = held_out_patients(records, holdout)
    candidates = [record for record in records if not (holdout and selects(holdout, record))]
    if unseen:
        kept = [record for record in candidates if patient_key(record) not in unseen]
        if len(kept) < len(candidates):
            logger.warning(
                "%d images of %d held-out patients are not themselves held out (e.g. a prior study in the training "
                "split): they are left out of training and validation, so the held-out patients stay unseen",
                len(candidates) - len(kept),
                len({patient_key(record) for record in candidates} & unseen),
            )
        candidates = kept
    labelled = [dict(record) for record in candidates if record.get(label_key) not in (None, "")]
    if holdout and not unseen:
        absent = [key for key in holdout if all(record.get(key) in (None, "") for record in records)]
        reason = f"no record has {absent}" if absent else "no record has these values"
        logger.warning(
            "holdout %s holds nothing out (%s): every image is used for training or validation and none is left "
            "for the final test; check the setting against the manifest's columns, or set holdout to {}",
            holdout, reason,
        )  # fmt: skip
    logger.info(
        "%d of %d records are held out (%s), %d have no %s",
        len(records) - len(candidates),
        len(records),
        holdout,
        len(candidates) - len(labelled),
        label_key,
    )
    by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in labelled:
        by_patient[patient_key(record)].append(record)
    warn_unknown_patients(sum(not record.get("patient_id") for record in labelled), len(labelled))
    if len(by_patient) < 2:
        problem = f"{len(labelled)} labelled images from {len(by_patient)} patient(s) cannot be split"
        raise MammoXAIError(label_key, problem, "add patients")
    strata = patient_strata(by_patient, label_map, seed, label_key)
    val_patients: set[str] = set()
    for patients in strata:
        if len(patients) >= 2:
            val_patients.update(patients[: min(len(patients) - 1, max(1, round(val_fraction * len(patients))))])
    if not val_patients:  # every class has a single patient: validate on the first
        val_patients.add(min(by_patient))
    train = [record for patient, group in sorted(by_patient.items()) if patient not in val_patients for record in group]
    val = [record for patient, group in sorted(by_patient.items()) if patient in val_patients for record in group]
    _warn_unvalidated_classes(_classes(train, label_map, label_key), _classes(val, label_map, label_key))
    logger.info(
        "patient split: %d images / %d patients for training, %d / %d for validation",
        len(train),
        len(by_patient) - len(val_patients),
        len(val),
        len(val_patients),
    )
    return train, val


def _classes(records: Sequence[Mapping[str, Any]], label_map: LabelMap, label_key: str) -> dict[str, str]:
    """The classes of labelled records: :func:`_class_of`'s folded key -> the class as the first record's mapped
    label spells it. Classes are compared folded but named as written: the folded key reads an underscore as a
    space, and a warning naming it spoke of a class "recalled benign" that no setting or label writes."""
    classes: dict[str, str] = {}
    for record in records:
        classes.setdefault(_class_of(record, label_map, label_key), label_map(record[label_key]))
    return classes


def _warn_unvalidated_classes(trained: Mapping[str, str], validated: Mapping[str, str]) -> None:
    """Warn of classes that training sees and validation does not: model selection cannot score them.

    The validation AUC (:class:`PresentClassesROCAUC`) averages the classes validation has; a class of one patient
    (a rare malignant class) is trained on only, so the saved model is chosen without regard to it, and with a
    single class left in validation no AUC is defined at all and ``model.pt`` stays the first validated epoch's.

    Args:
        trained, validated: folded class -> its spelling (:func:`_classes`), of the training and validation records.
    """
    missing = sorted(trained[key] for key in trained.keys() - validated.keys())
    if missing:
        logger.warning(
            "validation has no image of %s (too few patients of it to put one in validation): the validation AUC "
            "that picks model.pt leaves it out%s",
            missing,
            (
                ""
                if len(validated) > 1
                else "; with one class in validation it scores nothing and model.pt stays "
                "the first validated epoch's"
            ),
        )


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights for ``torch.nn.CrossEntropyLoss(weight=...)``, of mean 1 over the labelled images.

    A screening population is mostly normal; unweighted, the loss is minimised by rarely predicting the rare
    malignant class. Weighting each class by ``n / (k * n_c)`` (``n`` labelled images, ``k`` classes present, ``n_c``
    of class ``c``) gives every class the same total weight, ``n / k``, and the images a mean weight of 1, so the
    loss keeps the scale of the unweighted one. The classes' weights do not average 1: counts 90 / 8 / 2 give
    0.37, 4.17 and 16.67. Labels < 0 (unlabelled) are ignored; a class with no example gets weight 0.
    """
    counts = np.bincount([label for label in labels if label >= 0], minlength=num_classes).astype(np.float64)
    if counts.sum() == 0:
        raise MammoXAIError("training labels", "no labelled image", "check the manifest's label column")
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.as_tensor(weights, dtype=torch.float32)


class PresentClassesROCAUC(ROCAUCMetric):
    """Validation AUC for MONAI's ``IgniteMetricHandler``: :func:`mammoxai.metrics.roc_auc` of the data seen.

    That is the macro one-vs-rest ROC AUC over the classes that have both positive and negative examples.
    MONAI's own ``ROCAUCMetric`` returns NaN when any class lacks one, which on a small validation set is
    common, and a NaN key metric would stop ``CheckpointSaver`` from ever saving a better model (NaN compares
    false). With no class scorable the metric is 0.5, chance.

    Buffers, like ``ROCAUCMetric``, per-class probabilities and one-hot labels.
    """

    def aggregate(self, average: str | None = None) -> float:  # type: ignore[override]
        y_pred, y = self.get_buffer()
        value = roc_auc(y.argmax(dim=1).cpu().numpy(), y_pred.float().cpu().numpy())
        return 0.5 if math.isnan(value) else value
