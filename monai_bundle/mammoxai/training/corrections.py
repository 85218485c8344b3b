"""Fine-tuning on clinicians' corrections: the training half of the active-learning loop.

A clinician's correction is a label JSON (:data:`mammoxai.schema.LABEL_SCHEMA`) saved next to the image it
corrects. :func:`correction_records` turns those pairs into manifest records, and :func:`finetune` runs the
bundle's own ``configs/train.json`` on them through :class:`monai.bundle.ConfigParser` with overrides, so the
loop trains with exactly the recipe, augmentation, loss and validation metric the bundle documents; there is
no second copy of the training logic. The run starts from the weights being served and replaces them only
when the result is valid (finite loss, a validation metric that was computed) and, under the default policy,
not worse on the held-out validation split than the weights it started from: a served model must not
get worse because a few cases were labelled. The file is replaced atomically (:func:`replace_checkpoint`),
so a predictor reloading on the file's change never reads half a checkpoint.

The workflow is whole-image classification, so a correction's class is the training target; its lesion boxes
and points are carried into the manifest (column ``lesions``, JSON) for localisation-aware recipes but do not
change this one.

This module knows nothing of MONAI Label: the app's trainer gathers the pairs from its datastore.

Example:
    records = correction_records([("case1", "studies/case1.dcm", "studies/labels/final/case1.json")],
                                 class_names=["normal", "benign", "malignant"])
    result = finetune("monai_bundle", records, "work/", overrides={"epochs": 2})
    result.accepted, result.metric, result.baseline_metric
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.handlers import from_engine

from mammoxai.data.cache import preprocess_all
from mammoxai.data.dataset import LabelMap
from mammoxai.data.manifest import read_record, write_manifest
from mammoxai.errors import MammoXAIError
from mammoxai.io.atomic import atomic_write
from mammoxai.io.preprocess import grid_shape
from mammoxai.nets.files import checkpoint_weights, read_torch_file
from mammoxai.nets.finetune import load_checkpoint
from mammoxai.schema import validate_label
from mammoxai.training.multiview import check_views

logger = logging.getLogger(__name__)

__all__ = [
    "ACCEPT_POLICIES",
    "FinetuneResult",
    "check_accept_policy",
    "correction_records",
    "finetune",
    "replace_checkpoint",
    "usable_corrections",
]

ACCEPT_POLICIES = ("not_worse", "valid")
"""``not_worse`` (default): keep the new weights only when their best validation metric is at least that of the
current weights on the same split; ``valid``: keep the best epoch of any run whose loss and metric are finite."""


def check_accept_policy(accept: str) -> None:
    """Refuse a policy that is not one of :data:`ACCEPT_POLICIES`; the server checks a request with it too, before
    a run starts.

    Raises:
        MammoXAIError: ``accept`` is not a policy.
    """
    if accept not in ACCEPT_POLICIES:
        raise MammoXAIError(f"accept {accept!r}", "is not a policy", f"use one of {list(ACCEPT_POLICIES)}")


def correction_records(
    corrections: Iterable[tuple[str, str | os.PathLike, str | os.PathLike]],
    class_names: Sequence[str],
    label_key: str = "case_label",
) -> list[dict[str, Any]]:
    """Manifest records for ``(image_id, image_path, label_json_path)`` triples, labelled by the label's class.

    A DICOM image keeps its header's patient and study identifiers, so :func:`~mammoxai.training.classification.
    patient_split` keeps a patient's images on one side of the split; an image without them (PNG, anonymised
    DICOM) is its own patient, i.e. the split falls back to one by image.

    Raises:
        MammoXAIError: a label is not valid MammoXAI label JSON for ``class_names``, or an image is unreadable.
    """
    return [_correction_record(*correction, class_names, label_key) for correction in corrections]


def usable_corrections(
    corrections: Iterable[tuple[str, str | os.PathLike, str | os.PathLike]],
    class_names: Sequence[str],
    image_size: int | Sequence[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    label_key: str = "case_label",
    intensity_scaling: str = "breast_percentiles",
    field_of_view: str = "breast",
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The records of :func:`correction_records` for the corrections a run can train on, and why each other one
    cannot (image id -> reason, naming no file).

    A correction outlives the checks made when it was saved: its image file may be replaced later (by a CT, a
    damaged copy, an image of no breast), or a label and image copied in by hand. One such correction must not
    cost the clinicians' others their run, so it is left out and said, by image id (the caller's name for it; the
    file is on a server the reader may not see).

    Args:
        corrections: ``(image_id, image_path, label_json_path)`` triples.
        class_names: the classes a label's class must be one of.
        image_size: the run's model grid: the images are also read and preprocessed onto it, into ``cache_dir``
            (the work the run's own check and first epoch do, :func:`~mammoxai.data.cache.preprocess_all`); None
            reads the labels and the image headers only.
        cache_dir: the run's preprocessed-image cache, or None.
        num_workers: processes that read the images.
        label_key: the record field that holds the label's class.
        intensity_scaling: the run's intensity scaling, which the cache entries are made and keyed with
            (:func:`~mammoxai.io.preprocess.prepare_image`); ``"display_range"`` also leaves out an image whose file
            fixes no value range.
        field_of_view: the run's field of view, which the cache entries are made and keyed with too.
    """
    records, left_out = [], {}
    for image_id, image_path, label_path in corrections:
        try:
            records.append(_correction_record(image_id, image_path, label_path, class_names, label_key))
        except MammoXAIError as error:
            left_out[image_id] = _reason(error)
    if image_size is not None and records:
        paths = [record["path"] for record in records]
        inputs = {"intensity_scaling": intensity_scaling, "field_of_view": field_of_view}
        failures = preprocess_all(paths, grid_shape(image_size), cache_dir, num_workers, **inputs)
        left_out.update(
            {record["image_id"]: failures[record["path"]] for record in records if record["path"] in failures}
        )
        records = [record for record in records if record["path"] not in failures]
    return records, left_out


def _correction_record(
    image_id: str,
    image_path: str | os.PathLike,
    label_path: str | os.PathLike,
    class_names: Sequence[str],
    label_key: str,
) -> dict[str, Any]:
    """The manifest record of one correction (see :func:`correction_records`).

    Raises:
        MammoXAIError: the label is not valid MammoXAI label JSON for ``class_names``, or the image is unreadable.
    """
    source = f"label of image {image_id!r}"
    try:
        label = json.loads(Path(label_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        detail = error.strerror if isinstance(error, OSError) else error  # an OSError's message holds the path
        raise MammoXAIError(source, f"cannot be read ({detail})", "save the label again") from error
    validate_label(label, class_names=class_names, source=source)
    record = read_record(image_path)
    record.update(image_id=image_id, path=str(image_path), lesions=json.dumps(label.get("lesions", [])))
    record["patient_id"] = record.get("patient_id") or f"image:{image_id}"
    record[label_key] = label["class"]
    return record


def _reason(error: MammoXAIError) -> str:
    """The problem and fix of ``error`` without its source: an image's source is its file, a label's names the image
    the reason is listed under already."""
    return f"{error.problem} ({error.fix})" if error.fix else error.problem


@dataclass
class FinetuneResult:
    """What a fine-tuning run did.

    Args:
        accepted: the new weights were written over ``checkpoint``.
        reason: why they were or were not, in words.
        metric: best validation metric (``validate#key_metric``) of the new weights; None when never computed.
        baseline_metric: the same metric of the starting weights on the same split (policy ``not_worse`` only).
        last_loss: training loss of the last iteration.
        train_images, val_images: sizes of the split.
        history: the validation metric of the new weights after each evaluation.
    """

    accepted: bool
    reason: str
    metric: float | None = None
    baseline_metric: float | None = None
    last_loss: float | None = None
    train_images: int = 0
    val_images: int = 0
    history: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finetune(
    bundle: str | os.PathLike,
    records: Sequence[Mapping[str, Any]],
    work_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    accept: str = "not_worse",
) -> FinetuneResult:
    """Fine-tune the bundle's classifier on ``records`` with ``configs/train.json`` and keep the result if valid.

    The network starts from ``checkpoint`` when the file exists (else from its initialisation); train.json's
    own ``CheckpointSaver`` writes the best-validated weights into ``work_dir``. Under policy ``not_worse`` the
    starting weights are validated first on the same split (by a second copy of the evaluator without the saver)
    and the new weights are kept only when they are not worse. Nothing is held out for testing: the records are
    split into training and validation by patient.

    Args:
        bundle: the bundle folder (holding ``configs/train.json``).
        records: manifest records labelled in train.json's ``label_key``, e.g. from :func:`correction_records`.
        work_dir: scratch folder for the manifest, logs and the candidate checkpoint.
        checkpoint: the served weights to start from and to replace; default ``<bundle>/models/model.pt``.
        overrides: train.json keys to override, e.g. ``{"epochs": 2, "num_workers": 0, "device": "cpu"}``; a
            served model's ``image_size``, ``intensity_scaling`` and ``field_of_view`` belong here, so the new
            weights are trained and
            recorded (``model.pt``'s ``"grid"``) with the input the predictor gives them.
        accept: one of :data:`ACCEPT_POLICIES`.

    Raises:
        MammoXAIError: an unknown policy, records that cannot be split (fewer than two patients), or, under
            ``not_worse``, a validation split of one class, on which the AUC cannot tell better weights from worse.
    """
    check_accept_policy(accept)
    bundle, work_dir = Path(bundle).resolve(), Path(work_dir).resolve()
    checkpoint = Path(checkpoint) if checkpoint is not None else bundle / "models" / "model.pt"
    manifest = write_manifest(records, work_dir / "manifest.csv")
    parser = _train_parser(bundle, work_dir, manifest, overrides)
    train_records, val_records = parser.get_parsed_content("split")
    if accept == "not_worse":
        _check_validation_can_judge(parser, val_records)
    result = FinetuneResult(False, "", train_images=len(train_records), val_images=len(val_records))
    metric_name = next(iter(parser.get("validate#key_metric")))

    if accept == "not_worse":
        # the same evaluator and split, without the checkpoint saver: the baseline must not count as a candidate
        baseline = _train_parser(bundle, work_dir, manifest, {**(overrides or {}), "validate#handlers": []})
        baseline.get_parsed_content("initialize")
        _load_network(baseline, checkpoint)
        evaluator = baseline.get_parsed_content("validate#evaluator")
        evaluator.run()
        result.baseline_metric = _key_metric(evaluator)

    parser.get_parsed_content("initialize")
    _load_network(parser, checkpoint)
    evaluator = parser.get_parsed_content("validate#evaluator")
    trainer = parser.get_parsed_content("train#trainer")
    evaluator.add_event_handler(Events.COMPLETED, lambda engine: result.history.append(_key_metric(engine)))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, _stop_on_non_finite_loss, result)
    trainer.run()

    finite = [value for value in result.history if math.isfinite(value)]
    result.metric = max(finite) if finite else None
    candidate = work_dir / "models" / "model.pt"
    if result.last_loss is None or not math.isfinite(result.last_loss):
        result.reason = f"the training loss is not finite ({result.last_loss}); the served model is unchanged"
    elif result.metric is None:
        result.reason = "no validation metric was computed; the served model is unchanged"
    elif result.baseline_metric is not None and result.metric < result.baseline_metric:
        result.reason = (
            f"validation {metric_name} {result.metric:.4f} is worse than the current model's "
            f"{result.baseline_metric:.4f} on the same split; the served model is unchanged"
        )
    elif not candidate.is_file():
        result.reason = "the checkpoint saver wrote no weights; the served model is unchanged"
    else:
        replace_checkpoint(read_torch_file(candidate, "checkpoint", "rerun the fine-tuning"), checkpoint)
        result.accepted = True
        result.reason = f"validation {metric_name} {result.metric:.4f}: saved as {checkpoint.name}"
    logger.info("fine-tuning on %d corrections: %s", len(records), result.reason)
    return result


def _check_validation_can_judge(parser: ConfigParser, val_records: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a validation split of one class before training: its AUC is undefined (the metric reports chance,
    0.5, for it), so the new weights would be judged against the served ones by a number that means nothing."""
    label_key = parser.get_parsed_content("label_key")
    label_map = LabelMap(parser.get_parsed_content("label_map"), parser.get_parsed_content("class_names"))
    classes = sorted({label_map(record[label_key]) for record in val_records})
    if len(classes) < 2:
        raise MammoXAIError(
            "corrections",
            f"leave a validation split of {len(val_records)} image(s) of class {classes} only, on which the "
            "validation AUC cannot judge new weights",
            "save final labels of another class for at least two patients, or train with accept 'valid'",
        )


def _train_parser(bundle: Path, work_dir: Path, manifest: Path, overrides: Mapping[str, Any] | None) -> ConfigParser:
    """train.json of ``bundle`` reading ``manifest``, writing logs and the candidate checkpoint into ``work_dir``."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["bundle_root"] = str(bundle)
    parser["output_dir"] = str(work_dir)
    parser["ckpt_dir"] = str(work_dir / "models")
    parser["manifest"] = str(manifest)
    parser["holdout"] = {}  # every correction is for training or validation; the test set is the caller's
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def _load_network(parser: ConfigParser, checkpoint: Path) -> None:
    """Start from the served weights when there are any (the parser's ``network`` is the instance trained).

    Raises:
        MammoXAIError: the served weights do not fit the configured network (e.g. a classifier without the metadata
            heads the configs now serve) or were trained with other class names, views, view fusion, intensity
            scaling or field of view than the run's, said before any training starts: fine-tuned on images made
            another way, the weights would start from features that do not apply.
    """
    if checkpoint.is_file():
        load_checkpoint(
            parser.get_parsed_content("network"),
            checkpoint,
            "the served weights do not fit the configured network",
            "retrain them with the bundle's configs/train.json, or configure the network they were trained with",
            class_names=parser.get_parsed_content("class_names"),
            views=check_views(parser.get_parsed_content("views")),
            intensity_scaling=parser.get_parsed_content("intensity_scaling"),
            field_of_view=parser.get_parsed_content("field_of_view"),
        )


def replace_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a checkpoint over ``path`` atomically: into a temporary file in the same folder, then ``os.replace``.

    ``state`` is a state dict, or what ``train.json`` saves (the state dict under ``"model"``, the training grid and
    intensity scaling and field of view under ``"grid"``), kept whole so the served file still records its input.

    A reader (the predictor's hot reload, a second server) sees either the old file or the complete new one,
    never a partial write, and a crash mid-write leaves the old weights in place.

    Raises:
        MammoXAIError: a tensor in ``state`` is not finite (NaN or infinite weights are never served).
    """
    path = Path(path)
    weights = checkpoint_weights(state)
    bad = [name for name, tensor in weights.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise MammoXAIError(path, f"new weights {bad[:3]} are not finite", "retrain with a lower learning_rate")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as stream:
        torch.save(dict(state), stream)
    return path


def _key_metric(engine: Any) -> float:
    value = engine.state.metrics.get(engine.state.key_metric_name)
    return float("nan") if value is None else float(value)


def _stop_on_non_finite_loss(engine: Any, result: FinetuneResult) -> None:
    result.last_loss = float(from_engine(["loss"], first=True)(engine.state.output))
    if not math.isfinite(result.last_loss):
        logger.error("training loss is %s at iteration %d: stopping", result.last_loss, engine.state.iteration)
        engine.terminate()
