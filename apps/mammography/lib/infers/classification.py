"""The MONAI Label infer task that serves the MammoXAI bundle: class probabilities and the heatmap explaining them.

The bundle's predictor (``configs/inference.json``, item ``predictor``) does all the work: it reads the file,
preprocesses it, runs the classifier and the saliency method, and maps the heatmap back onto the original
pixel grid. This task only adapts it to MONAI Label: the request's image path goes in; the heatmap comes out as
the one result file (float32 NRRD in the geometry of the input) and the prediction record
(:data:`mammoxai.schema.PREDICTION_SCHEMA`) as the params, as the predictor wrote it but for ``image.source``: its
metadata predictions (what the pixels look like, next to the header value) and QC flags reach the client unchanged.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.http_errors import client_errors, user_error_alone
from mammoxai.errors import MammoXAIError
from mammoxai.inference import MammogramPredictor, write_heatmap

logger = logging.getLogger(__name__)

__all__ = ["MammogramClassification", "load_predictor", "weights_errors"]

DESCRIPTION = (
    "MammoXAI whole-image mammogram classifier with a saliency heatmap on the original pixel grid. "
    "Demo weights are trained on synthetic phantoms: not for clinical use."
)


def load_predictor(bundle: str | os.PathLike, device: str = "auto") -> MammogramPredictor:
    """The ``predictor`` of ``<bundle>/configs/inference.json``, on ``device`` (``auto``: GPU when present).

    The predictor re-reads ``<bundle>/models/model.pt`` whenever the file changes, so weights trained while the
    server runs are served by the next request without a restart.

    Raises:
        MammoXAIError: the bundle has no ``configs/inference.json``, or a value of the config or ``device`` cannot
            be used; raised on its own, not inside the ``RuntimeError`` in which MONAI's config parser wraps what a
            component raises (which buried the message that says what to fix under the component's whole config).
    """
    config = Path(bundle) / "configs" / "inference.json"
    if not config.is_file():
        raise MammoXAIError(config, "not found", "pass --conf bundle <folder of a MammoXAI bundle>")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(Path(bundle).resolve())
    parser["device"] = device
    with user_error_alone():
        return parser.get_parsed_content("predictor")


@contextmanager
def weights_errors(predictor: MammogramPredictor) -> Iterator[None]:
    """Answer a :class:`MammoXAIError` from the block (no weights yet, weights that do not fit the network) with 503,
    naming the weights by their file name (``model.pt``, ``checkpoint.file`` of ``/info``) instead of their path.

    The refusal reaches whoever asks for a prediction or a ranking, a reviewer at the 3D Slicer panel among them, to
    whom the server's bundle folder means nothing; the administrator, who trains and places the weights, finds the
    path in the server log, where it is written here.
    """
    try:
        yield
    except MammoXAIError as error:
        logger.warning("no weights served: %s", error)
        path = predictor.checkpoint.path
        with client_errors(HTTPStatus.SERVICE_UNAVAILABLE, files={str(path): path.name}):
            raise


class MammogramClassification(InferTask):
    """Classify one mammogram and return its saliency heatmap (MONAI Label ``InferType.CLASSIFICATION``).

    ``/info`` lists the task with the model's class names as its labels. ``POST /infer/<model>`` answers with
    the heatmap NRRD as the result file and, as params, the prediction record plus MONAI Label's usual
    ``label_names`` (the class names) and ``latencies`` (seconds). A request may choose the saliency method and
    preset with the params ``{"saliency": {"method": "occlusion", "preset": "fast"}}`` (what the 3D Slicer panel
    sends; MONAI Label merges the params into the request); without them the bundle's configured method is used.
    ``/info`` lists the methods and presets the model's grid can run under the model's ``saliency`` key.
    A file the predictor rejects (wrong modality, unreadable pixels, no breast in view, ...) or an unknown saliency
    method or preset is answered with 422; missing or unloadable weights with 503 (:func:`weights_errors`); both
    carry the predictor's message, which names the image by the request's ``image_name`` (the app's
    ``image '<id>'``) instead of its path. The record's ``image.source`` is the request's ``image_source`` (the
    app's image id) when it has one: the server's path to the file is of no use to a client, and shows where the
    server keeps its files.

    Args:
        predictor: the bundle's ``mammoxai.inference.MammogramPredictor``, e.g. from :func:`load_predictor`.
        description: shown by ``/info``.

    Example:
        task = MammogramClassification(load_predictor("monai_bundle"))
        heatmap_nrrd, record = task({"image": "studies/case1.dcm"})
        heatmap_nrrd, record = task({"image": "studies/case1.dcm", "saliency": {"method": "rise", "preset": "fast"}})
    """

    def __init__(self, predictor: MammogramPredictor, description: str = DESCRIPTION) -> None:
        super().__init__(
            type=InferType.CLASSIFICATION,
            labels=list(predictor.class_names),
            dimension=2,
            description=description,
        )
        self.predictor = predictor

    def info(self) -> dict[str, Any]:
        """MONAI Label's model info plus ``saliency``: the configured method and preset, and the methods (each with
        its presets) a request may choose on this model's grid, so a client offers only what the server can run; and
        ``checkpoint``: the weights served (:meth:`checkpoint_info`)."""
        configured = self.predictor.saliency
        choices = {
            "method": configured["method"],
            "preset": configured["preset"],
            "methods": self.predictor.saliency_choices(),
        }
        return {**super().info(), "saliency": choices, "checkpoint": self.checkpoint_info()}

    def checkpoint_info(self) -> dict[str, Any]:
        """``{"file", "id", "modified"}`` of the weights file the next request serves (it reloads the file when it
        changed), or ``id`` and ``modified`` None before there is one.

        The model's ``version`` is the bundle's and stays the same when a training run replaces the weights: this is
        how a client sees that it did. ``id`` is the identity the uncertainty scores are stored with
        (:attr:`~mammoxai.inference.MammogramPredictor.checkpoint_id`), ``modified`` the ``model.checkpoint_mtime``
        of the prediction records. Read from the file, not from the predictor, so ``/info`` never waits for an
        inference in progress.
        """
        checkpoint = self.predictor.checkpoint
        try:
            stamp = checkpoint.current_stamp()
        except MammoXAIError:  # no weights yet
            return {"file": checkpoint.path.name, "id": None, "modified": None}
        return {"file": checkpoint.path.name, "id": checkpoint.identity(stamp), "modified": checkpoint.modified(stamp)}

    def is_valid(self) -> bool:
        # listed even before weights exist, so /infer can say how to train them instead of the model vanishing
        return True

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        start = time.perf_counter()
        with weights_errors(self.predictor):
            self.predictor.load_weights()
        saliency = request.get("saliency") or {}
        with client_errors(files={request["image"]: request.get("image_name", request["image"])}):
            if not isinstance(saliency, dict):
                raise MammoXAIError("saliency params", f"{saliency!r} is not an object", 'send {"method": <name>}')
            unknown = sorted(set(saliency) - {"method", "preset"})
            if unknown:  # answered, not ignored: the heatmap would silently explain something else than asked
                problem = f"name {unknown}, which a request cannot set (only method and preset)"
                raise MammoXAIError("saliency params", problem, "set the others in the bundle's configs/inference.json")
            method, preset = saliency.get("method"), saliency.get("preset")
            prediction = self.predictor.predict(request["image"], saliency_method=method, saliency_preset=preset)
        inferred = time.perf_counter()
        record = prediction.record  # validated by the predictor
        if "image_source" in request:
            record = {**record, "image": {**record["image"], "source": request["image_source"]}}
        params = {**record, "label_names": self.labels}
        handle, heatmap_path = tempfile.mkstemp(prefix="mammoxai_heatmap_", suffix=".nrrd")
        os.close(handle)
        write_heatmap(prediction, heatmap_path)
        written = time.perf_counter()
        params["latencies"] = {
            "infer": round(inferred - start, 3),
            "write": round(written - inferred, 3),
            "total": round(written - start, 3),
        }
        return heatmap_path, params
