"""How unsure the served model is about each unlabeled image, stored in the image's info for the strategies.

Three measures, chosen with ``--conf uncertainty <name>``:

- ``entropy``: Shannon entropy of the predicted class distribution, divided by ``log(classes)`` so it lies in
  [0, 1]; the classic uncertainty-sampling criterion (Settles, "Active Learning Literature Survey", 2009).
- ``margin``: one minus the gap between the two most probable classes (Scheffer et al., "Active hidden Markov
  models for information extraction", IDA 2001): near 1 when the model hesitates between two classes.
- ``tta``: disagreement under test-time augmentation (Wang et al., "Aleatoric uncertainty estimation with
  test-time augmentation for medical image segmentation", Neurocomputing 2019): the summed per-class variance
  of the probabilities over the image and its augmented copies (up-down flip, gamma 0.8 and 1.25, and the
  flip with each gamma; the training augmentations of ``configs/train.json``, made deterministic).

The forward pass is the predictor's own (:meth:`mammoxai.inference.MammogramPredictor.predict_probabilities`),
so the score belongs to the model a clinician is shown. Each score is stored with the identity of the weights
that produced it; an image already scored by the current weights with the current measure is skipped, so
asking again after a few labels costs only the new model's first pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod

from lib.http_errors import client_message
from lib.infers.classification import weights_errors
from mammoxai.errors import MammoXAIError
from mammoxai.inference import MammogramPredictor

logger = logging.getLogger(__name__)

__all__ = ["INFO_KEY", "MEASURES", "TTA_TRANSFORMS", "UncertaintyScoring", "uncertainty"]

INFO_KEY = "uncertainty"
"""Image-info key holding ``{"measure", "score", "checkpoint", "probabilities"}``."""

MEASURES = ("entropy", "margin", "tta")


def _gamma(value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda image: image.clamp(min=0).pow(value)


def _flip(image: torch.Tensor) -> torch.Tensor:
    return torch.flip(image, dims=[2])


TTA_TRANSFORMS: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = (
    _flip,
    _gamma(0.8),
    _gamma(1.25),
    lambda image: _gamma(0.8)(_flip(image)),
    lambda image: _gamma(1.25)(_flip(image)),
)
"""Test-time augmentations of the model input (1, 1, h, w) in [0, 1]; the chest wall stays on the left."""


def uncertainty(probabilities: torch.Tensor, measure: str) -> float:
    """Uncertainty in [0, 1] from ``probabilities`` (rows: the image, then its augmentations; columns: classes).

    ``entropy`` and ``margin`` use row 0; ``tta`` needs two or more rows.
    """
    classes = probabilities.shape[-1]
    if measure == "entropy":
        p = probabilities[0].clamp(min=1e-12)
        return float(-(p * p.log()).sum() / math.log(classes))
    if measure == "margin":
        top2 = probabilities[0].topk(2).values
        return float(1.0 - (top2[0] - top2[1]))
    if measure == "tta":
        if probabilities.shape[0] < 2:
            raise MammoXAIError("tta uncertainty", "needs the image and at least one augmentation")
        # the variance of a probability is at most 1/4; summed over classes at most 1/2 (two classes split evenly)
        return float(min(1.0, 2.0 * probabilities.var(dim=0, unbiased=False).sum()))
    raise MammoXAIError(f"uncertainty measure {measure!r}", "is unknown", f"use one of {list(MEASURES)}")


class UncertaintyScoring(ScoringMethod):
    """Score every unlabeled image (no ``final`` label) that the current weights have not scored yet.

    ``POST /scoring/uncertainty`` runs it in the background; the ``uncertainty`` strategy runs it in the
    server before it ranks, so the ranking always reflects the weights being served. An image the predictor
    cannot read is logged and left unscored (it is then never proposed).

    Args:
        predictor: the served predictor.
        measure: one of :data:`MEASURES`.

    The result counts the images scored and skipped and gives the reason of each that failed, naming the image as
    ``image '<id>'`` as ``/infer`` does, not by its path on the server (which the log keeps); ``checkpoint`` is the
    identity of the weights the pass started with (another request may load newer weights during the pass, and the images
    scored after that are scored with those).

    Example:
        scoring = UncertaintyScoring(predictor, "margin")
        scoring({}, datastore)  # {"scored": 12, "skipped": 3, "failed": {}, "checkpoint": "1733500000000000000-816597"}
        datastore.get_image_info("case1")["uncertainty"]["score"]
    """

    def __init__(self, predictor: MammogramPredictor, measure: str = "entropy") -> None:
        if measure not in MEASURES:
            raise MammoXAIError(f"--conf uncertainty {measure}", "is not a measure", f"use one of {list(MEASURES)}")
        super().__init__(f"Uncertainty of the served model on unlabeled images ({measure})")
        self.predictor = predictor
        self.measure = measure

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any]:
        self.load_weights()
        current = self.predictor.checkpoint_id
        transforms = TTA_TRANSFORMS if self.measure == "tta" else ()
        result: dict[str, Any] = {"scored": 0, "skipped": 0, "failed": {}, "checkpoint": current}
        for image_id in sorted(datastore.get_unlabeled_images(DefaultLabelTag.FINAL)):
            if self.fresh_score(datastore, image_id, current) is not None:
                result["skipped"] += 1
                continue
            path = datastore.get_image_uri(image_id)
            try:
                probabilities, checkpoint = self.predictor.predict_probabilities(path, transforms)
            except MammoXAIError as error:
                logger.warning("not scored: %s", error)
                result["failed"][image_id] = client_message(str(error), {path: f"image {image_id!r}"})
                continue
            score = uncertainty(probabilities, self.measure)
            names = self.predictor.class_names
            info = {
                "measure": self.measure,
                "score": score,
                "checkpoint": checkpoint,
                "probabilities": dict(zip(names, probabilities[0].tolist(), strict=True)),
            }
            datastore.update_image_info(image_id, {INFO_KEY: info})
            result["scored"] += 1
        logger.info("uncertainty (%s): %s", self.measure, result)
        return result

    def fresh_score(self, datastore: Datastore, image_id: str, checkpoint: str) -> float | None:
        """The score stored for ``image_id`` if the weights ``checkpoint`` gave it with this measure, else None: a score
        of older weights, or of another measure (``--conf uncertainty`` changed), is stale."""
        stored = datastore.get_image_info(image_id).get(INFO_KEY) or {}
        if stored.get("checkpoint") == checkpoint and stored.get("measure") == self.measure:
            return stored["score"]
        return None

    def load_weights(self) -> None:
        """Load the served weights, or answer 503 as ``/infer`` does: before the first training run there is no model
        to be uncertain with, and the first cases are proposed by the ``random`` or ``first`` strategy instead.
        Weights that do not fit the network are a 503 too, with the predictor's own message.

        ``POST /scoring/uncertainty`` calls this before it submits a background run (see
        :func:`~lib.route_guards.install_route_guards`): the run builds the app again in a process of its own, where
        the 503 would only end the task in its log."""
        with weights_errors(self.predictor):
            try:
                self.predictor.load_weights()
            except MammoXAIError as error:
                if self.predictor.checkpoint.path.is_file():
                    raise
                fix = (
                    "propose the first cases with POST /activelearning/random (or first), save their labels with tag "
                    "final, then train (POST /train/<model>)"
                )
                raise MammoXAIError(error.source, error.problem, fix) from error
