"""The prediction record as the panel shows it: table rows, QC mismatches and the server's timing.

The record's schema lives in ``mammoxai.schema`` on the server side; the Slicer side cannot import it, so
:func:`parse_prediction` checks only what the panel relies on (class names and probabilities, metadata
predictions, QC flags, saliency, timings) and raises :class:`~MammoXAILib.errors.MammoXAIClientError` naming
the missing piece, so a reply from another version of the server is reported rather than half shown.

Example:
    view = parse_prediction(result.prediction)
    for row in view.rows:
        print(row.name, row.value, row.reference, "MISMATCH" if row.mismatch else "")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import MammoXAIClientError

__all__ = ["PredictionRow", "PredictionView", "parse_prediction"]


@dataclass(frozen=True)
class PredictionRow:
    """One table row: a class probability or a metadata field predicted from the pixels.

    ``reference`` is the DICOM header value the prediction is compared to ("" for classes); ``mismatch`` is
    true when the server found the prediction disagrees with the header (a QC finding to highlight).
    """

    section: str  # "class" or "metadata"
    name: str
    value: str
    reference: str
    mismatch: bool
    highlighted: bool  # the predicted class, or a mismatch


@dataclass(frozen=True)
class PredictionView:
    """What the panel shows for one prediction."""

    class_names: list[str]
    probabilities: dict[str, float]
    predicted_class: str
    rows: list[PredictionRow]
    qc_messages: list[str]
    saliency_method: str
    saliency_target: str
    image_shape: tuple[int, int]
    spacing_mm: tuple[float, float] | None
    model: str
    timing_text: str


def parse_prediction(record: Any) -> PredictionView:
    """Turn a prediction record (the ``params`` of ``/infer``) into table rows and texts for the panel."""
    if not isinstance(record, dict):
        _fail("", "is not a JSON object")
    class_names = _get(record, "class_names", list)
    probabilities = _get(record, "probabilities", dict)
    predicted = _get(record, "predicted_class", str)
    for name in class_names:
        if not isinstance(probabilities.get(name), (int, float)):
            _fail("probabilities", f"has no probability for class {name!r}")
    rows = [
        PredictionRow("class", name, f"{100 * probabilities[name]:.1f} %", "", False, name == predicted)
        for name in class_names
    ]
    for item in _get(record, "metadata_predictions", list):
        if not isinstance(item, dict) or "field" not in item:
            _fail("metadata_predictions", "has an entry without a field")
        mismatch = item.get("agrees") is False
        value = f"{_text(item.get('predicted'))} ({100 * float(item.get('probability', 0)):.0f} %)"
        rows.append(
            PredictionRow("metadata", str(item["field"]), value, _text(item.get("header_value")), mismatch, mismatch)
        )
    qc_messages = [str(flag.get("message", flag)) for flag in _get(record, "qc_flags", list) if isinstance(flag, dict)]
    saliency = _get(record, "saliency", dict)
    image = _get(record, "image", dict)
    shape = image.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and n > 0 for n in shape)):
        _fail("image/shape", "is not [rows, columns]")
    spacing = image.get("spacing_mm")
    model = record.get("model", {}) if isinstance(record.get("model"), dict) else {}
    return PredictionView(
        class_names=list(class_names),
        probabilities={name: float(probabilities[name]) for name in class_names},
        predicted_class=predicted,
        rows=rows,
        qc_messages=qc_messages,
        saliency_method=str(saliency.get("method", "")),
        saliency_target=str(saliency.get("target_class", "")),
        image_shape=(shape[0], shape[1]),
        spacing_mm=(float(spacing[0]), float(spacing[1])) if spacing else None,
        model=" ".join(str(model[key]) for key in ("name", "version") if model.get(key)),
        timing_text=_timing_text(record),
    )


def _timing_text(record: dict[str, Any]) -> str:
    """e.g. "server 1.23 s (read 10 ms, preprocess 5 ms, forward 80 ms, saliency 300 ms)"."""
    timings = record.get("timings_ms") if isinstance(record.get("timings_ms"), dict) else {}
    latencies = record.get("latencies") if isinstance(record.get("latencies"), dict) else {}
    parts = [f"{name} {float(value):.0f} ms" for name, value in timings.items() if name != "total"]
    if "total" in latencies:
        total = f"server {float(latencies['total']):.2f} s"
    elif "total" in timings:
        total = f"model {float(timings['total']) / 1000:.2f} s"
    else:
        return ""
    return f"{total} ({', '.join(parts)})" if parts else total


def _get(record: dict[str, Any], key: str, kind: type) -> Any:
    value = record.get(key)
    if not isinstance(value, kind):
        _fail(key, "is missing" if value is None else f"is not a {kind.__name__}")
    return value


def _text(value: Any) -> str:
    return "—" if value is None else str(value)


def _fail(path: str, problem: str) -> None:
    where = f"prediction/{path}" if path else "prediction"
    message = f"The server's {where} {problem}: the server and the extension versions may not match"
    raise MammoXAIClientError(message, "bad_response")
