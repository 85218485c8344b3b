"""One-channel image backbones chosen by name, with ImageNet weights from a local file and never from the network.

A backbone maps a batch of images ``(B, C, H, W)`` to pooled features ``(B, F)``. They are torchvision's
ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) and EfficientNets (Tan and Le,
"EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019) with the first
convolution rebuilt for ``in_channels`` and the classifier removed. torchvision is used, rather than MONAI's
``ResNet`` / ``EfficientNetBN``, because the ImageNet weights users already have on disk are torchvision state
dicts, so one weight format serves both families. ``mammo_cnn`` is the bundle's own small classifier
(:class:`~mammoxai.nets.classifier.MammoClassifier`, about 0.15 M parameters) without its last layer: it trains
on a CPU, and its pretrained ``features`` have the shapes of those of ``configs/train.json``'s classifier.

Weights are never downloaded (hospital networks are often offline, and a run must not depend on a URL): pass
the path of a state dict (e.g. torchvision's ImageNet ResNet-18 weights, saved with ``torch.save(model.state_dict(),
path)`` on a machine that has them). The first convolution's RGB kernels are summed into one grey kernel,
which gives exactly the response the RGB network has to a grey image copied into all three channels.

Example:
    backbone, num_features = build_backbone("resnet18", in_channels=1)
    features = backbone(torch.rand(2, 1, 256, 208))  # (2, 512)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn

from mammoxai.errors import MammoXAIError, first_of
from mammoxai.io.preprocess import grid_shape
from mammoxai.nets.classifier import MammoClassifier
from mammoxai.nets.files import read_torch_file

__all__ = ["BACKBONES", "build_backbone", "adapt_input_channels", "check_backbone_grid"]

# family -> (qualified name of the first convolution, of the classifier that is removed)
_FAMILIES: dict[str, tuple[str, str]] = {
    "resnet": ("conv1", "fc"),
    "efficientnet": ("features.0.0", "classifier"),
    "mammo_cnn": ("features.stem.0", "fc"),
}
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    **{
        name: getattr(torchvision.models, name)
        for name in (
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "efficientnet_b0",
            "efficientnet_b1",
            "efficientnet_b2",
            "efficientnet_b3",
        )
    },
    "mammo_cnn": lambda weights: MammoClassifier(num_classes=1, dropout=0.0),
}

BACKBONES: tuple[str, ...] = tuple(_BUILDERS)
"""Backbone names :func:`build_backbone` accepts (``-`` and ``_`` are interchangeable: ``efficientnet-b0``)."""

# family -> the smallest grid side it runs on: mammo_cnn's stem and three poolings halve the image four times and
# fail below one pixel; torchvision's five halvings leave one pixel at 32, below which a batch of one image (a
# run's last batch) cannot be batch-normalised in training
_MIN_SIDE: dict[str, int] = {"resnet": 32, "efficientnet": 32, "mammo_cnn": 16}


def _family(name: str) -> tuple[str, str]:
    """``(key, family)`` of a backbone name, e.g. ``("efficientnet_b0", "efficientnet")`` for "EfficientNet-B0".

    Raises:
        MammoXAIError: the name is no backbone.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in _BUILDERS:
        raise MammoXAIError(f"backbone {name!r}", "is not a known backbone", f"use one of {', '.join(BACKBONES)}")
    return key, next(family for family in _FAMILIES if key.startswith(family))


def check_backbone_grid(backbone: str, image_size: int | Sequence[int], setting: str = "image_size") -> None:
    """Refuse a grid smaller than ``backbone`` runs on, before a run reads an image: the network would otherwise
    fail in its first training step, after every image was read and cached, with PyTorch's "output size is too
    small".

    Args:
        backbone: a name of :data:`BACKBONES`.
        image_size: the grid the network sees: (h, w), or one int for a square.
        setting: the config setting that gives the grid, named in the message: ``image_size``, or ``patch_size``
            for the square patches of patch training.

    Raises:
        MammoXAIError: an unknown backbone, a value that is no grid, or a side below the backbone's minimum.
    """
    _, family = _family(backbone)
    height, width = grid_shape(image_size, setting)
    smallest = _MIN_SIDE[family]
    if min(height, width) < smallest:
        problem = f"is {height}x{width}; {backbone} needs {smallest} pixels a side, which its downsampling makes one"
        least = f'"[{smallest}, {smallest}]", e.g. "[256, 208]"' if setting == "image_size" else str(smallest)
        raise MammoXAIError(setting, problem, f"give at least {least}")


def build_backbone(name: str, in_channels: int = 1, weights: str | os.PathLike | None = None) -> tuple[nn.Module, int]:
    """The backbone ``name`` for ``in_channels``-channel images, and the size of the features it returns.

    Args:
        name: one of :data:`BACKBONES`; case and ``-`` / ``_`` do not matter.
        in_channels: image channels (1 for a mammogram).
        weights: optional path of a state dict of the same architecture: torchvision's (e.g. ImageNet weights)
            or, for ``mammo_cnn``, a ``MammoClassifier``'s. Its classifier is ignored and its first convolution
            adapted to ``in_channels`` with :func:`adapt_input_channels`. None initialises randomly.

    Returns:
        ``(module, num_features)``: the module maps ``(B, in_channels, H, W)`` to ``(B, num_features)``.

    Raises:
        MammoXAIError: unknown ``name``; ``weights`` missing, unreadable or of another architecture.
    """
    key, family = _family(name)
    if in_channels < 1:
        raise MammoXAIError("in_channels", f"is {in_channels}", "use 1 for mammograms")
    stem_name, head_name = _FAMILIES[family]
    model = _BUILDERS[key](weights=None)
    linears = [module for module in model.get_submodule(head_name).modules() if isinstance(module, nn.Linear)]
    num_features = linears[-1].in_features
    model.set_submodule(head_name, nn.Identity())
    stem = model.get_submodule(stem_name)
    conv = nn.Conv2d(
        in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=stem.bias is not None
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision initialises stems
    model.set_submodule(stem_name, conv)
    if weights is not None:
        _load_weights(model, Path(weights), key, stem_name, head_name)
    return model, num_features


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-convolution kernels ``(O, I, k, k)`` for ``in_channels`` inputs instead of ``I``.

    Each new channel gets the sum of the ``I`` kernels divided by ``in_channels``. A grey image copied into
    every channel then gives exactly the response the original network gives it copied into its ``I``
    channels; for one channel this is the plain sum of the RGB kernels.
    """
    if weight.shape[1] == in_channels:
        return weight
    return weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels


def _load_weights(model: nn.Module, path: Path, name: str, stem_name: str, head_name: str) -> None:
    fix = f"pass a state dict of a {name} network, saved with torch.save(model.state_dict(), path)"
    if not path.is_file():
        raise MammoXAIError(path, "backbone weights file not found", f"{fix}, or null to start from random weights")
    state = read_torch_file(path, "PyTorch weights file", fix)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise MammoXAIError(path, "does not hold a state dict (parameter name -> tensor)", fix)
    state = {key: value for key, value in state.items() if not key.startswith(f"{head_name}.")}
    stem_key = f"{stem_name}.weight"
    if stem_key in state:
        state[stem_key] = adapt_input_channels(state[stem_key], model.get_submodule(stem_name).in_channels)
    expected = model.state_dict()
    problems = [f"missing {key}" for key in expected if key not in state]
    problems += [f"unexpected {key}" for key in state if key not in expected]
    problems += [
        f"{key} has shape {tuple(value.shape)}, not {tuple(expected[key].shape)}"
        for key, value in state.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if problems:
        raise MammoXAIError(path, f"does not fit {name}: {first_of(problems, 5, '; ')}", fix)
    model.load_state_dict(state)
