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

The served network, :class:`MetadataClassifier`, is the metadata-pretraining network with a class head added:
it keeps the metadata heads so that every prediction also says what the pixels look like (view, thickness, ...)
and can be checked against the DICOM header.

Example:
    net = BackboneClassifier("resnet18", num_classes=3)
    net.freeze("stem")       # or "none", "all_but_head", or an int k: stages 0..k
    logits = net(torch.rand(2, 1, 256, 208))      # (2, 3)
    net.unfreeze()
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mammoxai.errors import MammoXAIError
from mammoxai.io.preprocess import grid_shape
from mammoxai.nets.backbones import build_backbone
from mammoxai.nets.files import (
    check_recorded_settings,
    checkpoint_weights,
    read_torch_file,
    recorded_input_setting,
)
from mammoxai.nets.metadata_net import MetadataNet

__all__ = [
    "BackboneClassifier",
    "MetadataClassifier",
    "MultiViewClassifier",
    "FREEZE_CHOICES",
    "FUSIONS",
    "state_dict_problems",
    "load_checkpoint",
]

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


class StageFreezing:
    """Stage-wise freezing of ``self.backbone`` for a network that also sets ``self.stages`` (from
    :func:`_stage_names`), ``self.frozen = 0`` and ``self.config["backbone"]``; mixed into the fine-tuning networks.

    Attributes:
        frozen: the number of frozen stages (0: none; ``num_stages``: the whole backbone).
    """

    if TYPE_CHECKING:  # for type checkers only: TorchScript reads class annotations and cannot resolve these
        backbone: nn.Module
        stages: list[list[str]]
        frozen: int
        config: dict[str, Any]

    @property
    def num_stages(self) -> int:
        """Stages of the backbone, the stem included."""
        return len(self.stages)

    @property
    def last_block(self) -> str:
        """Name of the last stage of the backbone, the usual Grad-CAM target."""
        return f"backbone.{self.stages[-1][-1]}"

    def freeze(self, until: str | int = "none") -> Any:
        """Freeze the backbone up to a stage, unfreezing the rest; returns the network.

        Args:
            until: ``"none"``, ``"stem"`` (stage 0), an int ``k`` or ``"stage<k>"`` (stages 0..k), or
                ``"all_but_head"`` (every backbone stage; only the heads train).

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
        return self.train(self.training)  # type: ignore[attr-defined]

    def unfreeze(self) -> Any:
        """Make every parameter trainable again."""
        return self.freeze("none")

    def train(self, mode: bool = True) -> Any:
        """Like ``nn.Module.train``, but frozen stages stay in eval mode (their batch-norm statistics are kept)."""
        super().train(mode)  # type: ignore[misc]
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


class BackboneClassifier(StageFreezing, nn.Module):
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
        _check_num_classes(num_classes)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone(x)))


def _check_num_classes(num_classes: int) -> None:
    if int(num_classes) < 2:
        raise MammoXAIError("num_classes", f"is {num_classes}", "a classifier needs at least two classes")


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


class MetadataClassifier(StageFreezing, MetadataNet):
    """The served network: the metadata-pretraining network (:class:`~mammoxai.nets.MetadataNet`) with a class
    head on its representation ``z = sum_k z_k``.

    The class head reads the same ``z`` the metadata heads read (Litchfield et al., SPIE Medical Imaging 2022: the
    downstream classifier sits on the summed task representations), so one backbone pass gives both the class
    logits and, per metadata field, what the pixels look like — the view, the compressed thickness, the tube
    voltage, ... — which the predictor compares with the DICOM header as quality control. The heads stay valid
    through fine-tuning because they are trained jointly with the class head on the header labels, which every
    DICOM image carries for free (:class:`mammoxai.training.finetune.MetadataClassifierLoss`); see there why
    joint training rather than frozen heads.

    ``forward`` returns the class logits alone, so the trainer, the evaluator, Grad-CAM and ``verify_net_in_out``
    see an ordinary classifier; :meth:`forward_with_metadata` returns the metadata logits of the same pass too.
    ``forward`` compiles with ``torch.jit.script``, which the model zoo's ``monai.bundle ckpt_export`` check runs on
    ``network_def`` (the TorchScript module gives the class logits; the metadata heads and saliency need the
    Python network). The state dict is a :class:`~mammoxai.nets.MetadataNet`'s plus ``fc``, so a pretraining
    checkpoint loads into it unchanged, and :meth:`load_state_dict` also takes ``models/model.pt`` as a whole.
    Stage-wise freezing of the backbone is that of :class:`BackboneClassifier`.

    Args:
        backbone: backbone name, one of :data:`mammoxai.nets.BACKBONES`.
        num_classes: number of class logits.
        fields: metadata field → number of classes of its head, in head order (e.g. from
            :meth:`mammoxai.io.fields.MetadataLabelSpace.num_classes`).
        embed_dim: size of each ``z_k`` and of ``z``.
        matching_dim: size of the same-study matching embedding kept from pretraining.
        in_channels: image channels (1 for a mammogram).
        dropout: dropout probability before the class head.
        backbone_weights: optional local state dict for the backbone, see :func:`mammoxai.nets.build_backbone`.
        isolate_task_gradients: as :class:`~mammoxai.nets.MetadataNet`: each metadata head's loss trains only its
            own ``z_k``, which keeps the ``z_k`` ablatable.

    Example:
        net = MetadataClassifier("mammo_cnn", num_classes=3, fields={"view": 4, "kvp": 5}, embed_dim=64)
        logits = net(torch.rand(2, 1, 256, 208))                          # (2, 3)
        logits, fields = net.forward_with_metadata(torch.rand(2, 1, 256, 208))
        fields["view"].shape                                               # (2, 4)
    """

    def __init__(
        self,
        backbone: str = "mammo_cnn",
        num_classes: int = 3,
        fields: Mapping[str, int] | None = None,
        embed_dim: int = 64,
        matching_dim: int = 32,
        in_channels: int = 1,
        dropout: float = 0.2,
        backbone_weights: str | os.PathLike | None = None,
        isolate_task_gradients: bool = True,
    ) -> None:
        _check_num_classes(num_classes)
        super().__init__(
            backbone, fields, embed_dim, matching_dim, in_channels, backbone_weights, isolate_task_gradients
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, int(num_classes))
        self.stages = _stage_names(backbone, self.backbone)
        self.frozen = 0
        self.config.update(num_classes=int(num_classes), dropout=dropout)

    # properties TorchScript would otherwise compile: they read module names, which it cannot
    __jit_unused_properties__ = ["last_block", "num_stages", "task_names"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Class logits (B, num_classes): those of :meth:`forward_with_metadata`, without running the metadata heads.

        Written out rather than calling :meth:`forward_with_metadata` so that TorchScript compiles it (no ``super()``,
        no dict of mixed values); ``z`` is summed in the order :class:`~mammoxai.nets.MetadataNet` sums it, so the
        logits are the same to the bit.
        """
        features = self.backbone(x)
        z_tasks = []
        for projection in self.projections.values():
            z_tasks.append(projection(features))
        return self.fc(self.dropout(torch.stack(z_tasks).sum(dim=0)))

    def forward_with_metadata(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Class logits (B, num_classes) and field → metadata logits (B, classes), from one backbone pass."""
        out = super().forward(x)
        return self.fc(self.dropout(out["z"])), out["logits"]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, which also takes a checkpoint as ``train.json`` saves it (``models/model.pt``:
        the state dict under ``"model"``, beside the training ``"grid"``, ``"classes"`` and ``"views"``).

        MONAI's ``ckpt_export``, which the model zoo runs on every submitted bundle without ``key_in_ckpt``, and the
        zoo's usual ``net.load_state_dict(torch.load("models/model.pt"))`` pass the whole file. The recorded grid,
        classes and views are not checked here; :func:`load_checkpoint`, through which the bundle's own readers
        load, checks them.
        """
        return super().load_state_dict(checkpoint_weights(state_dict), strict=strict, assign=assign)


def state_dict_problems(network: nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Why ``state`` cannot be loaded into ``network``, in words a user can act on; empty when it fits.

    Metadata heads and the class count are described by what they mean (another field list, another number of
    bins, no heads at all: a checkpoint of a classifier without them) rather than by parameter names; any other
    difference is listed by parameter (the first three).
    """
    expected = network.state_dict()
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        return ["it does not hold a state dict (parameter name -> tensor)"]
    ours, theirs = _head_sizes(expected), _head_sizes(state)
    problems = []
    if ours and not theirs:
        problems.append("it has no metadata heads (a classifier trained without them, e.g. a MammoClassifier)")
    elif theirs and not ours:
        problems.append(f"it has metadata heads ({', '.join(theirs)}) that this network lacks")
    elif set(ours) != set(theirs):
        problems.append(f"its metadata heads are for {sorted(theirs)}, this network's for {sorted(ours)}")
    else:
        problems += [
            f"its {name} head has {theirs[name]} classes, this network's {ours[name]}"
            for name in ours
            if ours[name] != theirs[name]
        ]
    head, own = state.get("fc.weight"), expected.get("fc.weight")
    if head is not None and own is not None and head.ndim == 2 and head.shape[0] != own.shape[0]:
        problems.append(f"it was trained for {head.shape[0]} classes, this network has {own.shape[0]}")
    if problems:
        return problems
    mismatches = [f"missing {key}" for key in expected if key not in state]
    mismatches += [f"unexpected {key}" for key in state if key not in expected]
    mismatches += [
        f"{key} is {tuple(value.shape)}, not {tuple(expected[key].shape)}"
        for key, value in state.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if len(mismatches) > 3:
        mismatches = [*mismatches[:3], f"{len(mismatches) - 3} more differences"]
    return mismatches


def load_checkpoint(
    network: nn.Module,
    path: str | os.PathLike,
    problem: str,
    fix: str,
    map_location: str | torch.device = "cpu",
    image_size: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    views: Sequence[str] | None = None,
    as_start: bool = False,
    intensity_scaling: str | None = None,
    field_of_view: str | None = None,
) -> nn.Module:
    """Load a checkpoint as ``train.json`` writes it (a state dict, or one under ``"model"``) into ``network``.

    Every reader of classifier weights (the predictor, the evaluation, fine-tuning, corrections) loads through
    here, so a checkpoint of another network is explained the same way everywhere (:func:`state_dict_problems`).

    Args:
        network: loaded in place, and returned.
        path: the checkpoint file.
        problem: how the caller words a checkpoint that does not fit, e.g. ``"cannot be loaded into the network"``;
            the reasons follow it.
        fix: what the user should do, in both errors.
        map_location: where the tensors are loaded.
        image_size: the (height, width) grid the caller will run the network on; refused when the checkpoint
            records another training grid (``"grid"``, see :class:`~mammoxai.training.checkpoints.TrainingGrid`).
            Checkpoints without the record (older ones, bare state dicts) are not checked.
        class_names: the names the caller gives the network's logits, in order; refused when the checkpoint records
            other names or another order (``"classes"``, see :class:`~mammoxai.training.checkpoints.TrainingClasses`).
            Checkpoints without the record are not checked.
        views: the view names the caller stacks into each sample of a :class:`MultiViewClassifier` ``network``, in
            order (as :func:`~mammoxai.training.multiview.check_views` reads them); refused when the checkpoint
            records other views or another order (``"views"``, see
            :class:`~mammoxai.training.checkpoints.TrainingViews`), as is a recorded ``view_fusion`` other than the
            network's. Whether the checkpoint is of one image or several views per sample is compared with the
            network itself, with the reasons it does not fit. Checkpoints without the record are not checked.
        as_start: the weights start a new run (``--init classifier``) rather than being this network's: weights of
            one image per sample may then start a multi-view network they fit (``mean`` / ``max`` fusion apply the
            single-image backbone and head to every view; the patch classifier starts a two-view one), and the other
            way round. Views and fusion are still compared when both sides have them, and weights that do not fit
            (a ``concat`` head) are refused naming the views they were trained with, as without ``as_start``.
        intensity_scaling: how the caller scales the images it runs the network on
            (:func:`~mammoxai.io.preprocess.prepare_image`); refused when the checkpoint's ``"grid"`` record names
            another (a record older than the setting means ``"breast_percentiles"``). None is not checked.
        field_of_view: what the caller puts on the grid of the images it runs the network on, checked the same way
            (a record older than the setting means ``"breast"``).

    Raises:
        MammoXAIError: the file is not a readable PyTorch checkpoint, it does not fit ``network`` (also: it was
            trained on several views and the network reads one image, or the other way round, but for a start that
            fits), or it was trained on another grid than ``image_size``, another ``intensity_scaling`` or
            ``field_of_view``, with other class names than ``class_names``, on other ``views`` or with another view
            fusion than the network's.
    """
    path = Path(path)
    state = read_torch_file(path, "PyTorch checkpoint", fix, map_location)
    problems = []
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        grid, classes, view_record = state.get("grid"), state.get("classes"), state.get("views")
        view_record = view_record if isinstance(view_record, Mapping) else {}
        grid = grid if isinstance(grid, Mapping) else None
        recorded = {
            "image_size": None if grid is None else grid.get("image_size"),
            "intensity_scaling": None if grid is None else recorded_input_setting(grid, "intensity_scaling"),
            "field_of_view": None if grid is None else recorded_input_setting(grid, "field_of_view"),
            "class_names": classes.get("class_names") if isinstance(classes, Mapping) else None,
            "views": view_record.get("views"),
            "view_fusion": view_record.get("view_fusion"),
        }
        multi_view = isinstance(network, MultiViewClassifier)
        here = {
            "image_size": None if image_size is None else grid_shape(image_size),
            "intensity_scaling": intensity_scaling,
            "field_of_view": field_of_view,
            "class_names": class_names,
            "views": views if multi_view else None,
            "view_fusion": network.fusion if multi_view else None,
        }
        check_recorded_settings(path, {flag: (recorded[flag], here[flag]) for flag in recorded})
        if "views" in view_record and (recorded["views"] is None) == multi_view:
            problems.append(_view_count_problem(network, recorded))
        state = checkpoint_weights(state)
    if as_start or not problems:  # a start may swap one image and views where the weights fit: the reason follows
        weight_problems = state_dict_problems(network, state)
        problems = [*problems, *weight_problems] if weight_problems else []
    if problems:
        raise MammoXAIError(path, f"{problem}: {'; '.join(problems)}", fix)
    network.load_state_dict(state)
    return network


def _view_count_problem(network: nn.Module, record: Mapping[str, Any]) -> str:
    """Why a checkpoint of one image per sample does not fit a multi-view network, or the other way round: said by
    the views it was trained on (``views`` null is one image), since their parameters may be the same."""
    if record["views"] is None:
        return f"it was trained with views null (one image per sample), this network fuses {network.num_views} views"
    trained = f"views {json.dumps(list(record['views']))} and view_fusion {json.dumps(record['view_fusion'])}"
    return f"it was trained with {trained}, this network reads one image (views null)"


def _head_sizes(state: Mapping[str, Any]) -> dict[str, int]:
    """Metadata field → class count, from the ``heads.<field>.weight`` entries of a state dict."""
    return {
        key[len("heads.") : -len(".weight")]: int(value.shape[0])
        for key, value in state.items()
        if key.startswith("heads.") and key.endswith(".weight") and isinstance(value, torch.Tensor)
    }
