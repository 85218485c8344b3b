"""Lesion and background patches for the first stage of patch → whole-image training.

Shen et al. ("Deep Learning to Improve Breast Cancer Detection on Screening Mammography", Sci Rep 2019,
doi:10.1038/s41598-019-48995-4) first train a patch classifier on crops around annotated lesions and of
background tissue, then use its weights to start the whole-image classifier, which is trained on image labels
only: the patch stage teaches what a lesion looks like from few annotated images, the whole-image stage where to
look. Our classifiers are all-convolutional with global pooling (:class:`~mammoxai.nets.BackboneClassifier`), so
the patch classifier *is* a whole-image classifier trained on small inputs: the second stage is ``train.json``
with ``--init classifier --init_weights <patch model.pt>``.

Patches are cut from the model grid of :class:`~mammoxai.data.dataset.MammogramDataset` (the same preprocessing,
cache and scale as the whole-image model), centred on each finding box of a VinDr-style ``finding_annotations.csv``
mapped onto that grid (:meth:`~mammoxai.io.geometry.ImageGeometry.to_model_boxes`), and at random breast positions
outside every box for background.

Example:
    images = MammogramDataset(records, image_size=(256, 208), class_names=["normal", "benign", "malignant"])
    patches = PatchDataset(images, "synth/finding_annotations.csv", patch_size=48)
    patches[0]["image"].shape     # (1, 48, 48)
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mammoxai.data.dataset import MammogramDataset, batch_geometries
from mammoxai.data.findings import read_findings
from mammoxai.errors import MammoXAIError

__all__ = ["PatchDataset"]


class PatchDataset(torch.utils.data.Dataset):
    """One patch around every annotated finding, plus ``backgrounds`` background patches per labelled image.

    A finding patch takes its image's class (a lesion of a malignant breast is a malignant patch); a background
    patch takes ``background_class`` (default the first class, ``normal``). Background positions are drawn from
    breast pixels (non-zero after preprocessing) outside every finding box, seeded per image, so an epoch is
    reproducible.

    Args:
        images: the labelled images (without spatial augmentation: boxes must stay where the geometry says).
        findings_csv: VinDr-style finding CSV; its ``image_id`` matches the records' ``image_id`` or ``sop_uid``.
        patch_size: side of the square patches, in model-grid pixels; parts outside the image are zero.
        backgrounds: background patches per image.
        background_class: class name of background patches (default ``images.class_names[0]``).
        transform: applied to each patch sample (augmentation belongs here, after cropping).
        seed: seed of the background positions.

    Attributes:
        data: one record per patch (its image's), for code that reads a data set's records.
        labels: the patch labels.

    Raises:
        MammoXAIError: no finding matches an image, or ``background_class`` is not a class.
    """

    def __init__(
        self,
        images: MammogramDataset,
        findings_csv: str | os.PathLike,
        patch_size: int = 64,
        backgrounds: int = 1,
        background_class: str | None = None,
        transform: Callable | None = None,
        seed: int = 0,
    ) -> None:
        self.images, self.patch_size, self.transform, self.seed = images, int(patch_size), transform, seed
        background_class = background_class or images.class_names[0]
        if background_class not in images.class_names:
            raise MammoXAIError(
                "background_class", f"{background_class!r} is not one of {list(images.class_names)}", "name a class"
            )
        background = images.class_names.index(background_class)
        boxes: dict[str, list[tuple[float, ...]]] = defaultdict(list)
        for finding in read_findings(findings_csv):
            boxes[finding.image_id].append(finding.box)
        # (image index, original boxes of the image, which box or None for background, label)
        self.items: list[tuple[int, np.ndarray, int | None, int]] = []
        for index, (record, label) in enumerate(zip(images.data, images.labels)):
            if label < 0:
                continue
            found = boxes.get(str(record.get("image_id") or ""), []) or boxes.get(str(record.get("sop_uid") or ""), [])
            image_boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4)
            self.items += [(index, image_boxes, box, label) for box in range(len(image_boxes))]
            self.items += [(index, image_boxes, None, background)] * backgrounds
        if not any(box is not None for _, _, box, _ in self.items):
            raise MammoXAIError(
                findings_csv,
                "has no finding box on any labelled image",
                "check its image_id column against the manifest",
            )
        self.data = [images.data[index] for index, _, _, _ in self.items]
        self.labels = [label for _, _, _, label in self.items]
        self.class_names = images.class_names

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> dict[str, Any]:
        index, boxes, box, label = self.items[item]
        sample = self.images[index]
        image = torch.as_tensor(sample["image"])
        model_boxes = batch_geometries(sample)[0].to_model_boxes(boxes) if len(boxes) else np.zeros((0, 4))
        if box is not None:
            x0, y0, x1, y1 = model_boxes[box]
            centre = ((y0 + y1) / 2.0, (x0 + x1) / 2.0)
        else:
            centre = self._background_centre(image[0], model_boxes, np.random.default_rng((self.seed, item)))
        patch = {"image": self._crop(image, centre), "label": label, "path": sample["path"]}
        return self.transform(patch) if self.transform is not None else patch

    def _background_centre(
        self, image: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator
    ) -> tuple[float, float]:
        allowed = (image > 0).numpy()
        for x0, y0, x1, y1 in boxes:
            half = self.patch_size / 2.0
            allowed[
                max(0, int(y0 - half)) : int(np.ceil(y1 + half)), max(0, int(x0 - half)) : int(np.ceil(x1 + half))
            ] = False
        rows, columns = np.nonzero(allowed)
        if not rows.size:  # no breast pixel far enough from a lesion: the image centre
            return image.shape[0] / 2.0, image.shape[1] / 2.0
        pick = rng.integers(rows.size)
        return rows[pick] + 0.5, columns[pick] + 0.5

    def _crop(self, image: torch.Tensor, centre: tuple[float, float]) -> torch.Tensor:
        half = self.patch_size // 2
        top, left = int(round(centre[0])) - half, int(round(centre[1])) - half
        height, width = image.shape[-2:]
        padded = F.pad(
            image,
            (
                max(0, -left),
                max(0, left + self.patch_size - width),
                max(0, -top),
                max(0, top + self.patch_size - height),
            ),
        )
        top, left = max(0, top), max(0, left)
        return padded[..., top : top + self.patch_size, left : left + self.patch_size]
