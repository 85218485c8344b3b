"""One MammoXAI MONAI Label server per test session, shared by the app's test modules.

A module uses it with ``pytest_plugins = ["server_fixture"]`` and the ``app_server`` fixture (import nothing
from here: a plugin module imported before pytest registers it would not get assertion rewriting). The fixture
starts ``monailabel start_server --app apps/mammography`` on 127.0.0.1 at a free port, with the launcher the
demo uses (``scripts/demo.py``, imported as the module ``demo`` from ``scripts/``, the one way the tests and the
scripts load it), over a temporary studies folder of synthetic DICOM mammograms of two patients (the fewest a
training run accepts) and a temporary copy of the bundle whose ``models/model.pt`` holds random-initialised
weights: the repository's ``monai_bundle/models`` is never touched. Starting the server costs seconds, so it
starts once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from mammoxai.data.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "scripts"))
import demo  # noqa: E402

# the synthetic detectors keep their physical size: below ~290 rows the pixel pitch exceeds the 1 mm a mammogram
# can have, the reader drops it, and the heatmap's spacing could not be checked against the DICOM's
STUDY_ROWS = 320
# a training run needs final labels of two patients (one to validate on); no priors: four images per patient
STUDY_PATIENTS = 2


@dataclass(frozen=True)
class AppServer:
    """A running server, the folders behind it, and what tests do to them."""

    url: str
    studies: Path
    bundle: Path
    class_names: list[str]
    server: demo.ServerProcess
    model: str = "mammoxai"

    @property
    def checkpoint(self) -> Path:
        return self.bundle / "models" / "model.pt"

    def is_running(self) -> bool:
        return self.server.process is not None and self.server.process.poll() is None

    def save_random_weights(self, seed: int) -> Path:
        """Write random-initialised ``network_def`` weights (a state dict, as train.json saves it) as the checkpoint."""
        parser = ConfigParser()
        parser.read_config(str(self.bundle / "configs" / "inference.json"))
        torch.manual_seed(seed)
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(parser.get_parsed_content("network_def").state_dict(), self.checkpoint)
        return self.checkpoint

    def study_ids(self) -> list[str]:
        """Ids of the synthetic DICOM studies the studies folder started with."""
        return sorted(path.stem for path in self.studies.glob("P*.dcm"))

    def study_ids_by_patient(self) -> dict[str, list[str]]:
        """:meth:`study_ids` grouped by synthetic patient (``P0001_S1_L_CC`` is an image of patient ``P0001``)."""
        patients: dict[str, list[str]] = {}
        for image_id in self.study_ids():
            patients.setdefault(image_id.split("_")[0], []).append(image_id)
        return patients

    def studies_digest(self) -> dict[str, str]:
        """Every file of the studies folder (but the datastore's lock file) by relative path, with its SHA-1."""
        return {
            str(path.relative_to(self.studies)): hashlib.sha1(path.read_bytes()).hexdigest()
            for path in sorted(self.studies.rglob("*"))
            if path.is_file() and path.name != ".lock"
        }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    return _free_port()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    root = tmp_path_factory.mktemp("app_server")
    bundle = root / "bundle"
    shutil.copytree(REPO / "monai_bundle" / "configs", bundle / "configs")
    studies = root / "studies"
    synthesize(studies, patients=STUDY_PATIENTS, seed=0, size=STUDY_ROWS, prior_fraction=0.0)
    class_names = json.loads((bundle / "configs" / "inference.json").read_text())["class_names"]
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(root / "sessions")}
    server = demo.ServerProcess(
        studies, port=_free_port(), conf={"bundle": str(bundle)}, log=root / "server.log", env=env
    )
    app_server = AppServer(server.url, studies, bundle, class_names, server)
    app_server.save_random_weights(seed=0)
    with server:
        yield app_server
