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
  records which strategy the run is.
* ``classifier``: a whole :class:`~mammoxai.nets.finetune.BackboneClassifier` checkpoint (a previous fine-tune,
  to continue on new data or another device); its class count must be this run's.

Every wrong start (missing file, a file that is not a state dict, weights of another architecture or class count)
is a :class:`~mammoxai.errors.MammoXAIError` naming the file, raised while the config is parsed, before the first
image is loaded.

Example:
    net = build_finetune_classifier("mammo_cnn", 3, init="pretrained", init_weights="models/pretrained.pt",
                                    freeze="stem")
    trainer.add_event_handler(...)  # or, in a config: {"_target_": "...UnfreezeAt", "network": ..., "epoch": 5}
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch.utils.data import WeightedRandomSampler

from mammoxai.errors import MammoXAIError
from mammoxai.nets.backbones import build_backbone
from mammoxai.nets.finetune import BackboneClassifier, MultiViewClassifier
from mammoxai.training.pretrain import load_pretrained

logger = logging.getLogger(__name__)

__all__ = [
    "INIT_CHOICES",
    "CLASS_BALANCE_CHOICES",
    "initialise",
    "build_finetune_classifier",
    "UnfreezeAt",
    "check_labels",
    "balanced_sampler",
]

INIT_CHOICES = ("scratch", "pretrained", "external", "incremental", "classifier")
CLASS_BALANCE_CHOICES = ("loss", "sampler", "none")


def _backbone_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def initialise(
    network: BackboneClassifier, init: str = "scratch", weights: str | os.PathLike | None = None
) -> BackboneClassifier:
    """Load the starting weights of ``network`` by strategy (see the module docstring); returns it.

    Raises:
        MammoXAIError: unknown ``init``; ``weights`` missing, unreadable, not a state dict, or of another
            backbone, input channel count or class count.
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
        pretrained = load_pretrained(path).network
        theirs = (_backbone_key(pretrained.config["backbone"]), pretrained.config["in_channels"])
        if theirs != (_backbone_key(backbone), network.config["in_channels"]):
            raise MammoXAIError(
                path,
                f"is a pretrained {theirs[0]} for {theirs[1]}-channel images, but this network is a {backbone} "
                f"for {network.config['in_channels']}-channel images",
                f"set backbone to {pretrained.config['backbone']!r}, or pretrain a {backbone}",
            )
        network.backbone.load_state_dict(pretrained.backbone.state_dict())
    elif init == "external":
        loaded, _ = build_backbone(
            backbone, network.config["in_channels"], path
        )  # checks the file against the architecture
        network.backbone.load_state_dict(loaded.state_dict())
    else:
        _load_classifier(network, path)
    logger.info("initialised the %s classifier from %s (%s)", backbone, path, init)
    return network


def _load_classifier(network: BackboneClassifier, path: Path) -> None:
    fix = "pass a model.pt written by train.json with the same backbone and class_names"
    if not path.is_file():
        raise MammoXAIError(path, "classifier checkpoint not found", fix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise MammoXAIError(
            path, f"is not a readable PyTorch checkpoint ({str(error).splitlines()[0]})", fix
        ) from error
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise MammoXAIError(path, "does not hold a state dict (parameter name -> tensor)", fix)
    expected = network.state_dict()
    head = state.get("fc.weight")
    if (
        head is not None
        and head.shape[1:] == expected["fc.weight"].shape[1:]
        and head.shape[0] != expected["fc.weight"].shape[0]
    ):
        problem = f"was trained for {head.shape[0]} classes, this run has {expected['fc.weight'].shape[0]}"
        raise MammoXAIError(path, problem, "use the class_names it was trained with, or init 'pretrained' / 'external'")
    problems = [f"missing {key}" for key in expected if key not in state]
    problems += [f"unexpected {key}" for key in state if key not in expected]
    problems += [
        f"{key} is {tuple(value.shape)}, not {tuple(expected[key].shape)}"
        for key, value in state.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if problems:
        shown = "; ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise MammoXAIError(path, f"is not a {network.config['backbone']} classifier: {shown}", fix)
    network.load_state_dict(state)


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
) -> BackboneClassifier:
    """The fine-tuning network of ``configs/train.json``: a :class:`BackboneClassifier` or, with ``views``, a
    :class:`MultiViewClassifier` over that many views, initialised (:func:`initialise`) and frozen
    (:meth:`BackboneClassifier.freeze`) as configured."""
    if views is None:
        network = BackboneClassifier(backbone, num_classes, in_channels, dropout)
    else:
        network = MultiViewClassifier(
            backbone, num_classes, in_channels, dropout, num_views=len(views), fusion=view_fusion
        )
    return initialise(network, init, init_weights).freeze(freeze)


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
    empty = [name for name, count in zip(class_names, counts) if count == 0]
    if empty:
        found = ", ".join(f"{name} {count}" for name, count in zip(class_names, counts))
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
