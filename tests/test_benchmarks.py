"""BENCHMARKS.md sections: one per benchmark, hardware and settings, written only when a run asks; the benchmark
scripts' bad input as one line."""

import argparse
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

import mammoxai.benchmarks
from mammoxai.benchmarks import command_settings, image_size, record_section

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
RECORDED_HARDWARE = "CPU AMD EPYC (2 logical cores, 2 torch threads)"  # the hardware of the committed sections


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_pretrain():
    return sys.modules.get("bench_pretrain") or load_script("bench_pretrain")


@pytest.fixture(scope="module")
def bench_saliency():
    return sys.modules.get("bench_saliency") or load_script("bench_saliency")


def toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument("--note", action="append", default=[])
    return parser


TOY = command_settings(toy_parser, ignore={"note"})


def record_toy(path: Path, command: str, description: str, row: str) -> None:
    record_section(path, "Saliency speed", CPU, command, description, ["| a |", "|---|", row], settings=TOY)


def test_a_rerun_of_the_same_settings_replaces_its_section_and_leaves_the_others(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    record_toy(path, "python bench_a.py --size 2 --note old", "Old run.", "| 1 |")
    record_section(
        path, "Pretraining", CPU, "python bench_b.py", "Other benchmark.", ["| b |", "|---|", "| 2 |"], ["a note"]
    )
    record_toy(path, "python bench_a.py --note new --size 2", "New run.", "| 3 |")
    text = path.read_text()
    assert text.startswith("# Benchmarks\n")
    assert text.count("## Saliency speed: CPU") == 1 and text.count("## Pretraining: CPU") == 1
    assert "--note new" in text and "| 3 |" in text and "--note old" not in text and "| 1 |" not in text
    assert "| 2 |" in text and "- a note" in text and "load average" in text
    assert text.index("## Saliency speed") < text.index("## Pretraining")  # replaced in place
    assert "\n\n\n" not in text and text.endswith("- a note\n")


def test_a_run_of_other_settings_is_added_after_its_kin_and_replaces_nothing(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    record_toy(path, "python bench_a.py --size 2", "Full size.", "| 1 |")
    record_section(path, "Pretraining", CPU, "python bench_b.py", "Other benchmark.", ["| b |", "|---|", "| 2 |"])
    record_toy(path, "python bench_a.py --size 1", "Smoke run.", "| 3 |")
    text = path.read_text()
    assert text.count("## Saliency speed: CPU") == 2 and "| 1 |" in text and "| 3 |" in text
    assert text.index("| 1 |") < text.index("| 3 |") < text.index("## Pretraining")


def test_a_recorded_command_that_no_longer_parses_matches_nothing(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    record_section(path, "Saliency speed", CPU, "python bench_a.py --gone 3", "Old options.", ["| 1 |"])
    record_section(path, "Saliency speed", CPU, "python bench_a.py", "New run.", ["| 2 |"], settings=TOY)
    assert path.read_text().count("## Saliency speed: CPU") == 2
    assert TOY("python bench_a.py --size x") is None and TOY("no script here") is None
    assert TOY("python bench_a.py") == TOY("python bench_a.py --size 1 --note 'a b'") == {"size": 1}


def two_option_parser() -> argparse.ArgumentParser:
    parser = toy_parser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", required=True)
    return parser


@pytest.mark.parametrize(
    "recorded",
    [
        "python bench_a.py --s 2 --device cpu",  # --size or --seed: argparse's error() exited, exit_on_error or not
        "python bench_a.py --size 2",  # --device missing: the same
        "python bench_a.py --device 'cpu",  # a quote left open: shlex's ValueError
    ],
)
def test_a_recorded_command_argparse_or_shlex_cannot_read_matches_nothing_and_the_run_is_recorded(
    tmp_path, capsys, recorded
):
    settings = command_settings(two_option_parser, ignore={"note"})
    path = tmp_path / "BENCHMARKS.md"
    record_section(path, "Saliency speed", CPU, recorded, "Hand-edited.", ["| 1 |"])
    record_section(path, "Saliency speed", CPU, "python bench_a.py --device cpu", "New.", ["| 2 |"], settings=settings)
    text = path.read_text()
    assert text.count("## Saliency speed: CPU") == 2 and "| 1 |" in text and "| 2 |" in text
    assert settings(recorded) is None and capsys.readouterr().err == ""
    assert settings("python bench_a.py --si 2 --device cpu") == {"size": 2, "seed": 0, "device": "cpu"}


def committed_section(module) -> tuple[str, str]:
    """The heading and text of ``module``'s section of the committed BENCHMARKS.md."""
    text = (REPO / "BENCHMARKS.md").read_text()
    heading = f"## {module.SECTION}: {RECORDED_HARDWARE}"
    return heading, text[text.index(heading) :].split("\n## ")[0]


def reduced_example(module) -> str:
    """The script's docstring example "CPU, reduced": the smoke run a user copies."""
    example = module.__doc__.split("Example (CPU, reduced)::")[1]
    return " ".join(example.replace("\\\n", " ").split())


@pytest.mark.parametrize("script", ["bench_pretrain", "bench_saliency"])
def test_the_reduced_example_leaves_the_committed_figures_and_a_rerun_of_them_replaces_them(
    script, request, tmp_path, monkeypatch
):
    module = request.getfixturevalue(script)
    monkeypatch.setattr(mammoxai.benchmarks, "hardware_description", lambda device: RECORDED_HARDWARE)
    path = shutil.copyfile(REPO / "BENCHMARKS.md", tmp_path / "BENCHMARKS.md")
    heading, committed = committed_section(module)
    command = next(line for line in committed.splitlines() if line.startswith("Command: `"))[len("Command: `") : -1]
    settings = module.recorded_settings

    record_section(path, module.SECTION, CPU, reduced_example(module), "Smoke run.", ["| x |"], settings=settings)
    assert path.read_text().count(heading) == 2 and committed in path.read_text()  # every committed figure kept

    rerun = f"{command} --device cpu --record"  # the committed settings, spelled otherwise
    record_section(path, module.SECTION, CPU, rerun, "Rerun.", ["| y |"], settings=settings)
    text = path.read_text()
    assert text.count(heading) == 2 and "Rerun." in text and "Smoke run." in text and committed not in text


def fake_saliency_measure(args, device):
    return [("forward only (ceiling)", f"batch {args.batch_size}", "1.0 images/s")], []


def test_bench_saliency_writes_nothing_unless_asked_to_record(bench_saliency, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_saliency, "BENCHMARKS", tmp_path / "BENCHMARKS.md")
    monkeypatch.setattr(bench_saliency, "measure", fake_saliency_measure)

    assert bench_saliency.main(["--batch-size", "2", "--device", "cpu"]) == 0
    assert "forward only" in capsys.readouterr().out and not (tmp_path / "BENCHMARKS.md").exists()

    assert bench_saliency.main(["--batch-size", "2", "--device", "cpu", "--record"]) == 0
    assert bench_saliency.main(["--batch-size", "4", "--record", str(tmp_path / "other.md")]) == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "Command: `python scripts/bench_saliency.py --batch-size 2 --device cpu --record`" in text
    assert "batch 4" in (tmp_path / "other.md").read_text() and "batch 4" not in text


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--backbone", "resnet999"], "backbone 'resnet999': is not a known backbone"),
        (["--dataset_dir", "nosuch"], "nosuch"),  # what the bundle says of a missing or unusable folder varies
        (["--dataset_dir", "README.md"], "README.md"),
        (["--dataset_dir", "scripts"], "scripts"),
        (["--record", "scripts"], "--record scripts: is a folder, not a file"),
    ],
)
def test_bench_pretrain_says_what_is_wrong_in_one_line(arguments, message, bench_pretrain, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert bench_pretrain.main([*arguments, "--num-workers", "0", "--image-sizes", "32x32"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "script, arguments, message",
    [
        ("bench_pretrain", ["--batch-sizes", "8", "0"], "--batch-sizes and --patients must be at least 1"),
        ("bench_pretrain", ["--num-workers", "-1"], "--num-workers must be at least 0"),
        ("bench_pretrain", ["--intensity_scaling", "window"], "--intensity_scaling: invalid choice: 'window'"),
        ("bench_saliency", ["--correlax-size", "128x128"], "--correlax-size must be at least 256x256"),
        ("bench_saliency", ["--correlax-mask-fraction", "0"], "--correlax-mask-fraction must be above 0"),
    ],
)
def test_bench_scripts_refuse_settings_no_run_can_use(script, arguments, message, request, capsys):
    with pytest.raises(SystemExit) as exit_info:
        request.getfixturevalue(script).parse_args(arguments)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU this machine lacks")
def test_bench_saliency_on_a_missing_gpu_says_so_in_one_line(bench_saliency, monkeypatch, capsys):
    monkeypatch.setattr(bench_saliency, "measure", fake_saliency_measure)
    assert bench_saliency.main(["--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "asks for a CUDA GPU, and this machine has none" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("scaling", ["breast_percentiles", "display_range"])
def test_bench_pretrain_times_a_tiny_run_and_writes_nothing(bench_pretrain, tmp_path, monkeypatch, capsys, scaling):
    monkeypatch.setattr(bench_pretrain, "BENCHMARKS", tmp_path / "BENCHMARKS.md")
    arguments = ["--patients", "2", "--size", "128", "--image-sizes", "32x32", "--batch-sizes", "2"]
    arguments += ["--iterations", "1", "--warmup", "1", "--num-workers", "0", "--device", "cpu"]
    arguments += ["--intensity_scaling", scaling]

    assert bench_pretrain.main(arguments) == 0
    assert f"| resnet18 | 2 | 32 x 32 | {scaling} | off | on | 0 |" in capsys.readouterr().out
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_bench_pretrain_runs_the_config_under_the_intensity_scaling_asked_for(bench_pretrain, tmp_path):
    args = bench_pretrain.parse_args(["--intensity_scaling", "display_range"])
    setting = bench_pretrain.Setting(batch_size=2, image_size=(32, 32), amp=False, channels_last=False)

    parser = bench_pretrain.pretrain_parser(args, setting, tmp_path, tmp_path / "studies")

    assert parser.get_parsed_content("intensity_scaling") == "display_range"
    assert parser.get_parsed_content("checkpoint_info#intensity_scaling") == "display_range"


def test_bench_pretrain_labels_a_row_with_the_batch_size_that_ran(bench_pretrain, tmp_path, monkeypatch, capsys):
    """Two patients' images cannot fill batches of 64: the sampler gives smaller ones, and the row says so."""
    monkeypatch.setattr(bench_pretrain, "BENCHMARKS", tmp_path / "BENCHMARKS.md")
    arguments = ["--patients", "2", "--size", "128", "--image-sizes", "32x32", "--batch-sizes", "64"]
    arguments += [
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--channels-last",
        "off",
    ]

    assert bench_pretrain.main(arguments) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| resnet18 |"))
    ran = float(re.search(r"\| 64 \(ran ([0-9.]+) on average\) \|", row).group(1))
    assert 1 <= ran < 64


def test_images_per_second_count_the_images_the_batches_held(bench_pretrain):
    timer = bench_pretrain.StepTimer(torch.device("cpu"))
    timer.sizes, timer.waits, timer.ends = [16, 12, 16, 12], [0.0, 0.5, 0.0, 0.5], [1.0, 2.0, 3.0, 4.0]

    assert timer.summary(warmup=1) == (40 / 3, 1000.0, 1 / 3, 40 / 3)


@pytest.mark.parametrize(
    "groups, presets, expected",
    [
        (["gradcam"], ["fast"], ["Grad-CAM, ours batched", "Grad-CAM, pytorch-grad-cam GradCAM"]),
        (["relax", "correlax"], ["fast"], ["RELAX, masking engine", "CorRELAX, fast preset"]),
        (["correlax"], ["fast", "fast"], ["CorRELAX, fast preset"]),
    ],
)
def test_bench_saliency_times_only_the_groups_and_presets_asked_for(groups, presets, expected, bench_saliency, capsys):
    arguments = ["--image-size", "32x32", "--batch-size", "2", "--relax-size", "32x32", "--relax-masks", "4"]
    arguments += ["--chunk-size", "4", "--correlax-size", "256x256", "--correlax-mask-fraction", "0.01"]
    arguments += ["--repeats", "1", "--warmup", "0", "--device", "cpu", "--groups", *groups]

    assert bench_saliency.main([*arguments, "--correlax-presets", *presets]) == 0
    rows = [line.split(" | ")[0].strip("| ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    every = ["Grad-CAM, ours batched", "RELAX, masking engine", "CorRELAX, fast preset", "CorRELAX, faithful preset"]
    assert set(expected) <= set(rows) and not (set(every) - set(expected)) & set(rows)
    assert len(rows) == len(set(rows))  # each row once


@pytest.mark.parametrize("text", ["512", "512x", "axb", "0x416"])
def test_a_size_that_is_not_hxw_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="HxW"):
        image_size(text)
    assert image_size("512X416") == (512, 416)


def test_bench_saliency_checks_the_correlax_size_only_when_correlax_is_timed(bench_saliency):
    assert bench_saliency.parse_args(["--groups", "gradcam", "--correlax-size", "32x32"]).correlax_size == (32, 32)
    with pytest.raises(SystemExit):
        bench_saliency.parse_args(["--groups", "correlax", "--correlax-size", "32x32"])
