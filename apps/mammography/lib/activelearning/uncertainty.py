"""Propose the unlabeled image the served model is least sure of (uncertainty sampling).

Uncertainty sampling (Lewis and Gale, SIGIR 1994; Settles, "Active Learning Literature Survey", 2009) asks the
clinician to label the case whose label the model is least able to guess, which on a fixed labelling budget
usually improves the model faster than labelling cases in random order. MONAI Label's own ``random`` and
``first`` strategies are offered next to it, as baselines.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.strategy import Strategy

from lib.scoring.uncertainty import INFO_KEY, UncertaintyScoring

logger = logging.getLogger(__name__)

__all__ = ["UncertaintyStrategy"]


class UncertaintyStrategy(Strategy):
    """The unlabeled image with the highest uncertainty under the served weights (ties: the smallest id).

    Images not yet scored by the served weights are scored first, in the server, by ``scoring``; an image that
    cannot be scored is never proposed. The answer carries the score: ``{"id", "score", "measure"}`` (MONAI Label
    adds the image info).

    Args:
        scoring: the app's :class:`~lib.scoring.uncertainty.UncertaintyScoring`.

    Example:
        strategy = UncertaintyStrategy(UncertaintyScoring(predictor, "entropy"))
        strategy({}, datastore)  # {"id": "case7", "score": 0.98, "measure": "entropy"}
    """

    def __init__(self, scoring: UncertaintyScoring) -> None:
        super().__init__(f"Most uncertain unlabeled image ({scoring.measure})")
        self.scoring = scoring

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        self.scoring(request, datastore)
        current = self.scoring.predictor.checkpoint_id
        candidates = []
        for image_id in datastore.get_unlabeled_images(DefaultLabelTag.FINAL):
            stored = datastore.get_image_info(image_id).get(INFO_KEY) or {}
            if stored.get("checkpoint") == current and stored.get("measure") == self.scoring.measure:
                candidates.append((-stored["score"], image_id))
        if not candidates:
            return None
        score, image_id = min(candidates)
        logger.info("uncertainty: selected %s (%s %.4f)", image_id, self.scoring.measure, -score)
        return {"id": image_id, "score": -score, "measure": self.scoring.measure}
