"""Training and evaluation settings that no run can use are refused by name, first thing, in every config."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

from mammoxai.errors import MammoXAIError
from mammoxai.training.settings import check_limits, check_run_settings, check_settings

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundle"
CONFIGS = BUNDLE / "configs"
TRAINING_CONFIGS = [
    ["train.json"],
    ["train_lesion_crops.json"],
    ["pretrain.json"],
    ["pretrain.json", "multi_gpu_pretrain.json"],
]
USABLE = dict(epochs=1, batch_size=1, learning_rate=1, weight_decay=0, num_workers=0, val_interval=1, val_fraction=0.5)


def user_error(error: BaseException | None) -> MammoXAIError | None:
    """The MammoXAIError behind the RuntimeError that MONAI's config parser wraps it in."""
    while error is not None and not isinstance(error, MammoXAIError):
        error = error.__cause__ or error.__context__
    return error


def initialize_error(configs: list[str], tmp_path: Path, bundle_root: Path = BUNDLE, **overrides: object) -> str:
    """The user error ``initialize`` stops on, for configs run on a dataset folder that does not exist: had
    initialize read a single record, the error would name the folder instead."""
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / name) for name in configs],
        logging_file=False,
        bundle_root=str(bundle_root),
        dataset_dir=str(tmp_path / "no studies here"),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "logs"),
        **overrides,
    )
    with pytest.raises(Exception) as error:
        workflow.initialize()
    return str(user_error(error.value))


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("epochs", 0, r"epochs: is 0, not a positive whole number \(e\.g\. --epochs 30\)"),
        ("batch_size", -1, r"batch_size: is -1, not a positive whole number"),
        ("num_workers", -1, r"num_workers: is -1, not a whole number of 0 or more"),
        ("learning_rate", "abc", r"learning_rate: is 'abc', not a positive number \(e\.g\. --learning_rate 0\.001\)"),
        ("val_interval", 5, r"val_interval: is 5, more than the 1 epochs: the run would never validate"),
    ],
)
@pytest.mark.parametrize("configs", TRAINING_CONFIGS, ids="+".join)
def test_an_impossible_setting_is_named_before_the_manifest_is_read(configs, setting, value, message, tmp_path):
    error = initialize_error(configs, tmp_path, **{"epochs": 1, setting: value})
    assert re.fullmatch(message + ".*", error), error
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "configs, overrides, message",
    [
        (["train.json"], {"image_size": 8}, 'image_size: is 8x8; mammo_cnn needs 16 pixels a side'),
        (["pretrain.json"], {"image_size": [512, 16]}, "image_size: is 512x16; resnet18 needs 32 pixels a side"),
        (["pretrain.json", "multi_gpu_pretrain.json"], {"image_size": 31, "backbone": "efficientnet-b0"},
         "image_size: is 31x31; efficientnet-b0 needs 32 pixels a side"),
    ],
)  # fmt: skip
def test_a_grid_too_small_for_the_backbone_is_named_before_the_manifest_is_read(configs, overrides, message, tmp_path):
    """It failed in the first training step, after every image was read, with "output size is too small"."""
    error = initialize_error(configs, tmp_path, **overrides)
    assert error.startswith(message) and '(give at least "[' in error, error
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "configs, setting, value, message",
    [
        (["train.json"], "embed_dim", 0, "embed_dim: is 0, not a positive whole number (e.g. --embed_dim 256)"),
        (["train.json"], "matching_dim", -4, "matching_dim: is -4, not a positive whole number"),
        (["pretrain.json"], "embed_dim", -4, "embed_dim: is -4, not a positive whole number"),
        (["pretrain.json"], "matching_dim", 0, "matching_dim: is 0, not a positive whole number"),
        (["pretrain.json"], "temperature", "abc", "temperature: is 'abc', not a positive number (e.g. --temperature 0.1)"),
        (["pretrain.json"], "temperature", 0, "temperature: is 0, not a positive number"),
        (["pretrain.json", "multi_gpu_pretrain.json"], "contrastive_weight", "abc",
         "contrastive_weight: is 'abc', not a number of 0 or more (e.g. --contrastive_weight 1.0)"),
    ],
)  # fmt: skip
def test_network_and_loss_settings_no_run_can_use_are_named_before_the_manifest_is_read(
    configs, setting, value, message, tmp_path
):
    """A dimension of 0 trained to the end and saved a constant model; a negative one, or a temperature or weight
    that is no number, stopped in torch with a traceback."""
    assert initialize_error(configs, tmp_path, **{setting: value}).startswith(message)
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"patch_size": 8}, "patch_size: is 8x8; mammo_cnn needs 16 pixels a side, which its downsampling makes one "
         "(give at least 16)"),
        ({"patch_size": 0}, "patch_size: is 0, not a positive whole number (e.g. --patch_size 64)"),
        ({"patch_size": -8}, "patch_size: is -8, not a positive whole number (e.g. --patch_size 64)"),
        ({"patch_size": 32, "patch_backgrounds": -1},
         "patch_backgrounds: is -1, not a whole number of 0 or more (e.g. --patch_backgrounds 1)"),
    ],
)  # fmt: skip
def test_patch_settings_no_patch_training_can_use_are_named_before_the_manifest_is_read(overrides, message, tmp_path):
    """A small patch failed in the first training step, one of 0 or less in the augmentation, and a negative
    background count trained on lesion patches alone."""
    assert initialize_error(["train.json"], tmp_path, **overrides) == message
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "value, message",
    [
        ("normal", r"class_names: \['normal'\] must name two or more distinct classes \(list each class once"),
        # one name is refused next, so the message asks for a list, not for "one name, or a list"
        (
            "normal,benign",
            r"class_names: is 'normal,benign', not a list of names \(give a list, e\.g\. --class_names '\[",
        ),
    ],
)
@pytest.mark.parametrize(
    "configs",
    [
        ["train.json"],
        ["train.json", "evaluate.json"],
        ["train_lesion_crops.json"],
        ["inference.json", "evaluate_saliency.json"],
    ],
    ids="+".join,
)
def test_class_names_given_as_text_are_read_as_a_list_before_a_network_is_sized(configs, value, message, tmp_path):
    """``$len(@class_names)`` sized the network before any constructor saw the setting: ``--class_names normal`` was
    six classes "n", "o", ... and a list the command line could not read one class per character."""
    error = initialize_error(configs, tmp_path, class_names=value)
    assert re.fullmatch(message + ".*", error), error
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("setting", ["whole_image_class_names", "lesion_class_names"])
def test_the_saliency_evaluation_reads_the_class_names_of_both_its_models_by_the_same_rule(setting, tmp_path):
    error = initialize_error(["inference.json", "evaluate_saliency.json"], tmp_path, **{setting: "mass"})
    assert error.startswith(f"{setting}: ['mass'] must name two or more distinct classes (list each"), error
    assert f"e.g. --{setting} " in error


@pytest.mark.parametrize(
    "value, message",
    [
        (["view", "colour"], r"metadata_fields: names \['colour'\], .* or pass a metadata_fields_file defining them\)"),
        ("view,kvp", r"metadata_fields: is 'view,kvp', not a name or a list of names .*--metadata_fields '\["),
        ([], r"metadata_fields: is empty"),
    ],
)
@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_the_served_metadata_heads_are_refused_by_the_setting_the_user_gave(config, value, message, tmp_path):
    """The served network's fields are ``metadata_fields``; the refusals named ``fields``, pretraining's setting."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.update({"bundle_root": str(BUNDLE), "metadata_fields": value})
    with pytest.raises(Exception) as error:
        parser.get_parsed_content("metadata_label_space")
    assert re.fullmatch(message + ".*", str(user_error(error.value))), str(user_error(error.value))


@pytest.mark.parametrize(
    "value, message",
    [
        ("CC", r"views: \['CC'\] must name two or more distinct views \(name each view once"),
        ("CC,MLO", r"views: is 'CC,MLO', not a list of names \(give a list, e\.g\. --views '\[\"CC\", \"MLO\"\]'\)"),
    ],
)
@pytest.mark.parametrize("configs", [["train.json"], ["train.json", "evaluate.json"]], ids="+".join)
def test_views_given_as_text_are_refused_before_the_manifest_is_read(configs, value, message, tmp_path):
    """Training read every image into its cache before the data set or the network looked at ``views``."""
    error = initialize_error(configs, tmp_path, views=value)
    assert re.fullmatch(message + ".*", error), error
    assert not (tmp_path / "models").exists()


#: A typo of each model-input setting and the refusal it gets.
MODEL_INPUT_TYPOS = {
    "intensity_scaling": ("percentiles", 'not an intensity scaling (use "breast_percentiles" or "display_range")'),
    "field_of_view": ("whole", 'not a field of view (use "breast" or "image")'),
}


@pytest.mark.parametrize(
    "configs, prefix",
    [
        (["train.json"], ""),
        (["train.json", "evaluate.json"], ""),
        (["train_lesion_crops.json"], ""),
        (["inference.json", "evaluate_saliency.json"], ""),
        (["inference.json", "evaluate_saliency.json"], "lesion_"),
    ],
    ids=lambda value: "+".join(value) if isinstance(value, list) else value or "model",
)
@pytest.mark.parametrize("name", sorted(MODEL_INPUT_TYPOS))
def test_an_unknown_model_input_setting_is_named_before_the_manifest_is_read(configs, prefix, name, tmp_path):
    """A network must see the model input it was trained on; a typo is refused before any image or checkpoint is."""
    value, problem = MODEL_INPUT_TYPOS[name]
    error = initialize_error(configs, tmp_path, bundle_root=tmp_path, **{prefix + name: value})
    assert error == f"{prefix}{name}: is {value!r}, {problem}"
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "setting, value",
    [
        ("epochs", True),  # Python counts a bool as an int
        ("epochs", 2.0),
        ("batch_size", "16"),
        ("learning_rate", math.nan),
        ("learning_rate", 0),
        ("weight_decay", -0.1),
        ("val_interval", 0),
        ("val_fraction", 1.0),
    ],
)
def test_wrong_types_and_edge_values_are_refused(setting, value):
    with pytest.raises(MammoXAIError, match=rf"^{setting}: is {re.escape(repr(value))}, not "):
        check_run_settings(**{**USABLE, setting: value})


def test_the_smallest_usable_values_pass():
    check_run_settings(**USABLE)


@pytest.mark.parametrize("name", ["train.json", "train_lesion_crops.json", "pretrain.json", "multi_gpu_pretrain.json"])
def test_every_training_config_checks_its_settings_before_anything_else(name):
    assert json.loads((CONFIGS / name).read_text())["initialize"][:2] == ["@user_errors", "@run_settings"]


@pytest.mark.parametrize("configs", TRAINING_CONFIGS, ids="+".join)
def test_a_seed_that_is_no_whole_number_is_named_before_the_manifest_is_read(configs, tmp_path):
    error = initialize_error(configs, tmp_path, seed="abc")
    assert error.startswith("seed: is 'abc', not a whole number of 0 or more"), error


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("keep_checkpoints", 0, r"keep_checkpoints: is 0, not a positive whole number"),
        ("log_every", 0, r"log_every: is 0, not a positive whole number"),
    ],
)
@pytest.mark.parametrize("configs", [["pretrain.json"], ["pretrain.json", "multi_gpu_pretrain.json"]], ids="+".join)
def test_pretraining_progress_settings_are_checked_before_the_manifest_is_read(
    configs, setting, value, message, tmp_path
):
    error = initialize_error(configs, tmp_path, **{setting: value})
    assert re.fullmatch(message + ".*", error), error


EVALUATION_CONFIGS = [["train.json", "evaluate.json"], ["evaluate_pretrain.json"], ["ablation.json"]]


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("n_bootstrap", "abc", r"n_bootstrap: is 'abc', not a positive whole number \(e\.g\. --n_bootstrap 1000\)"),
        ("batch_size", 0, r"batch_size: is 0, not a positive whole number"),
        ("num_workers", -1, r"num_workers: is -1, not a whole number of 0 or more"),
    ],
)
@pytest.mark.parametrize("configs", EVALUATION_CONFIGS, ids="+".join)
def test_an_evaluation_setting_no_run_can_use_is_named_before_anything_is_read(
    configs, setting, value, message, tmp_path
):
    """The bundle root holds no checkpoint either: had initialize loaded one, the error would name it instead."""
    error = initialize_error(configs, tmp_path, bundle_root=tmp_path, **{setting: value})
    assert re.fullmatch(message + ".*", error), error


@pytest.mark.parametrize("value", [0, -1, "abc"])
def test_a_cap_on_matching_pairs_below_one_is_named_before_anything_is_read(value, tmp_path):
    """-1 failed after every image was scored; 0 reported that no test patient had two images of one study."""
    error = initialize_error(["evaluate_pretrain.json"], tmp_path, bundle_root=tmp_path, max_positive_pairs=value)
    assert error.startswith(f"max_positive_pairs: is {value!r}, not a positive whole number"), error
    check_limits(max_positive_pairs=None)  # no cap
    check_limits(max_positive_pairs=1)


@pytest.mark.parametrize(
    "setting, value",
    [
        ("target_specificity", 1.5),
        ("target_specificity", 0),
        ("threshold", 2),
        ("qc_min_probability", 5),
        ("calibration_bins", 0),
        ("threshold_fraction", 1.0),
    ],
)
def test_probabilities_and_counts_of_an_evaluation_out_of_range_are_refused(setting, value):
    with pytest.raises(MammoXAIError, match=rf"^{setting}: is {re.escape(repr(value))}, not "):
        check_settings(**{setting: value})


def test_every_evaluation_config_checks_its_settings_before_anything_else():
    for configs in EVALUATION_CONFIGS:
        assert json.loads((CONFIGS / configs[-1]).read_text())["initialize"][:2] == [
            "@user_errors",
            "@evaluation_settings",
        ]
