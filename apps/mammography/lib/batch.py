"""Batch inference that keeps its results: the prediction and heatmap of every image, stored as model output.

MONAI Label's ``POST /batch/infer/<model>?images=all|unlabeled`` runs the infer task over the datastore in the
background. The app's ``/infer`` never saves its heatmap (an explanation is not a label), so this task stores
each image's result explicitly, where a client reads it back and where it cannot be mistaken for a correction:

- label tag ``prediction`` (:data:`PREDICTION_TAG`): the heatmap NRRD, float32 in the geometry of the image,
  ``GET /datastore/label?label=<image id>&tag=prediction``; its label info (``GET /datastore/label/info``) holds
  ``{"model": <model>, "params": <prediction record>}``, the convention MONAI Label uses for saved inferences.
- training reads only tag ``final``, and the strategies count an image as labeled only when it has a ``final``
  label, so stored predictions neither train the model nor hide a case from the clinician.

The heatmap is not a label JSON, so it is stored with the datastore's ``save_model_output`` rather than the
validating ``save_label`` clinicians' labels go through (:class:`~lib.datastore.MammogramDatastore`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.batch_infer import BatchInferTask
from monailabel.utils.others.generic import remove_file

logger = logging.getLogger(__name__)

__all__ = ["PREDICTION_TAG", "StoredPredictionsBatchInfer"]

PREDICTION_TAG = "prediction"
"""Label tag of stored model output; never ``final`` (a clinician's correction) nor ``original``."""


class StoredPredictionsBatchInfer(BatchInferTask):
    """Infer every selected image and store its heatmap and prediction record under :data:`PREDICTION_TAG`.

    An image that fails (unreadable, no weights) is logged and reported as ``{"error": <message>}``; the others
    are still processed.

    Example:
        app.batch_infer({"model": "mammoxai", "images": "unlabeled"})  # {"case1": {"predicted_class": ...}, ...}
    """

    def __call__(self, request: Mapping[str, Any], datastore: Datastore, infer: Callable) -> dict[str, Any]:
        model = request["model"]
        results: dict[str, Any] = {}
        for image_id in sorted(self.get_images(request, datastore)):
            try:
                result = infer({"model": model, "image": image_id}, datastore)
            except Exception as error:  # one bad image must not end the batch; its reason is reported
                logger.warning("batch infer: %s failed: %s", image_id, error)
                results[image_id] = {"error": str(getattr(error, "detail", error))}
                continue
            params = result["params"]
            try:
                info = {"model": model, "params": params}
                datastore.save_model_output(image_id, result["file"], PREDICTION_TAG, info)
            finally:
                remove_file(result["file"])
            results[image_id] = {"predicted_class": params["predicted_class"], "probabilities": params["probabilities"]}
        logger.info("batch infer: stored %d predictions under tag %r", len(results), PREDICTION_TAG)
        return results
