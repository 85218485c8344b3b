"""Fine-tuning setup for ``configs/train.json``: where the classifier's weights start, what is frozen and when it
thaws, class balance, and the label checks that must fail before training rather than during it.

Initialisation strategies, after the Pittsburgh comparison (J Digit Imaging 2020), which found that the start
changes the AUC of a screening classifier markedly (0.68-0.77):

* ``scratch``: random weights.
* ``pretrained``: the backbone of a metadata-pretraining checkpoint (``models/pretrained.pt`` from
  ``configs/pretrain.json``; Litchfield et al., SPIE Medical Imaging 2022) - medical-image pretraining that needs
  no labels.
* ``external``: a local state dict of the backbone architecture, e.g. torchvision ImageNet weights saved on disk
  (natural-image pretraining); never downloaded.
* ``incremental``: external weights, then metadata pretraining, then fine-tuning. The first two steps are
  pretraining's: run ``configs/pretrain.json`` with ``--backbone_weights <imagenet.pt>``, then fine-tune with
  ``--init incremental --init_weights models/pretrained.pt``. Loading is that of ``pretrained``; the name
  records which strategy the run is. Both are refused when the checkpoint records another intensity scaling
  (:func:`~mammoxai.io.preprocess.prepare_image`) than the run's: its backbone learnt from images scaled that way.
* ``classifier``: a whole :class:`~mammoxai.nets.finetune.BackboneClassifier` checkpoint (a previous fine-tune,
  to continue on new data or another device). Its class head is loaded as it is, so the class names it records must
  be this run's ``class_names`` in the same order (another order would train the malignant logit on the normal
  images), its intensity scaling this run's, and a multi-view one's views and fusion this run's; its grid is not
  compared, since continuing at
  another resolution (the patch classifier starting the whole-image one) is what this start is for, and weights of
  one image per sample may start a ``mean`` / ``max`` multi-view network (they fit it: every view goes through the
  same backbone and head), and the other way round.

For the served :class:`~mammoxai.nets.MetadataClassifier` (:func:`build_metadata_classifier`, train.json's
``network_def``), ``pretrained`` and ``incremental`` load the whole pretraining network — backbone, task projections
``z_k``, metadata heads and matching projection — so the heads start out predicting exactly what they predicted
after pretraining, and fine-tuning trains them on with the class head (:class:`MetadataClassifierLoss`).

Every wrong start (missing file, a file that is not a state dict, weights of another architecture, class count or
metadata field list, another intensity scaling) is a :class:`~mammoxai.errors.MammoXAIError` naming the file, raised
when ``train.json`` builds the network: after the labels are checked and the images read once (the readability check
that fills the cache), before the first training step.

Example:
    net = build_finetune_classifier("mammo_cnn", 3, init="pretrained", init_weights="models/pretrained.pt",
                                    freeze="stem")
    served = build_metadata_classifier("mammo_cnn", 3, select_fields(["view", "kvp"]), init="pretrained",
                                       init_weights="models/pretrained.pt")
    trainer.add_event_handler(...)  # or, in a config: {"_target_": "...UnfreezeAt", "network": ..., "epoch": 5}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer
from torch import nn
from torch.utils.data import WeightedRandomSampler

from mammoxai.errors import MammoXAIError
from mammoxai.io.fields import UNKNOWN, MetadataLabelSpace
from mammoxai.io.preprocess import check_field_of_view, check_intensity_scaling
from mammoxai.nets.backbones import build_backbone
from mammoxai.nets.files import check_recorded_settings
from mammoxai.nets.finetune import BackboneClassifier, MetadataClassifier, MultiViewClassifier, load_checkpoint
from mammoxai.training.losses import MetadataLoss
from mammoxai.training.multiview import check_views
from mammoxai.training.pretrain import PretrainedModel, load_pretrained, record_metadata

logger = logging.getLogger(__name__)

__all__ = [
    "INIT_CHOICES",
    "CLASS_BALANCE_CHOICES",
    "initialise",
    "build_finetune_classifier",
    "build_metadata_classifier",
    "MetadataTargets",
    "MetadataInferer",
    "MetadataClassifierLoss",
    "UnfreezeAt",
    "check_labels",
    "balanced_sampler",
]

INIT_CHOICES = ("scratch", "pretrained", "external", "incremental", "classifier")
CLASS_BALANCE_CHOICES = ("loss", "sampler", "none")


def _backbone_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def initialise(
    network: BackboneClassifier | MetadataClassifier,
    init: str = "scratch",
    weights: str | os.PathLike | None = None,
    label_space: MetadataLabelSpace | None = None,
    class_names: Sequence[str] | None = None,
    views: Sequence[str] | None = None,
    intensity_scaling: str | None = None,
    field_of_view: str | None = None,
) -> BackboneClassifier | MetadataClassifier:
    """Load the starting weights of ``network`` by strategy (see the module docstring); returns it.

    Args:
        network: the network to initialise.
        init: one of :data:`INIT_CHOICES`.
        weights: the file to start from (all strategies but ``scratch``).
        label_space: for a :class:`~mammoxai.nets.MetadataClassifier`, the label space its heads predict; a
            pretrained head is then loaded only when its classes are the same, not merely as many.
        class_names: the run's names of the class logits, in order; a ``classifier`` checkpoint that records other
            names or another order is refused (None: not compared).
        views: the run's view names of a :class:`~mammoxai.nets.finetune.MultiViewClassifier`, in input order;
            a ``classifier`` checkpoint that records other views is refused.
        intensity_scaling: how the run scales its images (:func:`~mammoxai.io.preprocess.prepare_image`); a
            ``pretrained``, ``incremental`` or ``classifier`` checkpoint that records another is refused (None: not
            compared). External weights record none.
        field_of_view: what the run puts on the grid, compared the same way.

    Raises:
        MammoXAIError: unknown ``init``; ``weights`` missing, unreadable, not a state dict, or of another
            backbone, input channel count, class count or metadata field list; a ``classifier`` checkpoint trained
            with other class names, views or view fusion; a checkpoint trained with another intensity scaling or
            field of view.
    """
    init = str(init).strip().lower()
    if init not in INIT_CHOICES:
        raise MammoXAIError("init", f"is {init!r}", f"use one of {', '.join(INIT_CHOICES)}")
    if init == "scratch":
        if weights is not None:
            logger.warning("init is scratch: init_weights %s is ignored", weights)
        return network
    if weights is None:
        raise MammoXAIError(
            "init_weights", f"is not set but init is {init!r}", "give the path of the weights file to start from"
        )
    path = Path(weights)
    backbone = network.config["backbone"]
    if init in ("pretrained", "incremental"):
        pretrained_model = load_pretrained(path)
        inputs = {
            "intensity_scaling": (pretrained_model.intensity_scaling, intensity_scaling),
            "field_of_view": (pretrained_model.field_of_view, field_of_view),
        }
        check_recorded_settings(path, inputs)
        pretrained = pretrained_model.network
        theirs = (_backbone_key(pretrained.config["backbone"]), pretrained.config["in_channels"])
        if theirs != (_backbone_key(backbone), network.config["in_channels"]):
            raise MammoXAIError(
                path,
                f"is a pretrained {theirs[0]} for {theirs[1]}-channel images, but this network is a {backbone} "
                f"for {network.config['in_channels']}-channel images",
                f"set backbone to {pretrained.config['backbone']!r}, or pretrain a {backbone}",
            )
        if isinstance(network, MetadataClassifier):
            _load_pretrained_heads(network, pretrained_model, path, label_space)
        else:
            network.backbone.load_state_dict(pretrained.backbone.state_dict())
    elif init == "external":
        loaded, _ = build_backbone(
            backbone, network.config["in_channels"], path
        )  # checks the file against the architecture
        network.backbone.load_state_dict(loaded.state_dict())
    else:
        _load_classifier(network, path, class_names, views, intensity_scaling, field_of_view)
    logger.info("initialised the %s classifier from %s (%s)", backbone, path, init)
    return network


def _load_pretrained_heads(
    network: MetadataClassifier, pretrained: PretrainedModel, path: Path, label_space: MetadataLabelSpace | None
) -> None:
    """Load backbone, projections, heads and matcher of a pretraining checkpoint into the served network.

    Every field of ``network`` must have been pretrained with the same classes: a head trained on other bins would
    silently mean something else. Pretrained tasks the network does not serve (e.g. ``xray_system``, whose learned
    vocabulary a config cannot state) are dropped with a warning: their ``z_k`` leave the sum, so the served heads
    start from a slightly shifted ``z`` that joint fine-tuning corrects.
    """
    theirs, ours = pretrained.network.config, network.config
    for key in ("embed_dim", "matching_dim"):
        if theirs[key] != ours[key]:
            problem = f"was pretrained with {key} {theirs[key]}, this network has {ours[key]}"
            raise MammoXAIError(path, problem, f"set {key} to {theirs[key]}")
    missing = [name for name in ours["fields"] if name not in theirs["fields"]]
    if missing:
        raise MammoXAIError(
            path,
            f"has no pretrained head for {missing} (its fields are {list(theirs['fields'])})",
            "set metadata_fields to pretrained fields, or pretrain with these fields",
        )
    for name, count in ours["fields"].items():
        pretrained_classes = pretrained.label_space.class_names(name)
        served = label_space.class_names(name) if label_space is not None else None
        if theirs["fields"][name] != count or (served is not None and served != pretrained_classes):
            problem = f"pretrained field {name!r} with classes {pretrained_classes}"
            fix = "serve the field with the pretraining bins (metadata_fields_file), or pretrain again"
            raise MammoXAIError(path, f"{problem}, this network's are {served or f'{count} classes'}", fix)
    dropped = [name for name in theirs["fields"] if name not in ours["fields"]]
    if dropped:
        logger.warning("%s: pretrained tasks %s are not served; their projections are dropped", path, dropped)
    kept = {
        key: value
        for key, value in pretrained.network.state_dict().items()
        if key.split(".")[0] not in ("projections", "heads") or key.split(".")[1] in ours["fields"]
    }
    unexpected = network.load_state_dict(kept, strict=False)
    assert not unexpected.unexpected_keys and all(key.startswith("fc.") for key in unexpected.missing_keys)


def _load_classifier(
    network: BackboneClassifier | MetadataClassifier,
    path: Path,
    class_names: Sequence[str] | None,
    views: Sequence[str] | None,
    intensity_scaling: str | None,
    field_of_view: str | None,
) -> None:
    fix = "pass a model.pt written by train.json with the same backbone, class_names and views"
    if not path.is_file():
        raise MammoXAIError(path, "classifier checkpoint not found", fix)
    problem = f"does not fit this {network.config['backbone']} classifier"
    fix = f"{fix}, or start with init 'pretrained' / 'external'"
    load_checkpoint(
        network,
        path,
        problem,
        fix,
        class_names=class_names,
        views=views,
        as_start=True,
        intensity_scaling=intensity_scaling,
        field_of_view=field_of_view,
    )


def build_finetune_classifier(
    backbone: str = "mammo_cnn",
    num_classes: int = 3,
    init: str = "scratch",
    init_weights: str | os.PathLike | None = None,
    freeze: str | int = "none",
    in_channels: int = 1,
    dropout: float = 0.2,
    views: Sequence[str] | None = None,
    view_fusion: str = "concat",
    class_names: Sequence[str] | None = None,
    intensity_scaling: str = "breast_percentiles",
    field_of_view: str = "breast",
) -> BackboneClassifier:
    """The fine-tuning network of ``configs/train.json``: a :class:`BackboneClassifier` or, with ``views``, a
    :class:`MultiViewClassifier` over that many views, initialised (:func:`initialise`, which compares a
    ``classifier`` start with ``class_names`` and ``views``, and a pretrained or classifier start with
    ``intensity_scaling`` and ``field_of_view``, the run's) and frozen (:meth:`BackboneClassifier.freeze`) as configured.

    Raises:
        MammoXAIError: ``views`` that is not two or more view names (:func:`~mammoxai.training.multiview.check_views`),
            or a start that does not fit (see :func:`initialise`).
    """
    views = check_views(views)
    if views is None:
        network = BackboneClassifier(backbone, num_classes, in_channels, dropout)
    else:
        network = MultiViewClassifier(
            backbone, num_classes, in_channels, dropout, num_views=len(views), fusion=view_fusion
        )
    inputs = _input_settings(intensity_scaling, field_of_view)
    started = initialise(network, init, init_weights, class_names=class_names, views=views, **inputs)
    return started.freeze(freeze)


def build_metadata_classifier(
    backbone: str = "mammo_cnn",
    num_classes: int = 3,
    label_space: MetadataLabelSpace | None = None,
    init: str = "scratch",
    init_weights: str | os.PathLike | None = None,
    freeze: str | int = "none",
    embed_dim: int = 64,
    matching_dim: int = 32,
    in_channels: int = 1,
    dropout: float = 0.2,
    views: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    intensity_scaling: str = "breast_percentiles",
    field_of_view: str = "breast",
) -> MetadataClassifier:
    """The served network of ``configs/train.json``: a :class:`~mammoxai.nets.MetadataClassifier` with one
    metadata head per field of ``label_space``, initialised (:func:`initialise`, which compares a ``classifier``
    start with ``class_names``, and a pretrained or classifier start with ``intensity_scaling`` and
    ``field_of_view``, the run's) and frozen as configured.

    ``views`` is the config's multi-view setting, passed here so that asking this single-image network for
    several views is refused now, not as a convolution shape error in the first iteration.

    Raises:
        MammoXAIError: multi-view ``views``, no label space, a learned vocabulary that was not fitted (its head size
            is unknown), or a start that does not fit (see :func:`initialise`).
    """
    views = check_views(views)
    if views:
        problem = f"is {views}, but the served network reads one image"
        raise MammoXAIError("views", problem, "add --network_def @finetune_network_def")
    if label_space is None:
        raise MammoXAIError("metadata_label_space", "is not set", "name the served fields in metadata_fields")
    fields = {name: label_space.num_classes(name) for name in label_space.fields}
    network = MetadataClassifier(
        backbone, num_classes, fields, embed_dim, matching_dim, in_channels=in_channels, dropout=dropout
    )
    inputs = _input_settings(intensity_scaling, field_of_view)
    started = initialise(network, init, init_weights, label_space, class_names=class_names, **inputs)
    return started.freeze(freeze)


def _input_settings(intensity_scaling: str, field_of_view: str) -> dict[str, str]:
    """The run's model-input settings, checked, as :func:`initialise` compares them with a start's record."""
    return {
        "intensity_scaling": check_intensity_scaling(intensity_scaling),
        "field_of_view": check_field_of_view(field_of_view),
    }


class MetadataTargets:
    """MONAI ``prepare_batch`` for joint training: the images, and ``{"label": (B,), "fields": {field: (B,)}}``.

    The field labels are the images' own header values encoded by ``label_space`` (-1 where the header is silent),
    looked up by the sample's ``path`` in ``records`` (:func:`~mammoxai.training.pretrain.record_metadata`: the
    manifest columns, so no image is opened for them). A sample of no record (a multi-view sample's other views,
    a path outside ``records``) has every field unknown, which the loss masks.

    Args:
        records: the training records (the same the data set was built from).
        label_space: the served metadata fields.

    Example:
        prepare = MetadataTargets(train_records, label_space)
        images, targets = prepare(batch, device="cpu")   # targets["fields"]["view"]: (B,) class indices or -1
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], label_space: MetadataLabelSpace) -> None:
        self.fields = label_space.fields
        self.targets = {str(record["path"]): label_space.encode(record_metadata(record)) for record in records}

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        move = {"device": device, "non_blocking": non_blocking}
        encoded = [self.targets.get(str(path), {}) for path in batchdata["path"]]
        fields = {
            name: torch.tensor([labels.get(name, UNKNOWN) for labels in encoded], dtype=torch.long).to(**move)
            for name in self.fields
        }
        label = torch.as_tensor(batchdata["label"]).to(**move)
        return batchdata["image"].to(**move, **kwargs), {"label": label, "fields": fields}


class MetadataInferer(Inferer):
    """The training inferer of joint fine-tuning: ``{"class_logits": (B, C), "field_logits": {field: (B, k)}}``.

    Both come from one forward pass (:meth:`~mammoxai.nets.MetadataClassifier.forward_with_metadata`); a network
    without metadata heads gives its logits and no fields, so the same train.json trains any ``network_def``.
    Validation keeps MONAI's ``SimpleInferer``: the evaluator and its metrics see the class logits alone.
    """

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(network, MetadataClassifier):
            class_logits, field_logits = network.forward_with_metadata(inputs)
            return {"class_logits": class_logits, "field_logits": field_logits}
        return {"class_logits": network(inputs), "field_logits": {}}


class MetadataClassifierLoss(nn.Module):
    """Class loss plus the weighted masked cross-entropy of the metadata heads on the images' own header labels.

    Why train the heads jointly rather than freeze them (and their projections) after pretraining: fine-tuning
    changes the backbone, and heads frozen on top of a changing backbone drift away from what they predicted, so
    the QC predictions would silently degrade with every fine-tune; freezing the backbone too would forgo most of
    what fine-tuning gains (the Pittsburgh comparison, J Digit Imaging 2020). The header labels cost nothing —
    every DICOM mammogram carries them — so the heads can keep learning alongside the class head, and the same
    recipe also works from scratch (the CPU demo), where there is nothing pretrained to freeze. It is also
    multi-task learning (Caruana, Machine Learning 1997): the acquisition fields regularise the class head's
    features on small labelled sets. Missing header values (-1) are masked out
    (:func:`~mammoxai.training.losses.masked_cross_entropy`); a field weight of 0 leaves that head untrained.

    Called as MONAI's ``loss_function(pred, target)`` with ``pred`` from :class:`MetadataInferer` and ``target``
    from :class:`MetadataTargets`.

    Args:
        classification: the class loss, e.g. ``torch.nn.CrossEntropyLoss(weight=class_weights)``.
        field_weights: metadata field → weight of its loss (train.json's ``metadata_fields``).

    Example:
        loss = MetadataClassifierLoss(torch.nn.CrossEntropyLoss(), {"view": 0.5, "kvp": 0.5})
        total = loss(MetadataInferer()(images, network), {"label": labels, "fields": {"view": v, "kvp": k}})
    """

    def __init__(self, classification: nn.Module, field_weights: Mapping[str, float] | Sequence[str]) -> None:
        super().__init__()
        self.classification = classification
        self.metadata = MetadataLoss(field_weights)

    def forward(self, pred: Mapping[str, Any], target: Mapping[str, Any]) -> torch.Tensor:
        loss = self.classification(pred["class_logits"], target["label"])
        if pred["field_logits"]:
            loss = loss + self.metadata(pred["field_logits"], target["fields"])
        return loss


class UnfreezeAt:
    """Ignite handler: make the whole network trainable from epoch ``epoch`` (1-based) on; None never does.

    Also correct after a resume past that epoch, since it checks at every epoch start. The optimizer must hold
    every parameter from the start (``network.parameters()``, as in train.json): frozen parameters get no
    gradient, so AdamW leaves them alone until they thaw.

    Args:
        network: the :class:`BackboneClassifier` being trained.
        epoch: the first epoch that trains every stage.
    """

    def __init__(self, network: BackboneClassifier, epoch: int | None = None) -> None:
        if epoch is not None and epoch < 1:
            raise MammoXAIError("unfreeze_epoch", f"is {epoch}", "use an epoch >= 1, or null to keep the freeze")
        self.network, self.epoch = network, epoch

    def attach(self, engine: Engine) -> None:
        """Raises MammoXAIError: ``epoch`` comes after the run's last epoch, so the freeze would never be lifted."""
        last = engine.state.max_epochs
        if self.epoch is not None and last is not None and self.epoch > last:
            problem = f"is {self.epoch}, after the last of the {last} epochs: the backbone would never unfreeze"
            raise MammoXAIError("unfreeze_epoch", problem, f"use an epoch from 1 to {last}, or null to keep the freeze")
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.epoch is not None and engine.state.epoch >= self.epoch and self.network.frozen:
            self.network.unfreeze()
            logger.info("epoch %d: every stage of the backbone trains from now on", engine.state.epoch)


def check_labels(labels: Sequence[int], class_names: Sequence[str], source: str = "training split") -> None:
    """Refuse to train when a class has no training image (or no image is labelled).

    A class without examples gets weight 0, is never learnt, and its AUC is undefined; better to say so before
    hours of training than after.

    Raises:
        MammoXAIError: naming the empty classes and how to fix the labels or the config.
    """
    counts = np.bincount([label for label in labels if label >= 0], minlength=len(class_names))
    if not counts.sum():
        raise MammoXAIError(
            source, "has no labelled image", "check label_key and the manifest's (or label CSV's) labels"
        )
    empty = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
    if empty:
        found = ", ".join(f"{name} {count}" for name, count in zip(class_names, counts, strict=True))
        raise MammoXAIError(
            source,
            f"has no image of class {', '.join(map(repr, empty))} ({found})",
            "add labelled images of it, or drop it from class_names / merge it into another class with label_map",
        )


def balanced_sampler(labels: Sequence[int], class_balance: str = "loss", seed: int = 0) -> WeightedRandomSampler | None:
    """A sampler drawing every class equally often when ``class_balance`` is ``"sampler"``, else None.

    The alternative to a class-weighted loss (``"loss"``): each epoch draws ``len(labels)`` images with
    replacement, image weight 1 / (images of its class), so a batch holds malignant images as often as normal
    ones. Unlabelled images (-1) are never drawn.

    Raises:
        MammoXAIError: an unknown ``class_balance``.
    """
    if class_balance not in CLASS_BALANCE_CHOICES:
        raise MammoXAIError("class_balance", f"is {class_balance!r}", f"use one of {', '.join(CLASS_BALANCE_CHOICES)}")
    if class_balance != "sampler":
        return None
    labels = np.asarray(labels)
    counts = np.bincount(labels[labels >= 0])
    weights = np.where(labels >= 0, 1.0 / counts[np.clip(labels, 0, None)].clip(min=1), 0.0)
    return WeightedRandomSampler(
        weights.tolist(), num_samples=len(labels), replacement=True, generator=torch.Generator().manual_seed(seed)
    )
