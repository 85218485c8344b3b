"""``scripts/demo.py`` refuses what it cannot use before minutes of work, and ends on the reason training stopped.

The full demo (synthesising, training, serving, Ctrl-C) runs in ``test_app_server.py``; these tests stop it early.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mammoxai.data.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "scripts"))
import demo  # noqa: E402


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """``demo.main`` makes SIGTERM and SIGHUP stop it like Ctrl-C; keep that from outliving the test."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)


@pytest.fixture
def port() -> Iterator[int]:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]


def last_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("demo: "), lines
    return lines[-1]


def test_a_port_in_use_is_refused_before_any_study_is_written(tmp_path, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert demo.main(["--studies", str(tmp_path / "studies"), "--port", str(port)]) == 1
    assert f"--port {port}: 127.0.0.1:{port} is already in use (pass another --port" in last_error_line(capsys)
    assert not (tmp_path / "studies").exists()


def test_a_missing_bundle_is_refused_before_any_study_is_written(tmp_path, port, capsys):
    arguments = ["--studies", str(tmp_path / "studies"), "--bundle", str(tmp_path / "nowhere"), "--port", str(port)]
    assert demo.main(arguments) == 1
    assert f"--bundle {tmp_path / 'nowhere'}: does not exist" in last_error_line(capsys)
    assert not (tmp_path / "studies").exists()


def test_a_file_given_as_the_studies_folder_is_refused(tmp_path, port, capsys):
    (tmp_path / "studies.zip").write_bytes(b"PK")
    assert demo.main(["--studies", str(tmp_path / "studies.zip"), "--port", str(port)]) == 1
    assert f"--studies {tmp_path / 'studies.zip'}: is a file, not a folder" in last_error_line(capsys)


def test_training_that_stops_on_a_user_error_ends_the_demo_with_that_error(tmp_path, port, capsys):
    """A bundle whose train.json asks for 0 epochs: the run stops in its first step, before reading an image."""
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "monai_bundle" / "configs", bundle / "configs")
    train = json.loads((bundle / "configs" / "train.json").read_text())
    (bundle / "configs" / "train.json").write_text(json.dumps({**train, "epochs": 0}))
    synthesize(tmp_path / "studies", patients=1, seed=0, size=128, prior_fraction=0.0)
    arguments = ["--studies", str(tmp_path / "studies"), "--bundle", str(bundle), "--port", str(port)]
    arguments += ["--log", str(tmp_path / "server.log")]
    assert demo.main(arguments) == 1
    expected = "demo: training stopped: epochs: is 0, not a positive whole number (e.g. --epochs 30)"
    assert last_error_line(capsys) == expected
    assert not (tmp_path / "server.log").exists()  # no server was started


def test_an_untrained_synthetic_cohort_of_another_size_is_written_again(tmp_path, port, capsys):
    """What a demo whose training failed left (``--patients 1``) is not reused by the next demo asking for more."""
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "monai_bundle" / "configs", bundle / "configs")
    train = json.loads((bundle / "configs" / "train.json").read_text())
    (bundle / "configs" / "train.json").write_text(json.dumps({**train, "epochs": 0}))  # stop before training
    studies = tmp_path / "studies"
    synthesize(studies, patients=1, seed=0, size=128, prior_fraction=0.0)
    arguments = ["--studies", str(studies), "--bundle", str(bundle), "--port", str(port), "--size", "128"]

    assert demo.main([*arguments, "--patients", "2"]) == 1

    assert "holds an untrained synthetic cohort of 1 patients, not 2: rewriting it" in capsys.readouterr().out
    assert demo.synthetic_patients(studies) == 2
    assert demo.main([*arguments, "--patients", "2"]) == 1  # the same size: reused as it is
    assert f"studies: {studies} (existing)" in capsys.readouterr().out


def test_a_cohort_weights_were_trained_from_is_reused_whatever_its_size(tmp_path, capsys):
    studies = tmp_path / "studies"
    synthesize(studies, patients=1, seed=0, size=128, prior_fraction=0.0)
    before = {path.name: path.stat().st_mtime_ns for path in studies.iterdir()}

    demo.ensure_studies(studies, patients=2, size=128, untrained=False)

    assert capsys.readouterr().out == f"studies: {studies} (existing)\n"
    assert {path.name: path.stat().st_mtime_ns for path in studies.iterdir()} == before


@pytest.mark.parametrize("port", ["70000", "-1", "0"])
def test_a_port_out_of_range_is_refused_in_one_line(port, tmp_path, capsys):
    assert demo.main(["--studies", str(tmp_path / "studies"), "--port", port]) == 1
    assert (
        last_error_line(capsys)
        == f"demo: --port {port}: is not a port number (give a port between 1 and 65535, e.g. 8000)"
    )
    assert not (tmp_path / "studies").exists()


def test_a_host_that_cannot_be_looked_up_is_refused_in_one_line(tmp_path, port, capsys):
    assert demo.main(["--studies", str(tmp_path / "studies"), "--host", "nosuch.invalid", "--port", str(port)]) == 1
    assert last_error_line(capsys).startswith("demo: --host nosuch.invalid: cannot be used (")


def test_a_folder_of_other_files_is_not_filled_with_synthetic_studies(tmp_path):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "notes.txt").write_text("mine")
    with pytest.raises(demo.MammoXAIError, match="--studies .*: holds no mammograms, but other files"):
        demo.ensure_studies(tmp_path / "studies", patients=1, size=128)


def test_an_interrupted_synthesis_leaves_no_studies_behind(tmp_path, monkeypatch):
    """Killed after the images but before the rename, the next demo writes the cohort again instead of finding
    images with no manifest.csv to train from."""

    def interrupted(out: Path, *args, **kwargs) -> None:
        synthesize(out, patients=1, seed=0, size=128, prior_fraction=0.0)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "synthesize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.ensure_studies(tmp_path / "studies", patients=1, size=128)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    demo.ensure_studies(tmp_path / "studies", patients=1, size=128)
    assert demo.synthetic_patients(tmp_path / "studies") == 1
    assert [path.name for path in tmp_path.iterdir()] == ["studies"]


def fake_training_bundle(folder: Path, fails: bool) -> Path:
    """A bundle whose train.json saves a model.pt into its ``ckpt_dir``, as training does after its best epoch, and
    then finishes or fails."""
    steps = ["$pathlib.Path(@ckpt_dir).mkdir(exist_ok=True)", "$pathlib.Path(@ckpt_dir, 'model.pt').write_text('x')"]
    config = {"imports": ["$import pathlib"], "ckpt_dir": "$@bundle_root + '/models'", "bundle_root": str(folder)}
    config["run"] = steps + (["$int('the epoch after the best one fails')"] if fails else [])
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "train.json").write_text(json.dumps(config))
    return folder


def test_weights_of_an_interrupted_training_are_not_kept_as_the_demo_weights(tmp_path):
    bundle = fake_training_bundle(tmp_path / "bundle", fails=True)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "manifest.csv").write_text("")

    with pytest.raises(RuntimeError, match="training stopped"):
        demo.ensure_weights(bundle, tmp_path / "studies")

    assert list((bundle / "models").iterdir()) == []


def test_weights_of_a_finished_training_take_their_place(tmp_path):
    bundle = fake_training_bundle(tmp_path / "bundle", fails=False)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "manifest.csv").write_text("")

    demo.ensure_weights(bundle, tmp_path / "studies")

    assert [path.name for path in (bundle / "models").iterdir()] == ["model.pt"]


def test_kill_during_training_stops_the_training_too(tmp_path):
    """``kill`` (SIGTERM) interrupts the demo like Ctrl-C; the child it was running must not go on unseen."""
    pid_file = tmp_path / "pid"
    child = f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(60)"
    demo.stop_on_termination_signals()
    threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM)).start()

    with pytest.raises(KeyboardInterrupt):
        demo.run_showing_user_error([sys.executable, "-c", child], cwd=tmp_path, what="training")

    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(
    "ignored, status",
    [((), -signal.SIGINT), ((signal.SIGINT,), -signal.SIGTERM), ((signal.SIGINT, signal.SIGTERM), -signal.SIGKILL)],
)
def test_a_child_that_ignores_a_stop_signal_gets_the_next_one(ignored, status):
    # Ctrl-C's default first: a suite started in the background has SIGINT ignored, and its children inherit that
    ignores = "signal.signal(signal.SIGINT, signal.default_int_handler); "
    ignores += "".join(f"signal.signal({number}, signal.SIG_IGN); " for number in ignored)
    child = f"import signal, time; {ignores}print('ready', flush=True); time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout.readline() == "ready\n"
        assert demo.stop_child(process, timeout=3.0) == status  # a loaded machine may take over a second to exit


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not Path("/usr/sbin/Orthanc").is_file(), reason="needs Debian's orthanc package")
def test_the_pacs_script_finds_debians_orthanc_and_tells_whether_it_runs(tmp_path):
    """``scripts/orthanc.sh``, which the DICOMweb demos and ``test.sh`` start: Debian's ``/usr/sbin/Orthanc`` is not
    on a normal user's PATH, and ``running`` is how ``test.sh`` leaves an Orthanc it did not start running."""
    environment = {
        "PATH": "/usr/bin:/bin",
        "ORTHANC_STATE_DIR": str(tmp_path / "orthanc"),
        "ORTHANC_HTTP_PORT": str(free_port()),
        "ORTHANC_DICOM_PORT": str(free_port()),
    }
    script = [str(REPO / "scripts" / "orthanc.sh")]

    def run(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*script, command], env=environment, capture_output=True, text=True, timeout=120)

    assert run("running").returncode == 1
    try:
        started = run("start")
        assert started.returncode == 0, started.stderr
        assert started.stdout.splitlines()[-1] == f"http://127.0.0.1:{environment['ORTHANC_HTTP_PORT']}/dicom-web"
        assert run("running").returncode == 0
    finally:
        run("stop")
    assert run("running").returncode == 1 and not (tmp_path / "orthanc").exists()
