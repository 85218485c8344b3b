"""MONAI Label app serving the MammoXAI bundle: one classification model whose inference explains itself.

Start it with::

    monailabel start_server --app apps/mammography --studies <folder of .dcm / .png mammograms>

``/info`` lists the model ``mammoxai`` (type ``classification``, its labels are the class names);
``POST /infer/mammoxai?image=<id>`` returns the prediction record as params and the saliency heatmap as a
float32 NRRD in the geometry of the input. See README.md for the options (``--conf bundle``, ``--conf device``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lib.datastore import MammogramDatastore
from lib.http_errors import not_found
from lib.infers import MammogramClassification, load_predictor
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask

import mammoxai
from mammoxai.errors import MammoXAIError

logger = logging.getLogger(__name__)

MODEL_NAME = "mammoxai"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "monai_bundle"


class MammographyApp(MONAILabelApp):
    """The MammoXAI MONAI Label app.

    Args (``--conf key value`` on the ``start_server`` command line):
        bundle: folder of the MammoXAI bundle to serve (default: the repository's ``monai_bundle``); its
            ``models/model.pt`` is reloaded when it changes, so newly trained weights need no restart.
        device: ``auto`` (default: GPU when present, else CPU), ``cpu``, ``cuda`` or ``cuda:<index>``.

    The studies folder is served by :class:`~lib.datastore.MammogramDatastore`, which refuses uploads that
    are not readable mammograms and labels that are not MammoXAI label JSON.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        bundle = Path(conf.get("bundle", DEFAULT_BUNDLE)).expanduser().resolve()
        self.predictor = load_predictor(bundle, conf.get("device", "auto"))
        logger.info(f"MammoXAI bundle {bundle} on {self.predictor.device}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MammoXAI",
            description="Explainable mammography classification (synthetic-phantom demo weights: not for clinical use)",
            version=mammoxai.__version__,
            labels=list(self.predictor.class_names),
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            raise MammoXAIError(
                self.studies, "remote datastores are not supported", "pass a local folder of mammograms as --studies"
            )
        return MammogramDatastore(
            self.studies,
            class_names=self.predictor.class_names,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {MODEL_NAME: MammogramClassification(self.predictor)}

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Answer unknown models and image ids with 404 (MONAI Label would answer 500), then infer.

        The heatmap is an explanation, not a label: it is returned and never saved into the datastore.
        """
        model = request.get("model")
        if model not in self._infers:
            raise not_found(f"model {model!r}", f"use one of {sorted(self._infers)} (GET /info/)")
        image = request.get("image")
        datastore = datastore or self.datastore()
        if isinstance(image, str) and not os.path.exists(image) and not datastore.get_image_uri(image):
            raise not_found(
                f"image {image!r}", "upload it first (PUT /datastore/image) or pick an id from GET /datastore/?output=all"
            )
        return super().infer({**request, "save_label": False}, datastore)
