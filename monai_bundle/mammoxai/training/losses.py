"""Losses of metadata pretraining: masked per-field cross-entropy and supervised contrastive matching.

Header fields are often missing (no compression force recorded, an age stripped by anonymisation), so each
field's loss averages only over the images whose label is known (index -1 = unknown, as
:class:`mammoxai.io.fields.MetadataLabelSpace` encodes it) — a missing value is left out, never guessed.
Same-patient-and-study matching uses the supervised contrastive loss of Khosla et al., "Supervised Contrastive
Learning" (NeurIPS 2020): the other views of the same study (CC / MLO, left / right) are the positives, every
other image in the batch a negative.

Example:
    loss = PretrainingLoss(MetadataLoss({"view": 1.0, "kvp": 0.5}), SupervisedContrastiveLoss(0.1))
    out = net(images)                                        # mammoxai.nets.MetadataNet
    total = loss(out, {"fields": {"view": view, "kvp": kvp}, "group": study_ids})
    loss.terms(out, targets)   # {"loss": ..., "loss/view": ..., "loss/kvp": ..., "loss/contrastive": ...}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mammoxai.errors import MammoXAIError, parse_names
from mammoxai.io.fields import UNKNOWN

__all__ = ["masked_cross_entropy", "MetadataLoss", "SupervisedContrastiveLoss", "PretrainingLoss"]


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the images whose ``target`` is known (not -1).

    A batch in which no image has the field gives 0 (still connected to ``logits``, so a backward pass and
    DistributedDataParallel see every head used), not the NaN of an empty mean.

    Args:
        logits: (B, C) class scores; computed in float32 whatever their dtype (AMP).
        target: (B,) class indices, -1 where unknown.
    """
    known = (target != UNKNOWN).sum()
    total = F.cross_entropy(logits.float(), target.long(), ignore_index=UNKNOWN, reduction="sum")
    return total / known.clamp(min=1)


class MetadataLoss(nn.Module):
    """Weighted sum of :func:`masked_cross_entropy` over metadata fields.

    Args:
        weights: field → weight; the fields listed are the fields trained (every other head is ignored). A
            weight of 0 keeps a head in the network without training it. A list of field names (or one name,
            :func:`~mammoxai.errors.parse_names`) weighs each 1.0, as ``--fields "['view', 'thickness']"`` gives on
            the command line.

    Example:
        loss = MetadataLoss({"xray_system": 1.0, "view": 1.0, "age": 0.5})
        total = loss(net(images)["logits"], {"xray_system": s, "view": v, "age": a})
    """

    def __init__(self, weights: Mapping[str, float] | Sequence[str] | str) -> None:
        super().__init__()
        if not weights:
            raise MammoXAIError("loss weights", "name no field", "give each trained field a weight, e.g. 1.0")
        if not isinstance(weights, Mapping):
            weights = dict.fromkeys(parse_names(weights, "fields", ["view", "thickness"]), 1.0)
        for name, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
                raise MammoXAIError(f"loss weight of {name!r}", f"is {weight!r}", "use a number >= 0, e.g. 1.0")
        self.weights = {name: float(weight) for name, weight in weights.items()}

    def per_field(
        self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Field → unweighted masked cross-entropy."""
        missing = [name for name in self.weights if name not in logits or name not in targets]
        if missing:
            raise MammoXAIError(
                "loss weights", f"name {missing}, which the network or the labels lack", "use the trained field names"
            )
        return {name: masked_cross_entropy(logits[name], targets[name]) for name in self.weights}

    def weighted_sum(self, per_field: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss from the values of :meth:`per_field`."""
        return sum(self.weights[name] * value for name, value in per_field.items())

    def forward(self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.weighted_sum(self.per_field(logits, targets))


class SupervisedContrastiveLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, the ``L_out`` form) over group ids.

    For each anchor image ``i`` with at least one other image of its group in the batch (its positives
    ``P(i)``), ``-1/|P(i)| sum_{p in P(i)} log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) )`` with cosine
    similarities ``s``; averaged over such anchors. Images of unknown group (-1) are left out entirely, as
    anchors and as negatives: they might belong to any group. A batch without a single positive pair gives 0.

    Args:
        temperature: ``t``; small values weight the hardest negatives more. Khosla et al. use 0.1.

    Example:
        loss = SupervisedContrastiveLoss(temperature=0.1)
        value = loss(net(images)["match"], study_ids)   # study_ids: (B,) int, images of one study share an id
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if not temperature > 0:
            raise MammoXAIError("contrastive temperature", f"is {temperature}", "use a positive value such as 0.1")
        self.temperature = float(temperature)

    def forward(self, embeddings: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """``embeddings`` (B, D), normalised here; ``groups`` (B,) ints, -1 for unknown."""
        z = F.normalize(embeddings.float(), dim=1)
        known = groups != UNKNOWN
        pairs = known[:, None] & known[None, :] & ~torch.eye(len(groups), dtype=torch.bool, device=groups.device)
        positives = pairs & (groups[:, None] == groups[None, :])
        anchors = positives.any(dim=1)
        if not anchors.any():
            return embeddings.sum() * 0.0
        # only anchor rows: each has a positive, so its log-sum-exp is finite and no NaN reaches the gradient
        similarity = (z[anchors] @ z.T / self.temperature).masked_fill(~pairs[anchors], float("-inf"))
        log_probability = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
        positives = positives[anchors]
        mean_positive = torch.where(positives, log_probability, 0.0).sum(dim=1) / positives.sum(dim=1)
        return -mean_positive.mean()


class PretrainingLoss(nn.Module):
    """The pretraining objective: weighted metadata cross-entropies plus weighted same-study contrastive loss.

    Called as MONAI's ``loss_function(pred, label)`` with ``pred`` the output dict of
    :class:`~mammoxai.nets.MetadataNet` and ``label`` ``{"fields": {field: (B,) indices}, "group": (B,) ids}``.

    Args:
        metadata: the per-field loss.
        contrastive: the matching loss on ``pred["match"]``; None trains the fields only.
        contrastive_weight: weight of the matching loss.
    """

    def __init__(
        self,
        metadata: MetadataLoss,
        contrastive: SupervisedContrastiveLoss | None = None,
        contrastive_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not math.isfinite(contrastive_weight) or contrastive_weight < 0:
            raise MammoXAIError("contrastive weight", f"is {contrastive_weight}", "use a number >= 0, e.g. 1.0")
        self.metadata = metadata
        self.contrastive = contrastive
        self.contrastive_weight = float(contrastive_weight)

    def terms(self, pred: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``loss`` (the total) and its unweighted parts, ``loss/<field>`` and ``loss/contrastive``."""
        fields = self.metadata.per_field(pred["logits"], target["fields"])
        total = self.metadata.weighted_sum(fields)
        terms = {f"loss/{name}": value for name, value in fields.items()}
        if self.contrastive is not None:
            terms["loss/contrastive"] = self.contrastive(pred["match"], target["group"])
            total = total + self.contrastive_weight * terms["loss/contrastive"]
        return {"loss": total, **terms}

    def forward(self, pred: Mapping[str, Any], target: Mapping[str, Any]) -> torch.Tensor:
        return self.terms(pred, target)["loss"]
