"""Checkpoints that survive being interrupted while they are written.

MONAI's ``CheckpointSaver`` writes in place (``atomic=False``) and ignite's ``Checkpoint`` deletes the file a new
one supersedes *before* writing the new one. A run killed in that moment - a job scheduler's time limit, a
Ctrl-C at the wrong second - is left with an empty new file and no old one: the epoch checkpoint a resume needs,
or the best model (``models/model.pt``, the file the server hot-reloads) is gone. :class:`SafeCheckpointSaver`
is the same handler, configured the same way, with both orders fixed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

__all__ = ["SafeCheckpointSaver", "TrainingGrid"]


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
    """``monai.handlers.CheckpointSaver`` (same arguments) whose files are never half-written or lost mid-save.

    It swaps the save handler of the ignite ``Checkpoint`` objects MONAI builds (``_final_checkpoint``,
    ``_key_metric_checkpoint``, ``_interval_checkpoint``, private in MONAI 1.x), keeping each one's fixed file name;
    ``tests/test_checkpoints.py`` fails if a MONAI release renames them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _ReplaceThenRemove(self.save_dir, checkpoint.save_handler.filename)


class TrainingGrid:
    """The model grid a classifier was trained on, saved as ``"grid"`` in ``model.pt`` next to ``"model"``.

    A CNN runs on any grid, so a model trained at 512 x 416 and served at the default 256 x 208 gives numbers with
    no error; :func:`~mammoxai.nets.finetune.load_checkpoint` compares this record with the grid of the run that
    loads the weights and refuses a mismatch. An object with ``state_dict`` so ``CheckpointSaver`` saves it.

    Args:
        image_size: (height, width) of the training grid.
    """

    def __init__(self, image_size: Sequence[int]) -> None:
        self.image_size = [int(side) for side in image_size]

    def state_dict(self) -> dict[str, list[int]]:
        return {"image_size": list(self.image_size)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.image_size = [int(side) for side in state["image_size"]]
