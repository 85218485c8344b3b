"""Inference with explanation: one mammogram file in, class probabilities and a heatmap on its pixels out.

:class:`MammogramPredictor` is the bundle's ``predictor`` (``configs/inference.json``). The bundle's own
``run`` (:class:`InferenceRunner`) and the MONAI Label app both use it, so a file gives the same record and the
same heatmap wherever it is explained. For each file it

1. reads it with :func:`mammoxai.io.read_mammogram` (DICOM MG/DX, PNG, TIFF, PGM);
2. prepares the model input with :func:`mammoxai.io.preprocess.prepare_image` (breast crop, chest wall left,
   intensity scaling), which also returns the :class:`~mammoxai.io.geometry.ImageGeometry`; the grid and the
   intensity scaling are the ones the weights were trained with, which their checkpoint records;
3. runs the classifier, then the configured saliency method (any of :data:`mammoxai.saliency.METHODS`, built by
   :func:`mammoxai.saliency.get_method`; Grad-CAM by default) for the target class; a request may name another
   method and preset;
4. maps the heatmap back onto the original pixel grid with ``geometry.restore``;
5. compares what the metadata heads of a :class:`~mammoxai.nets.MetadataClassifier` read from the pixels (view,
   thickness, tube voltage, ...; the same forward pass as the class) with the file's header, and flags confident
   disagreements: a header that contradicts the pixels points at a mislabelled view, a wrong exposure record or
   an image filed under the wrong study — worth a look before the score is trusted;
6. returns a :class:`Prediction` whose record validates against :data:`mammoxai.schema.PREDICTION_SCHEMA`.

The weights are reloaded whenever the checkpoint file changes, so a server keeps serving while
``train.json`` writes better weights.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import SimpleInferer
from torch import nn

from mammoxai.data.dataset import class_index
from mammoxai.data.manifest import find_images
from mammoxai.errors import MammoXAIError, check_output_path, parse_class_names
from mammoxai.io import read_mammogram
from mammoxai.io.fields import UNKNOWN, MetadataLabelSpace
from mammoxai.io.geometry import ImageGeometry
from mammoxai.io.heatmap import write_heatmap_nrrd
from mammoxai.io.mammogram import Mammogram
from mammoxai.io.preprocess import check_field_of_view, check_intensity_scaling, grid_shape, prepare_image
from mammoxai.nets.finetune import MetadataClassifier, load_checkpoint
from mammoxai.saliency import METHODS, PRESETS, SaliencyMethod, check_grid, get_method, method_settings
from mammoxai.schema import SCHEMA_VERSION, validate_prediction

logger = logging.getLogger(__name__)

__all__ = [
    "TRAIN_COMMAND",
    "Prediction",
    "MammogramPredictor",
    "InferenceRunner",
    "InferenceSummary",
    "list_inputs",
    "output_names",
    "resolve_device",
    "write_heatmap",
    "write_prediction",
]

TRAIN_COMMAND = (
    "python -m monai.bundle run --config_file configs/train.json --dataset_dir <studies> (from the bundle root)"
)
"""How to produce weights; named in the error a missing checkpoint raises."""

PREDICTED = "predicted"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → the first GPU when one is present, else the CPU; anything else is passed to ``torch.device``.

    A GPU the machine lacks is refused here, by name, rather than by the driver error of the first ``.to()``
    (which comes after the manifest has been read and every image cached).

    Raises:
        MammoXAIError: the device name is not one torch knows, or names a CUDA GPU this machine does not have.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise MammoXAIError(f"device {device!r}", str(error), "use auto, cpu, cuda or cuda:<index>") from error
    if resolved.type == "cuda":
        source = f"device {str(device)!r}"
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise MammoXAIError(source, "asks for a CUDA GPU, and this machine has none", "use auto or cpu")
        if (resolved.index or 0) >= count:
            problem = f"asks for CUDA GPU {resolved.index}, and this machine has {count}"
            raise MammoXAIError(source, problem, f"use auto, or cuda:0 to cuda:{count - 1}")
    return resolved


@dataclass
class Prediction:
    """One explained image.

    Args:
        record: the prediction record, valid against :data:`mammoxai.schema.PREDICTION_SCHEMA`.
        heatmap: float32 (H, W) in [0, 1] on the original pixel grid (``mammogram.pixels.shape``); 0 outside
            the breast crop.
        mammogram: the image as read.
    """

    record: dict[str, Any]
    heatmap: np.ndarray
    mammogram: Mammogram


@dataclass
class _Checkpoint:
    """Identity of the weights in use: the file's (mtime_ns, size) when it was loaded."""

    path: Path
    stamp: tuple[int, int] | None = None

    def current_stamp(self) -> tuple[int, int]:
        try:
            stat = self.path.stat()
        except FileNotFoundError as error:
            raise MammoXAIError(self.path, "no trained weights here", f"train them first: {TRAIN_COMMAND}") from error
        return stat.st_mtime_ns, stat.st_size

    @property
    def mtime_iso(self) -> str:
        assert self.stamp is not None
        return self.modified(self.stamp)

    @staticmethod
    def identity(stamp: tuple[int, int]) -> str:
        """``"<mtime_ns>-<size>"``: how stored scores, prediction records and the server's ``/info`` name weights."""
        return f"{stamp[0]}-{stamp[1]}"

    @staticmethod
    def modified(stamp: tuple[int, int]) -> str:
        """The file's modification time as ISO 8601 UTC with milliseconds (``model.checkpoint_mtime``)."""
        return datetime.fromtimestamp(stamp[0] / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


class MammogramPredictor:
    """Class probabilities and a saliency heatmap for a mammogram file.

    Args:
        network: the classifier (``network_def``): input (B, 1, h, w) in [0, 1], output logits (B, classes). A
            :class:`~mammoxai.nets.MetadataClassifier` also fills ``metadata_predictions``; any other network
            leaves them empty.
        checkpoint: its weights, a state dict as ``train.json`` saves it (``{"model": state_dict}`` is also
            accepted). Reloaded when the file's modification time or size changes.
        class_names: name of each output logit, in order (two or more, read by
            :func:`~mammoxai.errors.parse_class_names`, so ``--class_names normal,malignant`` is refused by name).
        image_size: (h, w) of the model grid, or one int for a square grid.
        saliency: ``{"method": <name>, "preset": <preset> | None, "settings": {...}, "target_layer": <layer name>,
            "target_class": "predicted" | <class>}``. ``method`` is a name of :data:`mammoxai.saliency.METHODS`
            (default ``"gradcam"``), ``preset`` one of its presets (``"faithful"``, ``"fast"``; default none) and
            ``settings`` its constructor arguments, which override the preset's and apply to the configured method
            only (a request naming another method gets that method's preset and defaults). ``target_layer`` is a
            property of the network rather than of a method: it is given to every method that takes one (the CAM
            family) and defaults to the network's ``last_block`` when it has one; ``amp`` is passed on likewise.
            ``target_class`` ``"predicted"`` (default) explains each image's most probable class; a class name,
            matched regardless of case and spacing, explains that class, which the record names as ``class_names``
            spell it. Any other key, or ``settings`` that are not a mapping, is refused.
        metadata_label_space: the fields and classes of the network's metadata heads (train.json's
            ``metadata_label_space``); required by a network with metadata heads, unused otherwise.
        qc_min_probability: a metadata prediction that disagrees with the header is flagged only when its
            probability is at least this: a low-confidence guess that differs from the header is no evidence that
            the header is wrong.
        device: ``"auto"`` (GPU when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.
        amp: use automatic mixed precision (and channels-last memory) on a GPU; ignored on the CPU.
        model_name: recorded in every prediction.
        model_version: recorded in every prediction (the bundle version).
        inferer: runs the network for the class and metadata logits, called as ``inferer(inputs, network)`` like a
            MONAI ``Inferer`` (``network`` may be ``forward_with_metadata``, which returns both); default
            ``SimpleInferer()``. The saliency pass runs the network itself: it explains the network, not the inferer.
        intensity_scaling: how :func:`~mammoxai.io.preprocess.prepare_image` scales every image this predictor reads
            (one of :data:`~mammoxai.io.preprocess.INTENSITY_SCALINGS`). A network only means something on images
            scaled the way it was trained on, so weights whose checkpoint records another scaling are refused when
            they are loaded; a checkpoint older than the record means ``"breast_percentiles"``.
        field_of_view: what :func:`~mammoxai.io.preprocess.prepare_image` puts on the grid (one of
            :data:`~mammoxai.io.preprocess.FIELDS_OF_VIEW`), refused against the checkpoint's record the same way
            (an older record means ``"breast"``).

    Raises:
        MammoXAIError: a setting it cannot use (``class_names``, ``image_size``, ``intensity_scaling``,
            ``field_of_view``, ``saliency``, ``qc_min_probability``, ``device``, ``metadata_label_space``), before
            any image is read.

    Example:
        parser = ConfigParser()
        parser.read_config("configs/inference.json")
        parser["bundle_root"] = "."
        predictor = parser.get_parsed_content("predictor")
        prediction = predictor.predict("case1.dcm")
        prediction.record["probabilities"], prediction.heatmap.shape == prediction.mammogram.shape
        prediction.record["metadata_predictions"][0]
        # {"field": "view", "predicted": "MLO", "probability": 0.97, "header_value": "CC", "agrees": False}
        prediction.record["qc_flags"]   # [{"code": "metadata_mismatch_view", "message": "the pixels look like ..."}]
    """

    def __init__(
        self,
        network: nn.Module,
        checkpoint: str | os.PathLike,
        class_names: Sequence[str],
        image_size: int | Sequence[int],
        saliency: Mapping[str, Any] | None = None,
        metadata_label_space: MetadataLabelSpace | None = None,
        qc_min_probability: float = 0.9,
        device: str | torch.device = "auto",
        amp: bool = True,
        model_name: str = "mammoxai_classifier",
        model_version: str = "unversioned",
        inferer: Callable[..., Any] | None = None,
        intensity_scaling: str = "breast_percentiles",
        field_of_view: str = "breast",
    ) -> None:
        self.class_names = tuple(parse_class_names(class_names))
        self.image_size = grid_shape(image_size)
        self.intensity_scaling = check_intensity_scaling(intensity_scaling)
        self.field_of_view = check_field_of_view(field_of_view)
        default_layer = getattr(network, "last_block", None)  # MammoClassifier names its last convolutional block
        self.saliency = {
            "method": "gradcam",
            "preset": None,
            "settings": {},
            "target_layer": default_layer,
            "target_class": PREDICTED,
        }
        self.saliency.update(_saliency_overrides(saliency, list(self.saliency)))
        self.saliency["target_class"] = self._target_class(self.saliency["target_class"])
        if isinstance(qc_min_probability, bool) or not 0.0 <= float(qc_min_probability) <= 1.0:
            raise MammoXAIError("qc_min_probability", f"is {qc_min_probability!r}", "use a probability, e.g. 0.9")
        self.qc_min_probability = float(qc_min_probability)
        self.metadata_label_space = _check_label_space(network, metadata_label_space)
        self.device = resolve_device(device)
        self.amp = amp and self.device.type == "cuda"
        self.model_name = model_name
        self.model_version = model_version
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.network = network.to(self.device).eval()
        if self.amp:
            self.network = self.network.to(memory_format=torch.channels_last)
        self._methods: dict[tuple[str, str | None], SaliencyMethod] = {}
        self._saliency_method()  # a bad method, preset or setting in the config fails here, not on the first request
        self.checkpoint = _Checkpoint(Path(checkpoint))
        # one prediction at a time: weights are swapped in place on reload and saliency methods hook the network
        self._lock = threading.Lock()

    def _target_class(self, target: Any) -> str:
        """The saliency ``target_class`` as the predictor uses it: ``"predicted"``, or a class as ``class_names``
        spell it.

        A class matches regardless of case and spacing (``--saliency#target_class " Malignant "``), by the rule labels
        and ``label_map`` keys follow in training and evaluation (:class:`~mammoxai.data.dataset.LabelMap`): matched as
        written, the served model refused a spelling its own training took. ``"predicted"`` is a keyword, not a class,
        and stays exact.

        Raises:
            MammoXAIError: ``target`` is neither ``"predicted"`` nor a class; the message names it and the classes.
        """
        if target == PREDICTED:
            return PREDICTED
        fix = f"use one of them or {PREDICTED!r}"
        return self.class_names[class_index(target, self.class_names, "saliency target_class", fix)]

    def predict(
        self, path: str | os.PathLike, saliency_method: str | None = None, saliency_preset: str | None = None
    ) -> Prediction:
        """Read, classify and explain one file.

        Args:
            path: the mammogram file.
            saliency_method: explain with this method (a name of :data:`mammoxai.saliency.METHODS`) instead of the
                configured one, e.g. what a client asked for in one request.
            saliency_preset: that method's preset; ``None``: the configured preset for the configured method, the
                method's defaults for another.

        Raises:
            MammoXAIError: the file is not a readable mammogram, there are no weights yet, or the saliency method or
                preset is unknown.
        """
        with self._lock:
            method, preset, cam = self._saliency_method(saliency_method, saliency_preset)
            self._load_weights_if_changed()
            start = time.perf_counter()
            mammogram = read_mammogram(path)
            read = time.perf_counter()
            image, geometry = self._prepare(mammogram)
            batch = image[None].to(self.device)
            if self.amp:
                batch = batch.contiguous(memory_format=torch.channels_last)
            prepared = time.perf_counter()
            with torch.no_grad(), self._autocast():
                if self.metadata_label_space is None:
                    logits, field_logits = self.inferer(batch, self.network), {}
                else:
                    logits, field_logits = self.inferer(batch, self.network.forward_with_metadata)
                probabilities = torch.softmax(logits.float(), dim=1)[0].cpu()
                fields = {name: torch.softmax(value.float(), dim=1)[0].cpu() for name, value in field_logits.items()}
            forwarded = time.perf_counter()
            target_class = self.saliency["target_class"]
            target = int(probabilities.argmax()) if target_class == PREDICTED else self.class_names.index(target_class)
            with self._autocast():
                maps, _ = cam(batch, class_idx=target)
            heatmap = geometry.restore(maps[0, 0]).cpu().numpy().astype(np.float32)
            explained = time.perf_counter()
            timings = {
                "read": read - start,
                "preprocess": prepared - read,
                "forward": forwarded - prepared,
                "saliency": explained - forwarded,
                "total": explained - start,
            }
            saliency = {"method": method, "preset": preset, **cam.settings}
            metadata = self._metadata_predictions(fields, mammogram.header)
            # under the lock: a reload right after it would give the record another checkpoint's name and time
            record = self._record(mammogram, geometry, probabilities, target, heatmap, saliency, timings, metadata)
        validate_prediction(record, source=f"prediction for {mammogram.source or path}")
        return Prediction(record=record, heatmap=heatmap, mammogram=mammogram)

    def predict_probabilities(
        self, path: str | os.PathLike, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]] = ()
    ) -> tuple[torch.Tensor, str]:
        """Class probabilities of one file without the saliency pass, for ranking many images cheaply.

        The read, preprocessing and forward pass are those of :meth:`predict`, so a score computed here belongs
        to the same model as the prediction a clinician is shown.

        Args:
            path: the mammogram file.
            transforms: test-time augmentations, each mapping the model input (1, 1, h, w) to a tensor of the same
                shape (e.g. a flip); each adds one row to the result.

        Returns:
            ``(probabilities, checkpoint)``: a (1 + len(transforms), classes) CPU tensor, row 0 for the image as
            it is, and the identity of the weights used (``"<mtime_ns>-<size>"`` of the checkpoint file).

        Raises:
            MammoXAIError: the file is not a readable mammogram, or there are no weights yet.
        """
        with self._lock:
            self._load_weights_if_changed()
            image, _ = self._prepare(read_mammogram(path))
            image = image[None].to(self.device)
            batch = torch.cat([image, *(transform(image) for transform in transforms)])
            if self.amp:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), self._autocast():
                probabilities = torch.softmax(self.inferer(batch, self.network).float(), dim=1).cpu()
            checkpoint = self.checkpoint_id
        return probabilities, checkpoint

    def _prepare(self, mammogram: Mammogram) -> tuple[torch.Tensor, ImageGeometry]:
        """The model input of ``mammogram`` and its geometry, on the grid, intensity scale and field of view the
        weights expect."""
        inputs = {"intensity_scaling": self.intensity_scaling, "field_of_view": self.field_of_view}
        return prepare_image(mammogram, self.image_size, **inputs)

    @property
    def checkpoint_id(self) -> str:
        """Identity of the loaded weights, ``"<mtime_ns>-<size>"`` of the checkpoint file (``""`` before loading).

        A score or prediction stored with it can be recognised as stale once newer weights are loaded.
        """
        stamp = self.checkpoint.stamp
        return "" if stamp is None else self.checkpoint.identity(stamp)

    def saliency_choices(self) -> dict[str, list[str]]:
        """The saliency methods a request may name for this model, each with the presets it may name (``[]``: none).

        A method or preset whose needs the model grid cannot meet (CorRELAX's local views on a grid smaller than
        one view) is left out, so that a client offers only what :meth:`predict` can run; ``/info`` advertises this.
        """
        choices = {}
        for name in METHODS:
            runnable = [preset for preset in (None, *PRESETS.get(name, {})) if self._can_run(name, preset)]
            if runnable:
                choices[name] = [preset for preset in runnable if preset is not None]
        return choices

    def _can_run(self, name: str, preset: str | None) -> bool:
        try:
            self._saliency_method(name, preset)
        except MammoXAIError:
            return False
        return True

    def _saliency_method(
        self, name: str | None = None, preset: str | None = None
    ) -> tuple[str, str | None, SaliencyMethod]:
        """``(name, preset, method)`` for a request; each (name, preset) is built once and then reused.

        Raises:
            MammoXAIError: an unknown method, preset or setting (the registry's message lists the valid ones).
        """
        configured = self.saliency["method"]
        name = configured if name is None else name
        if preset is None and name == configured:
            preset = self.saliency["preset"]
        key = (name, preset)
        if key not in self._methods:
            settings = dict(self.saliency["settings"]) if name == configured else {}
            accepted = method_settings(name)
            if "target_layer" in accepted:
                settings.setdefault("target_layer", self.saliency["target_layer"])
            if "amp" in accepted:
                settings.setdefault("amp", self.amp)
            method = get_method(name, self.network, preset=preset, **settings)
            check_grid(method, self.image_size, f"saliency method {name}")
            self._methods[key] = method
        return name, preset, self._methods[key]

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, enabled=self.amp)

    def load_weights(self) -> None:
        """Load the checkpoint now if it changed since the last load (``predict`` does this by itself).

        Raises:
            MammoXAIError: the checkpoint is missing or does not fit the network.
        """
        with self._lock:
            self._load_weights_if_changed()

    def _load_weights_if_changed(self) -> None:
        stamp = self.checkpoint.current_stamp()
        if stamp == self.checkpoint.stamp:
            return
        path = self.checkpoint.path
        fix = f"serve it with the network_def and metadata_fields it was trained with, or retrain: {TRAIN_COMMAND}"
        load_checkpoint(
            self.network,
            path,
            "cannot be loaded into the network",
            fix,
            self.device,
            image_size=self.image_size,
            class_names=self.class_names,
            intensity_scaling=self.intensity_scaling,
            field_of_view=self.field_of_view,
        )
        self.network.eval()
        self.checkpoint.stamp = stamp
        logger.info("loaded weights %s (modified %s)", path, self.checkpoint.mtime_iso)

    def _record(
        self,
        mammogram: Mammogram,
        geometry: ImageGeometry,
        probabilities: torch.Tensor,
        target: int,
        heatmap: np.ndarray,
        saliency: Mapping[str, Any],
        timings: Mapping[str, float],
        metadata: list[dict[str, Any]],
    ) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": {
                "name": self.model_name,
                "version": self.model_version,
                "checkpoint": self.checkpoint.path.name,
                "checkpoint_mtime": self.checkpoint.mtime_iso,
            },
            "image": {
                "source": str(mammogram.source),
                "shape": list(mammogram.shape),
                "spacing_mm": None if mammogram.spacing is None else [float(value) for value in mammogram.spacing],
                "laterality": mammogram.laterality,
                "view": mammogram.view,
            },
            "class_names": list(self.class_names),
            "probabilities": {name: float(p) for name, p in zip(self.class_names, probabilities.tolist(), strict=True)},
            "predicted_class": self.class_names[int(probabilities.argmax())],
            "metadata_predictions": metadata,
            "qc_flags": _orientation_flags(mammogram, geometry) + self._metadata_flags(metadata),
            "saliency": {
                "method": saliency["method"],
                "target_class": self.class_names[target],
                "settings": {
                    **{name: value for name, value in saliency.items() if name != "method"},
                    "target": self.saliency["target_class"],
                    "normalisation": "min-max per image on the model grid",
                    "model_grid": list(self.image_size),
                    "intensity_scaling": self.intensity_scaling,
                    "field_of_view": self.field_of_view,
                },
                "heatmap_shape": list(heatmap.shape),
                "value_range": [float(heatmap.min()), float(heatmap.max())],
            },
            "timings_ms": {name: round(seconds * 1000.0, 3) for name, seconds in timings.items()},
        }

    def _metadata_predictions(
        self, probabilities: Mapping[str, torch.Tensor], header: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Per field: the most probable class, its probability, and the header's value in the same classes.

        The header value is encoded and decoded by the label space the heads were trained on, so a raw
        ``BodyPartThickness`` of 47.5 is compared as its bin "40-50 mm" and a ``ViewPosition`` of "XCCL" as "CC";
        ``header_value`` and ``agrees`` are null when the header does not give the field (missing, out of range, a
        view the heads do not know).
        """
        space = self.metadata_label_space
        if space is None:
            return []
        encoded = space.encode(header)
        predictions = []
        for name, field_probabilities in probabilities.items():
            index = int(field_probabilities.argmax())
            known = encoded[name] != UNKNOWN
            predictions.append(
                {
                    "field": name,
                    "predicted": space.decode(name, index),
                    "probability": float(field_probabilities[index]),
                    "header_value": space.decode(name, encoded[name]) if known else None,
                    "agrees": encoded[name] == index if known else None,
                }
            )
        return predictions

    def _metadata_flags(self, predictions: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
        """A ``metadata_mismatch_<field>`` flag per confident prediction that the header contradicts."""
        flags = []
        for item in predictions:
            if item["agrees"] is not False or item["probability"] < self.qc_min_probability:
                continue
            keys = " + ".join(self.metadata_label_space.field(item["field"]).keys)  # type: ignore[union-attr]
            flags.append(
                {
                    "code": f"metadata_mismatch_{item['field']}",
                    "message": (
                        f"the pixels look like {item['field'].replace('_', ' ')} {item['predicted']}, but the header "
                        f"({keys}) says {item['header_value']} (p = {item['probability']:.2f}): check the header, "
                        "and that this is the image it describes"
                    ),
                }
            )
        return flags


def _saliency_overrides(saliency: Any, keys: Sequence[str]) -> Mapping[str, Any]:
    """The predictor's ``saliency`` setting, checked to be a mapping of the known ``keys`` whose ``settings`` is one.

    Taken as it came, a misspelt key (``"mehtod"``) was kept beside the default it was meant to replace, which ran
    instead, without a word; a list of settings or a method name alone failed as Python's ``ValueError`` or
    ``TypeError``.

    Raises:
        MammoXAIError: ``saliency`` is not a mapping, names a key other than ``keys``, or its ``settings`` is not a
            mapping; the message lists the keys.
    """
    example = '{"method": "rise", "preset": "fast", "settings": {"num_masks": 500}}'
    fix = f"give a mapping of {', '.join(keys)}, e.g. {example}"
    if saliency is None:
        return {}
    if not isinstance(saliency, Mapping):
        raise MammoXAIError("saliency", f"is {saliency!r}, not a mapping", fix)
    unknown = sorted(str(key) for key in set(saliency) - set(keys))
    if unknown:
        raise MammoXAIError("saliency", f"has unknown keys {unknown}", fix)
    if "settings" in saliency and not isinstance(saliency["settings"], Mapping):
        problem = f"is {saliency['settings']!r}, not a mapping of the method's settings"
        raise MammoXAIError("saliency settings", problem, fix)
    return saliency


def _check_label_space(network: nn.Module, label_space: MetadataLabelSpace | None) -> MetadataLabelSpace | None:
    """The label space of a network with metadata heads, checked to name its fields with as many classes each.

    Raises:
        MammoXAIError: the network has metadata heads but no label space is given, or the two disagree.
    """
    if not isinstance(network, MetadataClassifier):
        return None
    heads = network.config["fields"]
    if label_space is None:
        raise MammoXAIError(
            "metadata_label_space", f"is not set, but the network has metadata heads {list(heads)}", "set it"
        )
    classes = {name: label_space.num_classes(name) for name in label_space.fields}
    if classes != heads:
        raise MammoXAIError(
            "metadata_label_space",
            f"gives fields and class counts {classes}, but the network's heads are {heads}",
            "build network_def from the same metadata_fields and metadata_fields_file",
        )
    return label_space


def _orientation_flags(mammogram: Mammogram, geometry: ImageGeometry) -> list[dict[str, str]]:
    """Flag a header laterality that the pixels contradict.

    In the standard display a left breast has its chest wall on the image's left and a right breast on its
    right; preprocessing flips exactly the images whose breast shape puts the chest wall on the right (see
    :func:`mammoxai.io.breast.chest_wall_side`), so a flip on an "L" image, or none on an "R" image, means the
    header or the stored orientation is wrong.
    """
    if mammogram.laterality not in ("L", "R"):
        return []
    expected_right = mammogram.laterality == "R"
    if geometry.flip == expected_right:
        return []
    seen, expected = ("right", "left") if geometry.flip else ("left", "right")
    return [
        {
            "code": "laterality_chest_wall_mismatch",
            "message": (
                f"the header says laterality {mammogram.laterality}, whose chest wall is on the image's {expected} "
                f"edge in the standard display, but the breast's chest wall is on the {seen} edge: "
                "check ImageLaterality and the stored orientation"
            ),
        }
    ]


def list_inputs(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The mammogram files (DICOM, PNG, TIFF, PGM) in ``folder``, sorted.

    Not recursive by default: a folder written by ``mammoxai.data.synth`` keeps lesion masks in ``masks/``,
    which are PNG files but not mammograms.
    """
    folder = Path(folder)
    files = [path for path in find_images(folder) if recursive or path.parent == folder]
    if not files:
        raise MammoXAIError(
            folder, "holds no DICOM, PNG, TIFF or PGM file", "pass --dataset_dir <folder of mammograms>"
        )
    return files


@dataclass
class InferenceSummary:
    """What a run wrote and what it could not read.

    Args:
        written: per input file, the (prediction JSON, heatmap NRRD) written for it.
        errors: per input file that failed, the :class:`MammoXAIError` message saying why.
    """

    written: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class InferenceRunner:
    """Explain every input file: ``<output_dir>/<stem>.json`` (the prediction) and ``<stem>_heatmap.nrrd``.

    Outputs mirror the inputs' sub-folders below the folder they all lie in: inputs from several folders often
    share a file name (CBIS-DDSM's ``<case>/.../1-1.dcm``, a PACS export's ``<study>/IM0001``), and named by it
    alone each output replaced the one before. So ``studies/case_a/1-1.dcm`` and ``studies/case_b/1-1.dcm`` give
    ``<output_dir>/case_a/1-1.json`` and ``<output_dir>/case_b/1-1.json``; the files of one folder are written into
    ``output_dir`` itself. Two inputs of one folder with the same stem (``case.dcm`` and ``case.png``) keep their
    suffix in the output name.

    A file that cannot be read (wrong modality, corrupt pixels, no breast, ...) is logged with its
    :class:`MammoXAIError` message and skipped; the others are still processed.

    It is ``inference.json``'s ``evaluator``, the inference engine MONAI's bundle workflow properties ask for
    (with ``dataset_dir`` and ``dataset``): MONAI's ignite evaluators batch tensors, while explaining a mammogram
    needs the file itself, to keep its geometry for the heatmap and its header for the prediction record.

    Args:
        predictor: a :class:`MammogramPredictor`.
        dataset: the files to explain, e.g. ``list_inputs(folder)`` or a ``monai.data.Dataset`` of them.
        output_dir: created when missing.

    Example:
        summary = InferenceRunner(predictor, list_inputs("studies"), "predictions").run()
    """

    def __init__(
        self, predictor: MammogramPredictor, dataset: Iterable[str | os.PathLike], output_dir: str | os.PathLike
    ) -> None:
        self.predictor = predictor
        self.input_files = [Path(path) for path in dataset]
        self.output_dir = check_output_path(output_dir, "output_dir", "give a folder for the predictions")

    def run(self) -> InferenceSummary:
        self.predictor.load_weights()  # no weights is one error for the run, not one per file
        summary = InferenceSummary()
        for path, name in zip(self.input_files, output_names(self.input_files), strict=True):
            try:
                prediction = self.predictor.predict(path)
            except MammoXAIError as error:
                logger.warning("skipped %s", error)
                summary.errors[str(path)] = str(error)
                continue
            summary.written[str(path)] = write_prediction(prediction, self.output_dir / name.parent, name.name)
            predicted = prediction.record["predicted_class"]
            logger.info("%s: %s (p=%.3f)", path.name, predicted, prediction.record["probabilities"][predicted])
        logger.info(
            "explained %d of %d files into %s%s",
            len(summary.written),
            len(self.input_files),
            self.output_dir,
            f"; {len(summary.errors)} skipped (see the warnings above)" if summary.errors else "",
        )
        return summary


def output_names(paths: Sequence[Path]) -> list[Path]:
    """Each input's output name, without the ``.json`` / ``_heatmap.nrrd`` ending: its path below the folder all the
    inputs lie in, without the suffix unless another input of its folder has the same stem.

    Example:
        output_names([Path("a/x/1-1.dcm"), Path("a/y/1-1.dcm")])  # [Path("x/1-1"), Path("y/1-1")]
    """
    absolute = [Path(os.path.abspath(path)) for path in paths]
    if not absolute:
        return []
    common = Path(os.path.commonpath([path.parent for path in absolute]))
    relative = [path.relative_to(common) for path in absolute]
    stems = Counter(path.with_suffix("") for path in relative)
    return [path.with_suffix("") if stems[path.with_suffix("")] == 1 else path for path in relative]


def write_heatmap(prediction: Prediction, path: str | os.PathLike) -> Path:
    """Write the prediction's heatmap as float32 NRRD in the input's geometry, tagged with the saliency method."""
    saliency = prediction.record["saliency"]
    return write_heatmap_nrrd(
        path,
        prediction.heatmap,
        prediction.mammogram,
        fields={"mammoxai_saliency_method": saliency["method"], "mammoxai_target_class": saliency["target_class"]},
    )


def write_prediction(prediction: Prediction, output_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``<name>.json`` (the record) and ``<name>_heatmap.nrrd`` into ``output_dir``; returns both paths."""
    output_dir = Path(output_dir)
    heatmap_path = write_heatmap(prediction, output_dir / f"{name}_heatmap.nrrd")
    json_path = output_dir / f"{name}.json"
    json_path.write_text(json.dumps(prediction.record, indent=2) + "\n", encoding="utf-8")
    return json_path, heatmap_path
