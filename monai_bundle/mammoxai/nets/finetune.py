"""A classifier on any named backbone, with the backbone split into stages that can be frozen and unfrozen.

The fine-tuning network of issue 5: a backbone from :func:`mammoxai.nets.build_backbone` (the one metadata
pretraining trains in :class:`~mammoxai.nets.MetadataNet`, so its weights carry over one to one), dropout and
a linear head. Layer freezing is one of the strategies the Pittsburgh study compared (J Digit Imaging 2020:
scratch, natural-image, medical and incremental pretraining, each fine-tuned with none, some or all but the
last layers frozen): with few labelled images, freezing the early, generic stages keeps pretrained features from
being overwritten by noisy gradients; unfreezing them after the head has settled ("gradual unfreezing", Howard
and Ruder, ACL 2018) lets them adapt later without the random head's early gradients.

A backbone is split into stages, stage 0 being the stem: ResNet ``conv1``/``bn1`` then ``layer1``..``layer4``;
EfficientNet ``features.0`` then ``features.1``..``features.8``; ``mammo_cnn`` ``features.stem`` then
``features.block1``..``block4``. Freezing "up to stage k" freezes stages 0..k. Frozen batch-norm layers also stop
updating their running statistics (they stay in eval mode while the network trains), otherwise their
normalisation would drift away from what the frozen weights after them expect.

Example:
    net = BackboneClassifier("resnet18", num_classes=3)
    net.freeze("stem")       # or "none", "all_but_head", or an int k: stages 0..k
    logits = net(torch.rand(2, 1, 256, 208))      # (2, 3)
    net.unfreeze()
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from mammoxai.errors import MammoXAIError
from mammoxai.nets.backbones import build_backbone

__all__ = ["BackboneClassifier", "MultiViewClassifier", "FREEZE_CHOICES", "FUSIONS"]

FREEZE_CHOICES = ("none", "stem", "all_but_head")
"""Named freezing levels; an int ``k`` (or ``"stage<k>"``) freezes the stem and stages 1..k."""

FUSIONS = ("concat", "mean", "max")
"""How :class:`MultiViewClassifier` fuses the features of the views."""


def _stage_names(backbone_name: str, backbone: nn.Module) -> list[list[str]]:
    """Qualified names (inside the backbone) of the modules of each stage, stem first."""
    key = backbone_name.strip().lower().replace("-", "_")
    if key.startswith("resnet"):
        return [["conv1", "bn1"], *[[f"layer{index}"] for index in range(1, 5)]]
    return [[f"features.{name}"] for name, _ in backbone.features.named_children()]  # EfficientNet and mammo_cnn


class BackboneClassifier(nn.Module):
    """Backbone → dropout → linear class logits, with stage-wise freezing.

    Args:
        backbone: backbone name, one of :data:`mammoxai.nets.BACKBONES`.
        num_classes: number of output logits.
        in_channels: image channels (1 for a mammogram).
        dropout: dropout probability before the head.
        backbone_weights: optional local state dict for the backbone (e.g. ImageNet weights saved on disk), see
            :func:`mammoxai.nets.build_backbone`; never downloaded.

    Attributes:
        config: the constructor arguments but the weights file; ``BackboneClassifier(**net.config)`` rebuilds it.
        frozen: the number of frozen stages (0: none; ``num_stages``: the whole backbone).
    """

    def __init__(
        self,
        backbone: str = "mammo_cnn",
        num_classes: int = 3,
        in_channels: int = 1,
        dropout: float = 0.2,
        backbone_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise MammoXAIError("num_classes", f"is {num_classes}", "a classifier needs at least two classes")
        self.backbone, num_features = build_backbone(backbone, in_channels, backbone_weights)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, int(num_classes))
        self.stages = _stage_names(backbone, self.backbone)
        self.frozen = 0
        self.config: dict[str, Any] = {
            "backbone": backbone,
            "num_classes": int(num_classes),
            "in_channels": in_channels,
            "dropout": dropout,
        }

    @property
    def num_stages(self) -> int:
        """Stages of the backbone, the stem included."""
        return len(self.stages)

    @property
    def last_block(self) -> str:
        """Name of the last stage of the backbone, the usual Grad-CAM target."""
        return f"backbone.{self.stages[-1][-1]}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone(x)))

    def freeze(self, until: str | int = "none") -> BackboneClassifier:
        """Freeze the backbone up to a stage, unfreezing the rest; returns the network.

        Args:
            until: ``"none"``, ``"stem"`` (stage 0), an int ``k`` or ``"stage<k>"`` (stages 0..k), or
                ``"all_but_head"`` (every backbone stage; only the linear head trains).

        Raises:
            MammoXAIError: an unknown level, or a stage the backbone does not have.
        """
        count = self._stage_count(until)
        self.frozen = count
        frozen = {name for stage in self.stages[:count] for name in stage}
        for name, module in self.backbone.named_modules():
            inside = any(name == root or name.startswith(f"{root}.") for root in frozen)
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(not inside)
        return self.train(self.training)

    def unfreeze(self) -> BackboneClassifier:
        """Make every parameter trainable again."""
        return self.freeze("none")

    def train(self, mode: bool = True) -> BackboneClassifier:
        """Like ``nn.Module.train``, but frozen stages stay in eval mode (their batch-norm statistics are kept)."""
        super().train(mode)
        for stage in self.stages[: self.frozen]:
            for name in stage:
                self.backbone.get_submodule(name).eval()
        return self

    def _stage_count(self, until: str | int) -> int:
        fix = f"use one of {', '.join(FREEZE_CHOICES)}, or an int 0..{self.num_stages - 1} (stem and stages up to it)"
        if isinstance(until, str) and until.strip().lower().startswith("stage") and until.strip()[5:].isdigit():
            until = int(until.strip()[5:])
        if isinstance(until, bool) or not isinstance(until, (str, int)):
            raise MammoXAIError("freeze", f"is {until!r}", fix)
        if isinstance(until, int):
            if not 0 <= until < self.num_stages:
                raise MammoXAIError("freeze", f"stage {until} is not a stage of {self.config['backbone']}", fix)
            return until + 1
        named = {"none": 0, "stem": 1, "all_but_head": self.num_stages}
        if until.strip().lower() not in named:
            raise MammoXAIError("freeze", f"is {until!r}", fix)
        return named[until.strip().lower()]


class MultiViewClassifier(BackboneClassifier):
    """Several views of one breast (e.g. CC and MLO) through one shared backbone, features fused, one head.

    Multi-view input was one of the options of the Pittsburgh study (J Digit Imaging 2020); radiologists read a
    finding in two projections, and a lesion hidden by overlapping tissue in one view may be clear in the other.
    The backbone is shared (the same weights see every view, so initialisation and freezing work exactly as for
    :class:`BackboneClassifier`) and the per-view features are fused by ``concat`` (the head can weigh CC and MLO
    differently; the views must come in a fixed order), ``mean`` or ``max`` (order-free).

    Args:
        backbone, num_classes, in_channels, dropout, backbone_weights: as :class:`BackboneClassifier`.
        num_views: views per sample.
        fusion: one of :data:`FUSIONS`.

    Example:
        net = MultiViewClassifier("mammo_cnn", num_classes=3, num_views=2)
        logits = net(torch.rand(4, 2, 1, 256, 208))   # (batch, view, channel, h, w) -> (4, 3)
    """

    def __init__(
        self,
        backbone: str = "mammo_cnn",
        num_classes: int = 3,
        in_channels: int = 1,
        dropout: float = 0.2,
        backbone_weights: str | os.PathLike | None = None,
        num_views: int = 2,
        fusion: str = "concat",
    ) -> None:
        super().__init__(backbone, num_classes, in_channels, dropout, backbone_weights)
        if fusion not in FUSIONS:
            raise MammoXAIError("view_fusion", f"is {fusion!r}", f"use one of {', '.join(FUSIONS)}")
        if int(num_views) < 1:
            raise MammoXAIError("views", f"gives {num_views} views", "name at least one view, e.g. ['CC', 'MLO']")
        self.num_views, self.fusion = int(num_views), fusion
        if fusion == "concat":
            self.fc = nn.Linear(self.fc.in_features * self.num_views, int(num_classes))
        self.config.update(num_views=self.num_views, fusion=fusion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.num_views:
            raise ValueError(f"expected (batch, {self.num_views} views, channels, h, w), got {tuple(x.shape)}")
        batch, views = x.shape[:2]
        features = self.backbone(x.flatten(0, 1)).unflatten(0, (batch, views))
        if self.fusion == "concat":
            fused = features.flatten(1)
        else:
            fused = features.mean(1) if self.fusion == "mean" else features.amax(1)
        return self.fc(self.dropout(fused))
