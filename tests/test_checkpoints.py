"""Checkpoints written by SafeCheckpointSaver survive a run killed while it saves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

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
