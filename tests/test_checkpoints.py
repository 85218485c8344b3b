"""Checkpoints written by SafeCheckpointSaver survive a run killed while it saves, and a second run into the same
folder replaces the first one's only when told to."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from mammoxai.errors import MammoXAIError
from mammoxai.training.checkpoints import SafeCheckpointSaver


class Killed(BaseException):
    """What a kill in the middle of torch.save looks like to the saver: the write never finishes."""


def engine_with_scores(scores: list[float]) -> Engine:
    """One iteration per epoch, whose validation "auc" is the epoch's entry of ``scores``."""

    def step(engine: Engine, batch: object) -> None:
        engine.state.metrics["auc"] = scores[engine.state.epoch - 1]

    return Engine(step)


def kill_the_save_at_epoch(monkeypatch, engine: Engine, epoch: int) -> None:
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if engine.state.epoch == epoch:
            if hasattr(f, "write"):
                f.write(b"half a checkpoint")
            else:
                Path(f).write_bytes(b"half a checkpoint")
            raise Killed
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_kill_while_saving_keeps_the_previous_epoch_checkpoint_and_best_model_intact(tmp_path, monkeypatch):
    network = torch.nn.Linear(2, 2)
    engine = engine_with_scores([0.5, 0.9, 0.95])
    saver = SafeCheckpointSaver(
        str(tmp_path), {"network": network}, file_prefix="run", save_interval=1, n_saved=1,
        save_key_metric=True, key_metric_name="auc", key_metric_filename="model.pt",
    )  # fmt: skip
    saver.attach(engine)
    kill_the_save_at_epoch(monkeypatch, engine, epoch=2)
    with pytest.raises(Killed):
        engine.run([0], max_epochs=3)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt", "run_network_epoch=1.pt"]
    for name in ("model.pt", "run_network_epoch=1.pt"):  # complete, loadable files: no partial write left
        torch.testing.assert_close(torch.load(tmp_path / name, weights_only=True)["weight"], network.weight)


def test_without_a_kill_superseded_checkpoints_go_and_the_fixed_name_best_model_is_replaced(tmp_path):
    network = torch.nn.Linear(2, 2)
    engine = engine_with_scores([0.5, 0.9, 0.7])
    saver = SafeCheckpointSaver(
        str(tmp_path), {"network": network}, file_prefix="run", save_interval=1, n_saved=1,
        save_key_metric=True, key_metric_name="auc", key_metric_filename="model.pt", key_metric_save_state=True,
    )  # fmt: skip
    saver.attach(engine)
    best = {}

    @engine.on(Events.EPOCH_COMPLETED)
    def remember(engine: Engine) -> None:
        best[engine.state.epoch] = (tmp_path / "model.pt").stat().st_mtime_ns

    engine.run([0], max_epochs=3)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt", "run_network_epoch=3.pt"]
    assert best[1] < best[2] == best[3]  # replaced by the better epoch 2, kept through the worse epoch 3
    assert torch.load(tmp_path / "model.pt", weights_only=True)["checkpointer"]["_saved"][0][0] == pytest.approx(0.9)


# -- an earlier run in the same folder --------------------------------------------------------------------------------
def best_and_every_epoch(folder: Path, network: torch.nn.Module, **kwargs) -> SafeCheckpointSaver:
    return SafeCheckpointSaver(
        str(folder), {"network": network}, file_prefix="run", save_interval=1, n_saved=1,
        save_key_metric=True, key_metric_name="auc", key_metric_filename="model.pt", **kwargs,
    )  # fmt: skip


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture
def earlier_run(tmp_path) -> Path:
    """A folder with the files of a finished two-epoch run, and a file of the user's that is none of them."""
    engine = engine_with_scores([0.5, 0.9])
    best_and_every_epoch(tmp_path, torch.nn.Linear(2, 2)).attach(engine)
    engine.run([0], max_epochs=2)
    (tmp_path / "notes.txt").write_text("kept")
    assert sorted(contents(tmp_path)) == ["model.pt", "notes.txt", "run_network_epoch=2.pt"]
    return tmp_path


def test_a_new_run_into_an_earlier_runs_folder_is_refused_naming_its_files_and_touching_none(earlier_run):
    before = contents(earlier_run)
    message = r"holds run_network_epoch=2\.pt, model\.pt of an earlier run \(pass --overwrite true"
    with pytest.raises(MammoXAIError, match=message):
        best_and_every_epoch(earlier_run, torch.nn.Linear(2, 2)).attach(engine_with_scores([0.1]))
    assert contents(earlier_run) == before


def test_a_resumed_run_still_keeps_only_n_saved_epoch_files(earlier_run):
    (earlier_run / "run_network_epoch=1.pt").write_bytes(b"older")  # as a run with n_saved=2 would have left
    engine = engine_with_scores([0.5, 0.9, 0.4, 0.3])
    best_and_every_epoch(earlier_run, torch.nn.Linear(2, 2), resume=True).attach(engine)
    engine.load_state_dict({"epoch": 2, "epoch_length": 1, "max_epochs": 4})  # what the resume handler restores
    engine.run([0])
    assert sorted(contents(earlier_run)) == ["model.pt", "notes.txt", "run_network_epoch=4.pt"]


def test_resume_is_offered_only_where_the_workflow_can_resume(earlier_run):
    for resume, offered in ((False, True), (None, False)):
        with pytest.raises(MammoXAIError) as error:
            best_and_every_epoch(earlier_run, torch.nn.Linear(2, 2), resume=resume).attach(engine_with_scores([0.1]))
        assert ("--resume true" in str(error.value)) is offered


def test_overwrite_drops_the_earlier_epochs_at_once_and_replaces_the_best_model_at_the_first_save(earlier_run):
    earlier_best = (earlier_run / "model.pt").read_bytes()
    network = torch.nn.Linear(2, 2)
    engine = engine_with_scores([0.1])
    best_and_every_epoch(earlier_run, network, overwrite="true").attach(engine)
    assert contents(earlier_run)["model.pt"] == earlier_best  # still served while the new run trains
    assert "run_network_epoch=2.pt" not in contents(earlier_run)  # a resume can no longer pick up the old epochs

    engine.run([0], max_epochs=1)
    assert sorted(contents(earlier_run)) == ["model.pt", "notes.txt", "run_network_epoch=1.pt"]
    torch.testing.assert_close(torch.load(earlier_run / "model.pt", weights_only=True)["weight"], network.weight)


def test_a_resumed_run_keeps_the_files_it_continues_from(earlier_run):
    before = contents(earlier_run)
    best_and_every_epoch(earlier_run, torch.nn.Linear(2, 2), resume="yes").attach(engine_with_scores([0.1]))
    assert contents(earlier_run) == before


def test_files_of_other_runs_and_prefixes_do_not_count_as_an_earlier_run(tmp_path):
    for name in ("notes.txt", "other_network_epoch=3.pt", "pretrained.pt"):
        (tmp_path / name).write_bytes(b"theirs")
    engine = engine_with_scores([0.5])
    best_and_every_epoch(tmp_path, torch.nn.Linear(2, 2)).attach(engine)
    engine.run([0], max_epochs=1)
    assert {name: data for name, data in contents(tmp_path).items() if data == b"theirs"}.keys() == {
        "notes.txt", "other_network_epoch=3.pt", "pretrained.pt",
    }  # fmt: skip


def test_a_checkpoint_folder_that_is_a_file_is_refused_before_the_run(tmp_path):
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(MammoXAIError, match=r"ckpt_dir .*models: is a file, not a folder"):
        best_and_every_epoch(tmp_path / "models", torch.nn.Linear(2, 2)).attach(engine_with_scores([0.1]))


def test_overwrite_written_as_an_unknown_word_is_refused_before_the_folder_is_made(tmp_path):
    with pytest.raises(MammoXAIError, match=r"overwrite: is 'perhaps', not a boolean"):
        best_and_every_epoch(tmp_path / "models", torch.nn.Linear(2, 2), overwrite="perhaps")
    assert not (tmp_path / "models").exists()
