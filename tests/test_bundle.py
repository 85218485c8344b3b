"""The MONAI bundle end to end: train.json and inference.json from the bundle root, and the predictor they share.

Nothing here writes into the repository: checkpoints, logs, caches and predictions go to pytest's tmp_path
through the configs' own top-level keys (``--ckpt_dir``, ``--output_dir``, ``--checkpoint``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dicom_factory import write_mammo_dicom
from monai.bundle import ConfigParser, verify_net_in_out
from monai.metrics import ROCAUCMetric, compute_roc_auc
from PIL import Image

from mammoxai.cli import config_overrides, run_bundle_config, user_error
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.inference import InferenceRunner, MammogramPredictor, list_inputs
from mammoxai.io import read_mammogram
from mammoxai.io.heatmap import read_heatmap_nrrd
from mammoxai.io.preprocess import prepare_image
from mammoxai.nets import MammoClassifier
from mammoxai.schema import validate_prediction
from mammoxai.training.checkpoints import TrainingGrid
from mammoxai.training.classification import PresentClassesROCAUC, class_weights, patient_split

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundle"
CONFIGS = BUNDLE / "configs"
CLASSES = ["normal", "benign", "malignant"]
LABEL_MAP = {"recalled_benign": "benign"}  # train.json's


def run_bundle(config: str, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file configs/<config>`` from the bundle root, as a user runs it."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"configs/{config}", *overrides]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def breast_pixels(rows: int = 200, columns: int = 160, chest_wall: str = "left") -> np.ndarray:
    """A uint16 half-ellipse 'breast' against the chest wall on one side, with texture, on a dark background."""
    y, x = np.mgrid[0:rows, 0:columns]
    inside = (x / (0.8 * columns)) ** 2 + ((y - rows / 2) / (0.45 * rows)) ** 2 < 1
    texture = np.random.default_rng(0).integers(0, 400, size=(rows, columns))
    pixels = np.where(inside, 2000 + texture, 50).astype(np.uint16)
    return pixels if chest_wall == "left" else pixels[:, ::-1].copy()


# -- the bundle from the command line --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("studies")
    synthesize(folder, patients=6, seed=0, size=192)
    return folder


def bundle_outputs() -> dict[str, int]:
    """What the bundle's own output folders hold: file -> modification time."""
    files = [path for folder in ("models", "eval") for path in (BUNDLE / folder).rglob("*")]
    return {str(path): path.stat().st_mtime_ns for path in files}


@pytest.fixture(scope="module")
def training_run(tmp_path_factory, studies) -> tuple[Path, dict[str, int], dict[str, int]]:
    """Train for one epoch; returns the work folder and the bundle's outputs before and after."""
    work = tmp_path_factory.mktemp("train")
    before = bundle_outputs()
    run_bundle(
        "train.json",
        "--dataset_dir",
        str(studies),
        "--ckpt_dir",
        str(work / "models"),
        "--output_dir",
        str(work / "eval"),
        "--epochs",
        "1",
    )
    return work, before, bundle_outputs()


@pytest.fixture(scope="module")
def trained(training_run) -> Path:
    """The folder holding the trained model.pt."""
    return training_run[0] / "models"


def test_train_json_writes_checkpoint_logs_and_cache_where_it_is_told(training_run):
    work, before, after = training_run
    network = served_network()
    # the layout the predictor loads
    saved = torch.load(work / "models" / "model.pt", weights_only=True)
    network.load_state_dict(saved["model"])
    # the training input, which inference and evaluation check
    assert saved["grid"] == {
        "image_size": [256, 208],
        "intensity_scaling": "breast_percentiles",
        "field_of_view": "breast",
    }
    assert any((work / "eval").glob("events.out.tfevents.*"))  # TensorBoard
    assert any((work / "eval" / "cache").rglob("*.pt"))  # preprocessed tensors
    assert after == before  # nothing written into the repository's bundle


def test_inference_json_explains_dicom_and_png_and_reports_bad_files(tmp_path, studies, trained):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    sources = {name: inputs / name for name in ("synthetic.dcm", "spaced.dcm", "exported.png")}
    shutil.copy(next(studies.glob("*_R_MLO.dcm")), sources["synthetic.dcm"])
    write_mammo_dicom(sources["spaced.dcm"], breast_pixels(), ImagerPixelSpacing=[0.08, 0.1])
    Image.fromarray(breast_pixels(150, 120, chest_wall="right")).save(sources["exported.png"])  # 16-bit PNG
    (inputs / "broken.dcm").write_bytes(b"not a dicom file")
    output = tmp_path / "predictions"

    result = run_bundle(
        "inference.json",
        "--dataset_dir",
        str(inputs),
        "--checkpoint",
        str(trained / "model.pt"),
        "--output_dir",
        str(output),
    )

    assert "broken.dcm" in result.stdout + result.stderr  # reported with its reason, the rest still processed
    assert not (output / "broken.json").exists()
    for source in sources.values():
        record = json.loads((output / f"{source.stem}.json").read_text())
        validate_prediction(record, source=f"{source.stem}.json")
        mammogram = read_mammogram(source)
        heatmap, spacing = read_heatmap_nrrd(output / f"{source.stem}_heatmap.nrrd")
        assert record["image"]["source"] == str(source)
        assert heatmap.shape == mammogram.shape == tuple(record["image"]["shape"])
        assert spacing == (mammogram.spacing or (1.0, 1.0))
        assert 0.0 <= heatmap.min() <= heatmap.max() <= 1.0
    assert json.loads((output / "spaced.json").read_text())["image"]["spacing_mm"] == [0.08, 0.1]


def test_inference_json_refuses_a_model_trained_on_another_grid_before_reading_any_image(tmp_path, studies, trained):
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    command += ["--dataset_dir", str(studies), "--checkpoint", str(trained / "model.pt")]
    command += ["--output_dir", str(tmp_path / "out"), "--image_size", "[128, 104]"]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr  # one line, not MONAI's chained traceback
    assert result.stderr.strip().splitlines()[-1] == (
        f'error: {trained / "model.pt"}: was trained with image_size [256, 208], not the [128, 104] of this run '
        "(pass --image_size '[256, 208]', or retrain with this run's settings)"
    )
    assert not (tmp_path / "out").exists()


#: configs that run merged over another (python scripts/evaluate.py, the multi-GPU command of the model card)
MERGED_OVER = {"evaluate.json": "train.json", "multi_gpu_pretrain.json": "pretrain.json"}


@pytest.mark.parametrize(
    "config",
    sorted(path.name for path in CONFIGS.glob("*.json") if path.stem != "metadata" and "fields" not in path.stem),
)
def test_every_config_hooks_one_line_user_errors_before_anything_else(config):
    """``python -m monai.bundle run`` is MONAI's command: the configs make its user errors one line themselves."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in (MERGED_OVER.get(config), config) if name])
    assert parser.get("initialize", [None])[0] == "@user_errors"
    assert parser.get("user_errors") == {"_target_": "mammoxai.cli.brief_user_errors"}


def test_script_options_are_read_as_monai_bundle_run_reads_them():
    """The scripts' ``--key value`` options take what the model card writes for ``monai.bundle run``: Python
    literals (``"['CC', 'MLO']"`` reached scripts/evaluate.py as text, and asked for one view per character),
    bare words in brackets (``[CC, MLO]``), JSON, and plain text for anything else."""
    arguments = ["--views", "['CC', 'MLO']", "--label_map", "{5: 'malignant'}", "--amp", "False", "--epochs", "3"]
    arguments += ["--holdout", '{"split": "test"}', "--checkpoint", "models/model.pt", "--patient", "001"]
    arguments += ["--output_dir", "2024_01", "--study", "0x1F", "--seed", "None"]
    arguments += ["--exam_keys", "[study_uid, laterality]", "--holdout_map", "{Cancer: malignant}"]
    arguments += ["--dataset_dir", "data,v2", "--select", "[unclosed"]
    assert config_overrides(arguments) == {
        "views": ["CC", "MLO"],
        "label_map": {5: "malignant"},
        "amp": False,
        "epochs": 3,
        "holdout": {"split": "test"},
        "checkpoint": "models/model.pt",
        "patient": "001",
        "output_dir": "2024_01",  # Python reads 202401, JSON and the user a folder name
        "study": "0x1F",
        "seed": None,
        "exam_keys": ["study_uid", "laterality"],  # bare words in brackets are text, as monai.bundle run reads them
        "holdout_map": {"Cancer": "malignant"},
        "dataset_dir": "data,v2",  # a folder name, not the tuple fire would read
        "select": "[unclosed",
    }
    assert config_overrides(["--views", "(CC, MLO)"]) == {"views": ("CC", "MLO")}  # bare words in parentheses: a tuple


def test_script_options_that_name_a_file_or_folder_stay_text():
    """``--dataset_dir 2024`` was the number 2024, which the config's ``@dataset_dir + '/manifest.csv'`` cannot join."""
    arguments = ["--dataset_dir", "2024", "--bundle_root", "2024", "--label_csv", "null", "--init_weights", "1.5"]
    arguments += ["--train#cache_dir", "[a, b]", "--manifest", "true", "--checkpoint", "None", "--epochs", "2024"]
    arguments += ["--loss#field_weights", '{"thickness": 2}']  # numbers, though the name ends like init_weights
    assert config_overrides(arguments) == {
        "dataset_dir": "2024",
        "bundle_root": "2024",
        "label_csv": None,  # no file, as the config's default
        "init_weights": "1.5",
        "train#cache_dir": "[a, b]",
        "manifest": "true",
        "checkpoint": None,
        "epochs": 2024,
        "loss#field_weights": {"thickness": 2},
    }


@pytest.mark.parametrize("value", ["{CC, MLO}", "['CC', {'MLO'}]", "{'views': {'CC', 'MLO'}}"])
def test_a_script_option_holding_a_set_is_refused_since_its_order_changes_between_runs(value):
    with pytest.raises(MammoXAIError, match=r"^--views: .*holds a set.*\[a, b\], not \{a, b\}"):
        config_overrides(["--epochs", "2", "--views", value])


@pytest.mark.parametrize(
    "arguments, line",
    [
        (["--bundle_root", "2024"], "2024/configs/train.json: not found"),
        (["--dataset_dir", "2024"], "2024/manifest.csv: manifest not found"),
    ],
)
def test_a_script_given_a_number_as_a_folder_names_the_folder_in_one_line(
    tmp_path, monkeypatch, capsys, arguments, line
):
    monkeypatch.chdir(tmp_path)
    arguments += ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")]
    assert run_bundle_config("train.json", arguments) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and line in error


def test_script_options_nested_beyond_the_parsers_stay_text_not_a_traceback():
    """Python's reader gave up on them and the value stayed text; fire's (brackets) and JSON raised RecursionError,
    a traceback where a user error is one line."""
    nested, summed = "[" * 100_000 + "]" * 100_000, "[" + "1+" * 100_000 + "1]"
    assert config_overrides(["--views", nested, "--class_names", summed]) == {"views": nested, "class_names": summed}


def test_a_user_error_keeps_its_traceback_when_asked_and_a_bug_always_does(tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json"]
    command += ["--dataset_dir", str(tmp_path / "missing"), "--ckpt_dir", str(tmp_path / "models")]
    environment = {**os.environ, "MAMMOXAI_TRACEBACK": "1"}
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 1 and "Traceback" in result.stderr and "manifest not found" in result.stderr
    bug = "import sys, mammoxai.cli; mammoxai.cli.brief_user_errors(); raise KeyError('a bug')"
    result = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" in result.stderr and "KeyError: 'a bug'" in result.stderr


def test_train_json_refuses_one_class_from_the_command_line_in_one_line_before_reading_anything(tmp_path):
    """``--class_names normal`` sized a network of six classes "n", "o", ... before anything looked at the setting."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json"]
    command += ["--dataset_dir", str(tmp_path / "studies"), "--ckpt_dir", str(tmp_path / "models")]
    command += ["--output_dir", str(tmp_path / "eval"), "--class_names", "normal"]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: class_names: ['normal'] must name two or more distinct classes (list each class once, in the order "
        """of the outputs, e.g. --class_names '["normal", "benign", "malignant"]')"""
    )
    assert not (tmp_path / "models").exists() and not (tmp_path / "eval").exists()


def test_inference_json_refuses_class_names_in_another_order_than_training_gave_the_logits(tmp_path, studies, trained):
    assert torch.load(trained / "model.pt", weights_only=True)["classes"] == {"class_names": CLASSES}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    command += ["--dataset_dir", str(studies), "--checkpoint", str(trained / "model.pt")]
    command += ["--output_dir", str(tmp_path / "out"), "--class_names", json.dumps(CLASSES[::-1])]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"model.pt: was trained with class_names {json.dumps(CLASSES)}, not the" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_train_json_into_a_folder_holding_a_model_refuses_before_training_and_keeps_the_model(
    tmp_path, studies, trained
):
    models = tmp_path / "models"
    shutil.copytree(trained, models)
    before = (models / "model.pt").read_bytes()
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json"]
    command += ["--dataset_dir", str(studies), "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "eval")]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    expected = f"ckpt_dir {models}: holds model.pt of an earlier run (pass --overwrite true to replace them, or give"
    assert expected in result.stdout + result.stderr
    assert "--resume" not in result.stdout + result.stderr  # fine-tuning cannot resume: not offered
    assert (models / "model.pt").read_bytes() == before
    assert not (tmp_path / "eval" / "cache").exists()  # refused before a single image was read


def test_ckpt_export_writes_a_torchscript_model_that_gives_the_trained_network_s_logits(tmp_path, trained):
    command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def"]
    command += ["--filepath", str(tmp_path / "model.ts"), "--ckpt_file", str(trained / "model.pt")]
    command += ["--key_in_ckpt", "model", "--use_trace", "True"]
    command += ["--input_shape", "[1, 1, 256, 208]", "--meta_file", "configs/metadata.json"]
    command += ["--config_file", "configs/inference.json"]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    network = served_network()
    network.load_state_dict(torch.load(trained / "model.pt", weights_only=True)["model"])
    exported = torch.jit.load(tmp_path / "model.ts")
    images = torch.rand(2, 1, 256, 208)
    with torch.no_grad():
        torch.testing.assert_close(exported(images), network.eval()(images))


def test_inference_json_explains_with_the_saliency_method_named_on_the_command_line(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source = write_mammo_dicom(inputs / "case.dcm", breast_pixels(), ImagerPixelSpacing=[0.1, 0.1])
    output = tmp_path / "predictions"

    run_bundle(
        "inference.json",
        "--dataset_dir",
        str(inputs),
        "--checkpoint",
        str(save_weights(tmp_path / "model.pt")),
        "--output_dir",
        str(output),
        "--saliency#method",
        "occlusion",
        "--saliency#preset",
        "fast",
    )

    record = json.loads((output / "case.json").read_text())
    validate_prediction(record, source="case.json")
    assert record["saliency"]["method"] == "occlusion"
    assert record["saliency"]["settings"]["preset"] == "fast"
    assert (record["saliency"]["settings"]["patch"], record["saliency"]["settings"]["stride"]) == (32, 16)
    assert "target_layer" not in record["saliency"]["settings"]  # occlusion takes no layer
    heatmap, _ = read_heatmap_nrrd(output / "case_heatmap.nrrd")
    assert heatmap.shape == read_mammogram(source).shape == (200, 160)
    assert heatmap.max() > 0


def test_verify_net_in_out_passes():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        device="cpu",
    )


def test_configs_and_metadata_agree_on_classes_and_input_size():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    train = json.loads((CONFIGS / "train.json").read_text())
    inference = json.loads((CONFIGS / "inference.json").read_text())
    image, pred = metadata["network_data_format"]["inputs"]["image"], metadata["network_data_format"]["outputs"]["pred"]
    assert train["class_names"] == inference["class_names"] == list(pred["channel_def"].values()) == CLASSES
    assert pred["num_channels"] == len(CLASSES)
    assert train["image_size"] == inference["image_size"] == image["spatial_shape"]
    for key in ("backbone", "embed_dim", "matching_dim", "metadata_fields", "metadata_fields_file"):
        assert train[key] == inference[key], key  # the served heads are the trained ones
    assert train["intensity_scaling"] == inference["intensity_scaling"]  # demo.py serves what train.json trains
    assert train["field_of_view"] == inference["field_of_view"] == "breast"
    assert metadata["version"] in metadata["changelog"]


@pytest.mark.parametrize("config", ["train.json", "train_lesion_crops.json"])
def test_the_early_checkpoint_folder_check_names_what_the_savers_write(config, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.update({"bundle_root": str(BUNDLE), "output_dir": str(tmp_path), "ckpt_dir": str(tmp_path / "models")})
    savers = [handler for handler in parser.get_parsed_content("validate#handlers") if hasattr(handler, "file_names")]
    assert len(savers) == 1
    assert savers[0].file_names() == (parser.get_parsed_content("checkpoint_folder#fixed"), [])
    assert "@checkpoint_folder" in parser.get("initialize")  # refused before the data sets read a single image


# -- what the MONAI model zoo checks before it accepts a bundle (its ci/verify_bundle.py) -----------------------------
# The requirements of the schema the zoo validates metadata.json against (meta_schema_20240725.json, named by our
# "schema" key and downloaded by ``verify_metadata``, which cannot download here): its required keys and their
# types, and the fields every tensor of network_data_format must describe.
_TENSOR = {
    "type": "object",
    "required": ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range"],
    "properties": {
        "type": {"type": "string"},
        "format": {"type": "string"},
        "num_channels": {"type": "integer"},
        "spatial_shape": {"type": "array", "items": {"type": ["string", "integer"]}},
        "dtype": {"type": "string"},
        "value_range": {"type": "array", "items": {"type": "number"}},
        "is_patch_data": {"type": "boolean"},
        "channel_def": {"type": "object"},
    },
}
ZOO_METADATA_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": [
        "schema",
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    ],
    "properties": {
        **{
            key: {"type": "string"}
            for key in (
                "schema",
                "version",
                "monai_version",
                "pytorch_version",
                "numpy_version",
                "task",
                "description",
                "authors",
                "copyright",
                "data_source",
                "data_type",
                "image_classes",
                "label_classes",
                "pred_classes",
                "intended_use",
            )
        },
        **{
            key: {"type": "object"}
            for key in (
                "changelog",
                "required_packages_version",
                "optional_packages_version",
                "eval_metrics",
                "supported_apps",
            )
        },
        "references": {"type": "array", "items": {"type": "string"}},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                "inputs": {"type": "object", "additionalProperties": _TENSOR},
                "outputs": {"type": "object", "additionalProperties": _TENSOR},
            },
        },
    },
}


def run_monai_bundle(*arguments: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <arguments>`` from the bundle root; the caller checks the outcome."""
    command = [sys.executable, "-m", "monai.bundle", *arguments]
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)


def test_metadata_passes_monai_verify_metadata_and_a_missing_required_key_fails_it(tmp_path):
    schema = tmp_path / "schema.json"  # where the zoo's CI puts the schema it downloaded (eval/schema.json)
    schema.write_text(json.dumps(ZOO_METADATA_SCHEMA))
    passed = run_monai_bundle("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(schema))
    assert passed.returncode == 0 and "metadata is verified with no error" in passed.stdout + passed.stderr, (
        passed.stdout[-3000:] + passed.stderr[-3000:]
    )

    broken = json.loads((CONFIGS / "metadata.json").read_text())
    del broken["numpy_version"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    arguments = ["--meta_file", str(tmp_path / "metadata.json"), "--filepath", str(schema)]
    failed = run_monai_bundle("verify_metadata", *arguments)
    assert failed.returncode != 0 and "'numpy_version' is a required property" in failed.stderr


def _version(text: str) -> tuple[int, ...]:
    assert re.fullmatch(r"\d+\.\d+\.\d+", text), f"{text!r} is not MAJOR.MINOR.PATCH"
    return tuple(int(part) for part in text.split("."))


def test_changelog_lists_versions_newest_first_starting_with_the_current_one():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    versions = [_version(key) for key in metadata["changelog"]]
    assert list(metadata["changelog"])[0] == metadata["version"]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)


def _distribution(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Pillow`` and ``pillow``, ``pylibjpeg_rle`` and
    ``pylibjpeg-rle`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_metadata_pins_every_package_the_bundle_imports_at_the_tested_version():
    """The zoo's CI installs exactly monai_version, pytorch_version, numpy_version and the packages of
    required_packages_version / optional_packages_version into a clean environment, then imports the bundle's code
    through its configs: a package imported but not pinned fails there (and for a user of the zoo's download),
    and a pin other than the version of ``requirements/constraints.txt`` (what the tests install) is untested.
    Compared with that file, not with this environment, so the tests also run where other versions are installed."""
    import importlib.metadata

    tested = {}
    for line in (BUNDLE.parent / "requirements" / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version and not line.startswith("#"):
            tested[_distribution(name)] = version.strip()
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert metadata["monai_version"] == tested["monai"]
    assert metadata["pytorch_version"] == tested["torch"]  # the zoo installs torch==<this>
    assert metadata["numpy_version"] == tested["numpy"]
    pinned = {**metadata.get("optional_packages_version", {}), **metadata["required_packages_version"]}
    for name, version in pinned.items():
        assert tested.get(_distribution(name)) == version, name

    modules = (
        {"tensorboard"}
        if "TensorBoardStatsHandler" in "".join(path.read_text() for path in CONFIGS.glob("*.json"))
        else set()
    )  # MONAI's handler imports it, not our code
    for source in (BUNDLE / "mammoxai").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    imported = {
        _distribution(dist)
        for module in modules - set(sys.stdlib_module_names) - {"mammoxai", "__future__"}
        for dist in distributions[module]
    }
    assert {"torchvision", "scikit-learn", "pydicom"} <= imported  # the scan sees imports
    assert imported - {"monai", "torch", "numpy"} <= {_distribution(name) for name in pinned}


def test_ckpt_export_turns_the_trained_checkpoint_into_torchscript_as_the_zoo_runs_it(tmp_path, trained):
    """The zoo's call takes MONAI's defaults: ``torch.jit.script`` (no ``--use_trace``) and the whole checkpoint
    file (no ``--key_in_ckpt``); the traced export with both flags is tested above."""
    exported = tmp_path / "verify_model.ts"
    result = run_monai_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(trained / "model.pt"),  # as train.json writes it; the zoo passes no --key_in_ckpt
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--bundle_root",
        str(BUNDLE),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    extra_files = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(exported), _extra_files=extra_files)
    assert (
        json.loads(extra_files["metadata.json"])["version"]
        == json.loads((CONFIGS / "metadata.json").read_text())["version"]
    )
    network = served_network().eval()
    network.load_state_dict(torch.load(trained / "model.pt", weights_only=True))  # the whole file, as the zoo does
    images = torch.rand(2, 1, 256, 208)
    with torch.no_grad():
        assert torch.equal(scripted.eval()(images), network.forward_with_metadata(images)[0])


def test_configs_have_the_workflow_properties_monai_checks(tmp_path, studies):
    """MONAI's ``check_properties`` of a training or inference workflow (what MONAI FL, MONAI Label and the model
    zoo ask of a bundle): the required parts exist (for inference ``dataset_dir``, ``dataset``, ``evaluator``), and
    the optional ones (``train#preprocessing``, ``validate#postprocessing``, ...) are where the trainer and
    evaluator refer to them. It builds the parts, so it runs on the synthetic studies."""
    script = (
        "import json, sys\n"
        "from monai.bundle import create_workflow\n"
        "workflow_type, config, ckpt_dir = sys.argv[1:]\n"
        "workflow = create_workflow(workflow_type=workflow_type, config_file=f'configs/{config}',"
        " meta_file='configs/metadata.json', logging_file='configs/logging.conf', bundle_root='.',"
        f" dataset_dir={str(studies)!r}, output_dir={str(tmp_path / 'eval')!r}, ckpt_dir=ckpt_dir)\n"
        "print('missing or misplaced:', json.dumps(workflow.check_properties()))\n"
    )
    workflows = [("train", "train.json"), ("train", "train_lesion_crops.json"), ("train", "pretrain.json")]
    for workflow_type, config in [*workflows, ("infer", "inference.json")]:
        command = [sys.executable, "-c", script, workflow_type, config, str(tmp_path / config)]
        result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "missing or misplaced: []" in result.stdout, (config, result.stdout[-2000:])


# -- the training helpers train.json uses ------------------------------------------------------------------------
def manifest_records() -> list[dict]:
    """11 patients x 4 images (6 normal, 2 malignant, 2 (recalled) benign, 1 held-out test) and 1 unlabelled image."""
    records = []
    for patient, (other, split) in enumerate(
        [("normal", "training")] * 6
        + [("malignant", "training")] * 2
        + [("benign", "training"), ("recalled_benign", "training"), ("malignant", "test")]
    ):
        for image in range(4):
            label = other if image < 2 else "normal"
            record = {"path": f"p{patient}_{image}.dcm", "patient_id": f"P{patient}", "case_label": label}
            records.append({**record, "split": split})
    records.append({"path": "unlabelled.dcm", "patient_id": "P99", "case_label": None, "split": "training"})
    return records


def test_patient_split_keeps_patients_whole_and_every_class_in_validation():
    label_map, holdout = {"recalled_benign": "benign"}, {"split": "test"}
    train, val = patient_split(manifest_records(), val_fraction=0.2, seed=0, label_map=label_map, holdout=holdout)
    train_patients, val_patients = {r["patient_id"] for r in train}, {r["patient_id"] for r in val}
    assert not train_patients & val_patients
    assert train_patients | val_patients == {f"P{i}" for i in range(10)}  # no test patient, no unlabelled image
    assert {"malignant", "normal"} <= {r["case_label"] for r in val}
    assert {"benign", "recalled_benign"} & {r["case_label"] for r in val}
    assert len(train) + len(val) == 40
    assert patient_split(manifest_records(), seed=0) == patient_split(manifest_records(), seed=0)


@pytest.mark.parametrize(
    "holdout, reason",
    [({"splt": "test"}, r"no record has \['splt'\]"), ({"split": "tset"}, "no record has these values")],
)
def test_a_holdout_that_holds_nothing_out_is_a_warning_naming_why(holdout, reason, caplog):
    train, val = patient_split(manifest_records(), seed=0, holdout=holdout, label_map=LABEL_MAP)
    assert len(train) + len(val) == 44  # the test patient trains: what the warning is about
    warning = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warning) == 1 and re.search(rf"holdout .* holds nothing out \({reason}\)", warning[0])
    caplog.clear()
    patient_split(manifest_records(), seed=0, holdout={"split": "test"}, label_map=LABEL_MAP)
    patient_split(manifest_records(), seed=0, holdout={}, label_map=LABEL_MAP)
    assert not [record for record in caplog.records if record.levelname == "WARNING"]


def test_images_without_a_patient_id_are_a_warning_that_priors_may_leak(caplog):
    records = manifest_records()
    records[0] = {**records[0], "patient_id": ""}
    patient_split(records, seed=0, holdout={"split": "test"}, label_map=LABEL_MAP)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("1 of 40 images name no patient: each is split with its study")


def test_a_held_out_patient_is_neither_trained_nor_validated_on_through_an_image_outside_the_holdout(caplog):
    """A prior study in the training split of a patient whose current study is in the test split: the evaluation
    would score the current study of a patient the model was trained or validated on."""
    records = [
        {"path": f"{patient}{study}{view}", "patient_id": patient, "study_uid": patient + study, "case_label": label,
         "split": split, "fold": fold}
        for patient, study, label, split, fold in [
            ("A", "prior", "normal", "training", "1"), ("A", "now", "malignant", "test", "0"),
            ("B", "1", "normal", "training", "1"), ("C", "1", "malignant", "training", "1"),
            ("D", "1", "normal", "training", "1"), ("E", "1", "malignant", "training", "1"),
        ]
        for view in ("CC", "MLO")
    ]  # fmt: skip
    for seed in range(4):
        train, val = patient_split(records, val_fraction=0.3, seed=seed, holdout={"split": "test"})
        assert {r["patient_id"] for r in train + val} == {"B", "C", "D", "E"}
    assert "2 images of 1 held-out patients are not themselves held out" in caplog.text
    train, val = patient_split(records, val_fraction=0.3, seed=0, holdout={"fold": 0})  # as evaluate.json selects
    assert {r["patient_id"] for r in train + val} == {"B", "C", "D", "E"}


def test_a_class_no_validation_patient_has_is_a_warning_that_model_selection_ignores_it(caplog):
    """One malignant patient trains only: model.pt is then chosen by the other classes' AUC alone."""
    records = [
        {"path": f"P{p}_{i}.dcm", "patient_id": f"P{p}", "case_label": label}
        for p, label in enumerate(["malignant", "normal", "normal", "benign", "benign", "normal"])
        for i in range(2)
    ]
    train, val = patient_split(records, val_fraction=0.3, seed=0)
    assert {r["case_label"] for r in train} - {r["case_label"] for r in val} == {"malignant"}
    assert "validation has no image of ['malignant']" in caplog.text and "one class in validation" not in caplog.text
    caplog.clear()
    patient_split([r for r in records if r["case_label"] != "benign"], val_fraction=0.3, seed=0)
    assert "validation has no image of ['malignant']" in caplog.text and "one class in validation" in caplog.text


def test_a_class_without_validation_patients_is_named_as_its_labels_spell_it(caplog):
    """Classes are compared folded (an underscore read as a space), and the warning named the folded key: a class
    'recalled benign' that no label or setting writes."""
    labels = ["recalled_benign", "Normal", "normal", "malignant", "malignant", "normal"]
    records = [{"path": f"P{p}.dcm", "patient_id": f"P{p}", "case_label": label} for p, label in enumerate(labels)]
    patient_split(records, val_fraction=0.3, seed=0)
    assert "validation has no image of ['recalled_benign']" in caplog.text


def test_patient_split_needs_two_patients():
    records = [{"path": "a.dcm", "patient_id": "P1", "case_label": "normal"}]
    with pytest.raises(MammoXAIError, match="1 labelled images from 1 patient"):
        patient_split(records)


def test_a_manifest_without_the_label_column_is_named_as_such_not_as_too_few_patients():
    records = [{key: value for key, value in record.items() if key != "case_label"} for record in manifest_records()]
    with pytest.raises(MammoXAIError, match=r"^case_label: none of the 45 records has this column \(.*label_key"):
        patient_split(records)
    with pytest.raises(MammoXAIError, match="0 labelled images"):  # the column is there, its cells are empty
        patient_split([dict(record, case_label=None) for record in records])


def test_class_weights_give_every_present_class_the_same_total_weight():
    weights = class_weights([0, 0, 0, 1, -1], num_classes=3)
    assert torch.allclose(weights, torch.tensor([4 / 6, 4 / 2, 0.0]))
    assert weights[0] * 3 == pytest.approx(weights[1] * 1)


def test_validation_auc_averages_only_the_classes_it_can_score():
    metric = PresentClassesROCAUC()
    probabilities = torch.tensor([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1], [0.7, 0.4, 0.1]])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0]), 3).float()  # class 2 never occurs
    metric(y_pred=probabilities, y=labels)
    per_class = [compute_roc_auc(probabilities[:, c], labels[:, c]) for c in (0, 1)]
    assert per_class == [1.0, 0.75]
    assert metric.aggregate() == pytest.approx(0.875)
    monai_metric = ROCAUCMetric()
    monai_metric(y_pred=probabilities, y=labels)
    with pytest.warns(UserWarning, match="y values can not be all 0"):
        assert np.isnan(monai_metric.aggregate())  # why the key metric is not MONAI's ROCAUC


def test_validation_auc_is_chance_when_no_class_can_be_scored():
    metric = PresentClassesROCAUC()
    metric(y_pred=torch.rand(3, 3), y=torch.nn.functional.one_hot(torch.zeros(3, dtype=torch.long), 3).float())
    assert metric.aggregate() == 0.5


# -- the predictor, as the MONAI Label app builds it --------------------------------------------------------------
def make_predictor(checkpoint: Path, **overrides) -> MammogramPredictor:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser["checkpoint"] = str(checkpoint)
    parser["device"] = "cpu"
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("predictor")


def served_network() -> torch.nn.Module:
    """inference.json's ``network_def``: the served network, metadata heads included, random weights."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    return parser.get_parsed_content("network_def")


def save_weights(path: Path, favour: int | None = None) -> Path:
    """Random weights of the served network, or weights whose output is dominated by class ``favour``."""
    network = served_network()
    if favour is not None:
        with torch.no_grad():
            network.fc.bias.zero_()
            network.fc.bias[favour] = 50.0
    torch.save(network.state_dict(), path)
    return path


def test_predictor_returns_a_valid_record_and_a_heatmap_on_the_original_grid(tmp_path):
    image = write_mammo_dicom(tmp_path / "case.dcm", breast_pixels(), ImagerPixelSpacing=[0.1, 0.1])
    prediction = make_predictor(save_weights(tmp_path / "model.pt")).predict(image)
    validate_prediction(prediction.record)
    assert prediction.heatmap.dtype == np.float32
    assert prediction.heatmap.shape == prediction.mammogram.pixels.shape == (200, 160)
    assert prediction.record["model"]["name"] == json.loads((CONFIGS / "metadata.json").read_text())["name"]
    assert prediction.record["model"]["checkpoint"] == "model.pt"
    fields = json.loads((CONFIGS / "inference.json").read_text())["metadata_fields"]
    assert [item["field"] for item in prediction.record["metadata_predictions"]] == list(fields)
    assert prediction.record["qc_flags"] == []  # random heads are never confident enough to flag


def test_heatmap_lands_on_the_breast_of_a_flipped_image(tmp_path):
    pixels = np.zeros((200, 400), np.uint16)
    pixels[:, 250:] = breast_pixels(200, 150, chest_wall="right")  # chest wall on the right: preprocessing flips
    image = write_mammo_dicom(tmp_path / "wide.dcm", pixels, ImageLaterality="R")
    prediction = make_predictor(save_weights(tmp_path / "model.pt")).predict(image)
    assert prediction.heatmap.shape == (200, 400)
    assert prediction.heatmap[:, :200].max() == 0.0  # far from the breast crop: nothing
    assert prediction.heatmap[:, 250:].max() > 0.5


def test_inference_json_names_its_inferer_and_the_scores_come_from_it(tmp_path):
    """The zoo asks an inference config for ``bundle_root``, ``device``, ``network_def``, ``inferer`` and
    ``output_dir``; ``inferer`` is called as a MONAI Inferer, ``inferer(inputs, network)``, for every score."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    assert [key for key in ("bundle_root", "device", "network_def", "inferer", "output_dir") if key not in parser] == []

    def towards_malignant(inputs: torch.Tensor, network) -> torch.Tensor | tuple:
        shift = torch.tensor([0.0, 0.0, 1000.0])
        out = network(inputs)
        return (out[0] + shift, out[1]) if isinstance(out, tuple) else out + shift  # forward_with_metadata: both

    predictor = make_predictor(save_weights(tmp_path / "model.pt", favour=0), inferer=towards_malignant)
    image = write_mammo_dicom(tmp_path / "case.dcm", breast_pixels())
    assert predictor.predict(image).record["predicted_class"] == "malignant"
    assert predictor.predict_probabilities(image)[0].argmax() == 2
    assert make_predictor(tmp_path / "model.pt").predict(image).record["predicted_class"] == "normal"


def test_weights_are_reloaded_when_the_checkpoint_changes(tmp_path):
    image = write_mammo_dicom(tmp_path / "case.dcm", breast_pixels())
    checkpoint = save_weights(tmp_path / "model.pt", favour=0)
    predictor = make_predictor(checkpoint)
    first = predictor.predict(image).record
    save_weights(checkpoint, favour=2)
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later time even on coarse clocks
    second = predictor.predict(image).record
    assert (first["predicted_class"], second["predicted_class"]) == ("normal", "malignant")
    assert first["model"]["checkpoint_mtime"] != second["model"]["checkpoint_mtime"]


def test_missing_checkpoint_says_how_to_train(tmp_path):
    predictor = make_predictor(tmp_path / "models" / "model.pt")
    expected = r"model\.pt: no trained weights here \(train them first: .*configs/train\.json"
    with pytest.raises(MammoXAIError, match=expected):
        predictor.predict(write_mammo_dicom(tmp_path / "case.dcm", breast_pixels()))


def test_checkpoint_of_another_network_is_refused(tmp_path):
    checkpoint = tmp_path / "model.pt"
    torch.save(MammoClassifier(num_classes=5).state_dict(), checkpoint)
    with pytest.raises(MammoXAIError, match="model.pt: cannot be loaded into the network"):
        make_predictor(checkpoint).predict(write_mammo_dicom(tmp_path / "case.dcm", breast_pixels()))


def test_a_display_range_predictor_feeds_the_network_display_range_inputs_and_records_the_scaling(tmp_path):
    """Every forward pass, the scores' and the saliency method's, sees the file's value range mapped onto [0, 1]:
    the breast of 2000 to 2400 in 12 bits lies near 0.5, where the breast percentiles would stretch it to 0 .. 1."""
    image = write_mammo_dicom(tmp_path / "case.dcm", breast_pixels())
    predictor = make_predictor(save_weights(tmp_path / "model.pt"), intensity_scaling="display_range")
    seen = []  # the backbone's input: the scores' pass calls forward_with_metadata, not the network's __call__
    predictor.network.backbone.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))

    record = predictor.predict(image).record
    predictor.predict_probabilities(image)

    grid = tuple(predictor.image_size)
    display, _ = prepare_image(read_mammogram(image), grid, intensity_scaling="display_range")
    percentiles, _ = prepare_image(read_mammogram(image), grid)
    assert len(seen) >= 3  # the scores, the saliency pass and predict_probabilities
    assert all(torch.allclose(batch[0], display) for batch in seen)
    assert display.max() < 0.7 < percentiles.max()  # the scaling that was not asked for would have been told apart
    assert record["saliency"]["settings"]["intensity_scaling"] == "display_range"
    assert (
        make_predictor(tmp_path / "model.pt").predict(image).record["saliency"]["settings"]["intensity_scaling"]
        == "breast_percentiles"
    )


def test_an_image_predictor_feeds_the_network_the_whole_image_and_records_the_field_of_view(tmp_path):
    """Every forward pass sees the whole image, flipped chest wall left, resized onto the grid: the geometry's crop is
    the whole image, where the breast's would leave out the background beside the breast."""
    image = write_mammo_dicom(tmp_path / "case.dcm", breast_pixels(chest_wall="right"))
    predictor = make_predictor(save_weights(tmp_path / "model.pt"), field_of_view="image")
    seen, geometries = [], []
    predictor.network.backbone.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    prepare = predictor._prepare

    def recording(mammogram):
        prepared = prepare(mammogram)
        geometries.append(prepared[1])
        return prepared

    predictor._prepare = recording
    record = predictor.predict(image).record
    predictor.predict_probabilities(image)

    grid = tuple(predictor.image_size)
    whole, geometry = prepare_image(read_mammogram(image), grid, field_of_view="image")
    breast, breast_geometry = prepare_image(read_mammogram(image), grid)
    assert geometry.crop == (0, 0, 200, 160) and geometry.flip
    assert geometries and all(seen_geometry == geometry for seen_geometry in geometries)
    assert breast_geometry.crop != geometry.crop  # the field of view that was not asked for would be told apart
    assert len(seen) >= 3  # the scores, the saliency pass and predict_probabilities
    assert all(torch.allclose(batch[0], whole) for batch in seen)
    assert not torch.allclose(whole, breast)
    assert record["saliency"]["settings"]["field_of_view"] == "image"
    default = make_predictor(tmp_path / "model.pt").predict(image).record
    assert default["saliency"]["settings"]["field_of_view"] == "breast"


@pytest.mark.parametrize(
    ("setting", "other", "default"),
    [("intensity_scaling", "display_range", "breast_percentiles"), ("field_of_view", "image", "breast")],
)
def test_weights_trained_with_another_input_setting_are_refused_naming_it(tmp_path, setting, other, default):
    checkpoint = tmp_path / "model.pt"
    grid = TrainingGrid([256, 208], **{setting: other}).state_dict()
    torch.save({"model": served_network().state_dict(), "grid": grid}, checkpoint)
    image = write_mammo_dicom(tmp_path / "case.dcm", breast_pixels())

    refusal = re.escape(
        f"model.pt: was trained with {setting} {json.dumps(other)}, not the {json.dumps(default)} of this run "
        f"(pass --{setting} {shlex.quote(json.dumps(other))}"
    )
    with pytest.raises(MammoXAIError, match=refusal):
        make_predictor(checkpoint).predict(image)
    served = make_predictor(checkpoint, **{setting: other})
    served.load_weights()
    assert served.checkpoint_id != ""  # the setting they record is the one that serves them


@pytest.mark.parametrize(
    ("setting", "value", "refusal"),
    [
        ("intensity_scaling", "display", 'not an intensity scaling (use "breast_percentiles" or "display_range")'),
        ("field_of_view", "whole", 'not a field of view (use "breast" or "image")'),
    ],
)
def test_an_unknown_input_setting_is_refused_before_any_image_is_read(tmp_path, setting, value, refusal):
    with pytest.raises(MammoXAIError) as error:
        MammogramPredictor(
            MammoClassifier(), tmp_path / "model.pt", CLASSES, (256, 208), device="cpu", **{setting: value}
        )
    assert str(error.value) == f"{setting}: is {value!r}, {refusal}"


def test_unreadable_file_raises_the_readers_error(tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("hello")
    with pytest.raises(MammoXAIError, match="notes.dcm"):
        make_predictor(save_weights(tmp_path / "model.pt")).predict(text)


def test_laterality_contradicted_by_the_pixels_is_flagged(tmp_path):
    predictor = make_predictor(save_weights(tmp_path / "model.pt"))
    wrong = write_mammo_dicom(tmp_path / "wrong.dcm", breast_pixels(chest_wall="left"), ImageLaterality="R")
    right = write_mammo_dicom(tmp_path / "right.dcm", breast_pixels(chest_wall="right"), ImageLaterality="R")
    flags = predictor.predict(wrong).record["qc_flags"]
    assert [flag["code"] for flag in flags] == ["laterality_chest_wall_mismatch"]
    assert "laterality R" in flags[0]["message"]
    assert predictor.predict(right).record["qc_flags"] == []


def test_fixed_target_class_is_explained_whatever_the_prediction(tmp_path):
    saliency = {"method": "gradcam", "target_layer": "backbone.features.block4", "target_class": "malignant"}
    predictor = make_predictor(save_weights(tmp_path / "model.pt", favour=0), saliency=saliency)
    record = predictor.predict(write_mammo_dicom(tmp_path / "case.dcm", breast_pixels())).record
    assert record["predicted_class"] == "normal"
    assert record["saliency"]["target_class"] == "malignant"


def test_a_target_class_matches_the_class_regardless_of_case_and_spacing(tmp_path):
    """``--saliency#target_class " Malignant "`` was refused as not a class, where training takes the label
    "Malignant" as the class "malignant"; the record names the class as class_names spell it."""
    saliency = {"method": "gradcam", "target_layer": "backbone.features.block4", "target_class": " Malignant "}
    predictor = make_predictor(save_weights(tmp_path / "model.pt", favour=0), saliency=saliency)
    record = predictor.predict(write_mammo_dicom(tmp_path / "case.dcm", breast_pixels())).record
    assert record["predicted_class"] == "normal"
    assert record["saliency"]["target_class"] == record["saliency"]["settings"]["target"] == "malignant"


def test_runner_keeps_the_suffix_when_two_inputs_share_a_stem(tmp_path):
    files = [write_mammo_dicom(tmp_path / "case.dcm", breast_pixels()), tmp_path / "case.png"]
    Image.fromarray(breast_pixels()).save(files[1])
    summary = InferenceRunner(make_predictor(save_weights(tmp_path / "model.pt")), files, tmp_path / "out").run()
    assert sorted(path.name for pair in summary.written.values() for path in pair) == [
        "case.dcm.json",
        "case.dcm_heatmap.nrrd",
        "case.png.json",
        "case.png_heatmap.nrrd",
    ]
    assert summary.errors == {}


def test_runner_mirrors_the_sub_folders_of_inputs_that_share_a_file_name(tmp_path):
    # CBIS-DDSM names every image 1-1.dcm in a folder of its case: named by the file alone, each output replaced
    # the one before
    cases = {"Mass-Training_P_00001_LEFT_CC": "left", "Mass-Training_P_00004_RIGHT_MLO": "right"}
    for case, chest_wall in cases.items():
        (tmp_path / "in" / case).mkdir(parents=True)
        write_mammo_dicom(tmp_path / "in" / case / "1-1.dcm", breast_pixels(chest_wall=chest_wall), PatientID=case)
    files = list_inputs(tmp_path / "in", recursive=True)

    summary = InferenceRunner(make_predictor(save_weights(tmp_path / "model.pt")), files, tmp_path / "out").run()

    for case in cases:
        json_path, heatmap_path = summary.written[str(tmp_path / "in" / case / "1-1.dcm")]
        assert (json_path, heatmap_path) == (
            tmp_path / "out" / case / "1-1.json",
            tmp_path / "out" / case / "1-1_heatmap.nrrd",
        )
        assert json.loads(json_path.read_text())["image"]["source"] == str(tmp_path / "in" / case / "1-1.dcm")
    assert summary.errors == {}


def test_default_target_layer_is_the_networks_last_block(tmp_path):
    network = MammoClassifier(channels=(4, 8, 8))
    predictor = MammogramPredictor(network, tmp_path / "model.pt", CLASSES, (64, 52), device="cpu")
    assert predictor.saliency["target_layer"] == network.last_block == "features.block2"


@pytest.mark.parametrize("grid, has_correlax", [((256, 208), False), ((288, 256), True)])
def test_saliency_choices_are_every_method_the_grid_can_run_with_its_presets(tmp_path, grid, has_correlax):
    predictor = MammogramPredictor(
        MammoClassifier(channels=(4, 8, 8)), tmp_path / "model.pt", CLASSES, grid, device="cpu"
    )

    choices = predictor.saliency_choices()

    assert ("correlax" in choices) == has_correlax
    assert choices["gradcam"] == [] and choices["occlusion"] == ["faithful", "fast"]
    assert set(choices) | {"correlax"} == {
        "cam",
        "gradcam",
        "gradcampp",
        "hirescam",
        "occlusion",
        "rise",
        "relax",
        "correlax",
    }


def test_the_served_network_is_not_offered_cam_whose_weights_do_not_apply_to_its_head(tmp_path):
    # its class head reads sum_k projection_k(pool(block4)), not the pool of block4: CAM's map would mean nothing
    predictor = make_predictor(tmp_path / "model.pt")

    choices = predictor.saliency_choices()

    assert "cam" not in choices and choices["gradcam"] == [] and "hirescam" in choices
    with pytest.raises(MammoXAIError, match="saliency cam: 'fc' does not read the global average pool"):
        predictor.predict(tmp_path / "any.dcm", saliency_method="cam")


@pytest.mark.parametrize(
    "saliency, message",
    [
        (
            {"target_class": "cancer"},
            r"^saliency target_class: class 'cancer' is not one of \['normal', 'benign', 'malignant'\] "
            r"\(use one of them or 'predicted'\)$",
        ),
        ({"target_class": "Predicted"}, "saliency target_class: class 'Predicted' is not"),  # a keyword, not a class
        ({"method": "lime"}, "saliency method: 'lime' is not available"),
        ({"method": "occlusion", "preset": "huge"}, "saliency preset for occlusion: 'huge' is not a preset"),
        ({"target_layer": "features.block9"}, "saliency target_layer: the network has no layer named 'features.blo"),
        (
            {"method": "correlax"},
            "saliency method correlax: the model runs on 256x208 pixels, smaller than one 256x256",
        ),
        # a misspelt key was kept beside the default it meant to replace, and gradcam ran
        ({"mehtod": "rise"}, r"^saliency: has unknown keys \['mehtod'\] \(give a mapping of method, preset, settings,"),
        ({"target-class": "malignant"}, r"^saliency: has unknown keys \['target-class'\] .*target_class"),
        ({"settings": ["num_masks", 5]}, r"^saliency settings: is \['num_masks', 5\], not a mapping .*method, preset"),
        ({"method": "rise", "settings": None}, r"^saliency settings: is None, not a mapping"),
        ("rise", r"^saliency: is 'rise', not a mapping \(give a mapping of method, preset, settings, target_layer"),
    ],
)
def test_bad_saliency_settings_are_named(tmp_path, saliency, message):
    with pytest.raises(MammoXAIError, match=message):
        MammogramPredictor(MammoClassifier(), tmp_path / "model.pt", CLASSES, (256, 208), saliency, device="cpu")


@pytest.mark.parametrize(
    ("class_names", "message"),
    [
        ("normal", r"class_names: \['normal'\] must name two or more distinct classes"),
        ("normal,benign,malignant", r"class_names: is 'normal,benign,malignant', not a list of names \(give a list"),
        (["benign", "benign"], r"class_names: \['benign', 'benign'\] must name two or more distinct classes"),
    ],
)
def test_inference_json_reads_class_names_as_a_list_not_one_class_per_letter(tmp_path, class_names, message):
    """Read letter by letter, --class_names normal served six classes "n", "o", ... of a model trained on three."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "output_dir": str(tmp_path), "class_names": class_names})
    with pytest.raises(Exception) as error:
        parser.get_parsed_content("predictor")
    assert re.match(message, str(user_error(error.value)))
