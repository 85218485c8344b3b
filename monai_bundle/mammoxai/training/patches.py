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

The same crops, labelled by the finding's category instead of the image's class (``labels="finding"``: mass,
calcification, other, no finding; :data:`~mammoxai.data.findings.LESION_CLASSES`) and cut at several scales, train
CorRELAX's lesion-crop classifier (Mellado et al., Frontiers in Oncology 2025), which then runs over local views
of the full-resolution image (``configs/train_lesion_crops.json``).

Example:
    images = MammogramDataset(records, image_size=(256, 208), class_names=["normal", "benign", "malignant"])
    patches = PatchDataset(images, "synth/finding_annotations.csv", patch_size=48)
    patches[0]["image"].shape     # (1, 48, 48)
    crops = PatchDataset(MammogramDataset(records, image_size=(1024, 832)), "synth/finding_annotations.csv",
                         patch_size=256, scales=(0.5, 1.0, 2.0), labels="finding")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mammoxai.data.dataset import MammogramDataset, batch_geometries, class_index
from mammoxai.data.findings import (
    LESION_CLASSES,
    box_class,
    check_image_shape,
    match_findings,
    read_findings,
)
from mammoxai.data.manifest import record_shape
from mammoxai.errors import MammoXAIError
from mammoxai.nets.backbones import check_backbone_grid
from mammoxai.training.settings import check_settings

__all__ = ["PATCH_LABELS", "PatchDataset", "check_patch_settings"]

#: what a patch is labelled by: its image's class, or its finding's category
PATCH_LABELS = ("image", "finding")


def check_patch_settings(backbone: str, patch_size: object, backgrounds: object) -> None:
    """Refuse patch settings no patch training can use, in ``train.json``'s ``initialize``, before any image is
    read: a patch smaller than the backbone runs on fails in the first training step, a patch size of 0 or less in
    the augmentation, and a negative background count silently trains on lesion patches only.

    Args:
        backbone: the network's backbone (:data:`~mammoxai.nets.backbones.BACKBONES`).
        patch_size: ``patch_size``; None trains on whole images and checks nothing.
        backgrounds: ``patch_backgrounds``, background patches per image.

    Raises:
        MammoXAIError: ``patch_size`` is not a positive whole number or is below the backbone's smallest grid;
            ``backgrounds`` is not a whole number of 0 or more.
    """
    if patch_size is None:
        return
    check_settings(patch_size=patch_size, patch_backgrounds=backgrounds)
    check_backbone_grid(backbone, int(patch_size), "patch_size")


class PatchDataset(torch.utils.data.Dataset):
    """One patch around every annotated finding, plus ``backgrounds`` background patches per image, at every scale.

    With ``labels="image"`` a finding patch takes its image's class (a lesion of a malignant breast is a malignant
    patch), only labelled images are used, and a background patch takes ``background_class`` (default the first
    class, ``normal``). With ``labels="finding"`` a finding patch takes the class of its finding's categories
    (:func:`~mammoxai.data.findings.box_class`: a box without one is refused), every image is used whatever its
    label, and background
    patches are ``no_finding``. Background positions are drawn from breast pixels (non-zero after preprocessing)
    outside every finding box, seeded per patch, so an epoch is reproducible.

    A patch at scale ``s`` covers ``round(s * patch_size)`` model-grid pixels and is resized to ``patch_size``:
    scales below 1 zoom in on a lesion, above 1 show it in its surroundings, so the classifier recognises lesions
    of many sizes in a fixed local view.

    Args:
        images: the images (without spatial augmentation: boxes must stay where the geometry says).
        findings_csv: VinDr-style finding CSV; its ``image_id`` names the records as
            :func:`~mammoxai.data.findings.match_findings` reads it (the ``image_id`` or ``sop_uid``, or the file's
            name or path, as a label CSV names it).
        patch_size: side of the square patches, in model-grid pixels; parts outside the image are zero.
        backgrounds: background patches per image and scale.
        background_class: class name of background patches (default ``class_names[0]`` for image labels,
            ``"no_finding"`` for finding labels); it and the findings' classes match ``class_names`` regardless of
            case and spacing.
        transform: applied to each patch sample (augmentation belongs here, after cropping).
        seed: seed of the background positions.
        scales: crop sides as multiples of ``patch_size``; every finding and background gets one patch per scale.
        labels: ``"image"`` or ``"finding"`` (see above).
        class_names: the classes of finding labels (default :data:`~mammoxai.data.findings.LESION_CLASSES`);
            with image labels they are ``images.class_names``.

    Attributes:
        data: one record per patch (its image's), for code that reads a data set's records.
        labels: the patch labels.
        items: per patch, (image index, the image's original boxes, which box or None for background, label).
        item_scales: per patch, its scale.

    Raises:
        MammoXAIError: no finding matches an image, ``background_class`` is not a class, a finding's class is not
            one of ``class_names``, the CSV gives an image another height and width than the record's ``rows`` and
            ``cols`` (:func:`~mammoxai.data.findings.check_image_shape`), or ``labels`` / ``scales`` are invalid.
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
        scales: Sequence[float] = (1.0,),
        labels: str = "image",
        class_names: Sequence[str] | None = None,
    ) -> None:
        if labels not in PATCH_LABELS:
            raise MammoXAIError("patch labels", f"{labels!r} is not a labelling", f"use one of {list(PATCH_LABELS)}")
        if not scales or min(scales) <= 0:
            problem = f"{list(scales)} are not positive crop sizes"
            raise MammoXAIError("patch scales", problem, "use e.g. [0.5, 1.0, 2.0]")
        self.images, self.patch_size, self.transform, self.seed = images, int(patch_size), transform, seed
        by_finding = labels == "finding"
        self.class_names = tuple(class_names or LESION_CLASSES) if by_finding else tuple(images.class_names)
        background_class = background_class or ("no_finding" if by_finding else self.class_names[0])
        background = self._class_index(background_class, "background_class")
        findings = read_findings(findings_csv)
        classes = {f: self._class_index(box_class(f, findings_csv), findings_csv) for f in findings if by_finding}
        matched = match_findings(images.data, findings, findings_csv)
        self.items: list[tuple[int, np.ndarray, int | None, int]] = []
        self.item_scales: list[float] = []
        for index, (found, label) in enumerate(zip(matched, images.labels, strict=True)):
            if label < 0 and not by_finding:
                continue
            record = images.data[index]
            for finding in found:
                check_image_shape(finding, record_shape(record), record["path"], findings_csv)
            image_boxes = np.asarray([finding.box for finding in found], dtype=np.float64).reshape(-1, 4)
            finding_labels = [classes.get(finding, label) for finding in found]
            for scale in scales:
                items = [(index, image_boxes, box, finding_labels[box]) for box in range(len(image_boxes))]
                items += [(index, image_boxes, None, background)] * backgrounds
                self.items += items
                self.item_scales += [float(scale)] * len(items)
        if not any(box is not None for _, _, box, _ in self.items):
            raise MammoXAIError(
                findings_csv,
                "has no finding box on any labelled image",
                "check its image_id column against the manifest",
            )
        self.data = [images.data[index] for index, _, _, _ in self.items]
        self.labels = [label for _, _, _, label in self.items]

    def _class_index(self, name: str, source: str | os.PathLike) -> int:
        """The label of class ``name``: matched regardless of case and spacing (:func:`class_index`), so lesion crops
        train a model whose ``class_names`` are spelt "Mass", "No_Finding", as the saliency evaluation explains it."""
        return class_index(name, self.class_names, source, "add it to class_names, or name one of them")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> dict[str, Any]:
        index, boxes, box, label = self.items[item]
        sample = self.images[index]
        image = torch.as_tensor(sample["image"])
        model_boxes = batch_geometries(sample)[0].to_model_boxes(boxes) if len(boxes) else np.zeros((0, 4))
        side = max(1, round(self.item_scales[item] * self.patch_size))
        if box is not None:
            x0, y0, x1, y1 = model_boxes[box]
            centre = ((y0 + y1) / 2.0, (x0 + x1) / 2.0)
        else:
            centre = self._background_centre(image[0], model_boxes, np.random.default_rng((self.seed, item)), side)
        patch = {"image": self._crop(image, centre, side), "label": label, "path": sample["path"]}
        return self.transform(patch) if self.transform is not None else patch

    def _background_centre(
        self, image: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator, side: int | None = None
    ) -> tuple[float, float]:
        """A breast pixel whose ``side``-pixel patch (default ``patch_size``) overlaps no finding box."""
        allowed = (image > 0).numpy()
        half = (side or self.patch_size) / 2.0
        for x0, y0, x1, y1 in boxes:
            allowed[
                max(0, int(y0 - half)) : int(np.ceil(y1 + half)), max(0, int(x0 - half)) : int(np.ceil(x1 + half))
            ] = False
        rows, columns = np.nonzero(allowed)
        if not rows.size:  # no breast pixel far enough from a lesion: the image centre
            return image.shape[0] / 2.0, image.shape[1] / 2.0
        pick = rng.integers(rows.size)
        return rows[pick] + 0.5, columns[pick] + 0.5

    def _crop(self, image: torch.Tensor, centre: tuple[float, float], side: int | None = None) -> torch.Tensor:
        """The ``side`` × ``side`` square (default ``patch_size``) centred on ``centre``, zero outside the image,
        resized to ``patch_size``."""
        side = side or self.patch_size
        half = side // 2
        top, left = int(round(centre[0])) - half, int(round(centre[1])) - half
        height, width = image.shape[-2:]
        padded = F.pad(
            image,
            (max(0, -left), max(0, left + side - width), max(0, -top), max(0, top + side - height)),
        )
        top, left = max(0, top), max(0, left)
        patch = padded[..., top : top + side, left : left + side]
        if side == self.patch_size:
            return patch
        mode = "area" if side > self.patch_size else "bilinear"  # area: shrinking averages, no aliasing of specks
        return F.interpolate(patch[None], size=(self.patch_size,) * 2, mode=mode)[0]
