"""CorRELAX's lesion-crop classifier: what ``configs/train_lesion_crops.json`` needs beyond MONAI's engines.

Mellado et al. (CorRELAX, Frontiers in Oncology 2025) train a classifier on multi-scale crops around annotated
lesions - mass, calcification, other finding, no finding - and run it over 256 × 256 local views of the
full-resolution image (:class:`~mammoxai.saliency.CorRELAX`). They report its per-class F1 (0.8432 for
calcifications, 0.7392 for masses on VinDr-Mammo), so that is what validation measures here: per-class
precision, recall and F1 and their macro mean, as the checkpoint's key metric and in a report.

The crops themselves are :class:`~mammoxai.training.patches.PatchDataset` with ``labels="finding"`` and several
``scales``; the classes are :data:`~mammoxai.data.findings.LESION_CLASSES`. The checkpoint records the grid,
intensity scaling, view size and class names it was trained with (:class:`LesionCropRecord`), which the saliency
evaluation requires again (:func:`load_lesion_checkpoint`).

Example:
    python -m monai.bundle run --config_file configs/train_lesion_crops.json --dataset_dir synth \\
        --image_size "[512, 416]" --view_size 128
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from sklearn.metrics import confusion_matrix
from torch import nn

from mammoxai.errors import MammoXAIError
from mammoxai.io.preprocess import check_field_of_view, check_intensity_scaling, grid_shape
from mammoxai.metrics import per_class_scores
from mammoxai.nets.backbones import check_backbone_grid
from mammoxai.nets.files import check_recorded_settings, read_torch_file, recorded_input_setting
from mammoxai.reports import Report, confusion_matrix_figure
from mammoxai.training.evaluate_classifier import load_checkpoints
from mammoxai.training.settings import check_settings

logger = logging.getLogger(__name__)

__all__ = [
    "LESION_TRAIN_COMMAND",
    "check_crop_settings",
    "LesionCropRecord",
    "load_lesion_checkpoint",
    "check_crop_labels",
    "MacroF1",
    "LesionCropReport",
]

LESION_TRAIN_COMMAND = (
    "python -m monai.bundle run --config_file configs/train_lesion_crops.json --dataset_dir <studies>"
)
#: the key of :class:`LesionCropRecord` in ``lesion_crops.pt``
RECORD_KEY = "crops"


def check_crop_settings(image_size: int | Sequence[int], view_size: object, backgrounds: object) -> None:
    """Refuse crop settings no training can use, in ``train_lesion_crops.json``'s ``initialize``, before any image
    is read: a view larger than the grid trains on zero padding (macro F1 0), a view smaller than the crop network
    (``mammo_cnn``) runs on fails in its first training step, a negative background count would silently give no
    background crop.

    Raises:
        MammoXAIError: ``view_size`` is not a positive whole number, is below ``mammo_cnn``'s smallest grid or
            exceeds the grid's shorter side; ``backgrounds`` is not a whole number of 0 or more; ``image_size`` is
            not a grid.
    """
    grid = grid_shape(image_size, "image_size")
    check_settings(view_size=view_size, backgrounds=backgrounds)
    view = int(view_size)
    check_backbone_grid("mammo_cnn", view, "view_size")
    if view > min(grid):
        raise MammoXAIError(
            "view_size",
            f"is {view}, larger than the {grid[0]}x{grid[1]} grid: its crops would be mostly zero padding",
            f"give a view_size of at most {min(grid)}, or a larger --image_size",
        )


class LesionCropRecord:
    """What a lesion-crop classifier was trained on, saved as ``"crops"`` in ``lesion_crops.pt`` beside ``"model"``.

    CorRELAX runs the classifier over ``view_size`` local views of the ``image_size`` grid and reads its outputs by
    class name. A CNN runs on any grid, view and intensities and gives as many outputs whatever their names, so a
    classifier used at another grid, intensity scaling, field of view, view size or class order gives maps and pointing-game scores
    with no error; :func:`load_lesion_checkpoint` compares this record with the evaluation's settings and refuses a
    mismatch. An object with ``state_dict`` so ``CheckpointSaver`` saves it.

    Args:
        image_size: (height, width) of the training grid, or one int for a square grid.
        view_size: side of the square crops the classifier sees.
        class_names: the classes, in output order.
        intensity_scaling: how :func:`~mammoxai.io.preprocess.prepare_image` scaled the training images; records
            older than the setting name none and mean ``"breast_percentiles"``.
        field_of_view: what :func:`~mammoxai.io.preprocess.prepare_image` put on the grid; older records mean
            ``"breast"``.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        view_size: int,
        class_names: Sequence[str],
        intensity_scaling: str = "breast_percentiles",
        field_of_view: str = "breast",
    ) -> None:
        self.image_size = list(grid_shape(image_size))
        self.view_size, self.class_names = int(view_size), list(class_names)
        self.intensity_scaling = check_intensity_scaling(intensity_scaling)
        self.field_of_view = check_field_of_view(field_of_view)

    def state_dict(self) -> dict[str, Any]:
        return {
            "image_size": list(self.image_size),
            "view_size": self.view_size,
            "class_names": list(self.class_names),
            "intensity_scaling": self.intensity_scaling,
            "field_of_view": self.field_of_view,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.image_size = [int(side) for side in state["image_size"]]
        self.view_size, self.class_names = int(state["view_size"]), [str(name) for name in state["class_names"]]
        self.intensity_scaling = recorded_input_setting(state, "intensity_scaling")
        self.field_of_view = recorded_input_setting(state, "field_of_view")


def load_lesion_checkpoint(
    network: nn.Module,
    path: str | os.PathLike,
    image_size: int | Sequence[int] | None = None,
    view_size: int | None = None,
    class_names: Sequence[str] | None = None,
    intensity_scaling: str | None = None,
    field_of_view: str | None = None,
) -> nn.Module:
    """A copy of ``network`` with the weights of a ``train_lesion_crops.json`` checkpoint, in eval mode, refused
    unless it was trained on the ``image_size`` grid, ``intensity_scaling``, ``field_of_view``, ``view_size`` views
    and ``class_names`` given (None: not compared). The fixes name the settings of
    ``configs/evaluate_saliency.json``, the checkpoint's reader.

    Checkpoints written before the record was kept (:class:`LesionCropRecord`) are refused: nothing says what
    they were trained on, and a retraining is minutes.

    Raises:
        MammoXAIError: the file is missing or unreadable, lacks the record, records other settings, or its weights
            do not fit ``network``.
    """
    path = Path(path)
    if not path.is_file():
        raise MammoXAIError(path, "lesion-crop checkpoint not found", f"train one first: {LESION_TRAIN_COMMAND}")
    fix = f"retrain it: {LESION_TRAIN_COMMAND}"
    state = read_torch_file(path, "PyTorch checkpoint", fix)
    record = state.get(RECORD_KEY) if isinstance(state, Mapping) else None
    if not isinstance(record, Mapping):
        problem = "records no training grid, view size or class names (written by an older train_lesion_crops.json)"
        raise MammoXAIError(path, problem, fix)
    trained = LesionCropRecord(**record)
    settings = {
        "lesion_image_size": (trained.image_size, None if image_size is None else grid_shape(image_size)),
        "lesion_intensity_scaling": (trained.intensity_scaling, intensity_scaling),
        "lesion_field_of_view": (trained.field_of_view, field_of_view),
        "view_size": (trained.view_size, view_size),
        "lesion_class_names": (trained.class_names, class_names),
    }
    check_recorded_settings(path, settings)
    return load_checkpoints(network, path)[0]


def check_crop_labels(labels: Sequence[int], class_names: Sequence[str], source: str = "lesion crops") -> None:
    """Refuse crops without a finding class and without background; warn about classes that have no crop.

    Unlike a whole-image classifier, a lesion-crop classifier can train without one of its classes (VinDr-style
    ``other`` findings are missing from the synthetic studies): that class's loss weight is 0 and its F1 is
    reported as undefined.

    Raises:
        MammoXAIError: fewer than two classes have crops.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    found = ", ".join(f"{name} {count}" for name, count in zip(class_names, counts, strict=True))
    if (counts > 0).sum() < 2:
        raise MammoXAIError(source, f"has crops of fewer than two classes ({found})", "add annotated findings")
    empty = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
    if empty:
        logger.warning("%s: no crop of class %s (%s); it is not learnt", source, ", ".join(empty), found)


class MacroF1(CumulativeIterationMetric):
    """Macro F1 of the classes present, for MONAI's ``IgniteMetricHandler`` (the checkpoint's key metric).

    Buffers, like ``ROCAUCMetric``, the per-class probabilities and one-hot labels of the data seen.
    """

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if y is None:
            raise ValueError("MacroF1 needs labels")
        return y_pred, y

    def aggregate(self) -> float:  # type: ignore[override]
        y_pred, y = self.get_buffer()
        names = [str(index) for index in range(y.shape[1])]
        _, macro = per_class_scores(y.argmax(dim=1).cpu().numpy(), y_pred.argmax(dim=1).cpu().numpy(), names)
        return 0.0 if np.isnan(macro) else macro


class LesionCropReport:
    """Validate the best lesion-crop checkpoint: per-class precision / recall / F1, macro F1, confusion matrix.

    Args:
        network: the lesion-crop classifier's architecture (a copy gets the checkpoint's weights).
        checkpoint: the state dict the training's ``CheckpointSaver`` wrote.
        dataloader: the validation crops.
        class_names: the classes, in output order.
        output_dir: where ``report.json``, ``report.md`` and ``confusion.png`` go.
        device: where to run.
        command: the command that trained, for the record.

    Raises:
        MammoXAIError: the checkpoint is missing (training saved none) or does not fit ``network``.
    """

    def __init__(
        self,
        network: nn.Module,
        checkpoint: str | os.PathLike,
        dataloader: torch.utils.data.DataLoader,
        class_names: Sequence[str],
        output_dir: str | os.PathLike,
        device: torch.device | str = "cpu",
        command: str | None = None,
    ) -> None:
        self.network, self.checkpoint, self.dataloader = network, Path(checkpoint), dataloader
        self.class_names, self.output_dir = list(class_names), Path(output_dir)
        self.device, self.command = torch.device(device), command

    def run(self) -> Mapping[str, Any]:
        """Evaluate and write the report; returns its values (``macro_f1``, ``accuracy``, ``per_class``)."""
        network = load_lesion_checkpoint(self.network, self.checkpoint).to(self.device)
        labels, predictions = [], []
        with torch.no_grad():
            for batch in self.dataloader:
                logits = network(batch["image"].to(self.device))
                predictions += logits.argmax(dim=1).tolist()
                labels += torch.as_tensor(batch["label"]).tolist()
        rows, macro = per_class_scores(labels, predictions, self.class_names)
        accuracy = float(np.mean(np.equal(labels, predictions)))
        report = Report(
            "Lesion-crop classifier (CorRELAX)",
            "Validation crops (multi-scale, around annotated findings and of background breast tissue) of patients "
            "held out from training. Macro F1 is the mean over the classes that have validation crops.",
            command=self.command,
            device=self.device,
        )
        report.add_values("summary", {"macro_f1": macro, "accuracy": accuracy, "crops": len(labels)}, "Summary")
        report.add_table("per_class", rows, "Per class", columns=["class", "precision", "recall", "f1", "support"])
        matrix = confusion_matrix(labels, predictions, labels=list(range(len(self.class_names))))
        figure = confusion_matrix_figure(matrix, self.class_names, "lesion crops")
        report.add_figure("confusion", figure, "Confusion matrix")
        report.write(self.output_dir)
        logger.info("lesion-crop classifier: macro F1 %.3f over %d crops -> %s", macro, len(labels), self.output_dir)
        return {"macro_f1": macro, "accuracy": accuracy, "per_class": rows}
