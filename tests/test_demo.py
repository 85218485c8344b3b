"""``scripts/demo.py`` refuses what it cannot use before minutes of work, and ends on the reason training stopped.

The full demo (synthesising, training, serving, Ctrl-C) runs in ``test_app_server.py``; these tests stop it early.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sys
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
