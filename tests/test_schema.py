"""The prediction and label schemas: what they accept, what they refuse, and that the error names the path."""

from __future__ import annotations

import copy

import pytest
from jsonschema import Draft7Validator

from mammoxai.errors import MammoXAIError
from mammoxai.schema import LABEL_SCHEMA, PREDICTION_SCHEMA, SCHEMA_VERSION, validate_label, validate_prediction

CLASSES = ["normal", "benign", "malignant"]


def make_prediction() -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "name": "mammoxai",
            "version": "0.1.0",
            "checkpoint": "model.pt",
            "checkpoint_mtime": "2024-05-01T09:30:00+00:00",
        },
        "image": {
            "source": "case1.dcm",
            "shape": [300, 240],
            "spacing_mm": [0.1, 0.1],
            "laterality": "L",
            "view": "CC",
        },
        "class_names": list(CLASSES),
        "probabilities": {"normal": 0.7, "benign": 0.2, "malignant": 0.1},
        "predicted_class": "normal",
        "metadata_predictions": [
            {"field": "view", "predicted": "CC", "probability": 0.9, "header_value": "CC", "agrees": True},
            {"field": "kvp_bin", "predicted": 2, "probability": 0.6, "header_value": None, "agrees": None},
        ],
        "qc_flags": [{"code": "laterality_chest_wall_mismatch", "message": "chest wall on the right for an L image"}],
        "saliency": {
            "method": "gradcam",
            "target_class": "normal",
            "settings": {"target_layer": "features.block4"},
            "heatmap_shape": [300, 240],
            "value_range": [0.0, 1.0],
        },
        "timings_ms": {"read": 1.0, "preprocess": 2.0, "forward": 3.0, "saliency": 4.0, "total": 10.0},
    }


def make_label() -> dict:
    return {
        "class": "malignant",
        "birads": "4",
        "lesions": [
            {"type": "box", "box": [10, 20, 60, 80], "finding": "mass"},
            {"type": "point", "point": [35.5, 50.0]},
        ],
        "annotator": "dr_a",
        "timestamp": "2024-05-01T09:30:00Z",
    }


def assert_refused_at(validate, record: dict, edit, path: str) -> None:
    """``validate`` refuses ``record`` once ``edit`` has spoilt it, and the message starts with the failing path."""
    edit(record)
    with pytest.raises(MammoXAIError) as raised:
        validate(record)
    assert str(raised.value).startswith(f"{path}:")


def test_both_schemas_are_valid_draft7():
    Draft7Validator.check_schema(PREDICTION_SCHEMA)
    Draft7Validator.check_schema(LABEL_SCHEMA)
    assert PREDICTION_SCHEMA["$schema"].startswith("http://json-schema.org/draft-07/")


def test_complete_prediction_is_accepted():
    validate_prediction(make_prediction())


def test_prediction_without_spacing_or_laterality_is_accepted():
    record = make_prediction()
    record["image"].update(spacing_mm=None, laterality=None, view=None)
    validate_prediction(record)


def test_transport_keys_added_by_monai_label_are_allowed():
    record = make_prediction()
    record.update(label_names=CLASSES, latencies={"total": 0.1})
    validate_prediction(record)


@pytest.mark.parametrize("missing", ["model", "saliency", "timings_ms", "qc_flags", "metadata_predictions"])
def test_missing_section_is_named(missing):
    record = make_prediction()
    del record[missing]
    with pytest.raises(MammoXAIError, match=f"{missing!r} is a required property"):
        validate_prediction(record)


@pytest.mark.parametrize(
    "edit, path",
    [
        (lambda r: r["image"].update(shape=[300]), "prediction/image/shape"),
        (lambda r: r["image"].update(laterality="left"), "prediction/image/laterality"),
        (lambda r: r["image"].update(spacing_mm=[0.1, 0.0]), "prediction/image/spacing_mm/1"),
        (lambda r: r["probabilities"].update(normal=1.5), "prediction/probabilities/normal"),
        (lambda r: r["qc_flags"][0].update(code="Bad Code"), "prediction/qc_flags/0/code"),
        (lambda r: r["metadata_predictions"][0].update(agrees="yes"), "prediction/metadata_predictions/0/agrees"),
        (lambda r: r["timings_ms"].update(total=-1), "prediction/timings_ms/total"),
        (lambda r: r["model"].update(extra=1), "prediction/model"),
    ],
)
def test_bad_field_is_reported_with_its_path(edit, path):
    assert_refused_at(validate_prediction, make_prediction(), edit, path)


def test_probabilities_must_sum_to_one():
    record = make_prediction()
    record["probabilities"]["normal"] = 0.5
    with pytest.raises(MammoXAIError, match=r"prediction/probabilities: sum to 0\.8"):
        validate_prediction(record)


def test_probabilities_must_cover_exactly_the_class_names():
    record = make_prediction()
    record["probabilities"] = {"normal": 0.7, "benign": 0.3}
    with pytest.raises(MammoXAIError, match="prediction/probabilities"):
        validate_prediction(record)


def test_predicted_class_must_be_a_class_name():
    record = make_prediction()
    record["predicted_class"] = "cancer"
    with pytest.raises(MammoXAIError, match="prediction/predicted_class: 'cancer' is not one of the class names"):
        validate_prediction(record)


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (lambda r: r["metadata_predictions"][0].update(agrees=False), "prediction/metadata_predictions/0/agrees"),
        (lambda r: r["metadata_predictions"][1].update(agrees=False), "prediction/metadata_predictions/1/agrees"),
        (lambda r: r["metadata_predictions"][0].update(header_value="MLO"), "prediction/metadata_predictions/0/agrees"),
        (lambda r: r["metadata_predictions"][1].update(field="view"), "prediction/metadata_predictions/1/field"),
    ],
)
def test_metadata_agreement_must_match_the_header_value_and_fields_are_unique(edit, path):
    assert_refused_at(validate_prediction, make_prediction(), edit, path)


def test_heatmap_must_have_the_image_shape():
    record = make_prediction()
    record["saliency"]["heatmap_shape"] = [256, 208]
    with pytest.raises(MammoXAIError, match="prediction/saliency/heatmap_shape"):
        validate_prediction(record)


def test_source_names_the_record_in_the_error():
    record = make_prediction()
    del record["model"]
    with pytest.raises(MammoXAIError, match="^case1.json: 'model'"):
        validate_prediction(record, source="case1.json")


def test_complete_label_is_accepted_with_class_and_image_checks():
    validate_label(make_label(), class_names=CLASSES, image_shape=(100, 100))


def test_minimal_label_is_accepted():
    validate_label({"class": "normal", "annotator": "dr_a", "timestamp": "2024-05-01T09:30:00+02:00"})


@pytest.mark.parametrize(
    "edit, path",
    [
        (lambda r: r.pop("annotator"), "label"),
        (lambda r: r.update(birads="7"), "label/birads"),
        (lambda r: r.update(timestamp="yesterday"), "label/timestamp"),
        (lambda r: r["lesions"][0].update(box=[10, 20, 60]), "label/lesions/0/box"),
        (lambda r: r["lesions"][0].update(box=[60, 20, 10, 80]), "label/lesions/0/box"),
        (lambda r: r["lesions"][1].update(point=[-1, 5]), "label/lesions/1/point/0"),
        (lambda r: r["lesions"][1].update(type="circle"), "label/lesions/1/type"),
        (lambda r: r["lesions"][1].update(box=[1, 2, 3, 4]), "label/lesions/1"),
        (lambda r: r.update(comment="free text"), "label"),
    ],
)
def test_bad_label_is_reported_with_its_path(edit, path):
    assert_refused_at(validate_label, make_label(), edit, path)


def test_label_class_must_be_one_of_the_models_classes():
    record = make_label()
    record["class"] = "cancer"
    validate_label(copy.deepcopy(record))  # fine without class names
    with pytest.raises(MammoXAIError, match="label/class: 'cancer' is not one of the model's classes"):
        validate_label(record, class_names=CLASSES)


def test_lesion_outside_the_image_is_refused():
    record = make_label()
    with pytest.raises(MammoXAIError, match="label/lesions/0/box: .* outside the image of 50 x 100 pixels"):
        validate_label(record, image_shape=(50, 100))
