"""scripts/device_figures.py: the stages a lent GPU machine runs, checked here at a tiny size on the CPU, so that
none of its few minutes is lost to a stage that does not run."""

import _thread
import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mammoxai.training.pretrain import load_pretrained

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def device_figures():
    spec = importlib.util.spec_from_file_location("device_figures", REPO / "scripts" / "device_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_figures"] = module
    spec.loader.exec_module(module)
    return module


def log_steps(log: Path) -> dict[str, str]:
    """Each finished step's exit line, by step name."""
    return {line.split(":")[0]: line for line in log.read_text().splitlines() if ": exit " in line and "after" in line}


@pytest.mark.parametrize("stage", ["bench", "faithful", "pretrain", "saliency", "strategies"])
def test_every_stage_lists_commands_of_scripts_and_configs_that_exist(stage, device_figures, tmp_path, capsys):
    assert device_figures.main([stage, "--out", str(tmp_path / "out"), "--list"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("# ")]
    assert commands and not (tmp_path / "out").exists()
    for command in commands:
        for word in command.split():
            if word.startswith("scripts/"):
                assert (REPO / word).is_file(), word
            if word.startswith("configs/"):
                assert (REPO / "monai_bundle" / word).is_file(), word
        assert "--device cpu" not in command  # the full sizes are for the GPU


def test_the_two_timing_stages_run_in_one_command_and_leave_the_committed_benchmarks_alone(
    device_figures, tmp_path, capsys
):
    committed = (REPO / "BENCHMARKS.md").read_text()
    assert device_figures.main(["bench", "faithful", "--tiny", "--out", str(tmp_path / "out")]) == 0

    steps = log_steps(tmp_path / "out" / "bench.log")
    assert set(steps) == {"bench_pretrain", "bench_saliency"} and all(": exit 0 " in line for line in steps.values())
    log = (tmp_path / "out" / "bench.log").read_text()
    assert "| CorRELAX, fast preset |" in log and "faithful preset" not in log
    assert "| CorRELAX, faithful preset |" in (tmp_path / "out" / "faithful.log").read_text()
    assert {"bench.tar.gz", "faithful.tar.gz"} <= {path.name for path in (tmp_path / "out").iterdir()}
    assert (REPO / "BENCHMARKS.md").read_text() == committed and not (tmp_path / "out" / "BENCHMARKS.md").exists()


def test_the_pretrain_stage_runs_at_a_tiny_size_in_its_work_folder_and_packs_its_reports_without_images(
    device_figures, tmp_path
):
    out, models = tmp_path / "out", REPO / "monai_bundle" / "models"
    bundle_models = sorted(models.iterdir()) if models.exists() else []
    assert device_figures.main(["pretrain", "--tiny", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    assert (sorted(models.iterdir()) if models.exists() else []) == bundle_models  # everything went to --work

    assert set(log_steps(out / "pretrain.log")) == {
        "synthesize",
        "split",
        "pretrain",
        "evaluate_pretrain",
        "explain_ablation",
    }
    with tarfile.open(out / "pretrain.tar.gz") as archive:
        names = archive.getnames()
    assert {"pretrain/evaluation/report.json", "pretrain/ablation/report.md"} <= set(names)
    assert not [name for name in names if name.endswith((".dcm", ".pt")) or "/masks/" in name or "/cache/" in name]
    pretrained = load_pretrained(tmp_path / "work" / "pretrain" / "models" / "pretrained.pt")
    assert pretrained.intensity_scaling == "display_range"  # the scaling that kept thickness and kVp readable
    assert pretrained.field_of_view == "image"  # and the field of view that kept their grain at the stage's grid


def test_the_saliency_stage_pairs_both_presets_on_one_image_of_each_patient(device_figures, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    assert device_figures.main(["saliency", "--tiny", "--out", str(out), "--work", str(work)]) == 0
    work = work / "saliency"  # each stage works in its own subfolder

    log = (out / "saliency.log").read_text()
    limit = re.search(r"evaluate_saliency.py .*--correlax_preset faithful .*--max_minutes (\d+\.\d\d)\n", log)
    assert limit  # what the budget left it: load-dependent, so read from the log (the rule has its own test below)
    reports = {
        preset: json.loads((work / preset / "saliency_evaluation" / "report.json").read_text())
        for preset in ("fast", "faithful")
    }
    for report in reports.values():
        hits = report["values"]["finding_hits"]["correlax correlation"]
        images_of = {
            patient: {image for p, image in zip(hits["patient"], hits["image"], strict=True) if p == patient}
            for patient in hits["patient"]
        }
        assert len(images_of) == 4 and all(len(images) == 1 for images in images_of.values())
    assert reports["faithful"]["values"]["images"] == {
        "selected": 4,
        "scored": 4,
        "max_minutes": float(limit.group(1)),
    }
    comparison = json.loads((work / "comparison" / "report.json").read_text())
    assert comparison["values"]["findings"]["only_first"] == comparison["values"]["findings"]["only_second"] == 0
    with tarfile.open(out / "saliency.tar.gz") as archive:
        assert "comparison/report.md" in archive.getnames()


def test_a_step_with_a_time_limit_gets_what_is_left_of_the_budget_less_its_reserve(device_figures, tmp_path):
    echo = [sys.executable, "-c", "import sys; print('limit', sys.argv[1:])"]
    steps = [
        device_figures.Step("sleeps", [sys.executable, "-c", "import time; time.sleep(1)"]),
        device_figures.Step("limited", echo, minutes_option="--max_minutes", reserve_s=30.0),
    ]
    assert device_figures.run_steps(steps, tmp_path / "log", budget_s=150.0) is True
    limit = re.search(r"limit \['--max_minutes', '(\d+\.\d\d)'\]", (tmp_path / "log").read_text())
    assert limit and 1.9 < float(limit.group(1)) < 1.99  # (150 s - 1 s asleep - 30 s) / 60
    assert device_figures.Step("late", echo, minutes_option="--max_minutes", reserve_s=30.0).command(10.0)[-1] == "0.10"


def test_the_split_keeps_the_test_patients_out_of_the_training_manifest(device_figures, tmp_path):
    rows = [{"image": f"{n}.dcm", "patient_id": f"P{n // 2}", "split": "test" if n < 2 else "train"} for n in range(6)]
    with (tmp_path / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)

    assert device_figures.main(["split-manifest", str(tmp_path)]) == 0
    read = {name: list(csv.DictReader((tmp_path / f"manifest_{name}.csv").open())) for name in ("training", "test")}
    assert [row["image"] for row in read["test"]] == ["0.dcm", "1.dcm"]
    assert [row["image"] for row in read["training"]] == ["2.dcm", "3.dcm", "4.dcm", "5.dcm"]


def processes_naming(text: str) -> list[str]:
    """Command lines of the running processes that contain ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        if text in command:
            found.append(command)
    return found


def test_a_stage_that_outruns_its_budget_stops_says_so_and_leaves_the_next_stage_unstarted(
    device_figures, tmp_path, capsys
):
    out = tmp_path / "out"
    assert device_figures.main(["strategies", "pretrain", "--tiny", "--out", str(out), "--budget", "0.02"]) == 1

    log = (out / "strategies.log").read_text()
    assert "the stage's time budget is spent" in log and "compare_strategies: exit" not in log
    assert "not started: the stage's time budget is spent" in (out / "pretrain.log").read_text()
    printed = capsys.readouterr().out
    assert "strategies: stopped early (see the log)" in printed and "pretrain: stopped early" in printed


def step_starting_a_worker(device_figures, mark: str):
    """A step that starts a worker process (its command line holds ``mark``), and both sleep for a minute."""
    sleeper = f"import time; time.sleep(60)  # {mark}"
    starter = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {sleeper!r}]); time.sleep(60)"
    return device_figures.Step("starts_a_worker", [sys.executable, "-c", starter])


def ended(mark: str) -> bool:
    """Whether no process naming ``mark`` runs, after a moment for the kernel to end those sent SIGKILL."""
    for _ in range(50):
        if not processes_naming(mark):
            return True
        time.sleep(0.1)
    return False


def test_a_step_stopped_by_the_budget_is_stopped_with_the_processes_it_started(device_figures, tmp_path):
    mark = f"worker-of-{tmp_path.name}"
    step = step_starting_a_worker(device_figures, mark)

    assert device_figures.run_steps([step], tmp_path / "log", budget_s=2) is False
    assert "the stage's time budget is spent" in (tmp_path / "log").read_text()
    assert ended(mark)


@pytest.fixture
def ctrl_c_handled() -> Iterator[None]:
    """Python's Ctrl-C handler for the test, which interrupt_main needs and a suite started in the background (SIGINT
    ignored) lacks."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_the_running_step_with_the_processes_it_started(device_figures, tmp_path, ctrl_c_handled):
    """The step runs in a session of its own, which the terminal's Ctrl-C does not reach."""
    mark = f"worker-of-{tmp_path.name}"
    step = step_starting_a_worker(device_figures, mark)
    threading.Timer(2.0, _thread.interrupt_main).start()

    with pytest.raises(KeyboardInterrupt):
        device_figures.run_steps([step], tmp_path / "log", budget_s=60)
    assert ended(mark)


@pytest.mark.parametrize("arguments", [["--budget", "0"], ["--max-images", "0"]])
def test_settings_no_stage_can_use_are_refused(arguments, device_figures, tmp_path):
    with pytest.raises(SystemExit, match="--budget must be above 0 and --max-images at least 1"):
        device_figures.main(["saliency", "--out", str(tmp_path), *arguments])


def test_installing_without_carried_wheels_says_how_to_make_them(device_figures, tmp_path, monkeypatch):
    monkeypatch.setattr(device_figures, "WHEELS", tmp_path / ".whl")
    with pytest.raises(SystemExit, match="run scripts/device_wheels.sh here and carry .whl"):
        device_figures.install_wheels(tmp_path / "site")


def write_wheel(folder: Path, name: str) -> Path:
    """A pure-Python wheel of one module ``name`` (``VALUE = 42``), as pip installs it."""
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    files = {
        f"{name}.py": "VALUE = 42\n",
        f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{name}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},," for path in files] + [f"{name}-1.0.dist-info/RECORD,,"]
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{name}-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_carried_wheels_go_to_a_folder_of_their_own_that_every_step_imports_from(device_figures, tmp_path, monkeypatch):
    """The machine's own Python is left as it is (it may not be writable): the steps find the wheels on
    PYTHONPATH."""
    monkeypatch.setattr(device_figures, "WHEELS", tmp_path / ".whl")
    (tmp_path / ".whl").mkdir()
    write_wheel(tmp_path / ".whl", "carried_module")
    device_figures.install_wheels(tmp_path / "site")
    assert (tmp_path / "site" / "carried_module.py").is_file()
    assert importlib.util.find_spec("carried_module") is None  # not in this Python's site-packages

    step = device_figures.Step("imports", [sys.executable, "-c", "import carried_module; print(carried_module.VALUE)"])
    assert device_figures.run_steps([step], tmp_path / "log", budget_s=60, site=tmp_path / "site") is True
    assert "42" in (tmp_path / "log").read_text()


def test_wheels_built_for_another_python_are_refused_before_pip_runs(device_figures, tmp_path, monkeypatch):
    monkeypatch.setattr(device_figures, "WHEELS", tmp_path)
    (tmp_path / "pyrsistent-0.20.0-cp39-cp39-manylinux_2_17_x86_64.whl").touch()
    (tmp_path / "monai-1.6.1-py3-none-any.whl").touch()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    with pytest.raises(SystemExit, match=f"built for cp39, .* run scripts/device_wheels.sh {re.escape(version)} here"):
        device_figures.install_wheels(tmp_path / "site")


def test_the_rehearsal_is_valid_bash_and_rehearses_every_stage(device_figures):
    """scripts/device_rehearsal.sh downloads PyTorch's CUDA build (gigabytes), so it is run by hand, not here."""
    script = REPO / "scripts" / "device_rehearsal.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    default = re.search(r"\|\| stages=\(([a-z ]+)\)", script.read_text())
    assert default and default.group(1).split() == list(device_figures.STAGES)


FAKE_PIP = """#!/usr/bin/env bash
# stands in for `python -m pip download|wheel`: writes a wheel for each requirement but $FAILING
destination=""; previous=""
for argument in "$@"; do
  case "$previous" in --dest|--wheel-dir) destination="$argument" ;; esac
  previous="$argument"
done
requirement="${@: -1}"
[[ "$requirement" == "$FAILING"* ]] && exit 1
touch "$destination/${requirement%%==*}-1.0-py3-none-any.whl"
"""


@pytest.mark.parametrize("fails", [False, True])
def test_device_wheels_replace_the_carried_folder_only_when_every_wheel_is_there(tmp_path, fails):
    """A partial .whl/ would be carried to the GPU machine as if complete (device_rehearsal.sh checks only that it
    exists); an interrupted or failed run must leave the earlier one."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "device_wheels.sh", root / "scripts")
    shutil.copytree(REPO / "requirements", root / "requirements")
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").write_text(FAKE_PIP)
    (root / ".venv" / "bin" / "python").chmod(0o755)
    (root / ".whl").mkdir()
    (root / ".whl" / "earlier-1.0-py3-none-any.whl").touch()

    environment = {**os.environ, "FAILING": "captum==" if fails else "nothing"}
    command = ["bash", str(root / "scripts" / "device_wheels.sh")]
    result = subprocess.run(command, capture_output=True, text=True, env=environment)

    wheels = sorted(path.name for path in (root / ".whl").iterdir())
    assert sorted(path.name for path in root.iterdir()) == [".venv", ".whl", "requirements", "scripts"]
    if fails:
        assert result.returncode != 0 and wheels == ["earlier-1.0-py3-none-any.whl"]
    else:
        assert result.returncode == 0, result.stderr
        assert "monai-1.0-py3-none-any.whl" in wheels and "earlier-1.0-py3-none-any.whl" not in wheels
