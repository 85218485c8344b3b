"""The two records every part of MammoXAI exchanges: a prediction and a label.

A **prediction** is what the bundle writes next to each heatmap, what the MONAI Label server returns as the
params of ``/infer`` and what the Slicer module shows. A **label** is the correction a clinician submits
back. Both are plain JSON; their JSON Schemas (draft 7) live here and nowhere else, and every part's tests
validate what it produces against them.

JSON Schema cannot express a few rules that matter (probabilities sum to one, the predicted class is one of
the class names, a metadata prediction ``agrees`` exactly when it equals the header value, a box has positive
size), so :func:`validate_prediction` and :func:`validate_label` check
those after the schema and raise the same :class:`~mammoxai.errors.MammoXAIError`, naming the failing path.

Example:
    from mammoxai.schema import validate_prediction
    validate_prediction(json.loads(Path("out/case1.json").read_text()))
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

from mammoxai.errors import MammoXAIError

__all__ = ["SCHEMA_VERSION", "PREDICTION_SCHEMA", "LABEL_SCHEMA", "validate_prediction", "validate_label"]

SCHEMA_VERSION = "1.0"
"""Version of the prediction record; the minor number grows when optional content is added."""

_PROBABILITY_TOLERANCE = 1e-3

_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}
_NUMBER_PAIR = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_MILLISECONDS = {"type": "number", "minimum": 0}
_COORDINATE = {"type": "number", "minimum": 0}
_SCALAR = {"type": ["string", "number", "boolean", "null"]}

PREDICTION_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "MammoXAI prediction",
    "description": (
        "One image's prediction. Extra top-level keys are allowed so that a transport can annotate the record "
        "(MONAI Label adds 'label_names' and 'latencies'); every key listed here is required and strictly typed."
    ),
    "type": "object",
    "required": [
        "schema_version",
        "model",
        "image",
        "class_names",
        "probabilities",
        "predicted_class",
        "metadata_predictions",
        "qc_flags",
        "saliency",
        "timings_ms",
    ],
    "properties": {
        "schema_version": {"type": "string", "pattern": r"^1\.[0-9]+$"},
        "model": {
            "type": "object",
            "required": ["name", "version", "checkpoint", "checkpoint_mtime"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "version": {"type": "string", "minLength": 1},
                "checkpoint": {"type": "string", "minLength": 1, "description": "file name of the weights"},
                "checkpoint_mtime": {"type": "string", "description": "ISO 8601 modification time of the weights"},
            },
        },
        "image": {
            "type": "object",
            "required": ["source", "shape", "spacing_mm", "laterality", "view"],
            "additionalProperties": False,
            "properties": {
                "source": {
                    "type": "string",
                    "description": "the file the image was read from, as the caller named it; the MONAI Label app "
                    "gives the image id instead of its path on the server ('' for an image sent with the request)",
                },
                "shape": {**_SHAPE, "description": "[rows, columns] of the original pixel grid"},
                "spacing_mm": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "array",
                            "items": {"type": "number", "exclusiveMinimum": 0},
                            "minItems": 2,
                            "maxItems": 2,
                        },
                    ],
                    "description": "[row, column] pixel spacing in mm, null when the file does not say",
                },
                "laterality": {"enum": ["L", "R", None]},
                "view": {"type": ["string", "null"]},
            },
        },
        "class_names": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 2,
            "uniqueItems": True,
        },
        "probabilities": {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
            "minProperties": 2,
        },
        "predicted_class": {"type": "string"},
        "metadata_predictions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "predicted", "probability", "header_value", "agrees"],
                "additionalProperties": False,
                "properties": {
                    "field": {"type": "string", "minLength": 1},
                    "predicted": _SCALAR,
                    "probability": {"type": "number", "minimum": 0, "maximum": 1},
                    "header_value": _SCALAR,
                    "agrees": {"type": ["boolean", "null"], "description": "null when the header has no value"},
                },
            },
        },
        "qc_flags": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                    "message": {"type": "string", "minLength": 1},
                },
            },
        },
        "saliency": {
            "type": "object",
            "required": ["method", "target_class", "settings", "heatmap_shape", "value_range"],
            "additionalProperties": False,
            "properties": {
                "method": {"type": "string", "minLength": 1},
                "target_class": {"type": "string"},
                "settings": {
                    "type": "object",
                    "description": "the method's settings, and the model input the network read: model_grid "
                    "[rows, columns], intensity_scaling (how the model input's intensities were scaled) and "
                    "field_of_view (breast: the breast's crop; image: the whole image)",
                },
                "heatmap_shape": _SHAPE,
                "value_range": _NUMBER_PAIR,
            },
        },
        "timings_ms": {
            "type": "object",
            "required": ["read", "preprocess", "forward", "saliency", "total"],
            "additionalProperties": False,
            "properties": {name: _MILLISECONDS for name in ("read", "preprocess", "forward", "saliency", "total")},
        },
    },
}


def _lesion_shape(kind: str, length: int) -> dict[str, Any]:
    """The rule for a lesion of one ``type``: its coordinate list under the key of the same name, nothing else."""
    return {
        "if": {"properties": {"type": {"const": kind}}},
        "then": {
            "required": [kind],
            "properties": {kind: {"type": "array", "items": _COORDINATE, "minItems": length, "maxItems": length}},
            "propertyNames": {"enum": ["type", kind, "finding"]},
        },
    }


LABEL_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "MammoXAI label",
    "description": "A clinician's correction of one image; lesion coordinates are (x, y) in original pixels.",
    "type": "object",
    "required": ["class", "annotator", "timestamp"],
    "additionalProperties": False,
    "properties": {
        "class": {"type": "string", "minLength": 1},
        "birads": {"enum": ["0", "1", "2", "3", "4", "5", "6"]},
        "lesions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": ["box", "point"]}, "finding": {"type": "string"}},
                # if/then per type rather than oneOf: a bad box is reported as a bad box, not as "matches no schema"
                "allOf": [_lesion_shape("box", 4), _lesion_shape("point", 2)],
            },
        },
        "annotator": {"type": "string", "minLength": 1},
        "timestamp": {"type": "string", "description": "ISO 8601, e.g. 2024-05-01T09:30:00+00:00"},
    },
}

_PREDICTION_VALIDATOR = Draft7Validator(PREDICTION_SCHEMA)
_LABEL_VALIDATOR = Draft7Validator(LABEL_SCHEMA)


def validate_prediction(record: Any, source: str = "prediction") -> None:
    """Check a prediction record against :data:`PREDICTION_SCHEMA` and the rules the schema cannot state.

    Args:
        record: the decoded JSON object.
        source: what to call the record in the error (a file name, "server response", ...).

    Raises:
        MammoXAIError: naming the first failing path, e.g. ``prediction/probabilities/benign``.
    """
    _check_schema(_PREDICTION_VALIDATOR, record, source)
    class_names = record["class_names"]
    probabilities = record["probabilities"]
    if set(probabilities) != set(class_names):
        _fail(source, "/probabilities", f"has classes {sorted(probabilities)}, expected the class names {class_names}")
    total = math.fsum(probabilities.values())
    if abs(total - 1.0) > _PROBABILITY_TOLERANCE:
        _fail(source, "/probabilities", f"sum to {total:.6f}, expected 1")
    for path, name in (
        ("/predicted_class", record["predicted_class"]),
        ("/saliency/target_class", record["saliency"]["target_class"]),
    ):
        if name not in class_names:
            _fail(source, path, f"{name!r} is not one of the class names {class_names}")
    saliency, shape = record["saliency"], record["image"]["shape"]
    if saliency["heatmap_shape"] != shape:
        _fail(source, "/saliency/heatmap_shape", f"{saliency['heatmap_shape']} differs from the image shape {shape}")
    low, high = saliency["value_range"]
    if low > high:
        _fail(source, "/saliency/value_range", f"[{low}, {high}] is not an interval")
    _check_metadata_predictions(record["metadata_predictions"], source)


def _check_metadata_predictions(predictions: Sequence[dict[str, Any]], source: str) -> None:
    """One entry per field; ``agrees`` null exactly when the header has no value, else whether the two are equal."""
    seen: set[str] = set()
    for index, item in enumerate(predictions):
        path = f"/metadata_predictions/{index}"
        if item["field"] in seen:
            _fail(source, f"{path}/field", f"{item['field']!r} is predicted twice")
        seen.add(item["field"])
        expected = None if item["header_value"] is None else item["predicted"] == item["header_value"]
        if item["agrees"] != expected:
            problem = f"is {item['agrees']} for predicted {item['predicted']!r} and header {item['header_value']!r}"
            _fail(source, f"{path}/agrees", problem, f"it must be {expected}")


def validate_label(
    record: Any,
    class_names: Sequence[str] | None = None,
    image_shape: Sequence[int] | None = None,
    source: str = "label",
) -> None:
    """Check a label against :data:`LABEL_SCHEMA` and, when given, the model's classes and the image size.

    Args:
        record: the decoded JSON object.
        class_names: the model's classes; ``class`` must be one of them.
        image_shape: (rows, columns) of the labelled image; every lesion must lie inside it.
        source: what to call the record in the error.

    Raises:
        MammoXAIError: naming the first failing path, e.g. ``label/lesions/0/box``.
    """
    _check_schema(_LABEL_VALIDATOR, record, source)
    try:
        # Python < 3.11 does not read the "Z" suffix itself
        datetime.fromisoformat(re.sub("Z$", "+00:00", record["timestamp"]))
    except ValueError:
        problem = f"{record['timestamp']!r} is not an ISO 8601 date and time"
        _fail(source, "/timestamp", problem, "e.g. 2024-05-01T09:30:00+00:00")
    if class_names is not None and record["class"] not in class_names:
        _fail(source, "/class", f"{record['class']!r} is not one of the model's classes {list(class_names)}")
    for index, lesion in enumerate(record.get("lesions", [])):
        path = f"/lesions/{index}/{lesion['type']}"
        coordinates = lesion[lesion["type"]]
        if lesion["type"] == "box" and not (coordinates[0] < coordinates[2] and coordinates[1] < coordinates[3]):
            _fail(source, path, f"{coordinates} is not [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
        if image_shape is not None:
            rows, columns = image_shape
            xs, ys = coordinates[0::2], coordinates[1::2]
            if max(xs) > columns or max(ys) > rows:
                problem = f"{coordinates} lies outside the image of {rows} x {columns} pixels"
                _fail(source, path, problem, "coordinates are (x, y) in original pixels")


def _check_schema(validator: Draft7Validator, record: Any, source: str) -> None:
    error = best_match(validator.iter_errors(record))
    if error is not None:
        _fail(source, "".join(f"/{part}" for part in error.absolute_path), error.message)


def _fail(source: str, path: str, problem: str, fix: str | None = None) -> None:
    raise MammoXAIError(f"{source}{path}", problem, fix)
