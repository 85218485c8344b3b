"""MONAI Label's ``random`` and ``first`` strategies, the baselines of uncertainty sampling, made safe to serve.

Two faults of theirs, met in a real loop:

- They pick from every unlabeled image in the datastore, and the studies folder may hold files that are not
  mammograms, or show no breast: a CT exported with the study, a damaged file, a blank exposure. Proposed, such a
  case can be neither explained (``/infer`` answers 422) nor labelled (the label is refused), and ``first`` would
  propose it every time, stalling the loop. :class:`ReadableOnly` proposes only images that the upload would have
  accepted (:func:`~lib.datastore.read_storable`). (``uncertainty`` proposes only scored images.)
- MONAI Label's ``random`` draws an image with weight "seconds since it was last proposed" and fails (500) when
  every unlabeled image was proposed within the current second: the last case asked for twice, two clients at once.
  :class:`Random` counts at least one second.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.datastore import MammogramDatastore, read_storable
from lib.http_errors import client_message
from mammoxai.errors import MammoXAIError

logger = logging.getLogger(__name__)

__all__ = ["Random", "ReadableOnly"]


class Random(Strategy):
    """A random unlabeled image, weighted by the seconds since this strategy last proposed it (never: since 1970), so
    that a case just given to one client is unlikely to go to the next; every weight is at least 1.

    Example:
        Random()({"strategy": "random"}, datastore)  # {"id": "case4", "weight": 1733500000}
    """

    def __init__(self) -> None:
        super().__init__("Random Strategy")

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        now = int(time.time())
        strategy = request["strategy"]
        proposed = [datastore.get_image_info(image).get("strategy", {}).get(strategy, {}) for image in images]
        weights = [max(1, now - info.get("ts", 0)) for info in proposed]
        index = random.choices(range(len(images)), weights=weights)[0]
        logger.info("random: selected %s (weight %d)", images[index], weights[index])
        return {"id": images[index], "weight": weights[index]}


class ReadableOnly(Strategy):
    """What ``strategy`` proposes, once its file reads as a mammogram with a breast in view; a file that does not is
    marked unreadable in the datastore (which then leaves it out of the unlabeled images until the file changes,
    :meth:`~lib.datastore.MammogramDatastore.mark_unreadable`), its problem naming it ``image '<id>'``, and the
    strategy is asked again.

    Args:
        strategy: the strategy to ask, e.g. MONAI Label's ``First()``.

    Example:
        strategy = ReadableOnly(First())
        strategy({"strategy": "first"}, datastore)  # {"id": "case1"}, never a CT lying in the studies folder
    """

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy.description)
        self.strategy = strategy

    def __call__(self, request: Mapping[str, Any], datastore: MammogramDatastore) -> dict[str, Any] | None:
        while proposal := self.strategy(request, datastore):
            image_id = proposal["id"]
            path = datastore.get_image_uri(image_id)
            try:
                read_storable(path, datastore.intensity_scaling)
            except MammoXAIError as error:
                logger.warning("not proposed: %s", error)
                datastore.mark_unreadable(image_id, client_message(str(error), {path: f"image {image_id!r}"}))
                continue
            return proposal
        return None
