"""Multi-view samples: the views of one breast (e.g. CC and MLO of one study and side) stacked into one sample,
for :class:`~mammoxai.nets.finetune.MultiViewClassifier`.

The per-image work (reading, preprocessing, caching, augmentation) stays in
:class:`~mammoxai.data.dataset.MammogramDataset`; this wrapper only groups its samples, so each view is augmented
on its own and nothing is implemented twice. ``configs/train.json`` and ``configs/evaluate.json`` build their
data sets through :func:`build_dataset`, which gives the single-image data set when ``views`` is null (and the
patches of :mod:`mammoxai.training.patches` when ``patch_size`` is set).

Example:
    images = MammogramDataset(records, image_size=(256, 208), class_names=["normal", "benign", "malignant"])
    breasts = MultiViewDataset(images, views=["CC", "MLO"])
    breasts[0]["image"].shape     # (2, 1, 256, 208): CC then MLO
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from mammoxai.data.dataset import MammogramDataset
from mammoxai.errors import MammoXAIError, parse_names
from mammoxai.training.patches import PatchDataset

logger = logging.getLogger(__name__)

__all__ = ["MultiViewDataset", "build_dataset", "check_views"]


def check_views(views: Sequence[str] | str | None) -> list[str] | None:
    """The ``views`` setting as two or more distinct view names (upper case), or None for single-image input.

    Text is read by :func:`~mammoxai.errors.parse_names`, the rule of every setting that lists names: a list the
    command line could not read (``--views CC,MLO``) is refused with how to write one (taken as a sequence it asked
    for one view per character, so the run failed later on a checkpoint "of another size" that was in fact the
    right one), and one bare name is a list of one. A list of one view is refused here, as is a view twice or a
    blank one: a sample of one view is a single image, the input null gives (null takes the images of every view,
    not those of one), and a view named twice stacks one image with itself.

    Raises:
        MammoXAIError: ``views`` is text other than one name, no list, or not two or more distinct names.
    """
    if views is None:
        return None
    names = [view.strip().upper() for view in parse_names(views, "views", ["CC", "MLO"], single=False)]
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        fix = 'name each view once, e.g. --views \'["CC", "MLO"]\', or give null for one image per sample'
        raise MammoXAIError("views", f"{names} must name two or more distinct views", fix)
    return names


class MultiViewDataset(torch.utils.data.Dataset):
    """One sample per breast: the images of ``views`` in that order, stacked (views, 1, h, w).

    Images are grouped by ``group_keys`` (default: ``study_uid`` and ``laterality``, one breast at one exam), within
    their ``patient_id``. A group without every view, or with a view twice, is left out with a warning (counted in
    ``incomplete``), and so is an image with a blank group key (counted in ``unplaced``): grouped on the blank, the CC
    of one patient's breast was fused with the MLO of another patient's (blank ``study_uid``) or of the other side
    (blank ``laterality``). The breast's label is the most severe of its images' (the highest class index:
    ``class_names`` are ordered from normal to malignant), -1 when no image is labelled. Breasts whose views disagree
    are counted in a message that names the order, a warning where the class names look alphabetical, since then the
    later one winning is likely not what was meant.

    Args:
        images: the per-image data set.
        views: view names (``ViewPosition`` values, upper case) in the order the network expects them.
        group_keys: record fields that identify a breast.

    Attributes:
        data: one record per breast (its first view's), so evaluation code reads a breast like an image.
        labels: the breast labels.
        groups: per breast, the indices of its views in ``images``.

    Raises:
        MammoXAIError: no breast has every view.
    """

    def __init__(
        self,
        images: MammogramDataset,
        views: Sequence[str] = ("CC", "MLO"),
        group_keys: Sequence[str] = ("study_uid", "laterality"),
    ) -> None:
        self.images, self.views = images, [str(view).upper() for view in views]
        members: dict[tuple[str, ...], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        self.unplaced = 0
        for index, record in enumerate(images.data):
            key = tuple(str(record.get(field) or "") for field in group_keys)
            if not all(key):
                self.unplaced += 1
                continue
            members[(str(record.get("patient_id") or ""), *key)][str(record.get("view") or "").upper()].append(index)
        self.groups = [
            [found[view][0] for view in self.views]
            for found in members.values()
            if all(len(found.get(view, ())) == 1 for view in self.views)
        ]
        self.incomplete = len(members) - len(self.groups)
        if self.incomplete:
            logger.warning(
                "%d of %d breasts lack one of the views %s (or have one twice) and are left out",
                self.incomplete,
                len(members),
                self.views,
            )
        if self.unplaced:
            logger.warning(
                "%d images have no %s and are left out: their breast is unknown",
                self.unplaced,
                " or ".join(group_keys),
            )
        if not self.groups:
            raise MammoXAIError(
                "multi-view data set",
                f"no breast ({'+'.join(group_keys)}) has exactly one image of each view {self.views}",
                "check the views key and the manifest's view column",
            )
        self.data = [images.data[group[0]] for group in self.groups]
        self.labels = [max(images.labels[index] for index in group) for group in self.groups]
        mixed = [group for group in self.groups if len({images.labels[index] for index in group} - {-1}) > 1]
        if mixed:
            names = list(images.class_names)
            # a warning where the order looks alphabetical, not chosen; with a severity order it is the rule, as meant
            logger.log(
                logging.WARNING if names == sorted(names) else logging.INFO,
                "%d breasts have views of different classes; each takes the later one in class_names %s (e.g. %s), "
                "so list the classes from least to most severe",
                len(mixed),
                names,
                " over ".join(
                    repr(names[i]) for i in sorted({images.labels[i] for i in mixed[0]} - {-1}, reverse=True)
                ),
            )
        self.class_names = images.class_names

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Any]:
        samples = [self.images[member] for member in self.groups[index]]
        return {
            "image": torch.stack([torch.as_tensor(sample["image"]) for sample in samples]),
            "label": self.labels[index],
            "path": samples[0]["path"],
            "view_paths": [sample["path"] for sample in samples],
        }


def build_dataset(
    records: Sequence[Mapping[str, Any]] | str | os.PathLike,
    views: Sequence[str] | None = None,
    patch_size: int | None = None,
    findings_csv: str | os.PathLike | None = None,
    patch_backgrounds: int = 1,
    transform: Callable | None = None,
    **kwargs: Any,
) -> MammogramDataset | MultiViewDataset | PatchDataset:
    """The data set ``configs/train.json`` trains on: a :class:`~mammoxai.data.dataset.MammogramDataset` of
    ``records`` (``kwargs`` are its arguments); with ``views``, its breasts (:class:`MultiViewDataset`); with
    ``patch_size``, lesion and background patches (:class:`~mammoxai.training.patches.PatchDataset`, the first
    stage of patch → whole-image training), augmented by ``transform`` after cropping.

    Raises:
        MammoXAIError: ``views`` that is not two or more view names (:func:`check_views`), both ``views`` and
            ``patch_size``, or ``patch_size`` without ``findings_csv``.
    """
    views = check_views(views)
    if patch_size is None:
        images = MammogramDataset(records, transform=transform, **kwargs)
        return images if views is None else MultiViewDataset(images, views)
    if views is not None:
        raise MammoXAIError("views and patch_size", "are both set", "train patches on single views: set views to null")
    if findings_csv is None:
        raise MammoXAIError(
            "findings_csv", "is not set but patch_size is", "give the finding_annotations.csv of the studies"
        )
    return PatchDataset(
        MammogramDataset(records, **kwargs), findings_csv, patch_size, patch_backgrounds, transform=transform
    )
