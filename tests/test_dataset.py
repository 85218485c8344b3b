"""MammogramDataset turns manifest records into labelled model inputs that batch and map back."""

import pytest
import torch
from dicom_factory import write_mammo_dicom
from monai.transforms import ScaleIntensityd
from test_cache import breast_pixels
from torch.utils.data import DataLoader

import mammoxai.data.cache as cache_module
from mammoxai.data.cache import preprocess_file
from mammoxai.data.dataset import LabelMap, MammogramDataset, batch_geometries, class_index, class_indices, class_key
from mammoxai.data.manifest import read_manifest, read_record, write_manifest
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.io.geometry import ImageGeometry
from mammoxai.training.classification import patient_split
from mammoxai.training.pretrain import load_records

SIZE = (64, 48)
LABELS = ["normal", "recalled_benign", "malignant", None]


@pytest.fixture
def records(tmp_path):
    """Four images, left breasts stored chest wall left and right breasts mirrored, the last one unlabelled."""
    records = []
    for i, label in enumerate(LABELS):
        right = i % 2 == 1
        pixels = breast_pixels(seed=i)[:, ::-1] if right else breast_pixels(seed=i)
        path = write_mammo_dicom(
            tmp_path / f"{i}.dcm", pixels.copy(), SOPInstanceUID=f"1.2.{i}", PatientID=f"P{i}",
            ImageLaterality="R" if right else "L",
        )  # fmt: skip
        records.append(dict(read_record(path), case_label=label))
    return records


def test_a_sample_holds_image_label_geometry_path_and_ids(records):
    dataset = MammogramDataset(records, SIZE, class_names=["normal", "recalled_benign", "malignant"])
    sample = dataset[1]
    image, geometry = preprocess_file(records[1]["path"], SIZE)
    assert torch.equal(sample["image"], image) and sample["image"].dtype == torch.float32
    assert sample["label"] == 1 and sample["path"] == records[1]["path"]
    assert batch_geometries(sample) == [ImageGeometry.from_dict(geometry)]
    assert [sample[key] for key in ("image_id", "patient_id", "laterality", "view")] == ["1.2.1", "P1", "R", "CC"]


def test_label_map_folds_raw_labels_onto_the_class_names(records):
    classes = ["benign", "malignant", "normal"]
    dataset = MammogramDataset(records, SIZE, class_names=classes, label_map={"recalled_benign": "benign"})
    assert dataset.labels == [2, 0, 1, -1]


def test_a_label_map_with_number_keys_maps_the_text_labels_of_a_manifest():
    """``--label_map "{5: 'malignant'}"`` on the bundle command line: the keys are numbers, the cells text."""
    records = [
        {"path": f"{patient}.dcm", "patient_id": patient, "case_label": label}
        for patient, label in [("P1", "1"), ("P2", "5"), ("P3", "1"), ("P4", "5")]
    ]
    label_map = {1: "normal", 5: "malignant"}
    dataset = MammogramDataset(records, image_size=32, class_names=["normal", "malignant"], label_map=label_map)
    assert dataset.labels == [0, 1, 0, 1]
    train, val = patient_split(records, val_fraction=0.5, seed=0, label_map=label_map)
    assert sorted(r["case_label"] for r in val) == ["1", "5"]  # stratified by the mapped classes


@pytest.mark.parametrize(
    "label, class_name",
    [
        ("No Finding", "no_finding"),
        ("no-finding", "No_Finding"),
        ("Recalled Benign", "recalled_benign"),
        ("recalled-benign", "recalled_benign"),
        ("BI-RADS 4", "bi_rads_4"),
    ],
)
def test_an_underscore_or_hyphen_between_words_is_a_space(label, class_name):
    """VinDr-Mammo writes "No Finding" and a CSV "Recalled Benign" where the classes are no_finding and
    recalled_benign: folded by case and spacing alone, they were labels of no class."""
    assert class_key(label) == class_key(class_name)
    assert LabelMap(None, ["normal", class_name])(label) == class_name
    assert LabelMap({class_name: "benign"})(label) == "benign"


def test_class_indices_look_names_up_as_class_index_does_and_refuse_every_missing_one_in_one_line():
    classes = ["Mass", "Calcification", "Other", "No_Finding"]
    assert class_indices(["no finding", " MASS"], classes, "finding_classes") == [3, 0]
    assert class_index("no-finding", classes, "background_class") == 3
    message = r"^finding_classes: class names \['masses', 'calcifications'\] are not among \['Mass', .*\(fix\)$"
    with pytest.raises(MammoXAIError, match=message) as refused:
        class_indices(["masses", "other", "calcifications"], classes, "finding_classes", "fix")
    assert "\n" not in str(refused.value)
    with pytest.raises(MammoXAIError, match=r"^background_class: class 'none' is not one of \['Mass', "):
        class_index("none", classes, "background_class")


def test_two_class_names_that_are_one_class_are_refused_naming_the_setting_they_came_from():
    """They were refused as "class_names" even when they came from lesion_class_names or a saliency model."""
    classes = ["mass", "calcification", "Mass", "no_finding"]
    message = r"^lesion_class_names: name 'mass' and 'Mass', one class up to case and spacing \(name each class once\)$"
    with pytest.raises(MammoXAIError, match=message):
        LabelMap(None, classes, "lesion_class_names")
    with pytest.raises(MammoXAIError, match=message):
        class_index("no_finding", classes, "background_class", class_names_setting="lesion_class_names")
    with pytest.raises(MammoXAIError, match=r"^class_names: name 'mass' and 'Mass'"):
        LabelMap(None, classes)


def test_labels_spelt_with_underscores_hyphens_or_spaces_are_one_class():
    labels = ["Recalled Benign", "recalled-benign", "recalled_benign", "recalled_benign", "normal"]
    records = [{"path": f"P{i}.dcm", "patient_id": f"P{i}", "case_label": label} for i, label in enumerate(labels)]
    dataset = MammogramDataset(records, image_size=32, class_names=["normal", "recalled_benign"])
    assert dataset.labels == [1, 1, 1, 1, 0]
    default = MammogramDataset(records, image_size=32)  # one class, spelt as most rows spell it
    assert default.class_names == ("normal", "recalled_benign") and default.labels == dataset.labels
    label_map = {"Recalled-Benign": "benign"}
    mapped = MammogramDataset(records, image_size=32, class_names=["benign", "normal"], label_map=label_map)
    assert mapped.labels == [0, 0, 0, 0, 1]


def test_a_leading_minus_is_a_sign_not_a_joiner():
    """Some data sets label negatives -1: read as a space, the minus made "-1" the label "1"."""
    assert class_key("-1") == class_key(-1) == "-1" != class_key("1")
    records = [
        {"path": f"P{i}.dcm", "patient_id": f"P{i}", "case_label": label} for i, label in enumerate("-1 1 -1 1".split())
    ]
    assert MammogramDataset(records, image_size=32).class_names == ("-1", "1")
    label_map, classes = {-1: "normal", "1": "malignant"}, ["normal", "malignant"]
    assert MammogramDataset(records, image_size=32, class_names=classes, label_map=label_map).labels == [0, 1, 0, 1]


@pytest.mark.parametrize("name", ["label_map", "holdout"])
def test_a_mapping_setting_given_as_text_is_named_with_how_to_write_it(name):
    """``--label_map "{'Cancer': 'malignant'}"`` reaches scripts/evaluate.py as text: a traceback in the data set."""
    records = [{"path": f"P{i}.dcm", "patient_id": f"P{i}", "case_label": "Cancer"} for i in range(2)]
    text = "{'Cancer': 'malignant'}" if name == "label_map" else "{'split': 'test'}"
    with pytest.raises(MammoXAIError, match=rf"^{name}: is .*, not a mapping \(write it as a JSON object"):
        if name == "label_map":
            MammogramDataset(records, image_size=32, class_names=["malignant"], label_map=text)
        else:
            patient_split(records, holdout=text)


def test_default_class_names_are_the_sorted_labels_present(records):
    dataset = MammogramDataset(records, SIZE)
    assert dataset.class_names == ("malignant", "normal", "recalled_benign")
    assert dataset.labels == [1, 2, 0, -1]


def test_a_label_outside_the_class_names_names_the_record(records):
    message = r"1\.dcm: has case_label 'recalled_benign', not one of \['normal', 'malignant'\].*label_map"
    with pytest.raises(MammoXAIError, match=message):
        MammogramDataset(records, SIZE, class_names=["normal", "malignant"])


def test_records_without_labels_are_minus_one_for_any_label_key(records):
    dataset = MammogramDataset(records, SIZE, label_key="birads")
    assert dataset.class_names == () and dataset.labels == [-1] * 4 and dataset[0]["label"] == -1


def test_a_record_without_a_path_is_refused(records):
    with pytest.raises(MammoXAIError, match="has no 'path'"):
        MammogramDataset([{"case_label": "normal"}], SIZE)


def test_two_workers_and_the_default_collate_give_batches_whose_geometries_map_back(records):
    dataset = MammogramDataset(records, SIZE)
    batches = list(DataLoader(dataset, batch_size=2, num_workers=2))
    assert [batch["image"].shape for batch in batches] == [(2, 1, *SIZE)] * 2
    assert torch.equal(torch.cat([batch["label"] for batch in batches]), torch.tensor([1, 2, 0, -1]))
    assert batches[0]["image_id"] == ["1.2.0", "1.2.1"] and batches[1]["patient_id"] == ["P2", "P3"]
    geometries = [geometry for batch in batches for geometry in batch_geometries(batch)]
    expected = [ImageGeometry.from_dict(preprocess_file(record["path"], SIZE)[1]) for record in records]
    assert geometries == expected and [g.flip for g in geometries] == [False, True, False, True]
    heatmap = geometries[1].restore(batches[0]["image"][1, 0])
    assert heatmap.shape == (records[1]["rows"], records[1]["cols"])


def test_a_second_epoch_with_a_cache_decodes_no_file(records, tmp_path, monkeypatch):
    dataset = MammogramDataset(records, SIZE, cache_dir=tmp_path / "cache")
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    first = torch.cat([batch["image"] for batch in loader])

    def fail(path):
        raise AssertionError(f"{path} was decoded in the second epoch")

    monkeypatch.setattr(cache_module, "read_mammogram", fail)  # inherited by the forked workers
    second = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(first, second)
    with pytest.raises(AssertionError, match="decoded"):
        MammogramDataset(records, SIZE)[0]  # without the cache the same read would fail: the patch is live


def test_the_readability_check_fills_the_entries_a_stat_keyed_dataset_reads(records, tmp_path, monkeypatch):
    manifest = write_manifest(records, tmp_path / "manifest.csv")
    checked = load_records(manifest, image_size=SIZE, cache_dir=tmp_path / "cache", file_key="stat")
    assert len(checked) == 4
    monkeypatch.setattr(cache_module, "read_mammogram", lambda path: pytest.fail(f"{path} was decoded twice"))
    dataset = MammogramDataset(checked, SIZE, cache_dir=tmp_path / "cache", file_key="stat")
    assert [dataset[i]["image"].shape for i in range(4)] == [(1, *SIZE)] * 4


def test_records_may_be_a_manifest_csv(records, tmp_path):
    manifest = write_manifest(records, tmp_path / "manifest.csv")
    dataset = MammogramDataset(manifest, 32)
    assert len(dataset) == 4 and dataset.image_size == (32, 32) and dataset[3]["image"].shape == (1, 32, 32)
    assert dataset[2]["path"] == records[2]["path"]


def test_a_manifest_csv_listing_an_image_twice_is_refused_before_it_is_trained_on_twice(records, tmp_path):
    manifest = write_manifest([*records, dict(records[2], case_label="normal")], tmp_path / "manifest.csv")
    with pytest.raises(MammoXAIError, match=r"manifest.csv: lists the same path more than once: .*2\.dcm \(2 times\)"):
        MammogramDataset(manifest, 32)


def test_the_transform_is_applied_to_each_sample(records):
    dataset = MammogramDataset(records, SIZE, transform=ScaleIntensityd(keys="image", minv=0.0, maxv=2.0))
    sample = dataset[0]
    assert float(sample["image"].max()) == pytest.approx(2.0) and sample["label"] == 1


def test_a_synthetic_cohort_loads_as_a_three_class_data_set(tmp_path):
    manifest = synthesize(tmp_path / "synth", patients=2, seed=3, size=128)
    classes, folded = ["normal", "benign", "malignant"], {"recalled_benign": "benign"}
    dataset = MammogramDataset(manifest, SIZE, cache_dir=tmp_path / "cache", class_names=classes, label_map=folded)
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    raw = [record["case_label"] for record in read_manifest(manifest)]
    assert [classes[i] for i in batch["label"]] == [folded.get(label, label) for label in raw]
    assert batch["image"].shape == (len(raw), 1, *SIZE)
    assert 0.0 <= float(batch["image"].min()) < float(batch["image"].max()) <= 1.0
    assert all(g.flip == (lat == "R") for g, lat in zip(batch_geometries(batch), batch["laterality"], strict=True))
