"""MONAI Label app serving the MammoXAI bundle: one classification model whose inference explains itself.

Start it with::

    monailabel start_server --app apps/mammography --studies <folder of .dcm / .png mammograms>

``/info`` lists the model ``mammoxai`` (type ``classification``, its labels are the class names);
``POST /infer/mammoxai?image=<id>`` returns the prediction record as params and the saliency heatmap as a
float32 NRRD in the geometry of the input. See README.md for the options (``--conf bundle``, ``--conf device``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from monailabel.app import app as fastapi_app
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.batch_infer import BatchInferTask
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First

import mammoxai
from lib.activelearning import Random, ReadableOnly, UncertaintyStrategy
from lib.batch import StoredPredictionsBatchInfer
from lib.datastore import MammogramDatastore
from lib.dicomweb import DICOMwebMammogramDatastore
from lib.http_errors import check_offered, install_request_error_handlers, not_found
from lib.infers import MammogramClassification, load_predictor
from lib.route_guards import install_route_guards, request_upload
from lib.scoring import UncertaintyScoring
from lib.security import check_auth_realm, install_login_guard, install_request_size_limit, install_token_verifier
from lib.trainers import CorrectionsTrainer, install_train_guard
from mammoxai.errors import MammoXAIError
from mammoxai.inference import resolve_device

logger = logging.getLogger(__name__)

MODEL_NAME = "mammoxai"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "monai_bundle"


class MammographyApp(MONAILabelApp):
    """The MammoXAI MONAI Label app.

    Args (``--conf key value`` on the ``start_server`` command line):
        bundle: folder of the MammoXAI bundle to serve (default: the repository's ``monai_bundle``); its
            ``models/model.pt`` is reloaded when it changes, so newly trained weights need no restart.
        device: ``auto`` (default: GPU when present, else CPU), ``cpu``, ``cuda`` or ``cuda:<index>``.
        max_upload_mb: largest request body the server accepts, in MiB (default 512); larger ones get 413.
        dicomweb_cache: with ``--studies http(s)://...`` (a DICOMweb root), the folder of the local cache of the
            PACS's mammograms and of the labels saved for them (default ``MONAI_LABEL_DATASTORE_CACHE_PATH``, else
            ``~/.cache/mammoxai/dicomweb``).
        dicomweb_filter: extra QIDO-RS filters as JSON, e.g. ``{"StudyDate": "20240101-"}`` (modality is MG).
        dicomweb_refresh: seconds a listing of the PACS is reused (default 60).
        uncertainty: how the ``uncertainty`` strategy ranks unlabeled images: ``entropy`` (default), ``margin`` or
            ``tta`` (test-time-augmentation variance); see :mod:`lib.scoring.uncertainty`.

    The active-learning loop (README.md "Active learning"): ``POST /activelearning/<uncertainty|random|first>``
    proposes the next case, ``PUT /datastore/label?tag=final`` stores the correction, ``POST /train/mammoxai``
    fine-tunes on all corrections (:class:`~lib.trainers.CorrectionsTrainer`) and the next ``/infer`` serves the
    new weights. ``POST /batch/infer/mammoxai`` stores predictions and heatmaps under label tag ``prediction``.

    The studies folder is served by :class:`~lib.datastore.MammogramDatastore`, which refuses uploads that
    are not readable mammograms and labels that are not MammoXAI label JSON; a DICOMweb URL as studies by
    :class:`~lib.dicomweb.DICOMwebMammogramDatastore` (one image per MG instance). Authentication is MONAI Label's
    (``MONAI_LABEL_AUTH_ENABLE``, see README.md "Security"), checked at start-up by
    :func:`~lib.security.check_auth_realm`.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        # every option is checked before anything is installed: a value the server cannot use stops it, naming it
        bundle = Path(conf.get("bundle", DEFAULT_BUNDLE)).expanduser().resolve()
        max_upload_mb = _conf_number(conf, "max_upload_mb", 512, "the largest request body in MiB, e.g. 1024")
        device = _conf_device(conf)
        self.dicomweb_filter = _conf_json_object(conf, "dicomweb_filter", '{"StudyDate": "20240101-"}')
        self.dicomweb_refresh = _conf_number(conf, "dicomweb_refresh", 60, "seconds, e.g. 60", allow_zero=True)
        check_auth_realm()
        install_token_verifier()
        install_login_guard(fastapi_app)
        install_request_error_handlers(fastapi_app)
        install_request_size_limit(fastapi_app, int(max_upload_mb * 2**20))
        self.bundle = bundle
        self.predictor = load_predictor(bundle, device)
        self.uncertainty = UncertaintyScoring(self.predictor, conf.get("uncertainty", "entropy"))
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
        # scores are computed in the server when a case is requested (the uncertainty strategy), not by MONAI
        # Label's background scoring process, which would rewrite the datastore index beside the server
        self._auto_update_scoring = False

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return self._init_dicomweb_datastore()
        return MammogramDatastore(
            self.studies,
            class_names=self.predictor.class_names,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            intensity_scaling=self.predictor.intensity_scaling,
        )

    def _init_dicomweb_datastore(self) -> DICOMwebMammogramDatastore:
        url = self.studies.rstrip("/")
        user = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
        password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
        session = create_session_from_user_pass(user, password) if user and password else None
        client = DICOMwebClient(url=url, session=session)
        cache = self.conf.get("dicomweb_cache") or settings.MONAI_LABEL_DATASTORE_CACHE_PATH
        return DICOMwebMammogramDatastore(
            client,
            class_names=self.predictor.class_names,
            cache_path=cache or os.path.join(Path.home(), ".cache", "mammoxai", "dicomweb"),
            search_filter=self.dicomweb_filter,
            refresh_seconds=self.dicomweb_refresh,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {MODEL_NAME: MammogramClassification(self.predictor)}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {MODEL_NAME: CorrectionsTrainer(self.bundle, self.predictor)}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        return {"uncertainty": self.uncertainty}

    def init_strategies(self) -> dict[str, Strategy]:
        return {
            "uncertainty": UncertaintyStrategy(self.uncertainty),
            "random": ReadableOnly(Random()),
            "first": ReadableOnly(First()),
        }

    def init_batch_infer(self) -> BatchInferTask:
        return StoredPredictionsBatchInfer()

    def on_init_complete(self) -> None:
        super().on_init_complete()
        install_train_guard(fastapi_app, self._trainers, self.datastore)
        install_route_guards(fastapi_app, self._scoring_methods, self._infers, self.datastore)

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer an unknown strategy with 404 (MONAI Label would answer 500), then propose the next case."""
        check_offered("strategy", request.get("strategy"), self._strategies)
        return super().next_sample(request)

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Answer unknown models and image ids with 404 (MONAI Label would answer 500), then infer.

        The heatmap is an explanation, not a label: it is returned and never saved into the datastore. The image is
        named as the client knows it, not by the server's path to its file: a refusal by ``image_name``
        (``image '<id>'``, or the image sent with the request), the prediction's ``image.source`` by ``image_source``
        (the id, or ``""`` for an image sent with the request, whose file name MONAI Label does not keep).
        """
        check_offered("model", request.get("model"), self._infers)
        image, name, source = request.get("image"), "image sent with the request", ""
        datastore = datastore or self.datastore()
        if isinstance(image, str) and image != request_upload():
            # an id names a datastore image and nothing else: MONAI Label would also read any server path given
            name, source, image = f"image {image!r}", image, datastore.get_image_uri(image)
            if not image:
                raise not_found(
                    name, "upload it first (PUT /datastore/image) or pick an id from GET /datastore/?output=all"
                )
        named = {"image": image, "image_name": name, "image_source": source}
        return super().infer({**request, **named, "save_label": False}, datastore)

    def infer_wsi(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Serve MONAI Label's whole-slide routes (``/infer/wsi_v2/<model>``) as ``/infer``: a mammogram is one image.

        MONAI Label does so for a DICOM or PNG, but hands a ``.tif`` / ``.tiff`` to openslide's tiling (500 here, and
        tiles of a mammogram would be classified one by one if it were installed). The task's config is merged in
        first, as MONAI Label's own path does.
        """
        task = self._infers.get(request.get("model"))
        return self.infer({**(task.config() if task else {}), **request}, datastore)


def _conf_number(conf: dict[str, str], key: str, default: float, meaning: str, allow_zero: bool = False) -> float:
    """``--conf <key>`` as a finite number above zero (or zero, with ``allow_zero``); ``meaning`` says in the fix what
    it counts: a limit of zero or less would have the server refuse every request, not start."""
    text = conf.get(key, default)
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "above zero"
        raise MammoXAIError(f"--conf {key} {text}", f"is not a number {bound}", f"pass {meaning}")
    return value


def _conf_device(conf: dict[str, str]) -> str:
    """``--conf device`` once :func:`~mammoxai.inference.resolve_device` accepts it (a device torch knows, a GPU this
    machine has), refused under the option's name instead of deep in the bundle config's parsing."""
    device = conf.get("device", "auto")
    try:
        resolve_device(device)
    except MammoXAIError as error:
        raise MammoXAIError(f"--conf device {device}", error.problem, error.fix) from error
    return device


def _conf_json_object(conf: dict[str, str], key: str, example: str) -> dict[str, Any]:
    """``--conf <key>`` as a JSON object (``{}`` when not given)."""
    text = conf.get(key, "{}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise MammoXAIError(f"--conf {key}", f"is not JSON ({error})", f"pass a JSON object, e.g. {example}") from error
    if not isinstance(value, dict):
        raise MammoXAIError(f"--conf {key}", f"{text} is not a JSON object", f"pass a JSON object, e.g. {example}")
    return value
