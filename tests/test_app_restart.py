"""A server restarted in the middle of the active-learning loop serves what the loop had made: the corrections, the
datastore index with its uncertainty scores (so the same next case), and the weights trained from the corrections."""

from __future__ import annotations

import os

import pytest
import requests
from clinician import save_final, served_checkpoint, simulator

from mammoxai.data.synth import synthesize


def datastore_index(url: str) -> dict:
    return requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]


def test_corrections_scores_and_trained_weights_are_served_after_a_restart(tmp_path):
    synthesize(tmp_path / "studies", patients=2, seed=6, size=128, prior_fraction=0.0)
    bundle = simulator.make_bundle(tmp_path / "bundle", (64, 64), seed=0)
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(tmp_path / "sessions")}
    server = simulator.demo.ServerProcess(
        tmp_path / "studies",
        port=simulator._free_port(),
        conf={"bundle": str(bundle), "device": "cpu"},
        log=tmp_path / "server.log",
        env=env,
    )
    images = sorted(path.stem for path in (tmp_path / "studies").glob("P*.dcm"))
    corrected = images[::2]  # both patients, one class each
    with server:
        for image_id in corrected:
            assert save_final(server.url, image_id, "normal" if image_id.startswith("P0000") else "malignant").ok
        with pytest.raises(RuntimeError, match="the server lists no training task"):  # not a 30-minute wait
            simulator.wait_for_training(server.url, timeout=300)
        settings = {"epochs": 1, "num_workers": 0, "accept": "valid"}
        started = requests.post(f"{server.url}/train/mammoxai", json=settings, timeout=60)
        assert started.status_code == 200, started.text
        assert simulator.wait_for_training(server.url, timeout=300)["status"] == "DONE"
        trained = served_checkpoint(server.url, images[1])
        requests.post(f"{server.url}/scoring/uncertainty", params={"run_sync": "true"}, json={}, timeout=300)
        proposed = requests.post(f"{server.url}/activelearning/uncertainty", json={}, timeout=300).json()
        weights = requests.get(f"{server.url}/info/", timeout=30).json()["models"]["mammoxai"]["checkpoint"]
        before = datastore_index(server.url)

    with server:  # the same folders and port, a new process
        after = datastore_index(server.url)
        rescored = requests.post(f"{server.url}/scoring/uncertainty", params={"run_sync": "true"}, json={}, timeout=300)
        proposed_again = requests.post(f"{server.url}/activelearning/uncertainty", json={}, timeout=300).json()
        weights_again = requests.get(f"{server.url}/info/", timeout=30).json()["models"]["mammoxai"]["checkpoint"]
        served = served_checkpoint(server.url, images[1])

    assert after == before
    assert (proposed_again["id"], proposed_again["score"]) == (proposed["id"], proposed["score"])
    assert weights_again == weights and weights["modified"] == trained
    assert sorted(k for k, v in after.items() if "final" in v["labels"]) == corrected
    assert served == trained
    assert rescored.json()["scored"] == 0 and rescored.json()["skipped"] == len(images) - len(corrected)
