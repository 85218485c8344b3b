"""Evaluate a metadata-pretrained network: per-field accuracy and same-patient matching on held-out patients.

The two claims of metadata pretraining (Litchfield et al., "Mammographic image metadata learning for model
pretraining and explainable predictions", SPIE Medical Imaging 2022, doi:10.1117/12.2626199) are that a
network learns the DICOM metadata from pixels alone (6 of 7 fields at 78-99 % accuracy) and that it tells
whether two images come from the same patient and study (> 93 % on balanced pairs). This module measures both
on images of patients the network never saw and writes a report (:class:`mammoxai.reports.Report`):

* per field: accuracy with a patient-level bootstrap 95 % interval, balanced accuracy, the majority-class
  baseline (what always guessing the commonest class scores), and for binned numeric fields the Spearman and
  Pearson correlations of true and predicted bin; a confusion matrix per field;
* matching: a balanced set of same / different pairs built deterministically from the manifest, scored by the
  cosine similarity of the ``match`` embeddings; ROC AUC with a bootstrap interval, and the accuracy at a
  threshold **chosen on a separate part** of the held-out patients (the pairs of the other part are scored);
  and the AUC against only those negatives whose two images share a field (the X-ray system by default), which
  shows whether matching recognises the patient or merely the system both images came from.

Run from the bundle root, with the manifest, ``val_fraction`` and ``seed`` of pretraining (so the split is
the same)::

    python -m monai.bundle run --config_file configs/evaluate_pretrain.json --dataset_dir <studies>

or from anywhere with ``python scripts/evaluate_pretrain.py --dataset_dir <studies>`` (:func:`main`).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve
from torch import nn
from tqdm import tqdm

from mammoxai.cli import run_bundle_config
from mammoxai.errors import MammoXAIError, check_output_path
from mammoxai.io.fields import UNKNOWN, BinnedField, MetadataLabelSpace
from mammoxai.metrics import (
    accuracy,
    balanced_accuracy,
    balanced_threshold,
    bootstrap_ci,
    confusion_matrix,
    pearson,
    roc_auc,
    spearman,
)
from mammoxai.reports import Report, confusion_matrix_figure, roc_figure
from mammoxai.training.pretrain import record_metadata, record_owner

logger = logging.getLogger(__name__)

__all__ = [
    "NetworkOutputs",
    "collect_outputs",
    "record_identity",
    "held_out_records",
    "matching_pairs",
    "split_patients",
    "field_metrics",
    "bootstrap_groups",
    "matching_metrics",
    "PretrainEvaluator",
    "main",
]


@dataclass
class NetworkOutputs:
    """What a :class:`~mammoxai.nets.MetadataNet` says about every image of a data set, in data-set order.

    Attributes:
        paths: the image paths, aligned with the rows below.
        logits: per field, (N, classes).
        match: (N, M) matching embeddings.
        z: (N, D) representations.
        z_tasks: per task, (N, D) task representations (``z`` is their sum).
    """

    paths: list[str]
    logits: dict[str, torch.Tensor]
    match: torch.Tensor
    z: torch.Tensor
    z_tasks: dict[str, torch.Tensor]


def collect_outputs(
    network: nn.Module, dataloader: torch.utils.data.DataLoader, device: torch.device | str = "cpu", amp: bool = False
) -> NetworkOutputs:
    """Run ``network`` in eval mode over ``dataloader`` (batches with an ``"image"`` and a ``"path"``).

    Outputs are gathered on the CPU as float32, one row per record of the loader's dataset, in its order.

    Raises:
        MammoXAIError: the loader yields nothing, or its images in another order than its dataset's records
            (a shuffling loader), which would pair every output with another image's labels.
    """
    device = torch.device(device)
    network = network.to(device).eval()
    paths: list[str] = []
    gathered: dict[str, list[torch.Tensor]] = defaultdict(list)
    with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        for batch in tqdm(dataloader, desc="representations", unit="batch", disable=None):
            outputs = network(batch["image"].to(device))
            paths.extend(batch["path"])
            for key in ("match", "z"):
                gathered[key].append(outputs[key].float().cpu())
            for group in ("logits", "z_tasks"):
                for name, value in outputs[group].items():
                    gathered[f"{group}/{name}"].append(value.float().cpu())
    if not paths:
        raise MammoXAIError("evaluation data set", "is empty", "check the manifest and the split")
    if paths != [str(record["path"]) for record in dataloader.dataset.data]:
        raise MammoXAIError("dataloader", "does not return the images in data-set order", "set shuffle to false")
    stacked = {key: torch.cat(values) for key, values in gathered.items()}
    return NetworkOutputs(
        paths=paths,
        logits={key.split("/", 1)[1]: value for key, value in stacked.items() if key.startswith("logits/")},
        match=stacked["match"],
        z=stacked["z"],
        z_tasks={key.split("/", 1)[1]: value for key, value in stacked.items() if key.startswith("z_tasks/")},
    )


def record_identity(record: Mapping[str, Any], label_space: MetadataLabelSpace) -> tuple[str | None, str | None]:
    """(patient, study) of a manifest record, as pretraining groups images (header or CSV columns); None where
    unknown."""
    return label_space.identity(record_metadata(record))


def bootstrap_groups(records: Sequence[Mapping[str, Any]], label_space: MetadataLabelSpace) -> list[str]:
    """The unit each record is resampled with by a patient-level bootstrap: its patient, else its study, else the
    image itself (:func:`~mammoxai.training.pretrain.record_owner`), as
    :func:`~mammoxai.training.pretrain.split_by_patient` divides them.

    An image that names neither patient nor study is its own unit of evidence. Under one shared empty id, all such
    images were a single "patient": on a data set without a patient column every resample was the whole set, so
    there was no interval to report (:func:`~mammoxai.metrics.bootstrap_ci` gives none over one cluster).
    """
    return [record_owner(record, label_space) for record in records]


def held_out_records(
    records: Sequence[Mapping[str, Any]], train_records: Sequence[Mapping[str, Any]], label_space: MetadataLabelSpace
) -> list[dict[str, Any]]:
    """``records`` without any image of a patient (or, where no patient is known, a study) of ``train_records``.

    The guarantee behind every held-out number: a patient seen in training (any view, any study) would let the
    network recognise anatomy rather than metadata, and would make same-patient matching trivial. An image that
    names neither patient nor study cannot be checked; it is kept, with a warning that says how many there are.

    Raises:
        MammoXAIError: no record is left.
    """
    seen = {value for record in train_records for value in record_identity(record, label_space)} - {None}
    identities = [record_identity(record, label_space) for record in records]
    unknown = sum(identity == (None, None) for identity in identities)
    if unknown:  # e.g. an eval manifest of PNG files whose patient ids are in a label CSV it was not joined with
        logger.warning(
            "%d of %d evaluation images name neither a patient nor a study, so nothing shows whether they belong to "
            "training patients; give their manifest a patient_id column (or join one with label_csv)",
            unknown,
            len(records),
        )
    kept = [
        dict(record) for record, identity in zip(records, identities, strict=True) if not seen.intersection(identity)
    ]
    if len(kept) < len(records):
        logger.warning(
            "%d of %d evaluation images belong to training patients and are left out",
            len(records) - len(kept),
            len(records),
        )
    if not kept:
        raise MammoXAIError(
            "evaluation split",
            f"all {len(records)} images belong to patients in the training split",
            "evaluate on other patients",
        )
    return kept


def split_patients(patients: Sequence[str], fraction: float, seed: int = 0) -> tuple[set[str], set[str]]:
    """Split distinct patients into two disjoint parts, the first holding ``fraction`` of them (seeded shuffle of
    the sorted ids, so the split depends on the ids, not on the order of the manifest)."""
    distinct = sorted(set(patients))
    random.Random(seed).shuffle(distinct)
    cut = int(round(fraction * len(distinct)))
    return set(distinct[:cut]), set(distinct[cut:])


def matching_pairs(
    identities: Sequence[tuple[str | None, str | None]], seed: int = 0, max_positives: int | None = None
) -> np.ndarray:
    """A balanced, deterministic set of same / different pairs of images.

    Positives are all pairs of distinct images of the same patient **and** study (other views: CC / MLO, left /
    right), optionally a seeded subsample of ``max_positives``; where the study is unknown all images of the
    patient count as one study, as in pretraining (:class:`~mammoxai.training.pretrain.MetadataDataset`). For
    each positive ``(i, j)`` one negative ``(i, k)`` is drawn with ``k`` an image of another patient, so
    negatives and positives share their anchor images and the pair set is exactly balanced. Images without a
    patient id take no part.

    Args:
        identities: (patient, study) per image (:func:`record_identity`).
        seed: seed of the subsample and of the negatives.
        max_positives: cap on positive pairs (None: all).

    Returns:
        (2P, 3) int array of rows ``(i, j, same)``, positives first.
    """
    rng = random.Random(seed)
    by_study: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, (patient, study) in enumerate(identities):
        if patient is not None:
            by_study[(patient, study or "")].append(index)
    positives = [
        (i, j) for key in sorted(by_study) for a, i in enumerate(by_study[key]) for j in by_study[key][a + 1 :]
    ]
    if max_positives is not None and len(positives) > max_positives:
        positives = sorted(rng.sample(positives, max_positives))
    images = [index for key in sorted(by_study) for index in by_study[key]]
    if len({identities[index][0] for index in images}) < 2:
        return np.zeros((0, 3), dtype=np.int64)  # one patient: no negative exists
    negatives = []
    for i, _ in positives:
        k = i
        while identities[k][0] == identities[i][0]:  # rejection sampling: a uniform image of another patient
            k = images[rng.randrange(len(images))]
        negatives.append((i, k))
    rows = [(i, j, 1) for i, j in positives] + [(i, k, 0) for i, k in negatives]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def field_metrics(
    space: MetadataLabelSpace,
    logits: Mapping[str, torch.Tensor],
    targets: Mapping[str, np.ndarray],
    patients: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Per-field metrics on the images whose header gives the field (unknown targets are left out).

    Returns:
        ``(rows, matrices)``: one row per field (``field``, ``type``, ``images``, ``accuracy`` with ``_low`` /
        ``_high``, ``balanced_accuracy``, ``majority_baseline``, and ``spearman`` / ``pearson`` for binned
        fields), and the confusion matrix of each field.
    """
    rows, matrices = [], {}
    groups = np.asarray(patients)
    for name in space.fields:
        if name not in logits:
            raise MammoXAIError(
                name, "is in the label space but the network has no head for it", "use the checkpoint's label space"
            )
        truth = np.asarray(targets[name])
        known = truth != UNKNOWN
        truth, predicted = truth[known], logits[name].argmax(1).numpy()[known]
        binned = isinstance(space.field(name), BinnedField)
        row: dict[str, Any] = {"field": name, "type": "binned" if binned else "categorical", "images": int(known.sum())}
        interval = bootstrap_ci(accuracy, truth, predicted, n=n_bootstrap, seed=seed, groups=groups[known])
        row.update(
            accuracy=interval.estimate,
            accuracy_low=interval.low,
            accuracy_high=interval.high,
            balanced_accuracy=balanced_accuracy(truth, predicted),
            majority_baseline=np.bincount(truth).max() / truth.size if truth.size else float("nan"),
        )
        if binned:
            row.update(spearman=spearman(truth, predicted), pearson=pearson(truth, predicted))
        rows.append(row)
        matrices[name] = confusion_matrix(truth, predicted, space.num_classes(name))
    return rows, matrices


def _pair_scores(match: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    embeddings = F.normalize(match.float(), dim=1)
    index = torch.as_tensor(pairs, dtype=torch.long)
    return (embeddings[index[:, 0]] * embeddings[index[:, 1]]).sum(1).numpy()


def _no_pairs_reason(patients: Sequence[str | None], test_part: set[str]) -> str:
    """Why the test part yields no pair, in words that say what to change: a PNG data set's CSV without a patient
    column, and a held-out set of one test patient, looked alike as "no same-study image pairs"."""
    if all(patient is None for patient in patients):
        return "no evaluation image names a patient (give a patient_id column, or join one with label_csv)"
    if len(test_part) < 2:
        return (
            f"the test part holds {len(test_part)} patient(s), and a negative pair needs two (hold out more "
            "patients: a larger val_fraction, or an eval_manifest)"
        )
    return "no test patient has two images of one study"


def matching_metrics(
    match: torch.Tensor,
    identities: Sequence[tuple[str | None, str | None]],
    threshold_fraction: float = 0.5,
    max_positives: int | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    strata: Sequence[int] | None = None,
    stratum_name: str = "stratum",
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """Same-patient-and-study matching by cosine similarity of the ``match`` embeddings.

    The held-out patients are split (:func:`split_patients`) into a *threshold* part and a *test* part, and
    balanced pairs are built within each (:func:`matching_pairs`). The threshold maximising balanced accuracy on
    the threshold part is applied to the test part, which gives an honest accuracy; AUC and the (optimistic)
    best balanced accuracy are reported on the test part too. When the threshold part yields no pair (too few
    patients), the test part's own best threshold is used and ``threshold_source`` says so.

    Same-study images share the X-ray system (and the day's exposure habits) while a random negative usually does
    not, so a matcher that only recognises the system scores well on balanced pairs. With ``strata`` (a class per
    image, e.g. the encoded X-ray system; :data:`~mammoxai.io.fields.UNKNOWN` where unknown) the test positives
    are also scored against only the negatives whose two images share a known class: the *within-stratum* AUC.

    Args:
        match: (N, M) matching embeddings.
        identities: (patient, study) per image.
        threshold_fraction: share of the patients on which the threshold is chosen.
        max_positives: cap on positive pairs per part (None: all).
        n_bootstrap: bootstrap resamples (patients are resampled).
        seed: seed of the split, the pairs and the bootstrap.
        strata: optional class per image for the within-stratum AUC.
        stratum_name: what ``strata`` is, for the report (``within_<stratum_name>_...`` keys).

    Returns:
        ``(values, roc)``: the metrics (``auc`` with ``_low`` / ``_high``, ``accuracy``, ``threshold``,
        ``threshold_source``, ``best_balanced_accuracy``, pair and patient counts; with ``strata`` also
        ``within_<stratum_name>_negatives`` and ``within_<stratum_name>_auc`` with ``_low`` / ``_high``), and the
        test ROC curve ``(fpr, tpr)`` — None, with ``values["note"]`` saying why, when there are no pairs to score.
    """
    patients = [patient for patient, _ in identities]
    threshold_part, test_part = split_patients([p for p in patients if p is not None], threshold_fraction, seed)

    def pairs_of(part: set[str]) -> np.ndarray:
        members = [index for index, patient in enumerate(patients) if patient in part]
        local = matching_pairs([identities[index] for index in members], seed=seed, max_positives=max_positives)
        return (
            np.column_stack([np.asarray(members, dtype=np.int64)[local[:, :2]], local[:, 2]]) if len(local) else local
        )

    test_pairs, threshold_pairs = pairs_of(test_part), pairs_of(threshold_part)
    values: dict[str, Any] = {
        "test_patients": len(test_part),
        "threshold_patients": len(threshold_part),
        "test_pairs": int(len(test_pairs)),
        "threshold_pairs": int(len(threshold_pairs)),
    }
    if not len(test_pairs):
        values["note"] = f"{_no_pairs_reason(patients, test_part)}: matching not evaluated"
        return values, None
    labels, scores = test_pairs[:, 2], _pair_scores(match, test_pairs)
    auc = bootstrap_ci(
        roc_auc, labels, scores, n=n_bootstrap, seed=seed, groups=[patients[i] for i in test_pairs[:, 0]]
    )
    best_threshold, best = balanced_threshold(labels, scores)
    if len(threshold_pairs):
        threshold, _ = balanced_threshold(threshold_pairs[:, 2], _pair_scores(match, threshold_pairs))
        source = f"best balanced accuracy on the pairs of {len(threshold_part)} separate held-out patients"
    else:
        threshold, source = best_threshold, "best balanced accuracy on the test pairs themselves (optimistic)"
    values.update(
        auc=auc.estimate,
        auc_low=auc.low,
        auc_high=auc.high,
        accuracy=accuracy(labels, (scores >= threshold).astype(np.int64)),
        threshold=threshold,
        threshold_source=source,
        best_balanced_accuracy=best,
    )
    if strata is not None:
        values.update(
            _within_stratum_auc(test_pairs, scores, patients, np.asarray(strata), stratum_name, n_bootstrap, seed)
        )
    fpr, tpr, _ = roc_curve(labels, scores)
    return values, (fpr, tpr)


def _within_stratum_auc(
    pairs: np.ndarray,
    scores: np.ndarray,
    patients: Sequence[str | None],
    strata: np.ndarray,
    name: str,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """AUC of the positive pairs against the negatives whose two images share a known stratum."""
    first, second, same = pairs[:, 0], pairs[:, 1], pairs[:, 2].astype(bool)
    hard = ~same & (strata[first] == strata[second]) & (strata[first] != UNKNOWN)
    values: dict[str, Any] = {f"within_{name}_negatives": int(hard.sum())}
    if not hard.any():
        values[f"within_{name}_note"] = f"no negative pair shares its {name}: not evaluated"
        return values
    kept = same | hard
    groups = [patients[i] for i in first[kept]]
    auc = bootstrap_ci(roc_auc, same[kept].astype(np.int64), scores[kept], n=n_bootstrap, seed=seed, groups=groups)
    values.update(
        {f"within_{name}_auc": auc.estimate, f"within_{name}_auc_low": auc.low, f"within_{name}_auc_high": auc.high}
    )
    return values


class PretrainEvaluator:
    """The ``evaluator`` of ``configs/evaluate_pretrain.json``: runs the network and writes the report.

    Args:
        network: the pretrained :class:`~mammoxai.nets.MetadataNet` with its weights loaded.
        label_space: the checkpoint's :class:`~mammoxai.io.fields.MetadataLabelSpace` (fitted vocabularies).
        dataloader: over a :class:`~mammoxai.data.dataset.MammogramDataset` of held-out images
            (:func:`held_out_records`), not shuffled.
        output_dir: where ``report.json``, ``report.md`` and the PNG figures go.
        device: where the network runs.
        amp: mixed precision on CUDA.
        threshold_fraction: share of the held-out patients on which the matching threshold is chosen.
        max_positive_pairs: cap on positive matching pairs per part, at least 1 (None: all same-study pairs;
            ``configs/evaluate_pretrain.json`` checks it before any image is read).
        matching_stratum: a field of ``label_space`` (default ``xray_system``) whose shared value makes a
            negative pair hard: matching is also scored against those negatives only. None: not scored.
        n_bootstrap: resamples of the bootstrap intervals (patients are resampled).
        seed: seed of the pair construction and of the bootstrap.
        data_description: what the held-out images are, for the report (e.g. that they are pretraining's
            validation split, which also picked the best epoch, so the numbers lean optimistic).
        command: the command line, recorded in the report.
    """

    def __init__(
        self,
        network: nn.Module,
        label_space: MetadataLabelSpace,
        dataloader: torch.utils.data.DataLoader,
        output_dir: str | Path,
        device: torch.device | str = "cpu",
        amp: bool = False,
        threshold_fraction: float = 0.5,
        max_positive_pairs: int | None = None,
        matching_stratum: str | None = "xray_system",
        n_bootstrap: int = 1000,
        seed: int = 0,
        data_description: str = "",
        command: str | None = None,
    ):
        if matching_stratum is not None and matching_stratum not in label_space.fields:
            raise MammoXAIError(
                "matching_stratum",
                f"{matching_stratum!r} is not a field of the checkpoint's label space {list(label_space.fields)}",
                "name one of them, or null to skip the within-stratum matching AUC",
            )
        self.network = network
        self.label_space = label_space
        self.dataloader = dataloader
        self.output_dir = check_output_path(output_dir, "output_dir", "give a folder for the report")
        self.device = torch.device(device)
        self.amp = amp
        self.threshold_fraction = threshold_fraction
        self.max_positive_pairs = max_positive_pairs
        self.matching_stratum = matching_stratum
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.data_description = data_description
        self.command = command

    def run(self) -> dict[str, Any]:
        """Evaluate, write the report, and return its JSON document."""
        records = list(self.dataloader.dataset.data)
        outputs = collect_outputs(self.network, self.dataloader, self.device, self.amp)
        identities = [record_identity(record, self.label_space) for record in records]
        encoded = [self.label_space.encode(record_metadata(record)) for record in records]
        targets = {
            name: np.array([labels[name] for labels in encoded], dtype=np.int64) for name in self.label_space.fields
        }
        rows, matrices = field_metrics(
            self.label_space,
            outputs.logits,
            targets,
            bootstrap_groups(records, self.label_space),
            self.n_bootstrap,
            self.seed,
        )
        matching, roc = matching_metrics(
            outputs.match,
            identities,
            self.threshold_fraction,
            self.max_positive_pairs,
            self.n_bootstrap,
            self.seed,
            strata=None if self.matching_stratum is None else targets[self.matching_stratum],
            stratum_name=self.matching_stratum or "stratum",
        )
        report = self._report(len(records), len({p for p, _ in identities}), rows, matrices, matching, roc)
        report.write(self.output_dir)
        logger.info("pretraining evaluation written to %s", self.output_dir)
        return report.to_dict()

    def _report(
        self,
        images: int,
        patients: int,
        rows: list[dict[str, Any]],
        matrices: Mapping[str, np.ndarray],
        matching: Mapping[str, Any],
        roc: tuple[np.ndarray, np.ndarray] | None,
    ) -> Report:
        about = f" ({self.data_description})" if self.data_description else ""
        report = Report(
            "Metadata pretraining evaluation",
            f"{images} held-out images of {patients} patients{about}, none of whom is in the training split. "
            "Accuracy intervals are 95 % patient-level bootstrap intervals; images whose header does not give a "
            "field are left out of that field.",
            command=self.command,
            device=self.device,
        )
        report.add_table(
            "fields",
            rows,
            title="Metadata fields",
            columns=[
                "field",
                "images",
                "accuracy",
                "accuracy_low",
                "accuracy_high",
                "balanced_accuracy",
                "majority_baseline",
                "spearman",
                "pearson",
            ],
        )
        report.add_values("matching", matching, title="Same patient and study matching")
        report.add_text(
            "How matching is scored",
            "Pairs are balanced: every pair of images of the same patient and study is a positive, and each "
            "positive's first image is paired with an image of another patient as a negative. Scores are cosine "
            "similarities of the matching embeddings. The accuracy uses a threshold chosen as stated in "
            "threshold_source; best_balanced_accuracy is the test pairs' own best, an optimistic upper bound. "
            "The within_<field> AUC scores the same positives against only the negatives whose two images share "
            "that field (both from one X-ray system, by default): images of one study always do, so an AUC that "
            "falls there shows how much of the matching rests on recognising the field rather than the patient.",
        )
        if roc is not None:
            curve = roc_figure({"same patient and study": (*roc, matching["auc"])}, "Matching ROC (test pairs)")
            report.add_figure("matching_roc", curve, title="Matching ROC")
        report.add_data(
            "confusion_matrices",
            {
                name: {"classes": self.label_space.class_names(name), "matrix": matrix}
                for name, matrix in matrices.items()
            },
        )
        for name, matrix in matrices.items():
            figure = confusion_matrix_figure(matrix, self.label_space.class_names(name), name)
            report.add_figure(f"confusion_{name}", figure, title=f"Confusion matrix: {name}")
        return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/evaluate_pretrain.py --dataset_dir <studies> [--checkpoint models/pretrained.pt] ...``"""
    return run_bundle_config("evaluate_pretrain.json", argv, program="python scripts/evaluate_pretrain.py")
