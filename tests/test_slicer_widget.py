"""The MammoXAI panel's wiring: clicks reach the logic, results reach the widgets and MRML nodes.

3D Slicer cannot be installed here, so ``slicer``, ``qt`` and ``vtk`` are small stand-ins (``tests/slicer_stub``)
that load the real ``MammoXAI.ui`` into stub widgets and keep what the module sets on MRML nodes. Everything
behind them is real: the module file, ``MammoXAILib`` and the MammoXAI server.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from loopback_servers import StandInServer, json_body

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "slicer_stub"), str(REPO / "slicer_extension" / "MammoXAI")]
import MammoXAI  # noqa: E402
import qt  # noqa: E402  (the stand-in)
import slicer  # noqa: E402  (the stand-in)
from MammoXAILib import STRATEGIES, MammoXAIClient  # noqa: E402

pytest_plugins = ["server_fixture"]


@pytest.fixture
def widget(tmp_path, monkeypatch):
    monkeypatch.setattr(qt.QSettings, "store", {})
    monkeypatch.setattr(slicer.app, "slicerUserSettingsFilePath", str(tmp_path / "settings" / "Slicer.ini"))
    slicer.mrmlScene.Clear()
    slicer.util.layers.clear()
    panel = MammoXAI.MammoXAIWidget()
    panel.setup()
    return panel


@pytest.fixture
def unlabelled(app_server):
    """A fresh copy of a study under a new id, so "Next case" always has an unlabelled image to open."""
    image_id = f"copy_{uuid.uuid4().hex[:8]}"
    MammoXAIClient(app_server.url).upload_image(str(app_server.studies / f"{app_server.study_ids()[0]}.dcm"), image_id)
    return image_id


def finish_run(widget):
    """Wait for the inference on the worker thread, then let the run timer's next tick show it, as Qt would."""
    future, _, _ = widget.running
    concurrent.futures.wait([future], timeout=300)
    widget.runTimer.timeout.emit()


def connect(widget, url):
    widget.ui.serverUrlEdit.text = url
    widget.ui.annotatorEdit.text = "dr.widget"
    widget.ui.connectButton.clicked.emit()


def test_setup_fills_the_selectors_and_disables_what_needs_a_server(widget):
    ui = widget.ui

    assert ui.serverUrlEdit.text == MammoXAI.DEFAULT_URL
    assert ui.strategyComboBox.items == list(STRATEGIES)
    assert ui.strategyComboBox.currentText == "uncertainty"
    assert ui.saliencyComboBox.items == []  # filled with what the server can run when connecting
    assert ui.biradsComboBox.items == ["", "0", "1", "2", "3", "4", "5", "6"]
    assert not ui.nextCaseButton.enabled and not ui.runButton.enabled and not ui.saveButton.enabled
    assert not ui.cancelRunButton.enabled
    assert ui.opacitySlider.value == 0.5  # designer defaults from the .ui


def test_the_server_url_is_remembered_in_the_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(qt.QSettings, "store", {MammoXAI.SETTINGS_URL: "http://pacs-ai:8000"})
    monkeypatch.setattr(slicer.app, "slicerUserSettingsFilePath", str(tmp_path / "Slicer.ini"))
    panel = MammoXAI.MammoXAIWidget()

    panel.setup()

    assert panel.ui.serverUrlEdit.text == "http://pacs-ai:8000"


def test_the_login_fields_hide_the_password_and_remember_only_the_user_name(widget, app_server):
    assert widget.ui.passwordEdit.echoMode == "QLineEdit::Password"
    widget.ui.usernameEdit.text = "dr.widget"
    widget.ui.passwordEdit.text = "secret"

    connect(widget, app_server.url)  # a server without authentication: the login is accepted and changes nothing

    assert widget.ui.statusLabel.text.startswith("Connected"), widget.ui.statusLabel.text
    assert qt.QSettings.store[MammoXAI.SETTINGS_USERNAME] == "dr.widget"
    assert "secret" not in repr(qt.QSettings.store)
    assert widget.logic.session.client.token is None


def test_a_server_that_is_down_is_reported_in_the_status_line(widget, free_port):
    connect(widget, f"http://127.0.0.1:{free_port}")

    assert "Cannot reach the server" in widget.ui.statusLabel.text
    assert "b00020" in widget.ui.statusLabel.styleSheet  # shown as an error
    assert not widget.ui.nextCaseButton.enabled
    assert qt.QApplication.cursors == []  # the busy cursor is restored after a failure


def test_review_from_connect_to_saved_label_through_the_panel(widget, app_server, unlabelled):
    ui = widget.ui
    connect(widget, app_server.url)
    assert app_server.model in ui.serverInfoLabel.text
    assert qt.QSettings().value(MammoXAI.SETTINGS_URL) == app_server.url
    assert [button.text for button in widget.classGroup.buttons()] == app_server.class_names
    assert ui.saliencyComboBox.items == widget.logic.session.info.saliency_methods
    assert ui.saliencyComboBox.currentText == "gradcam" and "correlax" not in ui.saliencyComboBox.items

    ui.strategyComboBox.currentText = "random"
    ui.nextCaseButton.clicked.emit()
    case = widget.case
    assert case is not None and ui.caseLabel.text == case.image_id
    volume = slicer.util.layers["background"]
    assert volume is widget.logic.volumeNode

    ui.runButton.clicked.emit()
    assert widget.runTimer.isActive() and ui.cancelRunButton.enabled  # the panel stays usable while it runs
    assert not ui.runButton.enabled and not ui.nextCaseButton.enabled and not ui.saveButton.enabled
    assert ui.statusLabel.text.startswith(f"Running the model on {case.image_id}")
    finish_run(widget)
    assert not widget.runTimer.isActive() and ui.runButton.enabled and not ui.cancelRunButton.enabled
    view = widget.outcome.view
    assert ui.predictionTable.rowCount == len(view.rows)
    for index, row in enumerate(view.rows):
        item = ui.predictionTable.item(index, 0)
        assert item.text() == row.name
        assert (item.backgroundColor is not None) == row.highlighted
    assert ui.timingLabel.text.startswith("server ")
    heatmap = slicer.util.layers["foreground"]
    assert heatmap.GetDisplayNode().colorNodeID == MammoXAI.HEATMAP_COLOR_NODE_ID
    assert np.allclose(heatmap.ijkToRas, volume.ijkToRas)  # the heatmap lies exactly on the image
    assert heatmap.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()

    ui.opacitySlider.valueChanged.emit(0.8)
    assert slicer.util.layers["foregroundOpacity"] == 0.8
    ui.heatmapVisibleCheckBox.toggled.emit(False)
    assert slicer.util.layers["foregroundOpacity"] == 0.0
    ui.thresholdSlider.valueChanged.emit(0.5)
    low, high = heatmap.GetImageData().GetScalarRange()
    assert heatmap.GetDisplayNode().lowerThreshold == pytest.approx(low + 0.5 * (high - low))

    ui.addBoxButton.clicked.emit()
    box = slicer.modules.markups.logic().activeList
    assert box.IsA("vtkMRMLMarkupsROINode")
    column_mm, row_mm, _ = volume.GetSpacing()
    box.SetXYZ(-(9.5 + 39.5) / 2 * column_mm, -(19.5 + 59.5) / 2 * row_mm, 0.0)  # pixels x 10..40, y 20..60
    box.SetRadiusXYZ(15 * column_mm, 20 * row_mm, 0.5)
    widget.classGroup.buttons()[-1].checked = True
    ui.biradsComboBox.currentText = "5"
    ui.nextAfterSaveCheckBox.checked = False
    ui.saveButton.clicked.emit()

    assert ui.statusLabel.text == f"Saved the final label of {case.image_id}."
    label = widget.logic.session.read_back(case.image_id)
    assert label["class"] == app_server.class_names[-1]
    assert label["birads"] == "5"
    assert label["annotator"] == "dr.widget"
    assert label["lesions"][0]["box"] == pytest.approx([10, 20, 40, 60])


def test_saving_without_a_class_says_what_to_do_and_sends_nothing(widget, app_server, unlabelled):
    connect(widget, app_server.url)
    widget.ui.nextCaseButton.clicked.emit()
    assert widget.case is not None

    widget.ui.saveButton.clicked.emit()

    assert widget.ui.statusLabel.text.startswith("Choose a class")
    assert widget.logic.session.pending.pending() == []


def test_a_run_can_be_cancelled_and_its_late_answer_is_dropped(widget, app_server, unlabelled):
    ui = widget.ui
    connect(widget, app_server.url)
    ui.nextCaseButton.clicked.emit()
    ui.runButton.clicked.emit()
    future, image_id, _ = widget.running

    ui.cancelRunButton.clicked.emit()
    concurrent.futures.wait([future], timeout=300)  # the server still answers
    widget.runTimer.timeout.emit()

    assert ui.statusLabel.text.startswith(f"Cancelled the run on {image_id}")
    assert widget.outcome is None and slicer.util.layers.get("foreground") is None  # no heatmap laid over the image
    assert ui.runButton.enabled and ui.nextCaseButton.enabled and not ui.cancelRunButton.enabled
    assert not widget.runTimer.isActive()


def test_a_failed_run_is_shown_in_the_status_line_and_the_panel_is_usable_again(widget, app_server, unlabelled):
    ui = widget.ui
    connect(widget, app_server.url)
    ui.nextCaseButton.clicked.emit()
    widget.case = dataclasses.replace(widget.case, image_id="no_such_image")  # removed from the server meanwhile
    ui.runButton.clicked.emit()

    finish_run(widget)

    assert "no_such_image" in ui.statusLabel.text and "b00020" in ui.statusLabel.styleSheet
    assert widget.outcome is None and ui.runButton.enabled and not ui.cancelRunButton.enabled
    assert qt.QApplication.cursors == []


def test_a_run_after_a_cancelled_one_does_not_wait_for_it(widget, app_server, unlabelled, monkeypatch):
    ui = widget.ui
    connect(widget, app_server.url)
    ui.nextCaseButton.clicked.emit()
    session, release = widget.logic.session, threading.Event()
    answer = session.run
    monkeypatch.setattr(session, "run", lambda *args: release.wait(60) and answer(*args))  # a server that hangs
    ui.runButton.clicked.emit()
    ui.cancelRunButton.clicked.emit()
    monkeypatch.setattr(session, "run", answer)

    ui.runButton.clicked.emit()
    finish_run(widget)  # while the cancelled run still waits
    release.set()

    assert widget.outcome is not None and ui.statusLabel.text.startswith("Predicted")


def test_an_unexpected_failure_of_a_run_is_reported_and_leaves_the_panel_usable(
    widget, app_server, unlabelled, monkeypatch
):
    ui = widget.ui
    connect(widget, app_server.url)
    ui.nextCaseButton.clicked.emit()

    def full_disk(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(widget.logic.session, "run", full_disk)

    ui.runButton.clicked.emit()
    finish_run(widget)

    assert "failed: No space left" in ui.statusLabel.text and "b00020" in ui.statusLabel.styleSheet
    assert ui.runButton.enabled and ui.nextCaseButton.enabled and ui.connectButton.enabled


def test_training_status_is_polled_past_submitted_until_the_run_ends(widget, app_server):
    """MONAI Label says SUBMITTED until the run's process starts, which is what the first poll after Train sees."""
    info = MammoXAIClient(app_server.url).info()
    info.pop("train_stats", None)  # what earlier runs of the real server left out
    states = ["SUBMITTED", "RUNNING", "DONE"]

    def respond(method, path):
        if path.startswith("/train/"):
            state = states[0] if method == "POST" else states.pop(0)
            return 200, "application/json", json_body({"id": "t1", "status": state, "start_ts": "2024-05-01 09:30"})
        return 200, "application/json", json_body(info)

    with StandInServer(respond) as server:
        connect(widget, server.url)
        widget.ui.trainButton.clicked.emit()
        assert widget.ui.trainStatusLabel.text == "training SUBMITTED (started 2024-05-01 09:30)"
        assert widget.trainTimer.isActive()
        widget.trainTimer.timeout.emit()
        assert widget.ui.trainStatusLabel.text.startswith("training RUNNING") and widget.trainTimer.isActive()
        widget.trainTimer.timeout.emit()

    assert widget.ui.trainStatusLabel.text == "training DONE (started 2024-05-01 09:30)"
    assert not widget.trainTimer.isActive()


def test_connect_says_what_is_kept_and_old_corrections_are_sent_only_by_their_button(widget, app_server, unlabelled):
    label = {"class": app_server.class_names[0], "annotator": "dr.old", "timestamp": "2024-05-01T09:30:12+00:00"}
    old = Path(widget.logic.pendingFolder) / f"{unlabelled}.final.pending.json"  # saved by an earlier panel
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text(json.dumps({"image_id": unlabelled, "tag": "final", "label": label, "last_error": ""}))

    connect(widget, app_server.url)

    status = widget.ui.statusLabel.text
    assert status.startswith("Connected. Kept on disk: 1 correction saved by an earlier version"), status
    assert "'Send old corrections here'" in status and widget.ui.sendUnassignedButton.enabled
    assert old.is_file()

    widget.ui.sendUnassignedButton.clicked.emit()

    assert widget.ui.statusLabel.text == "Sent 1 of 1 old correction(s)."
    assert widget.logic.session.read_back(unlabelled) == label
    assert not widget.ui.sendUnassignedButton.enabled
