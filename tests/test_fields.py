"""The metadata label space: config validation, header encoding, learned vocabularies, identity, the fitted file."""

import copy
import json

import pydicom
import pytest
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammoxai.errors import MammoXAIError
from mammoxai.io import fitted_fields
from mammoxai.io.fields import DEFAULT_CONFIG, UNKNOWN, MetadataLabelSpace
from mammoxai.nets import MetadataNet
from mammoxai.training.finetune import build_metadata_classifier
from mammoxai.training.pretrain import CheckpointInfo, select_fields

HEADER = {
    "Manufacturer": "HOLOGIC, Inc.",
    "ManufacturerModelName": "Selenia Dimensions",
    "ViewPosition": "MLO",
    "ImageLaterality": "R",
    "BodyPartThickness": 55.0,
    "CompressionForce": 110.0,
    "KVP": 29.0,
    "PatientAge": "056Y",
    "PatientID": "P0001",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1",
}
OTHER_SYSTEM = {**HEADER, "Manufacturer": "GE MEDICAL SYSTEMS", "ManufacturerModelName": "Senographe Pristina"}


@pytest.fixture(scope="module")
def config():
    return json.loads(DEFAULT_CONFIG.read_text())


@pytest.fixture(scope="module")
def space():
    return MetadataLabelSpace.default().fit([HEADER, OTHER_SYSTEM])


def with_header(**changes):
    return {**HEADER, **changes}


# -- the shipped config ---------------------------------------------------------------------------------------
def test_default_space_has_the_seven_pretraining_fields():
    space = MetadataLabelSpace.default()
    assert space.fields == ["xray_system", "view", "laterality", "thickness", "compression_force", "kvp", "age"]
    assert space.identity_keys == ("PatientID", "StudyInstanceUID")


def test_a_full_header_encodes_to_one_class_per_field(space):
    labels = space.encode(HEADER)
    decoded = {name: space.decode(name, index) for name, index in labels.items()}
    assert decoded == {
        "xray_system": "HOLOGIC, INC. SELENIA DIMENSIONS",
        "view": "MLO",
        "laterality": "R",
        "thickness": "50-60 mm",
        "compression_force": "100-120 N",
        "kvp": "29-31 kV",
        "age": "50-60 years",
    }


def test_num_classes_sizes_each_head(space):
    assert [space.num_classes(name) for name in space.fields] == [2, 4, 2, 5, 5, 5, 4]


# -- categorical fields ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "view, expected",
    [("CC", "CC"), (" mlo ", "MLO"), ("XCCL", "CC"), ("RMLO", "MLO"), ("LCC", "CC"), ("ML", "ML"), ("LM", "LM")],
)
def test_view_spellings_are_normalised(space, view, expected):
    assert space.decode("view", space.encode(with_header(ViewPosition=view))["view"]) == expected


def test_ml_and_mlo_stay_distinct(space):
    assert space.encode(with_header(ViewPosition="ML"))["view"] != space.encode(with_header(ViewPosition="MLO"))["view"]


def test_laterality_falls_back_to_the_series_laterality(space):
    header = with_header(ImageLaterality="", Laterality="L")
    assert space.decode("laterality", space.encode(header)["laterality"]) == "L"


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"ViewPosition": None}, "view"),
        ({"ViewPosition": ""}, "view"),
        ({"ViewPosition": "   "}, "view"),
        ({"ViewPosition": "SPOT"}, "view"),
        ({"ImageLaterality": "B"}, "laterality"),
        ({"ImageLaterality": "U"}, "laterality"),
        ({"ManufacturerModelName": ""}, "xray_system"),
        ({"Manufacturer": "FUJIFILM", "ManufacturerModelName": "AMULET"}, "xray_system"),
    ],
)
def test_missing_empty_or_foreign_categorical_values_are_unknown(space, changes, field):
    assert space.encode(with_header(**changes))[field] == UNKNOWN


def test_a_header_with_nothing_is_all_unknown(space):
    assert set(space.encode({}).values()) == {UNKNOWN}


# -- binned fields --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "thickness, expected", [(5, 0), (39.9, 0), (40, 1), ("55.0", 2), (69.99, 3), (70, 4), (200, 4)]
)
def test_thickness_falls_into_half_open_bins(space, thickness, expected):
    assert space.encode(with_header(BodyPartThickness=thickness))["thickness"] == expected


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"CompressionForce": 0}, "compression_force"),
        ({"CompressionForce": 900.0}, "compression_force"),
        ({"BodyPartThickness": 4.0}, "thickness"),
        ({"BodyPartThickness": float("nan")}, "thickness"),
        ({"KVP": "n/a"}, "kvp"),
        ({"KVP": ""}, "kvp"),
        ({"PatientAge": "120Y"}, "age"),
        ({"PatientAge": "018M"}, "age"),
        ({"PatientAge": "fifty"}, "age"),
    ],
)
def test_missing_unreadable_or_implausible_numbers_are_unknown(space, changes, field):
    assert space.encode(with_header(**changes))[field] == UNKNOWN


@pytest.mark.parametrize(
    "age, expected",
    [
        ("056Y", "50-60 years"),
        ("065y", "60-70 years"),
        ("600M", "50-60 years"),
        ("999W", "<50 years"),
        ("999D", "unknown"),
        ("1000W", "unknown"),
        (65, "60-70 years"),
        ("72", ">=70 years"),
    ],
)
def test_patient_age_strings_are_read_in_years(space, age, expected):
    assert space.decode("age", space.encode(with_header(PatientAge=age))["age"]) == expected


def test_bin_class_names_show_edges_and_units(space):
    assert space.class_names("kvp") == ["<27 kV", "27-29 kV", "29-31 kV", "31-33 kV", ">=33 kV"]


def test_values_straight_from_pydicom_encode_like_plain_ones(tmp_path, space):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(tmp_path / "mg.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    for keyword in (
        "Manufacturer",
        "ManufacturerModelName",
        "ViewPosition",
        "ImageLaterality",
        "PatientAge",
        "PatientID",
        "StudyInstanceUID",
    ):
        setattr(dataset, keyword, HEADER[keyword])
    dataset.BodyPartThickness, dataset.CompressionForce, dataset.KVP = "55", "110.0", "29"
    dataset.save_as(tmp_path / "mg.dcm", write_like_original=False)

    read = pydicom.dcmread(tmp_path / "mg.dcm")
    header = {keyword: read.get(keyword) for keyword in HEADER}
    assert space.encode(header) == space.encode(HEADER)
    assert space.identity(header) == ("P0001", HEADER["StudyInstanceUID"])


# -- learned vocabularies -------------------------------------------------------------------------------------
def test_xray_system_vocabulary_is_learned_sorted_from_headers():
    space = MetadataLabelSpace.default().fit([OTHER_SYSTEM, HEADER, HEADER, {"Manufacturer": "ONLY A MAKER"}])
    assert space.class_names("xray_system") == [
        "GE MEDICAL SYSTEMS SENOGRAPHE PRISTINA",
        "HOLOGIC, INC. SELENIA DIMENSIONS",
    ]
    assert space.encode(HEADER)["xray_system"] == 1


def test_min_count_drops_rare_systems(config):
    rare = copy.deepcopy(config)
    rare["fields"][0]["min_count"] = 2
    space = MetadataLabelSpace.from_config(rare).fit([HEADER, HEADER, OTHER_SYSTEM])
    assert space.class_names("xray_system") == ["HOLOGIC, INC. SELENIA DIMENSIONS"]
    assert space.encode(OTHER_SYSTEM)["xray_system"] == UNKNOWN


def test_a_learned_field_must_be_fitted_before_use():
    with pytest.raises(MammoXAIError, match="xray_system: the class vocabulary is learned from data"):
        MetadataLabelSpace.default().encode(HEADER)


def test_fitting_on_headers_without_the_field_names_the_keys():
    with pytest.raises(MammoXAIError, match="xray_system: no value of Manufacturer \\+ ManufacturerModelName"):
        MetadataLabelSpace.default().fit([{"ViewPosition": "CC"}])


def test_a_fitted_space_round_trips_through_a_file(tmp_path, space):
    space.to_file(tmp_path / "metadata_fields.json")
    loaded = MetadataLabelSpace.from_file(tmp_path / "metadata_fields.json")
    assert loaded.fields == space.fields
    assert all(loaded.class_names(name) == space.class_names(name) for name in space.fields)
    for header in (HEADER, OTHER_SYSTEM, with_header(ViewPosition="XCCL", PatientAge="071Y"), {}):
        assert loaded.encode(header) == space.encode(header)
    assert loaded.to_config() == space.to_config()


# -- decode and identity --------------------------------------------------------------------------------------
def test_decode_names_unknown_and_refuses_indices_out_of_range(space):
    assert space.decode("view", UNKNOWN) == "unknown"
    with pytest.raises(MammoXAIError, match="view: class index 4 is out of range"):
        space.decode("view", 4)


def test_an_unknown_field_name_is_refused(space):
    with pytest.raises(MammoXAIError, match="density: is not a metadata field"):
        space.class_names("density")


@pytest.mark.parametrize(
    "header, expected",
    [
        (HEADER, ("P0001", HEADER["StudyInstanceUID"])),
        ({"PatientID": "  P7 ", "StudyInstanceUID": ""}, ("P7", None)),
        ({}, (None, None)),
    ],
)
def test_identity_gives_patient_and_study_for_matching(space, header, expected):
    assert space.identity(header) == expected


def test_identity_keys_come_from_the_config(config):
    custom = {**config, "identity": {"patient": "OtherPatientIDs", "study": "AccessionNumber"}}
    space = MetadataLabelSpace.from_config(custom)
    assert space.identity({"OtherPatientIDs": "X", "AccessionNumber": "A1", "PatientID": "P"}) == ("X", "A1")


# -- bad configs ----------------------------------------------------------------------------------------------
def edited(config, position, **changes):
    bad = copy.deepcopy(config)
    bad["fields"][position].update(changes)
    return bad


@pytest.mark.parametrize(
    "position, changes, message",
    [
        (0, {"type": "ordinal"}, r"fields\[0\] \(xray_system\)\.type 'ordinal' is not a field type"),
        (5, {"edges": [27, 31, 29]}, r"fields\[5\] \(kvp\)\.edges must be strictly increasing"),
        (5, {"edges": []}, r"fields\[5\] \(kvp\)\.edges must hold at least one bin edge"),
        (5, {"edges": [27, "29"]}, r"fields\[5\] \(kvp\)\.edges must hold only finite numbers"),
        (5, {"range": [50, 15]}, r"fields\[5\] \(kvp\)\.range must be \[low, high\]"),
        (1, {"classes": []}, r"fields\[1\] \(view\)\.classes must be a non-empty list"),
        (1, {"classes": "CC,MLO"}, r"fields\[1\] \(view\)\.classes must be a list of class names or 'learned'"),
        (1, {"classes": ["CC", "cc"]}, r"fields\[1\] \(view\)\.classes lists a class twice"),
        (1, {"aliases": {"XCCL": "XCC"}}, r"fields\[1\] \(view\)\.aliases point to \['XCC'\]"),
        (2, {"keys": []}, r"fields\[2\] \(laterality\)\.keys must be a non-empty list"),
        (2, {"combine": "concat"}, r"fields\[2\] \(laterality\)\.combine must be 'first' or 'join'"),
        (6, {"parse": "hl7_age"}, r"fields\[6\] \(age\)\.parse must be one of \['dicom_age'\]"),
        (0, {"min_count": 0}, r"fields\[0\] \(xray_system\)\.min_count must be at least 1"),
        (3, {"units": 10}, r"fields\[3\] \(thickness\)\.units must be a string"),
        (4, {"name": "view"}, r"fields\[4\] \(view\)\.name is used by an earlier field too"),
        (4, {"name": ""}, r"fields\[4\]\.name is required"),
    ],
)
def test_bad_configs_name_the_offending_key(config, position, changes, message):
    with pytest.raises(MammoXAIError, match=message):
        MetadataLabelSpace.from_config(edited(config, position, **changes), source="metadata_fields.json")


def test_a_missing_required_key_is_named(config):
    bad = copy.deepcopy(config)
    del bad["fields"][3]["edges"]
    with pytest.raises(MammoXAIError, match=r"metadata_fields.json: fields\[3\] \(thickness\)\.edges is required"):
        MetadataLabelSpace.from_config(bad, source="metadata_fields.json")


@pytest.mark.parametrize("bad", [{"fields": []}, {"fields": "view"}, {}, ["view"]])
def test_a_config_without_fields_is_refused(bad):
    with pytest.raises(MammoXAIError, match="fields"):
        MetadataLabelSpace.from_config(bad)


def test_a_bad_identity_is_refused(config):
    with pytest.raises(MammoXAIError, match="identity must name the patient and study"):
        MetadataLabelSpace.from_config({**config, "identity": {"patient": "PatientID"}})


def test_missing_or_broken_config_files_are_named(tmp_path):
    with pytest.raises(MammoXAIError, match="nowhere.json: metadata field config not found"):
        MetadataLabelSpace.from_file(tmp_path / "nowhere.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    with pytest.raises(MammoXAIError, match="broken.json: is not a readable JSON file"):
        MetadataLabelSpace.from_file(broken)


def test_a_site_can_add_a_field_by_config(config):
    extended = copy.deepcopy(config)
    extended["fields"].append(
        {
            "name": "target_filter",
            "type": "categorical",
            "keys": ["AnodeTargetMaterial", "FilterMaterial"],
            "combine": "join",
            "classes": "learned",
        }
    )
    space = MetadataLabelSpace.from_config(extended).fit(
        [with_header(AnodeTargetMaterial="TUNGSTEN", FilterMaterial="SILVER")]
    )
    assert space.fields[-1] == "target_filter"
    assert space.class_names("target_filter") == ["TUNGSTEN SILVER"]
    assert space.encode(with_header(AnodeTargetMaterial="TUNGSTEN", FilterMaterial="SILVER"))["target_filter"] == 0
    assert space.encode(HEADER)["target_filter"] == UNKNOWN


def test_a_binned_field_without_a_range_accepts_every_number(config):
    unbounded = copy.deepcopy(config)
    unbounded["fields"] = [entry for entry in unbounded["fields"] if entry["name"] == "kvp"]
    del unbounded["fields"][0]["range"]
    space = MetadataLabelSpace.from_config(unbounded)
    assert space.encode(with_header(KVP=500.0))["kvp"] == space.num_classes("kvp") - 1
    assert "range" not in space.to_config()["fields"][0]


# -- the fitted file of a pretraining checkpoint (python -m mammoxai.io.fitted_fields) ---------------------------
PRETRAINED_FIELDS = ["xray_system", "view"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A pretraining checkpoint as configs/pretrain.json writes it, its X-ray systems learned from two headers."""
    torch.manual_seed(0)
    space = select_fields(PRETRAINED_FIELDS).fit([HEADER, OTHER_SYSTEM])
    network = MetadataNet("mammo_cnn", {name: space.num_classes(name) for name in space.fields}, 8, 4)
    path = tmp_path_factory.mktemp("models") / "pretrained.pt"
    torch.save({"network": network.state_dict(), "info": CheckpointInfo(network, space, (64, 48)).state_dict()}, path)
    return path


def test_the_fitted_file_serves_the_learned_xray_systems_from_the_pretrained_heads(pretrained, tmp_path, capsys):
    out = tmp_path / "configs" / "metadata_fields_fitted.json"
    assert fitted_fields.main(["--checkpoint", str(pretrained), "--out", str(out)]) == 0
    assert "xray_system (2), view (4)" in capsys.readouterr().out
    assert str(pretrained.resolve()) in json.loads(out.read_text())["description"]
    # what train.json and inference.json build from metadata_fields and metadata_fields_file
    served = select_fields({"xray_system": 0.1, "view": 0.1}, config_file=out)
    systems = ["GE MEDICAL SYSTEMS SENOGRAPHE PRISTINA", "HOLOGIC, INC. SELENIA DIMENSIONS"]
    assert served.class_names("xray_system") == systems
    assert served.encode(OTHER_SYSTEM)["xray_system"] == 0
    network = build_metadata_classifier(
        "mammo_cnn", 3, served, init="pretrained", init_weights=pretrained, embed_dim=8, matching_dim=4
    )  # refuses a served field whose classes differ from the pretrained head's
    assert network.config["fields"] == {"xray_system": 2, "view": 4}


def test_an_existing_out_is_kept_unless_overwrite(pretrained, tmp_path, capsys):
    out = tmp_path / "metadata_fields.json"
    out.write_text("{}")
    assert fitted_fields.main(["--checkpoint", str(pretrained), "--out", str(out)]) == 1
    fix = "pass --overwrite to replace it, or another --out"
    assert capsys.readouterr().err == f"error: --out {out}: already exists ({fix})\n"
    assert out.read_text() == "{}"
    assert fitted_fields.main(["--checkpoint", str(pretrained), "--out", str(out), "--overwrite"]) == 0
    assert MetadataLabelSpace.from_file(out).fields == PRETRAINED_FIELDS


@pytest.mark.parametrize(
    "content, message",
    [(None, "pretrained checkpoint not found"), ({"model": {}}, "is not a metadata-pretraining checkpoint")],
)
def test_a_missing_or_foreign_checkpoint_is_named(tmp_path, capsys, content, message):
    checkpoint = tmp_path / "model.pt"
    if content is not None:
        torch.save(content, checkpoint)
    out = tmp_path / "fitted.json"
    assert fitted_fields.main(["--checkpoint", str(checkpoint), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {checkpoint}: {message}") and error.count("\n") == 1
    assert not out.exists()
