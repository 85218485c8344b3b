"""The metadata-pretraining network: per-task representations that sum into one image representation.

After Litchfield et al., "Mammographic image metadata learning for model pretraining and explainable
predictions" (SPIE Medical Imaging 2022, doi:10.1117/12.2626199). A backbone turns a mammogram into features
``f``; each metadata task ``k`` (X-ray system, view, laterality, thickness, ...) has its own projection
``z_k = P_k(f)``; the image representation is their sum ``z = sum_k z_k``; one classification head per task
reads ``z``, and a matching projection of ``z`` is trained contrastively to bring images of the same patient
and study together. Because ``z`` is a sum, a task's contribution can be *ablated* — ``z_k`` replaced by, say,
its training mean — and the change in any downstream prediction measures how much that prediction rests on
what was learned for task ``k``.

For that to mean something, ``z_k`` must hold what task ``k`` learned. Every head reads the whole ``z``, so
without care the gradient reaching every ``z_k`` would be the same (``dL/dz_k = dL/dz``) and the projections
would stay interchangeable copies. With ``isolate_task_gradients`` (the default) head ``k`` sees the value of
``z`` but its loss flows back only through ``z_k``: the forward pass is exactly the head on ``z``, and the
other tasks' parts of ``z`` are inputs it may use but not shape. The matching loss trains all of ``z``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mammoxai.errors import MammoXAIError
from mammoxai.nets.backbones import build_backbone

__all__ = ["MetadataNet"]


class MetadataNet(nn.Module):
    """Backbone → per-task projections ``z_k`` → ``z = sum_k z_k`` → one head per task and a matching embedding.

    Args:
        backbone: backbone name, one of :data:`mammoxai.nets.backbones.BACKBONES` (e.g. ``"resnet18"``,
            ``"resnet50"``, ``"efficientnet-b0"``).
        fields: metadata task name → number of classes of its head, in head order (e.g. from
            :meth:`mammoxai.io.fields.MetadataLabelSpace.num_classes`).
        embed_dim: size of each ``z_k`` and of ``z``.
        matching_dim: size of the L2-normalised matching embedding.
        in_channels: image channels (1 for a mammogram).
        backbone_weights: optional path of a torchvision state dict for the backbone (e.g. ImageNet weights
            saved on disk); never downloaded. See :func:`mammoxai.nets.backbones.build_backbone`.
        isolate_task_gradients: train ``z_k`` by task ``k``'s loss alone (see the module docstring); False
            lets every head's loss train every projection.

    Attributes:
        config: the constructor arguments but the weights file; ``MetadataNet(**net.config)`` rebuilds the
            architecture, so a checkpoint that stores it can be loaded without the training config.

    Example:
        net = MetadataNet("resnet18", fields={"view": 4, "laterality": 2, "kvp": 5})
        out = net(torch.rand(4, 1, 256, 208))
        out["logits"]["view"].shape           # (4, 4)
        out["z"].shape, out["match"].shape    # (4, 256), (4, 128)
        z_without_kvp = net.represent(images, ablate={"kvp": mean_z_kvp})
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        fields: Mapping[str, int] | None = None,
        embed_dim: int = 256,
        matching_dim: int = 128,
        in_channels: int = 1,
        backbone_weights: str | os.PathLike | None = None,
        isolate_task_gradients: bool = True,
    ) -> None:
        super().__init__()
        fields = dict(fields or {})
        if not fields:
            raise MammoXAIError("fields", "names no metadata task", "give at least one field and its number of classes")
        for name, num_classes in fields.items():
            if not name or "." in name:
                raise MammoXAIError(f"field {name!r}", "is not a usable task name", "use a name without dots")
            if int(num_classes) < 1:
                raise MammoXAIError(f"field {name!r}", f"has {num_classes} classes", "a head needs at least one")
        self.backbone, num_features = build_backbone(backbone, in_channels, backbone_weights)
        self.projections = nn.ModuleDict({name: _mlp(num_features, embed_dim, embed_dim) for name in fields})
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, int(count)) for name, count in fields.items()})
        self.matcher = _mlp(embed_dim, embed_dim, matching_dim)
        self.isolate_task_gradients = isolate_task_gradients
        self.config: dict[str, Any] = {
            "backbone": backbone,
            "fields": {name: int(count) for name, count in fields.items()},
            "embed_dim": embed_dim,
            "matching_dim": matching_dim,
            "in_channels": in_channels,
            "isolate_task_gradients": isolate_task_gradients,
        }

    @property
    def task_names(self) -> list[str]:
        """The metadata tasks, in head order."""
        return list(self.heads)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        """Everything pretraining and explanation need from a batch of images ``(B, C, H, W)``.

        Returns:
            ``features`` (B, F) pooled backbone features; ``z_tasks`` task → (B, embed_dim) ``z_k``;
            ``z`` (B, embed_dim) their sum; ``logits`` task → (B, classes), each head reading ``z``;
            ``match`` (B, matching_dim) L2-normalised matching embedding of ``z``.
        """
        features = self.backbone(x)
        z_tasks = self._project(features)
        z = _total(z_tasks)
        if self.isolate_task_gradients:
            # value: exactly z (a - a == 0); gradient: only into z_k
            inputs = {name: z.detach() + (z_k - z_k.detach()) for name, z_k in z_tasks.items()}
            logits = {name: head(inputs[name]) for name, head in self.heads.items()}
        else:
            logits = self.field_logits(z)
        return {"features": features, "z_tasks": z_tasks, "z": z, "logits": logits, "match": self.match_embedding(z)}

    def task_representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Task → ``z_k`` (B, embed_dim) for a batch of images."""
        return self._project(self.backbone(x))

    def represent(self, x: torch.Tensor, ablate: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The representation ``z`` (B, embed_dim), with the named ``z_k`` replaced: the ablation primitive.

        Args:
            x: images (B, C, H, W).
            ablate: task → replacement for its ``z_k``, an (embed_dim,) vector (e.g. the mean of ``z_k`` over
                the training set) or a (B, embed_dim) batch.

        Raises:
            MammoXAIError: ``ablate`` names a task the network does not have, or a replacement has the wrong size.
        """
        z_tasks = self.task_representations(x)
        for name, value in (ablate or {}).items():
            if name not in z_tasks:
                raise MammoXAIError(
                    f"ablated task {name!r}", "is not a task of this network", f"use one of {self.task_names}"
                )
            current = z_tasks[name]
            value = torch.as_tensor(value, dtype=current.dtype, device=current.device)
            if value.shape not in (current.shape[1:], current.shape):
                raise MammoXAIError(
                    f"ablated task {name!r}",
                    f"replacement has shape {tuple(value.shape)}",
                    f"give a vector of {current.shape[1]} values or a {tuple(current.shape)} batch",
                )
            z_tasks[name] = value.expand_as(current)
        return _total(z_tasks)

    def field_logits(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Task → (B, classes): every head applied to a given representation (e.g. an ablated ``z``)."""
        return {name: head(z) for name, head in self.heads.items()}

    def match_embedding(self, z: torch.Tensor) -> torch.Tensor:
        """The L2-normalised matching embedding (B, matching_dim) of a representation."""
        return F.normalize(self.matcher(z), dim=1)

    def _project(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: projection(features) for name, projection in self.projections.items()}


def _total(z_tasks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack(tuple(z_tasks.values())).sum(dim=0)


def _mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Two linear layers with a ReLU between: the projection-head shape of SimCLR (Chen et al., ICML 2020)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))
