"""``scripts/simulate_clinician.py`` loaded once, as the module ``simulate_clinician``, for the loop's tests.

The script is not a package module; the tests that run the active-learning loop (local folder, PACS) share its
server launcher, bundle maker, label JSON and training poll, and the two HTTP steps below, instead of each keeping
a copy.
"""

import importlib.util
import sys
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("simulate_clinician", REPO / "scripts" / "simulate_clinician.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


simulator = sys.modules.get("simulate_clinician") or _load()


def save_final(url: str, image_id: str, label: str) -> requests.Response:
    """The clinician's correction of ``image_id``: ``label`` saved as its ``final`` label JSON, as the script saves it."""
    return requests.put(
        f"{url}/datastore/label",
        params={"image": image_id, "tag": "final"},
        files={"label": ("label.json", simulator.label_json(label))},
        timeout=60,
    )


def served_checkpoint(url: str, image_id: str) -> str:
    """The checkpoint time named by the server's prediction of ``image_id``: it changes when new weights are served."""
    response = requests.post(
        f"{url}/infer/{simulator.MODEL}", params={"image": image_id, "output": "json"}, timeout=300
    )
    response.raise_for_status()
    return response.json()["model"]["checkpoint_mtime"]
