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

from lib.scoring.uncertainty import UncertaintyScoring

logger = logging.getLogger(__name__)

__all__ = ["MAX_PASSES", "UncertaintyStrategy"]

MAX_PASSES = 3
"""Most scoring passes one proposal runs while the weights keep changing under it
(:meth:`UncertaintyStrategy.score_with_one_checkpoint`)."""


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
        self.score_with_one_checkpoint(request, datastore)
        current = self.scoring.predictor.checkpoint_id
        candidates = []
        for image_id in datastore.get_unlabeled_images(DefaultLabelTag.FINAL):
            score = self.scoring.fresh_score(datastore, image_id, current)
            if score is not None:
                candidates.append((-score, image_id))
        if not candidates:
            return None
        score, image_id = min(candidates)
        logger.info("uncertainty: selected %s (%s %.4f)", image_id, self.scoring.measure, -score)
        return {"id": image_id, "score": -score, "measure": self.scoring.measure}

    def score_with_one_checkpoint(self, request: Mapping[str, Any], datastore: Datastore) -> None:
        """Score until a whole pass ran on the weights it started with.

        A request served beside the pass (an ``/infer`` after a training run replaced the weights) reloads the shared
        predictor; the images scored before that keep the old weights' scores, which the ranking leaves out as stale,
        so one pass would rank only the images scored after the reload. The next pass rescores just those. At most
        :data:`MAX_PASSES` passes: weights replaced again and again rank what the last pass scored.
        """
        for _ in range(MAX_PASSES):
            result = self.scoring(request, datastore)
            if self.scoring.predictor.checkpoint_id == result["checkpoint"]:
                return
            logger.info("uncertainty: new weights were loaded while scoring; scoring again")
