"""Explanation by ablation finds the task whose representation carries the downstream label.

The network here is built so the answer is known: its ``xray_system`` representation is a projection of the
top-left quadrant, whose brightness is the label; every other task projects a quadrant of pure noise.
"""

import json
import math

import monai.bundle
import numpy as np
import pytest
import torch
from test_evaluate_pretrain import (  # noqa: F401 - the tiny bundle fixtures
    SPACE,
    TINY,
    cached_inputs,
    other_input_bundle,
    pretrained_bundle,
)
from torch import nn

from mammoxai.data.dataset import MammogramDataset
from mammoxai.data.manifest import read_manifest
from mammoxai.errors import MammoXAIError
from mammoxai.saliency.ablation import (
    ablated,
    ablation_effects,
    downstream_labels,
    explain_image,
    fit_probe,
    load_explainer,
    main,
    save_explainer,
    task_means,
)
from mammoxai.training.classification import patient_split
from mammoxai.training.evaluate_pretrain import bootstrap_groups
from mammoxai.training.pretrain import load_pretrained

TASKS = ("xray_system", "view", "laterality", "thickness")
DIM = 8


class QuadrantNet(nn.Module):
    """z_k = quadrant k's mean brightness times a fixed direction v_k; z = sum_k z_k (MetadataNet's outputs)."""

    def __init__(self):
        super().__init__()
        self.directions = nn.Parameter(torch.randn(len(TASKS), DIM), requires_grad=False)
        self.task_names = list(TASKS)

    def forward(self, x):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        quadrants = torch.stack(
            [
                x[..., :h, :w].mean((1, 2, 3)),
                x[..., :h, w:].mean((1, 2, 3)),
                x[..., h:, :w].mean((1, 2, 3)),
                x[..., h:, w:].mean((1, 2, 3)),
            ],
            dim=1,
        )
        z_tasks = {task: quadrants[:, k, None] * self.directions[k] for k, task in enumerate(TASKS)}
        return {"z_tasks": z_tasks, "z": sum(z_tasks.values())}


def _images(labels, seed):
    """Top-left quadrant = label + small noise; the other quadrants = noise of the same scale as the signal."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(len(labels), 1, 16, 16, generator=generator) * 3.0
    images[:, :, :8, :8] = torch.as_tensor(labels, dtype=torch.float32)[:, None, None, None] + 0.1 * torch.rand(
        len(labels), 1, 8, 8, generator=generator
    )
    return images


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    net = QuadrantNet().eval()
    train_labels, test_labels = torch.arange(90) % 3, torch.arange(60) % 3
    with torch.no_grad():
        train, test = net(_images(train_labels, 1)), net(_images(test_labels, 2))
    means = task_means(train["z_tasks"])
    probe = fit_probe(train["z"], train_labels, ["a", "b", "c"], target="xray_system")
    return net, probe, means, test, test_labels


def test_the_task_carrying_the_label_has_the_largest_effect(fitted):
    _, probe, means, test, labels = fitted
    baseline, rows = ablation_effects(probe, test["z_tasks"], labels, means, n_bootstrap=200, seed=0)
    assert baseline["accuracy"] > 0.95
    assert [row["rank"] for row in rows] == [1, 2, 3, 4]
    top, rest = rows[0], rows[1:]
    assert top["task"] == "xray_system"
    assert top["mean_logprob_drop"] > 1.0
    assert top["accuracy_drop"] > 0.5  # without it the probe is at chance (1/3)
    assert top["cohens_dz_low"] > max(row["cohens_dz_high"] for row in rest)
    assert all(abs(row["accuracy_drop"]) < 0.1 for row in rest)


def test_effect_intervals_contain_the_estimates(fitted):
    _, probe, means, test, labels = fitted
    _, rows = ablation_effects(probe, test["z_tasks"], labels, means, n_bootstrap=200, seed=0)
    for row in rows:
        assert row["cohens_dz_low"] <= row["cohens_dz"] <= row["cohens_dz_high"]
        assert row["mean_logprob_drop_low"] <= row["mean_logprob_drop"] <= row["mean_logprob_drop_high"]


def test_images_without_a_label_are_left_out(fitted):
    _, probe, means, test, labels = fitted
    unknown = labels.clone()
    unknown[:30] = -1
    baseline, _ = ablation_effects(probe, test["z_tasks"], unknown, means, n_bootstrap=50)
    assert baseline["images"] == 30


def test_task_means_are_training_means_and_ablation_replaces_only_that_task():
    z_tasks = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([[10.0, 0.0], [20.0, 0.0]])}
    means = task_means(z_tasks)
    torch.testing.assert_close(means["a"], torch.tensor([2.0, 3.0]))
    z = z_tasks["a"] + z_tasks["b"]
    torch.testing.assert_close(ablated(z, z_tasks["a"], means["a"]), means["a"] + z_tasks["b"])


def test_explain_image_ranks_the_informative_task_first(fitted):
    net, probe, means, _, _ = fitted
    image = _images(torch.tensor([2]), seed=5)[0]  # (1, h, w)
    ranking = explain_image(net, probe, image, means)
    assert [row["task"] for row in ranking][0] == "xray_system"
    assert {row["task"] for row in ranking} == set(TASKS)
    assert ranking[0]["logprob_drop"] > 1.0
    drops = [row["logprob_drop"] for row in ranking]
    assert drops == sorted(drops, reverse=True)


def test_explain_image_of_a_given_class_reports_that_class(fitted):
    net, probe, means, _, _ = fitted
    image = _images(torch.tensor([2]), seed=5)[0]
    # for a wrong class, removing the evidence for the right one raises the wrong class's probability
    ranking = explain_image(net, probe, image, means, target=0)
    by_task = {row["task"]: row["logprob_drop"] for row in ranking}
    assert by_task["xray_system"] < 0


def test_saved_explainer_gives_the_same_explanation(fitted, tmp_path):
    net, probe, means, _, _ = fitted
    path = save_explainer(tmp_path / "explainer.pt", probe, means)
    loaded_probe, loaded_means = load_explainer(path)
    assert loaded_probe.class_names == ["a", "b", "c"] and loaded_probe.target == "xray_system"
    image = _images(torch.tensor([1]), seed=6)[0]
    assert explain_image(net, loaded_probe, image, loaded_means) == explain_image(net, probe, image, means)


def test_missing_explainer_is_a_clear_error(tmp_path):
    with pytest.raises(MammoXAIError, match="run configs/ablation.json"):
        load_explainer(tmp_path / "nothing.pt")


@pytest.mark.parametrize(
    "write, problem",
    [
        # read with torch.load alone, 100 random bytes raised torch's UnpicklingError
        (lambda path: path.write_bytes(np.random.default_rng(0).bytes(100)), "is not a readable ablation explainer"),
        (lambda path: torch.save({"weight": torch.zeros(3)}, path), "is not an ablation explainer file"),
        (lambda path: torch.save(torch.zeros(3), path), "is not an ablation explainer file"),
    ],
)
def test_a_file_that_is_no_explainer_is_a_clear_error(tmp_path, write, problem):
    write(tmp_path / "explainer.pt")
    with pytest.raises(MammoXAIError, match=f"explainer.pt: {problem} .*rerun configs/ablation.json"):
        load_explainer(tmp_path / "explainer.pt")


def test_probe_needs_two_classes():
    with pytest.raises(MammoXAIError, match="at least two"):
        fit_probe(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), ["only", "other"], target="view")


def test_downstream_labels_of_a_metadata_field_use_the_header_and_the_heads_classes():
    records = [
        {"path": "a", "manufacturer": "Acme", "model": "Two", "view": "MLO"},
        {"path": "b", "manufacturer": "Acme", "model": "One"},
        {"path": "c", "view": "CC"},
    ]
    labels, classes = downstream_labels(records, "xray_system", SPACE)
    assert classes == ["ACME ONE", "ACME TWO"]
    assert labels.tolist() == [1, 0, -1]
    labels, classes = downstream_labels(records, "view", SPACE)
    assert labels.tolist() == [1, -1, 0] and classes[:2] == ["CC", "MLO"]


def test_downstream_labels_of_a_manifest_column_follow_the_label_map_and_given_classes():
    records = [
        {"case_label": "recalled_benign"},
        {"case_label": "malignant"},
        {"case_label": None},
        {"case_label": "benign"},
    ]
    labels, classes = downstream_labels(records, "case_label", SPACE, label_map={"recalled_benign": "benign"})
    assert classes == ["benign", "malignant"]
    assert labels.tolist() == [0, 1, -1, 0]
    labels, _ = downstream_labels(records, "case_label", SPACE, class_names=["malignant"])
    assert labels.tolist() == [-1, 0, -1, -1]


def test_unknown_downstream_target_is_a_clear_error():
    with pytest.raises(MammoXAIError, match="neither a metadata field nor a filled manifest column"):
        downstream_labels([{"path": "a"}], "birads_typo", SPACE)


def test_effect_of_a_constant_drop_is_infinite_not_a_crash():
    probe = fit_probe(torch.tensor([[0.0], [1.0], [0.1], [0.9]]), torch.tensor([0, 1, 0, 1]), ["x", "y"])
    z_tasks = {"only": torch.tensor([[1.0], [1.0]])}
    _, rows = ablation_effects(probe, z_tasks, torch.tensor([1, 1]), {"only": torch.tensor([0.0])}, n_bootstrap=20)
    assert math.isinf(rows[0]["cohens_dz"]) and rows[0]["mean_logprob_drop"] > 0
    assert np.isnan(rows[0]["cohens_dz_low"])


def test_ablation_arithmetic_equals_the_networks_own_ablation():
    from mammoxai.nets.metadata_net import MetadataNet

    net = MetadataNet("resnet18", fields={"view": 4, "laterality": 2}, embed_dim=16, matching_dim=8).eval()
    images = torch.rand(3, 1, 64, 48)
    replacement = torch.randn(16)
    with torch.no_grad():
        outputs = net(images)
        expected = net.represent(images, ablate={"view": replacement})
    torch.testing.assert_close(ablated(outputs["z"], outputs["z_tasks"]["view"], replacement), expected)


def test_ablation_config_runs_through_monai_bundle_and_saves_a_usable_explainer(pretrained_bundle):
    bundle, studies, label_space = pretrained_bundle
    monai.bundle.run(
        config_file=str(bundle / "configs" / "ablation.json"), bundle_root=str(bundle), dataset_dir=str(studies), **TINY
    )
    report = json.loads((bundle / "eval" / "ablation" / "report.json").read_text())
    rows = report["tables"]["effects"]
    assert sorted(row["task"] for row in rows) == sorted(label_space.fields)
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
    assert (bundle / "eval" / "ablation" / "ablation_effects.png").stat().st_size > 1000
    probe, means = load_explainer(bundle / "models" / "ablation_explainer.pt")
    assert probe.target == "xray_system" and probe.class_names == label_space.class_names("xray_system")
    pretrained = load_pretrained(bundle / "models" / "pretrained.pt")
    image = MammogramDataset(read_manifest(studies / "manifest.csv")[:1], pretrained.image_size)[0]["image"]
    ranking = explain_image(pretrained.network, probe, image, means)
    assert sorted(row["task"] for row in ranking) == sorted(label_space.fields)


def test_ablation_reads_the_images_as_the_checkpoint_was_trained(other_input_bundle, tmp_path):
    """Both settings of the model input come from the checkpoint, not from the config's defaults."""
    bundle, studies = other_input_bundle
    monai.bundle.run(
        config_file=str(bundle / "configs" / "ablation.json"),
        bundle_root=str(bundle),
        dataset_dir=str(studies),
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "out"),
        explainer=str(tmp_path / "explainer.pt"),
        **TINY,
    )

    paths = [record["path"] for record in read_manifest(studies / "manifest.csv")]  # the training and test splits
    assert cached_inputs(tmp_path / "cache", paths) == {("display_range", "image")}
    assert load_explainer(tmp_path / "explainer.pt")[0].target == "xray_system"


def test_ablation_script_explains_a_manifest_column(pretrained_bundle, tmp_path):
    bundle, studies, _ = pretrained_bundle
    arguments = ["--bundle_root", str(bundle), "--dataset_dir", str(studies), "--output_dir", str(tmp_path / "out")]
    arguments += ["--target", "case_label", "--label_map", '{"recalled_benign": "benign"}', "--explainer", "null"]
    arguments += [item for key, value in TINY.items() for item in (f"--{key}", str(value))]
    assert main(arguments) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["title"].endswith("case_label classifier")
    assert "recalled_benign" not in report["values"]["baseline"]["classes"]


def test_explainer_of_another_network_is_a_clear_error(fitted):
    net, probe, means, _, _ = fitted
    with pytest.raises(MammoXAIError, match="refit it"):
        explain_image(net, probe, _images(torch.tensor([0]), seed=3)[0], {**means, "density": means["view"]})


def test_ablation_on_a_split_other_than_pretrainings_is_refused(pretrained_bundle, tmp_path, capsys):
    """The probe is scored on pretraining's held-out patients; another seed would score it on training ones."""
    bundle, studies, _ = pretrained_bundle
    arguments = ["--bundle_root", str(bundle), "--dataset_dir", str(studies), "--output_dir", str(tmp_path / "out")]
    arguments += [item for key, value in {**TINY, "seed": 7}.items() for item in (f"--{key}", str(value))]

    assert main(arguments) == 1

    assert "is not the one pretraining held out" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_earlier_explainer_is_replaced_only_when_asked(pretrained_bundle, tmp_path, capsys):
    bundle, studies, _ = pretrained_bundle
    explainer = tmp_path / "explainer.pt"
    arguments = ["--bundle_root", str(bundle), "--dataset_dir", str(studies), "--output_dir", str(tmp_path / "out")]
    arguments += [
        "--explainer",
        str(explainer),
        *(item for key, value in TINY.items() for item in (f"--{key}", str(value))),
    ]
    assert main(arguments) == 0
    first = explainer.read_bytes()

    assert main([*arguments, "--target", "view"]) == 1

    assert f"explainer {explainer}: already exists (pass --overwrite true to replace it" in capsys.readouterr().err
    assert explainer.read_bytes() == first
    assert main([*arguments, "--target", "view", "--overwrite", "true"]) == 0
    assert load_explainer(explainer)[0].target == "view"


def test_downstream_labels_of_a_manifest_column_match_regardless_of_case_and_spacing():
    """'Malignant' and 'malignant ' were two classes, and a held-out spelling the training rows lack went unlabelled."""
    train = [
        {"case_label": "malignant"},
        {"case_label": "Malignant"},
        {"case_label": "malignant"},
        {"case_label": "Recalled  Benign"},
    ]
    labels, classes = downstream_labels(train, "case_label", SPACE, label_map={"recalled benign": "benign"})
    assert classes == ["benign", "malignant"]
    assert labels.tolist() == [1, 1, 1, 0]
    test = [{"case_label": "MALIGNANT"}, {"case_label": " Benign"}, {"case_label": "normal"}]
    labels, _ = downstream_labels(test, "case_label", SPACE, class_names=classes)
    assert labels.tolist() == [1, 0, -1]


def test_training_and_the_ablation_probe_give_one_label_map_the_same_classes():
    """Training matched label_map keys as written and the probe regardless of case and spacing: one --label_map
    trained the classifier on other classes than the probe, or refused labels the probe took."""
    labels = ["Recalled  Benign", "CANCER", "recalled benign", "cancer"]
    records = [{"path": f"P{i}.dcm", "patient_id": f"P{i}", "case_label": label} for i, label in enumerate(labels)]
    label_map, classes = {"recalled benign": "benign", "Cancer": "malignant"}, ["benign", "malignant"]
    dataset = MammogramDataset(records, image_size=32, class_names=classes, label_map=label_map)
    probe_labels, _ = downstream_labels(records, "case_label", SPACE, classes, label_map)
    assert dataset.labels == probe_labels.tolist() == [0, 1, 0, 1]
    _, val = patient_split(records, val_fraction=0.5, seed=0, label_map=label_map)
    assert sorted(dataset.label_map(record["case_label"]) for record in val) == classes  # one patient per class


@pytest.mark.parametrize("path", ["training", "ablation"])
@pytest.mark.parametrize("keys", [("Cancer", "cancer "), ("recalled_benign", "Recalled Benign")])
def test_a_label_map_giving_one_label_two_classes_up_to_case_and_spacing_is_refused(path, keys):
    label_map = {keys[0]: "malignant", keys[1]: "benign"}
    records = [{"path": "P0.dcm", "case_label": "cancer"}]
    message = rf"^label_map: maps {keys[0]!r} to 'malignant' and {keys[1]!r} to 'benign', one label up to case and spa"
    with pytest.raises(MammoXAIError, match=message):
        if path == "training":
            MammogramDataset(records, image_size=32, label_map=label_map)
        else:
            downstream_labels(records, "case_label", SPACE, label_map=label_map)


def test_training_and_the_probe_spell_a_label_as_the_class_names_do_regardless_of_case_and_spacing():
    """Training compared a label with class_names as written: 'Malignant' against ["malignant"] was refused, and
    without class_names 'Malignant' and 'malignant' were two classes, where the probe took one."""
    labels = ["Malignant", " normal", "malignant", "NORMAL", "malignant", "normal"]
    records = [{"path": f"P{i}.dcm", "patient_id": f"P{i}", "case_label": label} for i, label in enumerate(labels)]
    dataset = MammogramDataset(records, image_size=32, class_names=["normal", "malignant"])
    probe_labels, _ = downstream_labels(records, "case_label", SPACE, ["normal", "malignant"])
    assert dataset.labels == probe_labels.tolist() == [1, 0, 1, 0, 1, 0]
    default = MammogramDataset(records, image_size=32)  # one class per label up to case, as most rows spell it
    assert default.class_names == ("malignant", "normal") and default.labels == [0, 1, 0, 1, 0, 1]
    assert downstream_labels(records, "case_label", SPACE)[1] == list(default.class_names)
    _, val = patient_split(records, val_fraction=0.4, seed=0)  # stratified by class, not by spelling
    assert sorted(dataset.label_map(record["case_label"]) for record in val) == ["malignant", "normal"]
    for label_images in (
        lambda names: MammogramDataset(records, image_size=32, class_names=names),
        lambda names: downstream_labels(records, "case_label", SPACE, names),
    ):
        with pytest.raises(MammoXAIError, match=r"^class_names: name 'Normal' and 'normal', one class up to case"):
            label_images(["Normal", "normal", "malignant"])


def test_training_and_the_probe_read_an_underscore_or_hyphen_between_words_as_a_space():
    """A CSV's "Recalled Benign" and "recalled-benign" are the class recalled_benign in training and in the probe
    alike; class names that are one name so cannot be told apart by any label, and are refused by both."""
    labels = ["Recalled Benign", "recalled-benign", "malignant", "recalled_benign"]
    records = [{"path": f"P{i}.dcm", "patient_id": f"P{i}", "case_label": label} for i, label in enumerate(labels)]
    classes = ["recalled_benign", "malignant"]
    dataset = MammogramDataset(records, image_size=32, class_names=classes)
    assert dataset.labels == downstream_labels(records, "case_label", SPACE, classes)[0].tolist() == [0, 0, 1, 0]
    for label_images in (
        lambda names: MammogramDataset(records, image_size=32, class_names=names),
        lambda names: downstream_labels(records, "case_label", SPACE, names),
    ):
        message = r"^class_names: name 'recalled_benign' and 'Recalled-Benign', one class up to case"
        with pytest.raises(MammoXAIError, match=message):
            label_images([*classes, "Recalled-Benign"])


def test_images_naming_no_patient_are_each_their_own_bootstrap_unit_not_one_shared_patient(fitted):
    """Clustered under one empty id, a data set without a patient column got effect intervals of zero width."""
    _, probe, means, test, labels = fitted
    records = [{"path": f"image{i}.png"} for i in range(len(labels))]
    groups = bootstrap_groups(records, SPACE)
    assert len(set(groups)) == len(records)
    _, rows = ablation_effects(probe, test["z_tasks"], labels, means, n_bootstrap=100, seed=0, groups=groups)
    assert all(row["mean_logprob_drop_high"] > row["mean_logprob_drop_low"] for row in rows)
    _, shared = ablation_effects(probe, test["z_tasks"], labels, means, n_bootstrap=100, seed=0, groups=[""] * 60)
    # one unit of evidence: no interval, not a zero-width one
    assert all(math.isnan(row["mean_logprob_drop_high"]) for row in shared)
