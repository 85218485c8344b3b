"""Checkpoints that survive being interrupted while they are written, and never replace an earlier run's unasked.

MONAI's ``CheckpointSaver`` writes in place (``atomic=False``) and ignite's ``Checkpoint`` deletes the file a new
one supersedes *before* writing the new one. A run killed in that moment - a job scheduler's time limit, a
Ctrl-C at the wrong second - is left with an empty new file and no old one: the epoch checkpoint a resume needs,
or the best model (``models/model.pt``, the file the server hot-reloads) is gone. And a second run into the same
``ckpt_dir`` overwrote the first run's best model, and left its epoch checkpoints beside the new ones for a later
resume to pick up. :class:`SafeCheckpointSaver` is the same handler, configured the same way, with both orders
fixed and a run's earlier files replaced only when the user says so.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver

from mammoxai.errors import MammoXAIError, check_output_path, parse_flag
from mammoxai.io.preprocess import check_field_of_view, check_intensity_scaling, grid_shape
from mammoxai.nets.files import recorded_input_setting
from mammoxai.training.multiview import check_views

logger = logging.getLogger(__name__)

__all__ = [
    "SafeCheckpointSaver",
    "TrainingClasses",
    "TrainingGrid",
    "TrainingViews",
    "claim_checkpoint_folder",
]


def claim_checkpoint_folder(
    folder: str | os.PathLike,
    fixed: Sequence[str] = (),
    series: Sequence[str] = (),
    overwrite: bool | str = False,
    resume: bool | str | None = None,
) -> None:
    """Make sure a run may write its checkpoints into ``folder`` without replacing an earlier run's unasked.

    :class:`SafeCheckpointSaver` calls this when it is attached; the training configs also call it in their
    ``initialize`` section with the same names, so that a taken folder is refused before any image is read
    (the savers are built after the data sets, since the networks they save are).

    Args:
        folder: the checkpoint folder (``ckpt_dir``).
        fixed: file names the run writes, e.g. ``["model.pt"]``; with ``overwrite`` they stay until the run's first
            save replaces them atomically (a served model stays in place meanwhile).
        series: glob patterns of the run's numbered files, e.g. ``["pretrain_*epoch=*.pt"]``; with ``overwrite``
            the earlier run's are removed at once, so a later resume cannot pick up its epochs.
        overwrite: replace an earlier run's files. Accepts the words a command line passes.
        resume: the run continues the earlier one, whose files it needs; ``None`` for workflows that cannot resume.

    Raises:
        MammoXAIError: ``folder`` (or a folder above it) is a file, or it holds an earlier run's files and neither
            ``overwrite`` nor ``resume`` is set.
    """
    folder = Path(folder)
    overwrite = parse_flag(overwrite, "overwrite")
    resuming = resume is not None and parse_flag(resume, "resume")
    check_output_path(folder, "ckpt_dir", "give a folder for the checkpoints")
    numbered = sorted({path for pattern in series for path in folder.glob(pattern)})
    named = [folder / name for name in fixed if (folder / name).is_file()]
    if resuming or not (numbered or named):
        return
    if not overwrite:
        fix = "pass --overwrite true to replace them"
        fix += ", --resume true to continue that run" if resume is not None else ""
        problem = f"holds {', '.join(path.name for path in numbered + named)} of an earlier run"
        raise MammoXAIError(f"ckpt_dir {folder}", problem, f"{fix}, or give another --ckpt_dir")
    for path in numbered:
        path.unlink(missing_ok=True)  # every rank of a multi-GPU run gets here
    if numbered:
        logger.warning("overwrite: removed the earlier run's %s", ", ".join(path.name for path in numbered))


class _ReplaceThenRemove(DiskSaver):
    """Write into a temporary file and ``os.replace`` it; remove superseded files only once the new one is in place.

    Args:
        dirname: the checkpoint folder.
        filename: a fixed file name for every save (MONAI's ``key_metric_filename`` / ``final_filename``).
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname, atomic=True, require_empty=False)
        self.filename = filename
        self._superseded: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        target = self.filename or filename
        super().__call__(checkpoint, target, metadata)
        for old in self._superseded:
            if old != target and (self.dirname / old).exists():
                super().remove(old)
        self._superseded.clear()

    def remove(self, filename: str) -> None:
        self._superseded.append(self.filename or filename)


class SafeCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are never half-written, lost mid-save or replaced unasked.

    It swaps the save handler of the ignite ``Checkpoint`` objects MONAI builds (``_final_checkpoint``,
    ``_key_metric_checkpoint``, ``_interval_checkpoint``, private in MONAI 1.x), keeping each one's fixed file name;
    ``tests/test_checkpoints.py`` fails if a MONAI release renames them.

    When it is attached, before the first iteration, it looks in ``save_dir`` for the files it would write (its
    fixed file names, and its ``<file_prefix>_..._<epoch|key_metric|final_iteration>=<n>.pt`` series) left by an
    earlier run (:func:`claim_checkpoint_folder`): a run that resumes keeps them; otherwise they are refused unless
    ``overwrite`` is set, as ignite's ``ModelCheckpoint`` refuses a folder that is not empty. A resumed run counts
    the earlier run's epoch (or iteration) files as its own, so ``n_saved`` still bounds them: ignite's list of
    saved files starts empty, and the files before the interruption would otherwise stay for good.

    Args:
        args, kwargs: those of ``CheckpointSaver``.
        overwrite: replace an earlier run's files in ``save_dir``. Accepts the words a command line passes.
        resume: this run continues the earlier one, whose files it needs; ``None`` for workflows that cannot resume.

    Raises:
        MammoXAIError: ``overwrite`` or ``resume`` is not a boolean; at ``attach``, the refusals of
            :func:`claim_checkpoint_folder`.
    """

    def __init__(
        self, *args: Any, overwrite: bool | str = False, resume: bool | str | None = None, **kwargs: Any
    ) -> None:
        self.overwrite = parse_flag(overwrite, "overwrite")  # before MONAI's constructor creates save_dir
        self.resume = resume if resume is None else parse_flag(resume, "resume")
        super().__init__(*args, **kwargs)
        for checkpoint in self._checkpoints():
            checkpoint.save_handler = _ReplaceThenRemove(self.save_dir, checkpoint.save_handler.filename)

    def _checkpoints(self) -> list[Checkpoint]:
        candidates = (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint)
        return [checkpoint for checkpoint in candidates if checkpoint is not None]

    def file_names(self) -> tuple[list[str], list[str]]:
        """What this saver writes into ``save_dir``: ``(fixed file names, glob patterns of numbered series)``."""
        fixed, series = [], []
        for checkpoint in self._checkpoints():
            if checkpoint.save_handler.filename is not None:
                fixed.append(checkpoint.save_handler.filename)
            else:
                series.append(f"{_series_prefix(checkpoint)}*{checkpoint.score_name}=*.{checkpoint.ext}")
        return fixed, series

    def attach(self, engine: Engine) -> None:
        fixed, series = self.file_names()
        claim_checkpoint_folder(self.save_dir, fixed, series, self.overwrite, self.resume)
        if self.resume:
            self._adopt_numbered_files()
        super().attach(engine)

    def _adopt_numbered_files(self) -> None:
        """Enter the earlier run's newest ``n_saved`` numbered files into the ``Checkpoint`` that writes them, and
        have any older ones removed with its first save (never before: the resume reads the newest)."""
        for checkpoint in self._checkpoints():
            if checkpoint.save_handler.filename is not None or checkpoint.score_name not in ("epoch", "iteration"):
                continue
            number = re.compile(
                rf"{re.escape(_series_prefix(checkpoint))}.*{checkpoint.score_name}=(\d+)\.{re.escape(checkpoint.ext)}"
            )
            found = [(number.fullmatch(path.name), path.name) for path in Path(self.save_dir).iterdir()]
            saved = sorted(Checkpoint.Item(int(match.group(1)), name) for match, name in found if match)
            excess = 0 if checkpoint.n_saved is None else max(0, len(saved) - checkpoint.n_saved)
            for item in saved[:excess]:
                checkpoint.save_handler.remove(item.filename)  # once this run's first file is written
            checkpoint.load_state_dict({"_saved": saved[excess:]})


def _series_prefix(checkpoint: Checkpoint) -> str:
    """The start of the names ignite gives a ``Checkpoint``'s numbered files."""
    return f"{checkpoint.filename_prefix}_" if checkpoint.filename_prefix else ""


class TrainingGrid:
    """The model input a classifier was trained on - grid, intensity scaling and field of view - saved as ``"grid"``
    in ``model.pt`` next to ``"model"``.

    A CNN runs on any grid and any intensities, so a model trained at 512 x 416 and served at the default
    256 x 208, or trained on ``display_range`` intensities and served ``breast_percentiles`` ones, gives numbers with
    no error; :func:`~mammoxai.nets.finetune.load_checkpoint` compares this record with the input of the run that
    loads the weights and refuses a mismatch. An object with ``state_dict`` so ``CheckpointSaver`` saves it.

    Args:
        image_size: (height, width) of the training grid, or one int for a square grid.
        intensity_scaling: how :func:`~mammoxai.io.preprocess.prepare_image` scaled the training images.
        field_of_view: what :func:`~mammoxai.io.preprocess.prepare_image` put on the grid.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        intensity_scaling: str = "breast_percentiles",
        field_of_view: str = "breast",
    ) -> None:
        self.image_size = list(grid_shape(image_size))
        self.intensity_scaling = check_intensity_scaling(intensity_scaling)
        self.field_of_view = check_field_of_view(field_of_view)

    def state_dict(self) -> dict[str, list[int] | str]:
        return {
            "image_size": list(self.image_size),
            "intensity_scaling": self.intensity_scaling,
            "field_of_view": self.field_of_view,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.image_size = [int(side) for side in state["image_size"]]
        self.intensity_scaling = recorded_input_setting(state, "intensity_scaling")
        self.field_of_view = recorded_input_setting(state, "field_of_view")


class TrainingClasses:
    """The class names a classifier was trained with, in the order of its logits, saved as ``"classes"`` in
    ``model.pt``.

    Logits carry no names: served or evaluated with ``class_names`` in another order, the same weights would report
    the normal logit as the malignant probability, with no error. :func:`~mammoxai.nets.finetune.load_checkpoint`
    compares this record with the class names of the run that loads the weights and refuses a mismatch.

    Args:
        class_names: name of each logit, in order.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = [str(name) for name in class_names]

    def state_dict(self) -> dict[str, list[str]]:
        return {"class_names": list(self.class_names)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.class_names = [str(name) for name in state["class_names"]]


class TrainingViews:
    """The views a classifier was trained on, in the order of its input, and how it fused them, saved as ``"views"``
    in ``model.pt``; both null for a classifier of one image per sample.

    A :class:`~mammoxai.nets.finetune.MultiViewClassifier` runs every view through one shared backbone, so its
    weights fit a run that stacks the views in another order (a ``concat`` head then weighs the CC features as MLO
    ones) or fuses them otherwise (``mean`` and ``max`` have the same parameters), and a single-image classifier's
    weights fit a ``mean`` or ``max`` multi-view network, all with no error.
    :func:`~mammoxai.nets.finetune.load_checkpoint` compares this record with the views of the run and the fusion of
    its network, and refuses a mismatch.

    Args:
        views: view names in input order (read by :func:`~mammoxai.training.multiview.check_views`), or None for
            one image per sample.
        view_fusion: how the views were fused, one of :data:`~mammoxai.nets.finetune.FUSIONS`; recorded as None
            without ``views``, where nothing is fused.

    Raises:
        MammoXAIError: ``views`` is not two or more distinct view names
            (:func:`~mammoxai.training.multiview.check_views`).
    """

    def __init__(self, views: Sequence[str] | None = None, view_fusion: str | None = None) -> None:
        self.views = check_views(views)
        self.view_fusion = None if self.views is None else view_fusion

    def state_dict(self) -> dict[str, list[str] | str | None]:
        return {"views": self.views, "view_fusion": self.view_fusion}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.views, self.view_fusion = state["views"], state["view_fusion"]
