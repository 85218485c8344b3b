"""The pieces ``configs/pretrain.json`` needs beyond MONAI's engines and handlers: metadata pretraining.

Metadata pretraining (Litchfield et al., "Mammographic image metadata learning for model pretraining and
explainable predictions", SPIE Medical Imaging 2022, doi:10.1117/12.2626199) teaches a backbone, from pixels
alone, the DICOM header fields of a mammogram and which images come from the same patient and study. The
labels cost nothing, so a site can pretrain on its whole unlabelled archive. In order of use:

* :func:`load_records`: the manifest (optionally joined with a label CSV), every listed file checked to exist;
* :func:`select_fields`, :func:`split_by_patient`, :func:`fit_label_space`: the label space of the fields
  named in the config, a validation split by patient, and learned vocabularies (X-ray systems) fitted on the
  training split, refusing a field that no training image has;
* :class:`MetadataDataset`: images with their encoded field labels and their (patient, study) group, from the
  DICOM header or from CSV columns (:func:`record_metadata`), so PNG / PGM data sets work too;
* :class:`StudyBatchSampler` (+ :class:`SetSamplerEpoch`): batches built from whole studies, so every batch
  holds positives for the contrastive loss; shards batches over DistributedDataParallel processes;
* :class:`PretrainBatch`, :class:`LossTerms`, :class:`MetadataAccuracy`, :class:`MatchingAccuracy`: the engine
  glue — batch preparation (channels-last on a GPU), loss logging and validation metrics;
* :class:`CheckpointInfo`, :class:`TrainerState`, :class:`Resume`, :func:`load_pretrained`: checkpoints that say
  what their heads mean, resumption of an interrupted run (its AMP loss scale included), and loading the result for
  evaluation or fine-tuning.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import CommonKeys
from torch.utils.data import Sampler

import mammoxai
from mammoxai.data.cache import preprocess_all
from mammoxai.data.dataset import MammogramDataset
from mammoxai.data.manifest import join_labels, read_manifest, record_header, report_unusable
from mammoxai.errors import MammoXAIError, check_output_path, parse_flag, parse_names
from mammoxai.io.fields import UNKNOWN, BinnedField, CategoricalField, MetadataLabelSpace
from mammoxai.io.preprocess import check_field_of_view, check_intensity_scaling, grid_shape
from mammoxai.nets.files import read_torch_file, recorded_input_setting
from mammoxai.nets.metadata_net import MetadataNet
from mammoxai.training.classification import warn_unknown_patients
from mammoxai.training.losses import PretrainingLoss

logger = logging.getLogger(__name__)

__all__ = [
    "load_records",
    "record_metadata",
    "record_owner",
    "select_fields",
    "split_by_patient",
    "split_fingerprint",
    "fit_label_space",
    "MetadataDataset",
    "StudyBatchSampler",
    "SetSamplerEpoch",
    "PretrainBatch",
    "LossTerms",
    "MetadataAccuracy",
    "MatchingAccuracy",
    "validation_metrics",
    "CheckpointInfo",
    "TrainerState",
    "Resume",
    "latest_checkpoint",
    "log_to_file",
    "PretrainedModel",
    "load_pretrained",
]

PRETRAIN_COMMAND = "python -m monai.bundle run --config_file configs/pretrain.json --dataset_dir <studies>"


# -- data ---------------------------------------------------------------------------------------------------------
def load_records(
    manifest: str | os.PathLike,
    label_csv: str | os.PathLike | None = None,
    id_column: str | Sequence[str] = "sop_uid",
    column_map: Mapping[str, str] | None = None,
    strict: bool = True,
    image_size: int | Sequence[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    file_key: str = "content",
    intensity_scaling: str = "breast_percentiles",
    field_of_view: str = "breast",
) -> list[dict[str, Any]]:
    """The manifest's records, joined with ``label_csv`` when given, with every image file checked to exist and,
    given ``image_size``, to be readable.

    Checking up front turns a moved, deleted or damaged file into one error listing every such file before
    training starts, instead of a crash in a data-loader worker hours later. The readability check preprocesses
    each image into ``cache_dir`` (:func:`~mammoxai.data.cache.preprocess_all`), the work the first epoch would
    do; under ``torchrun`` each process checks its share of the images.

    Args:
        manifest: a manifest CSV (:mod:`mammoxai.data.manifest`).
        label_csv: optional CSV of per-image fields (patient, laterality, view, density, ...) joined to the
            records, see :func:`mammoxai.data.manifest.join_labels`.
        id_column: the CSV column(s) that identify an image.
        column_map: renames CSV columns to manifest fields before joining.
        strict: missing or unreadable files and unmatched CSV rows are an error (True) or are skipped with a
            warning.
        image_size: the model grid of the run; None checks that files exist, not that they can be read.
        cache_dir: the run's preprocessed-image cache, filled by the check; None decodes each image once more.
        num_workers: processes that read the images, as the run's DataLoader has.
        file_key: how the cache recognises a file, as the run's dataset has it (``"content"`` or ``"stat"``), so
            the check fills the entries the first epoch reads.
        intensity_scaling: how the run's dataset scales intensities (:func:`~mammoxai.io.preprocess.prepare_image`),
            for the same reason; it also decides what is readable (``"display_range"`` needs a file that fixes a
            value range).
        field_of_view: what the run's dataset puts on the grid (:func:`~mammoxai.io.preprocess.prepare_image`), for
            the same reason.

    Raises:
        MammoXAIError: no manifest, missing or unreadable files (``strict``), a CSV that cannot be joined, no
            image left, or an unknown ``intensity_scaling`` or ``field_of_view``.
    """
    manifest, strict = Path(manifest), parse_flag(strict, "strict")
    check_intensity_scaling(intensity_scaling)
    check_field_of_view(field_of_view)
    if manifest.parent.is_file():  # dataset_dir names a file: "<file>/manifest.csv: not found" would hide that
        raise MammoXAIError(
            manifest.parent, "is a file, not a folder of images", "set dataset_dir to the images' folder"
        )
    if not manifest.is_file():
        raise MammoXAIError(
            manifest,
            "manifest not found",
            "write one with `python -m mammoxai.data.manifest <image folder> --out <image folder>/manifest.csv`, "
            "or set dataset_dir / manifest",
        )
    records = read_manifest(manifest)
    if label_csv:
        records = join_labels(records, label_csv, id_column, column_map=column_map, strict=strict)
    exists = [Path(record["path"]).is_file() for record in records]
    missing = [str(record["path"]) for record, present in zip(records, exists, strict=True) if not present]
    report_unusable(manifest, "listed images do not exist", missing, strict, "restore them or rebuild the manifest")
    records = [record for record, present in zip(records, exists, strict=True) if present]
    if records and image_size is not None:
        grid = grid_shape(image_size)
        settings = (file_key, intensity_scaling, field_of_view)
        records = _readable(manifest, records, grid, cache_dir, num_workers, strict, *settings)
    if not records:
        raise MammoXAIError(manifest, "lists no existing image", "check the manifest's path column")
    return records


def _readable(
    manifest: Path,
    records: list[dict[str, Any]],
    image_size: tuple[int, int],
    cache_dir: str | os.PathLike | None,
    num_workers: int,
    strict: bool,
    file_key: str,
    intensity_scaling: str,
    field_of_view: str,
) -> list[dict[str, Any]]:
    """``records`` whose images preprocess onto ``image_size`` under ``intensity_scaling`` and ``field_of_view``;
    the others reported (:func:`report_unusable`)."""
    rank, world = idist.get_rank(), idist.get_world_size()
    mine = [str(record["path"]) for record in records[rank::world]]
    failures = preprocess_all(mine, image_size, cache_dir, num_workers, file_key, intensity_scaling, field_of_view)
    if world > 1:
        failures = {path: reason for share in idist.all_gather(failures) for path, reason in share.items()}
    readable = len(records) - len(failures)
    logger.info("%d of %d listed images read and preprocessed onto %s", readable, len(records), image_size)
    unreadable = [f"{path} ({reason})" for path, reason in failures.items()]
    fix = "replace them or rebuild the manifest"
    report_unusable(manifest, "listed images cannot be read", unreadable, strict, fix)
    return [record for record in records if str(record["path"]) not in failures]


def record_metadata(record: Mapping[str, Any]) -> dict[str, Any]:
    """The header a record stands for: its columns, with the known ones also under their DICOM keywords.

    :class:`~mammoxai.io.fields.MetadataLabelSpace` fields name DICOM keywords (``KVP``, ``ViewPosition``);
    manifest columns carry them under short names (``kvp``, ``view``, see
    :data:`mammoxai.data.manifest.HEADER_COLUMNS`), and a joined CSV may add columns no header has
    (``density``). Both are visible here, so a field may read a header keyword or any CSV column.
    """
    return {**{key: value for key, value in record.items() if value is not None}, **record_header(record)}


def select_fields(
    fields: Sequence[str] | Mapping[str, float] | str,
    config_file: str | os.PathLike | None = None,
    extra_fields: Sequence[Mapping[str, Any]] = (),
    setting: str = "fields",
) -> MetadataLabelSpace:
    """The label space of ``fields`` (in head order), before any vocabulary is learned.

    Args:
        fields: names of the fields to pretrain on: a list, one name (:func:`~mammoxai.errors.parse_names`), or the
            keys of a field → loss weight dict.
        config_file: the field definitions (``configs/metadata_fields.json`` format); default the bundle's.
        extra_fields: more definitions in the same format, added to or replacing (by name) those of the file,
            e.g. ``{"name": "density", "type": "categorical", "keys": ["density"], "classes": ["A", "B", "C", "D"]}``
            for a density column of a label CSV, or a re-binned ``kvp``.
        setting: the config setting ``fields`` comes from, as the command line names it (``metadata_fields`` in
            train.json and inference.json), named in the errors.

    Raises:
        MammoXAIError: no field, a field named twice, or a field defined nowhere.
    """
    source = config_file or "configs/metadata_fields.json"
    space = MetadataLabelSpace.from_file(config_file) if config_file else MetadataLabelSpace.default()
    config = space.to_config()
    definitions = {entry["name"]: entry for entry in config["fields"]}
    for entry in extra_fields:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            fix = f"give field definitions with a 'name', as in {source}"
            raise MammoXAIError("extra_fields", f"holds {entry!r}", fix)
        definitions[entry["name"]] = dict(entry)
    names = list(fields) if isinstance(fields, Mapping) else parse_names(fields, setting, ["view", "thickness"])
    if not names:
        raise MammoXAIError(setting, "is empty", f"name at least one of {list(definitions)}")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise MammoXAIError(setting, f"names {repeated} more than once", "list each field once")
    unknown = [name for name in names if name not in definitions]
    if unknown:
        # pretrain.json adds definitions with extra_fields; train.json and inference.json only read them from a file
        elsewhere = (
            "define them in extra_fields" if setting == "fields" else "pass a metadata_fields_file defining them"
        )
        raise MammoXAIError(
            setting,
            f"names {unknown}, which {source} does not define",
            f"use fields among {list(definitions)}, or {elsewhere}",
        )
    return MetadataLabelSpace.from_config({**config, "fields": [definitions[name] for name in names]}, source=source)


def record_owner(record: Mapping[str, Any], label_space: MetadataLabelSpace) -> str:
    """Whose image a record is, as every pretraining step takes it: its patient (the label space's identity, e.g.
    ``PatientID`` or a CSV ``patient_id`` column), else its study, else the image itself.

    The validation split (:func:`split_by_patient`), its fingerprint and the evaluation's bootstrap units
    (:func:`~mammoxai.training.evaluate_pretrain.bootstrap_groups`) all key on this, so an evaluation resamples
    the units pretraining kept apart. Fine-tuning keys on manifest columns instead
    (:func:`~mammoxai.training.classification.patient_key`): its records need no label space.
    """
    patient, study = label_space.identity(record_metadata(record))
    return patient or study or str(record["path"])


def split_fingerprint(train_patients: Iterable[str]) -> str:
    """A short hash of the patients of a training split (as :func:`split_by_patient` identifies them): recorded in
    the pretraining checkpoint so that an evaluation can tell whether it re-made the same split, without the
    checkpoint holding a patient id."""
    return hashlib.sha256("\n".join(sorted(set(train_patients))).encode("utf-8")).hexdigest()[:16]


def split_by_patient(
    records: Sequence[Mapping[str, Any]],
    label_space: MetadataLabelSpace,
    val_fraction: float = 0.2,
    seed: int = 0,
    pretrained_split: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and validation records, with all images of a patient on the same side.

    Images of one patient share anatomy, X-ray system and often exposure, so validating on a patient seen in
    training would overstate every field's accuracy and make same-patient matching trivial. The patient is
    the label space's patient identity (``PatientID``, or a CSV ``patient_id`` column), else the study, else
    the image itself.

    Args:
        records: manifest records.
        label_space: gives the patient identity keys.
        val_fraction: share of patients held out (at least one, and at least one left for training).
        seed: seed of the shuffle, so a split is reproducible.
        pretrained_split: the split a pretraining checkpoint records (:attr:`PretrainedModel.split`). An
            evaluation of that checkpoint must hold out what pretraining held out: a split whose training
            patients differ (another seed, val_fraction or manifest) would report training patients as held out.

    Raises:
        MammoXAIError: ``val_fraction`` outside (0, 1), fewer than two patients, or a split other than
            ``pretrained_split``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise MammoXAIError("val_fraction", f"is {val_fraction}", "use a fraction between 0 and 1, e.g. 0.2")
    patients_named = [label_space.identity(record_metadata(record))[0] for record in records]
    warn_unknown_patients(sum(patient is None for patient in patients_named), len(records))
    owners = [record_owner(record, label_space) for record in records]
    patients = sorted(set(owners))
    if len(patients) < 2:
        problem = f"{len(records)} images come from {len(patients)} patient(s)"
        raise MammoXAIError("validation split", problem, "use images of at least two patients")
    random.Random(seed).shuffle(patients)
    held_out = set(patients[: min(len(patients) - 1, max(1, round(val_fraction * len(patients))))])
    train = [dict(record) for record, owner in zip(records, owners, strict=True) if owner not in held_out]
    val = [dict(record) for record, owner in zip(records, owners, strict=True) if owner in held_out]
    logger.info(
        "split by patient: %d images / %d patients for training, %d / %d for validation",
        len(train),
        len(patients) - len(held_out),
        len(val),
        len(held_out),
    )
    if pretrained_split is not None and pretrained_split["fingerprint"] != split_fingerprint(set(patients) - held_out):
        raise MammoXAIError(
            "validation split",
            f"is not the one pretraining held out: pretraining trained on {_described(pretrained_split)}, this split "
            f"trains on {len(patients) - len(held_out)} patients with seed {seed} and val_fraction {val_fraction}, "
            "so its held-out images could be training images",
            f"pass {_split_options(pretrained_split)} with the pretraining manifest",
        )
    return train, val


def _described(split: Mapping[str, Any]) -> str:
    """A recorded split (:class:`CheckpointInfo`) in words, for the errors that refuse another split."""
    return (
        f"{split['train_patients']} patients split with seed {split['seed']} and val_fraction {split['val_fraction']}"
    )


def _split_options(split: Mapping[str, Any]) -> str:
    """The command-line options that re-make a recorded split (with the manifest it was made from)."""
    return f"--seed {split['seed']} --val_fraction {split['val_fraction']}"


def fit_label_space(label_space: MetadataLabelSpace, records: Sequence[Mapping[str, Any]]) -> MetadataLabelSpace:
    """``label_space`` with its learned vocabularies fitted on ``records`` (the training split), checked usable.

    Logs, per field, how many images carry a label and how they spread over the classes, and warns about a
    field with a single class (its head has nothing to learn).

    Raises:
        MammoXAIError: a field has no known value in any of ``records`` — it would train a head on nothing.
    """
    headers = [record_metadata(record) for record in records]
    for name in label_space.fields:
        field = label_space.field(name)
        if not any(_has_label(field, header) for header in headers):
            _refuse_unlabelled(name, field, headers)
    fitted = label_space.fit(headers)
    for name in fitted.fields:
        counts = Counter(fitted.encode(header)[name] for header in headers)
        known = len(headers) - counts.pop(UNKNOWN, 0)
        spread = ", ".join(f"{fitted.decode(name, index)}: {count}" for index, count in sorted(counts.items()))
        logger.info("field %s: %d of %d training images labelled (%s)", name, known, len(headers), spread)
        if len(counts) < 2:
            logger.warning("field %s has a single class in the training images; its head learns nothing", name)
    return fitted


def _refuse_unlabelled(name: str, field: CategoricalField | BinnedField, headers: Sequence[Mapping[str, Any]]) -> None:
    """Say why no training image gives field ``name`` a class: the column is absent, or none of its values is one of
    the field's classes (or in its range), e.g. densities written "3" for a field of classes A-D.

    Raises:
        MammoXAIError: always.
    """
    source = " + ".join(field.keys)
    values = Counter(str(value) for value in (field.raw(header) for header in headers) if value is not None)
    if not values:
        problem = f"is absent from all {len(headers)} training images (read from {source})"
        raise MammoXAIError(
            f"field {name!r}", problem, "remove it from 'fields' in the config, or supply its values in a label CSV"
        )
    shown = ", ".join(repr(value) for value, _ in values.most_common(5))
    if isinstance(field, BinnedField):
        expected = f"a number from {field.valid_range[0]:g} to {field.valid_range[1]:g}"
        fix = "correct the column, or the field's 'range' (in extra_fields)"
    else:
        expected = f"one of its classes {list(field.class_names)}"
        fix = "map them onto the classes with 'aliases' in the field's definition (extra_fields), or correct the column"
    problem = f"has values in {sum(values.values())} training images ({source}: {shown}), but none is {expected}"
    raise MammoXAIError(f"field {name!r}", problem, fix)


def _has_label(field: CategoricalField | BinnedField, header: Mapping[str, Any]) -> bool:
    """Whether ``header`` gives ``field`` a class (for a vocabulary not learned yet: any value at all)."""
    if isinstance(field, CategoricalField) and field.classes is None:
        return field.value(header) is not None
    return field.encode(header) != UNKNOWN


class MetadataDataset(MammogramDataset):
    """:class:`~mammoxai.data.dataset.MammogramDataset` samples with metadata labels and a study group added.

    Each sample also holds ``fields``: field → class index (-1 where the header or CSV does not say), and
    ``group``: an integer shared by the images of one (patient, study) — the positives of the contrastive
    loss — or -1 when neither patient nor study is known. Labels are computed from the records alone
    (:func:`record_metadata`), so no image is read until it is loaded. When the records give a patient but no
    study (typical of PNG data sets with a CSV), all images of the patient form one group.

    Args:
        records: manifest records (a training or validation split).
        label_space: the fitted label space (:func:`fit_label_space`).
        image_size: (h, w) of the model grid.
        cache_dir: preprocessed-tensor cache, see :class:`~mammoxai.data.cache.PreprocessedCache`.
        transform: applied to each sample dict (e.g. intensity augmentation with ``keys="image"``).
        file_key: how the cache recognises a file, ``"content"`` or ``"stat"``.
        intensity_scaling: how :func:`~mammoxai.io.preprocess.prepare_image` scales intensities; the checkpoint
            records it (:class:`CheckpointInfo`), so evaluations scale the images the same way.
        field_of_view: what :func:`~mammoxai.io.preprocess.prepare_image` puts on the grid; recorded the same way.

    Example:
        dataset = MetadataDataset(train_records, label_space, (512, 416), cache_dir="cache/")
        sample = dataset[0]    # {"image": (1, 512, 416), "fields": {"view": 1, "kvp": -1, ...}, "group": 3, ...}
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        label_space: MetadataLabelSpace,
        image_size: int | Sequence[int],
        cache_dir: str | os.PathLike | None = None,
        transform: Callable | None = None,
        file_key: str = "content",
        intensity_scaling: str = "breast_percentiles",
        field_of_view: str = "breast",
    ) -> None:
        super().__init__(
            records,
            image_size,
            cache_dir=cache_dir,
            transform=transform,
            file_key=file_key,
            intensity_scaling=intensity_scaling,
            field_of_view=field_of_view,
        )
        self.label_space = label_space
        headers = [record_metadata(record) for record in self.data]
        self.targets: list[dict[str, int]] = [label_space.encode(header) for header in headers]
        identities = [label_space.identity(header) for header in headers]
        known = sorted({identity for identity in identities if identity != (None, None)}, key=str)
        index = {identity: position for position, identity in enumerate(known)}
        self.groups: list[int] = [index.get(identity, UNKNOWN) for identity in identities]

    def _transform(self, index: int) -> dict[str, Any]:
        sample = super()._transform(index)
        return {**sample, "fields": dict(self.targets[index]), "group": self.groups[index]}


class StudyBatchSampler(Sampler[list[int]]):
    """Batches made of whole studies, so that every image has positives for the contrastive loss.

    Each epoch the images of every study (group) are shuffled and cut into chunks of ``views_per_study``
    (a lone leftover joins the previous chunk), the chunks are shuffled, and batches of exactly
    ``batch_size`` are filled with whole chunks, each time the first of the next few chunks that still fits;
    only when none fits is a chunk split across two batches. Every image is seen once per epoch and the
    number of batches is the same every epoch, as ignite needs. Images of unknown group are chunks of one
    (negatives only), which also fill the gaps odd chunks leave.

    With ``num_replicas`` > 1 (DistributedDataParallel) the same epoch's batches are dealt out in turn, like
    ``torch.utils.data.DistributedSampler``, repeating the first ones so every process gets as many.

    Args:
        groups: per dataset index, its group id (-1 unknown), e.g. :attr:`MetadataDataset.groups`.
        batch_size: images per batch (per process).
        views_per_study: images of one study kept together; 2 pairs e.g. a CC with an MLO view.
        shuffle: reshuffle each epoch (set the epoch with :meth:`set_epoch`, see :class:`SetSamplerEpoch`).
        seed: seed shared by all processes.
        drop_last: drop a final incomplete batch.
        num_replicas: number of processes; rank: this process.

    Example:
        sampler = StudyBatchSampler(dataset.groups, batch_size=32, views_per_study=2)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=4)
    """

    _lookahead = 32  # how many chunks ahead one that fits is looked for: bounds the cost of packing

    def __init__(
        self,
        groups: Sequence[int],
        batch_size: int,
        views_per_study: int = 2,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 2:
            raise MammoXAIError("batch_size", f"is {batch_size}", "use at least 2 so a batch can hold a pair")
        if not 2 <= views_per_study <= batch_size:
            fix = f"use 2 to batch_size ({batch_size}), e.g. 2 for a CC and an MLO view"
            raise MammoXAIError("views_per_study", f"is {views_per_study}", fix)
        if not 0 <= rank < num_replicas:
            raise MammoXAIError("sampler rank", f"is {rank} of {num_replicas} processes", "use 0 <= rank < replicas")
        members: dict[int, list[int]] = defaultdict(list)
        alone: list[list[int]] = []
        for index, group in enumerate(groups):
            if group == UNKNOWN:
                alone.append([index])
            else:
                members[group].append(index)
        self.studies: list[list[int]] = [members[group] for group in sorted(members)] + alone
        self.num_images = len(groups)
        self.batch_size, self.views_per_study = batch_size, views_per_study
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle differently (but identically in every process) in each epoch."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch, before they are dealt out to processes."""
        rng = random.Random(f"{self.seed}/{self.epoch}")
        chunks = []
        size = self.views_per_study
        for study in self.studies:
            study = list(study)
            if self.shuffle:
                rng.shuffle(study)
            pieces = [study[start : start + size] for start in range(0, len(study), size)]
            if len(pieces) > 1 and len(pieces[-1]) == 1:  # a lone image joins the study's previous piece
                lone = pieces.pop()
                pieces[-1] += lone
            chunks += pieces
        if self.shuffle:
            rng.shuffle(chunks)
        batches = self._pack(chunks)
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _pack(self, chunks: list[list[int]]) -> list[list[int]]:
        batches, batch, pending = [], [], deque(chunks)
        while pending:
            space = self.batch_size - len(batch)
            ahead = enumerate(islice(pending, self._lookahead))
            fitting = next((position for position, chunk in ahead if len(chunk) <= space), None)
            if fitting is not None:
                batch += pending[fitting]
                del pending[fitting]
            else:  # split the next chunk: its first images end this batch, the rest starts the next
                chunk = pending.popleft()
                batch += chunk[:space]
                pending.appendleft(chunk[space:])
            if len(batch) == self.batch_size:
                batches.append(batch)
                batch = []
        return batches + [batch] if batch else batches

    def __len__(self) -> int:
        total = self.num_images // self.batch_size if self.drop_last else math.ceil(self.num_images / self.batch_size)
        return math.ceil(total / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        if not batches:
            return iter([])
        wanted = len(self) * self.num_replicas
        batches = (batches * math.ceil(wanted / len(batches)))[:wanted]
        return iter(batches[self.rank :: self.num_replicas])


class SetSamplerEpoch:
    """Calls ``sampler.set_epoch(epoch)`` when each epoch starts, so each epoch (also after resuming) is
    shuffled anew and alike in every process. MONAI's workflows do this only for a ``DistributedSampler``
    passed as ``sampler``, not for a batch sampler.
    """

    def __init__(self, sampler: StudyBatchSampler) -> None:
        self.sampler = sampler

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.sampler.set_epoch(engine.state.epoch)


# -- engine glue ----------------------------------------------------------------------------------------------
class PretrainBatch:
    """MONAI ``prepare_batch``: the images, and ``{"fields": {field: (B,)}, "group": (B,)}`` as targets.

    Args:
        channels_last: move images to channels-last memory format, for a network converted with
            ``network.to(memory_format=torch.channels_last)``: faster convolutions with tensor cores on a GPU.
    """

    def __init__(self, channels_last: bool = False) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        move = {"device": device, "non_blocking": non_blocking}
        image = batchdata["image"].to(memory_format=self.memory_format, **move, **kwargs)
        fields = {name: value.to(**move) for name, value in batchdata["fields"].items()}
        return image, {"fields": fields, "group": batchdata["group"].to(**move)}


class LossTerms:
    """``output_transform`` for MONAI's stats handlers: the total loss and each part as numbers.

    Logged per iteration, the parts show which field is learned and which is stuck (a field whose loss stays
    at ``log(classes)`` learns nothing), which the total alone hides.
    """

    def __init__(self, loss: PretrainingLoss) -> None:
        self.loss = loss

    def __call__(self, output: Mapping[str, Any]) -> dict[str, float]:
        with torch.no_grad():
            terms = self.loss.terms(output[CommonKeys.PRED], output[CommonKeys.LABEL])
        return {name: float(value) for name, value in terms.items()}


class MetadataAccuracy(Metric):
    """Accuracy of metadata heads over an evaluation run, averaged over ``fields`` (macro).

    Images whose label of a field is unknown are left out of that field; a field with no labelled image in
    the run is left out of the average, and with none left the result is 0 (not NaN, which would stop
    ``CheckpointSaver`` from ever keeping a best model). Reads ``pred["logits"]`` and ``label["fields"]`` of the
    engine output of a :class:`~mammoxai.nets.MetadataNet` evaluator. Sums are reduced across
    DistributedDataParallel processes.

    Args:
        fields: the fields averaged; one field gives that field's accuracy.
        output_transform: ignite's hook on the engine output.
        device: where the running sums live (the GPU under NCCL).
    """

    required_output_keys = (CommonKeys.PRED, CommonKeys.LABEL)

    def __init__(
        self,
        fields: Sequence[str],
        output_transform: Callable = lambda output: output,
        device: str | torch.device = "cpu",
    ) -> None:
        self.fields = list(fields)
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._correct = torch.zeros(len(self.fields), dtype=torch.float64, device=self._device)
        self._count = torch.zeros(len(self.fields), dtype=torch.float64, device=self._device)

    @reinit__is_reduced
    def update(self, output: tuple[Mapping[str, Any], Mapping[str, Any]]) -> None:
        logits, targets = output[0]["logits"], output[1]["fields"]
        for position, name in enumerate(self.fields):
            target = targets[name]
            known = target != UNKNOWN
            self._correct[position] += ((logits[name].argmax(dim=1) == target) & known).sum().to(self._device)
            self._count[position] += known.sum().to(self._device)

    @sync_all_reduce("_correct", "_count")
    def compute(self) -> float:
        defined = self._count > 0
        return float((self._correct[defined] / self._count[defined]).mean()) if defined.any() else 0.0


class MatchingAccuracy(Metric):
    """Same-study retrieval: how often an image's nearest neighbour (cosine, matching embedding) is from its study.

    Over all images of the run (gathered from every process), for each image whose group has another image
    in the run; NaN when there is none. A quick per-epoch view of the matching task; the balanced same /
    different pair accuracy and ROC AUC of the paper are the evaluation workflow's.
    """

    required_output_keys = (CommonKeys.PRED, CommonKeys.LABEL)
    _chunk = 1024

    @reinit__is_reduced
    def reset(self) -> None:
        self._embeddings: list[torch.Tensor] = []
        self._groups: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output: tuple[Mapping[str, Any], Mapping[str, Any]]) -> None:
        self._embeddings.append(output[0]["match"].detach().float().cpu())
        self._groups.append(output[1]["group"].detach().cpu())

    def compute(self) -> float:
        parts = idist.all_gather((self._embeddings, self._groups))
        if not any(part[0] for part in parts):
            return float("nan")
        embeddings = torch.cat([tensor for part in parts for tensor in part[0]])
        groups = torch.cat([tensor for part in parts for tensor in part[1]])
        sizes = Counter(groups.tolist())
        queries = [i for i, group in enumerate(groups.tolist()) if group != UNKNOWN and sizes[group] > 1]
        if not queries:
            return float("nan")
        correct = 0
        for start in range(0, len(queries), self._chunk):
            rows = torch.as_tensor(queries[start : start + self._chunk])
            similarity = embeddings[rows] @ embeddings.T
            similarity[torch.arange(len(rows)), rows] = -math.inf
            correct += int((groups[similarity.argmax(dim=1)] == groups[rows]).sum())
        return correct / len(queries)


def validation_metrics(fields: Sequence[str], device: str | torch.device = "cpu") -> dict[str, Metric]:
    """The per-epoch validation metrics besides the key metric: ``val_acc/<field>`` and ``val_match_top1``."""
    metrics: dict[str, Metric] = {f"val_acc/{name}": MetadataAccuracy([name], device=device) for name in fields}
    metrics["val_match_top1"] = MatchingAccuracy(device=device)
    return metrics


# -- checkpoints --------------------------------------------------------------------------------------------------
class CheckpointInfo:
    """What a checkpoint holds besides weights: how to rebuild the network and what its heads mean.

    Saved under ``"info"`` (``state_dict``): the network's constructor arguments, the fitted label space
    (fields, bins, learned X-ray systems) as its JSON config, the class names per field, the image size, the
    intensity scaling and the field of view (:func:`~mammoxai.io.preprocess.prepare_image`).
    On resume (``load_state_dict``) it refuses a checkpoint made with another setup, since the weights or heads
    would not fit or would silently mean something else.

    Args:
        network: the pretrained network (unwrapped from DistributedDataParallel).
        label_space: the fitted label space whose classes the heads predict.
        image_size: (h, w) of the model grid, or one int for a square grid.
        intensity_scaling: how the training images were scaled; a network serves only images scaled the same way.
        field_of_view: what the training images showed, the breast or the whole image; served the same way too.
        train_records, seed, val_fraction: the training split and how :func:`split_by_patient` made it; saved
            as ``split`` (the seed, the fraction, the number of training patients and their
            :func:`split_fingerprint`, no patient id) so that evaluations can check they hold out the same patients.
    """

    def __init__(
        self,
        network: MetadataNet,
        label_space: MetadataLabelSpace,
        image_size: int | Sequence[int],
        train_records: Sequence[Mapping[str, Any]] | None = None,
        seed: int | None = None,
        val_fraction: float | None = None,
        intensity_scaling: str = "breast_percentiles",
        field_of_view: str = "breast",
    ) -> None:
        self.network_config = dict(network.config)
        self.label_space = label_space
        self.image_size = list(grid_shape(image_size))
        self.intensity_scaling = check_intensity_scaling(intensity_scaling)
        self.field_of_view = check_field_of_view(field_of_view)
        self.split = None
        if train_records is not None:
            patients = {record_owner(record, label_space) for record in train_records}
            self.split = {
                "seed": seed,
                "val_fraction": val_fraction,
                "train_patients": len(patients),
                "fingerprint": split_fingerprint(patients),
            }

    def state_dict(self) -> dict[str, Any]:
        return {
            "mammoxai_version": mammoxai.__version__,
            "network_config": self.network_config,
            "label_space": self.label_space.to_config(),
            "class_names": {name: self.label_space.class_names(name) for name in self.label_space.fields},
            "image_size": self.image_size,
            "intensity_scaling": self.intensity_scaling,
            "field_of_view": self.field_of_view,
            "split": self.split,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        current = self.state_dict()
        inputs = ("intensity_scaling", "field_of_view")
        state = {**state, **{name: recorded_input_setting(state, name) for name in inputs}}
        settings = ("network_config", "label_space", "image_size", *inputs)
        differing = [key for key in settings if state.get(key) != current[key]]
        if differing:
            raise MammoXAIError(
                "resume",
                f"the checkpoint was made with another {', '.join(differing)} than this run's",
                "resume with the settings and data of the interrupted run, or set resume to false to start over",
            )
        self._check_same_split(state.get("split"))

    def _check_same_split(self, recorded: Mapping[str, Any] | None) -> None:
        """Refuse to resume on other training patients: the resumed epochs would train on patients the first ones
        validated on, and validate on patients they trained on, so the best model and its scores mean nothing.
        A checkpoint from before splits were recorded has nothing to compare."""
        if recorded is None or self.split is None or recorded["fingerprint"] == self.split["fingerprint"]:
            return
        raise MammoXAIError(
            "resume",
            f"the interrupted run trained on {_described(recorded)}, this run's split trains on "
            f"{_described(self.split)}, other patients",
            f"resume with {_split_options(recorded)} and the interrupted run's manifest, or set resume to false to "
            "start over",
        )


class TrainerState:
    """The trainer's checkpoint entry: ignite's engine state (epoch, iteration) and, under AMP, the loss scale the
    trainer's ``GradScaler`` reached, so a resumed mixed-precision run goes on at that scale instead of starting
    again from the initial one (and skipping steps while it backs off).

    MONAI's ``SupervisedTrainer`` makes its scaler in ``run()``, after the config built the checkpoint's
    ``save_dict``, so the scaler is looked up at each save and at the load (on ``STARTED``, once ``run()`` made it).
    A checkpoint with no scale (a run without AMP) leaves the scaler as it starts.

    Args:
        trainer: the ``SupervisedTrainer``.
    """

    def __init__(self, trainer: Engine) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        scaler = getattr(self.trainer, "scaler", None)
        return {**self.trainer.state_dict(), "scaler": {} if scaler is None else scaler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        engine_state = {key: value for key, value in state.items() if key != "scaler"}
        self.trainer.load_state_dict(engine_state)
        scaler, scale = getattr(self.trainer, "scaler", None), state.get("scaler")
        if scaler is not None and scale:
            scaler.load_state_dict(dict(scale))


def latest_checkpoint(ckpt_dir: str | os.PathLike, file_prefix: str = "pretrain") -> Path | None:
    """The epoch checkpoint with the highest epoch that ``CheckpointSaver(file_prefix=...)`` wrote, or None."""
    pattern = re.compile(rf"{re.escape(file_prefix)}_checkpoint_epoch=(\d+)\.pt")
    epochs = {path: pattern.fullmatch(path.name) for path in Path(ckpt_dir).glob("*.pt")}
    found = [(int(match.group(1)), path) for path, match in epochs.items() if match]
    return max(found)[1] if found else None


class Resume:
    """Continue an interrupted run from its newest epoch checkpoint, when the trainer starts.

    Restores the network, optimizer, learning-rate schedule and trainer state (so the epoch counter goes
    on, and an AMP run's loss scale, :class:`TrainerState`), and, from the best checkpoint, which score the best
    model had, so a resumed run does not replace a better model with a worse one. With no checkpoint yet the run
    starts from scratch, so a job script can always pass ``resume=true``. The schedule is the interrupted run's, its
    length included: raising ``epochs`` on resume adds epochs but does not stretch the cosine decay.

    Args:
        ckpt_dir: where the epoch checkpoints are.
        objects: name → object with ``load_state_dict`` (the epoch ``CheckpointSaver``'s ``save_dict``).
        enabled: False does nothing (a fresh run that overwrites old checkpoints).
        file_prefix: the epoch ``CheckpointSaver``'s ``file_prefix``.
        best_file: the best-model checkpoint, saved with ``key_metric_save_state=True``.
        best_saver: the ``CheckpointSaver`` that writes ``best_file``.
        map_location: where to load tensors.

    Raises:
        MammoXAIError: the newest checkpoint is from a later epoch than the run's ``max_epochs``, or from
            another setup (see :class:`CheckpointInfo`).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        objects: Mapping[str, Any],
        enabled: bool = True,
        file_prefix: str = "pretrain",
        best_file: str | os.PathLike | None = None,
        best_saver: CheckpointSaver | None = None,
        map_location: str | torch.device = "cpu",
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.objects = dict(objects)
        self.enabled = parse_flag(enabled, "resume")
        self.file_prefix = file_prefix
        self.best_file = Path(best_file) if best_file is not None else None
        self.best_saver = best_saver
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.ckpt_dir, self.file_prefix)
        if path is None:
            logger.warning("resume: no %s checkpoint in %s, starting from scratch", self.file_prefix, self.ckpt_dir)
            return
        epoch = int(path.stem.rsplit("=", 1)[1])
        if epoch > engine.state.max_epochs:
            problem = f"is from epoch {epoch}, beyond this run's {engine.state.max_epochs} epochs"
            raise MammoXAIError(path, problem, "raise epochs to continue")
        CheckpointLoader(str(path), self.objects, map_location=self.map_location)(engine)
        if self.best_saver is not None and self.best_file is not None and self.best_file.is_file():
            best = torch.load(self.best_file, map_location="cpu", weights_only=True)
            if "checkpointer" in best:
                self.best_saver.load_state_dict(best["checkpointer"])
        logger.info("resumed from %s: epoch %d of %d done", path, engine.state.epoch, engine.state.max_epochs)


def log_to_file(path: str | os.PathLike) -> logging.Handler:
    """Also write the log (INFO and above, every logger) to ``path``: the plain-text record of a run.

    The root logger is lowered to INFO if it was higher, so the handlers' epoch and metric lines reach the
    file; calling again with the same path adds nothing.

    Raises:
        MammoXAIError: a file stands where the log's folder should be.
    """
    path = Path(path).resolve()
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path:
            return handler
    check_output_path(path.parent, "output_dir", "give a folder for the logs")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


@dataclass
class PretrainedModel:
    """A pretrained :class:`~mammoxai.nets.MetadataNet` with the label space its heads predict.

    Args:
        network: the network, in eval mode.
        label_space: the fitted label space (``label_space.decode(field, index)`` names a predicted class).
        image_size: (h, w) of the model grid it was trained on (:func:`mammoxai.io.prepare_image`).
        split: the training split pretraining recorded (see :class:`CheckpointInfo`); ``None`` in checkpoints
            written before splits were recorded.
        intensity_scaling: how its training images were scaled (:func:`mammoxai.io.prepare_image`); checkpoints
            written before the setting used ``"breast_percentiles"``.
        field_of_view: what its training images showed (:func:`mammoxai.io.prepare_image`); checkpoints written
            before the setting used ``"breast"``.
    """

    network: MetadataNet
    label_space: MetadataLabelSpace
    image_size: tuple[int, int]
    split: Mapping[str, Any] | None = None
    intensity_scaling: str = "breast_percentiles"
    field_of_view: str = "breast"


def load_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> PretrainedModel:
    """Load a checkpoint written by ``configs/pretrain.json`` (``models/pretrained.pt`` or an epoch checkpoint).

    Example:
        pretrained = load_pretrained("models/pretrained.pt")
        out = pretrained.network(image[None])
        pretrained.label_space.decode("view", int(out["logits"]["view"].argmax()))   # "MLO"

    Raises:
        MammoXAIError: the file is missing or is not a metadata-pretraining checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MammoXAIError(path, "pretrained checkpoint not found", f"pretrain first: {PRETRAIN_COMMAND}")
    fix = f"pass the pretrained.pt that pretraining wrote ({PRETRAIN_COMMAND})"
    checkpoint = read_torch_file(path, "checkpoint", fix, map_location)
    if not isinstance(checkpoint, Mapping) or "network" not in checkpoint or "info" not in checkpoint:
        problem = "is not a metadata-pretraining checkpoint (it has no 'network' and 'info' entries)"
        raise MammoXAIError(path, problem, "pass the pretrained.pt that pretraining wrote")
    info = checkpoint["info"]
    network = MetadataNet(**info["network_config"])
    network.load_state_dict(checkpoint["network"])
    label_space = MetadataLabelSpace.from_config(info["label_space"], source=path)
    return PretrainedModel(
        network.eval(),
        label_space,
        tuple(info["image_size"]),
        info.get("split"),
        recorded_input_setting(info, "intensity_scaling"),
        recorded_input_setting(info, "field_of_view"),
    )
