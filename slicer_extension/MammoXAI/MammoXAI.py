"""MammoXAI: review explainable mammography predictions in 3D Slicer and send corrections back.

The panel connects to a MammoXAI MONAI Label server (``apps/mammography``), opens the next case the server's
active-learning strategy picks, shows the class probabilities, the metadata QC and the saliency heatmap over
the mammogram, and lets the reader correct the class, mark lesions with markups, save the label and start
training. All server work is done by the plain-Python :mod:`MammoXAILib`; this file only turns clicks into
logic calls and logic results into MRML nodes and table rows.

Inference, which takes seconds to minutes with the slower saliency methods, runs on a worker thread: the panel
stays usable, the status line counts the seconds, and **Cancel** stops waiting for it (the server finishes the run
and its answer is dropped). A ``qt.QTimer`` polls it, and the result reaches MRML in the GUI thread. Short calls
(connect, next case, save) run in the GUI thread behind a busy cursor and a status line, bounded by the client's
timeouts; training status is polled by a timer too, so the panel stays usable while training runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import Future

import qt
import slicer
import vtk
from MammoXAILib import (
    BIRADS,
    STRATEGIES,
    MammoXAIClientError,
    ReviewSession,
    box_lesion,
    ijk_to_ras,
    point_lesion,
)
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

SETTINGS_URL = "MammoXAI/serverUrl"
SETTINGS_STRATEGY = "MammoXAI/strategy"
SETTINGS_ANNOTATOR = "MammoXAI/annotator"
SETTINGS_USERNAME = "MammoXAI/username"
DEFAULT_URL = "http://127.0.0.1:8000"
HEATMAP_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"  # perceptually uniform, readable in grey print
TRAIN_POLL_MS = 5000
RUN_POLL_MS = 200


class MammoXAI(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MammoXAI"
        self.parent.categories = ["Mammography"]
        self.parent.dependencies = []
        self.parent.contributors = ["MammoXAI contributors"]
        self.parent.helpText = (
            "Review explainable mammography predictions from a MammoXAI MONAI Label server: class probabilities, "
            "metadata QC and the saliency heatmap; correct the class, mark lesions and send the label back. "
            "The demo model is trained on synthetic phantoms and is not for clinical use."
        )
        self.parent.acknowledgementText = (
            "Built on MONAI Label and 3D Slicer. Metadata pretraining after Litchfield et al. (SPIE 2022); "
            "saliency evaluation after Byra et al. (2022) and Mellado et al. (2025)."
        )


class MammoXAIWidget(ScriptedLoadableModuleWidget):
    """The panel: every handler reads the widgets, calls :class:`MammoXAILogic`, and shows the outcome."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MammoXAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MammoXAILogic()
        self.case = None
        self.outcome = None
        self.running = None  # (future, image id, start time) of the inference in flight
        self.classGroup = qt.QButtonGroup(uiWidget)

        settings = qt.QSettings()
        self.ui.serverUrlEdit.text = settings.value(SETTINGS_URL, DEFAULT_URL)
        self.ui.annotatorEdit.text = settings.value(SETTINGS_ANNOTATOR, "")
        self.ui.usernameEdit.text = settings.value(SETTINGS_USERNAME, "")
        self.ui.strategyComboBox.addItems(list(STRATEGIES))
        self.ui.strategyComboBox.currentText = settings.value(SETTINGS_STRATEGY, STRATEGIES[0])
        self.ui.biradsComboBox.addItems(["", *BIRADS])

        self.ui.connectButton.clicked.connect(self.onConnect)
        self.ui.sendUnassignedButton.clicked.connect(self.onSendUnassigned)
        self.ui.nextCaseButton.clicked.connect(self.onNextCase)
        self.ui.runButton.clicked.connect(self.onRun)
        self.ui.cancelRunButton.clicked.connect(self.onCancelRun)
        self.ui.heatmapVisibleCheckBox.toggled.connect(self.logic.setHeatmapVisible)
        self.ui.opacitySlider.valueChanged.connect(self.logic.setHeatmapOpacity)
        self.ui.thresholdSlider.valueChanged.connect(self.logic.setHeatmapThreshold)
        self.ui.addPointButton.clicked.connect(self.logic.placeLesionPoint)
        self.ui.addBoxButton.clicked.connect(self.logic.placeLesionBox)
        self.ui.clearMarksButton.clicked.connect(self.logic.clearLesions)
        self.ui.saveButton.clicked.connect(self.onSave)
        self.ui.trainButton.clicked.connect(self.onTrain)
        self.ui.stopTrainButton.clicked.connect(self.onStopTrain)

        self.trainTimer = qt.QTimer()
        self.trainTimer.setInterval(TRAIN_POLL_MS)
        self.trainTimer.timeout.connect(self.onTrainPoll)
        self.runTimer = qt.QTimer()
        self.runTimer.setInterval(RUN_POLL_MS)
        self.runTimer.timeout.connect(self.onRunPoll)
        self._updateButtons()

    def cleanup(self):
        self.trainTimer.stop()
        self.runTimer.stop()

    # ---------------------------------------------------------------- handlers
    def onConnect(self):
        url = self.ui.serverUrlEdit.text.strip()
        with self._busy(f"Connecting to {url}…"):
            username = self.ui.usernameEdit.text.strip()
            info = self.logic.connect(url, annotator=self.ui.annotatorEdit.text, username=username,
                                      password=self.ui.passwordEdit.text)  # fmt: skip
            settings = qt.QSettings()
            settings.setValue(SETTINGS_URL, info.url)
            settings.setValue(SETTINGS_ANNOTATOR, self.ui.annotatorEdit.text)
            settings.setValue(SETTINGS_USERNAME, username)  # never the password
            self.ui.serverInfoLabel.text = info.summary
            self._setClassButtons(info.class_names)
            self.ui.saliencyComboBox.clear()  # what this server can run on its grid; empty: its configured method
            self.ui.saliencyComboBox.addItems(info.saliency_methods)
            self.ui.saliencyComboBox.currentText = info.saliency_method
            kept = self.logic.session.pending_summary()
            self._status(f"Connected. Kept on disk: {kept}." if kept else "Connected.")
        self._updateButtons()

    def onSendUnassigned(self):
        """Send the corrections an earlier version of the panel kept without a server to the connected one: the
        user's word that they were made on it."""
        session = self.logic.session_or_fail()
        with self._busy(f"Sending old corrections to {session.client.url}…"):
            adopted, sent = session.send_unassigned()
            kept = session.pending_summary()
            self._status(
                f"Sent {len(sent)} of {adopted} old correction(s)." + (f" Kept on disk: {kept}." if kept else "")
            )
        self._updateButtons()

    def onNextCase(self):
        strategy = self.ui.strategyComboBox.currentText
        qt.QSettings().setValue(SETTINGS_STRATEGY, strategy)
        with self._busy(f"Fetching the next case ({strategy})…"):
            self.case = self.logic.nextCase(strategy)
            self.outcome = None
            self._clearTable()
            if self.case is None:
                self._status("Every image has a final label: nothing left to review.")
            else:
                self.ui.caseLabel.text = self.case.image_id
                self._status(f"Loaded {self.case.image_id}." + (f" Note: {self.case.note}." if self.case.note else ""))
        self._updateButtons()

    def onRun(self):
        if self.case is None:
            self._status("Open a case first (Next case).", error=True)
            return
        if self.running is not None:  # a second click before the buttons were updated
            return
        session = self.logic.session
        if session is None:
            self._status("Not connected: press Connect first", error=True)
            return
        future = _inBackground(session.run, self.case.image_id, self.ui.saliencyComboBox.currentText)
        self.running = (future, self.case.image_id, time.monotonic())
        self._status(f"Running the model on {self.case.image_id}…")
        self.runTimer.start()
        self._updateButtons()

    def onRunPoll(self):
        """Count the seconds of the inference in flight; show its outcome (in the GUI thread) once it is back."""
        if self.running is None:
            self.runTimer.stop()
            return
        future, imageId, started = self.running
        if not future.done():
            self._status(f"Running the model on {imageId}… {time.monotonic() - started:.0f} s (Cancel stops waiting)")
            return
        self.runTimer.stop()
        self.running = None
        try:
            with self._busy(f"Showing the prediction of {imageId}…"):
                self.outcome = self.logic.showOutcome(future.result())
                self._showPrediction(self.outcome.view)
                self.logic.setHeatmapOpacity(self.ui.opacitySlider.value)
                self.logic.setHeatmapThreshold(self.ui.thresholdSlider.value)
                self.logic.setHeatmapVisible(self.ui.heatmapVisibleCheckBox.checked)
                self.ui.timingLabel.text = self.outcome.view.timing_text
                notes = "; ".join(self.outcome.notes)
                self._status(f"Predicted {self.outcome.view.predicted_class}." + (f" Note: {notes}." if notes else ""))
        except Exception as error:  # not a server answer (a full disk, a bug): say so, with the traceback in the log
            logging.exception(f"MammoXAI: the run on {imageId} failed")
            self._status(f"The run on {imageId} failed: {error}", error=True)
        finally:
            self._updateButtons()  # the panel stays usable whatever happened

    def onCancelRun(self):
        """Stop waiting for the inference in flight: the server finishes it, and its answer is dropped."""
        if self.running is None:
            return
        _, imageId, _ = self.running
        self.running = None
        self.runTimer.stop()
        self._status(f"Cancelled the run on {imageId}: the server may still finish it; its result is not shown.")
        self._updateButtons()

    def onSave(self):
        if self.case is None:
            self._status("Open a case first (Next case).", error=True)
            return
        button = self.classGroup.checkedButton()
        className = button.text if button is not None else ""
        with self._busy(f"Saving the correction of {self.case.image_id}…"):
            self.logic.save(self.case.image_id, className, self.ui.biradsComboBox.currentText or None)
            self._status(f"Saved the final label of {self.case.image_id}.")
            if self.ui.nextAfterSaveCheckBox.checked:
                self.onNextCase()

    def onTrain(self):
        with self._busy("Starting training…"):
            self.logic.session_or_fail().start_training()
            self.trainTimer.start()
            self.onTrainPoll()

    def onStopTrain(self):
        with self._busy("Stopping training…"):
            self.logic.session_or_fail().stop_training()
            self.onTrainPoll()

    def onTrainPoll(self):
        status = self.logic.session_or_fail().training_status()
        self.ui.trainStatusLabel.text = status.line
        if status.ended:
            self.trainTimer.stop()

    # ---------------------------------------------------------------- view helpers
    def _setClassButtons(self, classNames):
        layout = self.ui.classButtonsFrame.layout()
        for button in list(self.classGroup.buttons()):
            self.classGroup.removeButton(button)
            layout.removeWidget(button)
            button.deleteLater()
        for name in classNames:
            button = qt.QRadioButton(name)
            self.classGroup.addButton(button)
            layout.addWidget(button)

    def _showPrediction(self, view):
        table = self.ui.predictionTable
        table.setRowCount(len(view.rows))
        for index, row in enumerate(view.rows):
            for column, text in enumerate((row.name, row.value, row.reference)):
                item = qt.QTableWidgetItem(text)
                if row.mismatch:
                    item.setBackground(qt.QColor(255, 200, 120))
                    item.setToolTip("the prediction from the pixels disagrees with the DICOM header")
                elif row.highlighted:
                    item.setBackground(qt.QColor(200, 230, 255))
                table.setItem(index, column, item)
        self.ui.qcLabel.text = "\n".join(view.qc_messages) or "no QC findings"

    def _clearTable(self):
        self.ui.predictionTable.setRowCount(0)
        self.ui.qcLabel.text = ""
        self.ui.timingLabel.text = ""

    def _updateButtons(self):
        connected, idle = self.logic.session is not None, self.running is None
        self.ui.connectButton.enabled = idle
        self.ui.sendUnassignedButton.enabled = connected and idle and bool(self.logic.session.pending.unassigned())
        self.ui.nextCaseButton.enabled = connected and idle
        self.ui.runButton.enabled = connected and idle and self.case is not None
        self.ui.cancelRunButton.enabled = not idle
        self.ui.saveButton.enabled = connected and idle and self.case is not None
        trainable = connected and bool(self.logic.session.info.trainers)
        self.ui.trainButton.enabled = trainable
        self.ui.stopTrainButton.enabled = trainable

    def _status(self, text, error=False):
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet("color: #b00020" if error else "")
        (logging.error if error else logging.info)(f"MammoXAI: {text}")

    @contextlib.contextmanager
    def _busy(self, text):
        """Busy cursor and a status line while a call runs; a failure is shown in the status line, not raised."""
        self._status(text)
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        slicer.app.processEvents()
        try:
            yield
        except MammoXAIClientError as error:
            self._status(error.message, error=True)
        finally:
            qt.QApplication.restoreOverrideCursor()


def _inBackground(function, *args):
    """Run ``function(*args)`` on a daemon thread of its own; the returned future holds its result or exception.

    Not a pool: a run the user cancelled keeps its thread until the server answers, and must neither hold up the
    next run nor keep Slicer from quitting.
    """
    future = Future()

    def work():
        try:
            future.set_result(function(*args))
        except BaseException as error:  # noqa: B036 - handed to the GUI thread, which reports it
            future.set_exception(error)

    threading.Thread(target=work, name="MammoXAI inference", daemon=True).start()
    return future


class MammoXAILogic(ScriptedLoadableModuleLogic):
    """MRML side of the review: volumes, the heatmap layer and lesion markups; the rest is :class:`ReviewSession`.

    Args:
        pendingFolder: where unsent corrections are kept (default: ``MammoXAI/pending`` next to Slicer's
            user settings, so they survive a restart).
    """

    def __init__(self, pendingFolder=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.workFolder = tempfile.mkdtemp(prefix="mammoxai-")
        settingsFolder = os.path.dirname(slicer.app.slicerUserSettingsFilePath)
        self.pendingFolder = pendingFolder or os.path.join(settingsFolder, "MammoXAI", "pending")
        self.session = None
        self.volumeNode = None
        self.heatmapNode = None
        self.heatmapRange = (0.0, 1.0)
        self.opacity = 0.5
        self.lesionNodes = []

    def connect(self, url, token=None, annotator="", username="", password=""):
        """Connect a new review session; log in first with ``username`` and ``password`` when given."""
        session = ReviewSession(url, self.workFolder, self.pendingFolder, token=token, annotator=annotator)
        info = session.connect(username, password)
        self.session = session
        return info

    def session_or_fail(self):
        if self.session is None:
            raise MammoXAIClientError("Not connected: press Connect first", "input")
        return self.session

    # ---------------------------------------------------------------- image and heatmap
    def nextCase(self, strategy):
        case = self.session_or_fail().next_case(strategy)
        if case is not None:
            self.loadImage(case.image_path)
        return case

    def loadImage(self, path):
        """Load a mammogram as a one-slice volume with ITK's 2D geometry (origin 0, LPS identity directions)."""
        self._removeCaseNodes()
        node = slicer.util.loadVolume(path, {"singleFile": True, "show": True})
        spacing = node.GetSpacing()
        self._setGeometry(node, (spacing[1], spacing[0]))
        self.volumeNode = node
        slicer.util.setSliceViewerLayers(background=node, foreground=None, fit=True)
        return node

    def showOutcome(self, outcome):
        """Lay the heatmap of an inference outcome (:meth:`ReviewSession.run`) over the image, on the geometry the
        server reports; MRML work, so in the GUI thread."""
        if self.volumeNode is not None:
            self._setGeometry(self.volumeNode, outcome.view.spacing_mm)
        self._removeNode(self.heatmapNode)
        self.heatmapNode = None
        if outcome.heatmap_path is not None:
            self.heatmapNode = self._showHeatmap(outcome.heatmap_path, outcome.view.spacing_mm)
        return outcome

    def _showHeatmap(self, path, spacing):
        node = slicer.util.loadVolume(path, {"singleFile": True, "show": False})
        node.SetName(f"{node.GetName()} (MammoXAI heatmap)")
        self._setGeometry(node, spacing)
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(HEATMAP_COLOR_NODE_ID)
        low, high = node.GetImageData().GetScalarRange()
        self.heatmapRange = (low, high if high > low else low + 1.0)
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(*self.heatmapRange)
        display.SetApplyThreshold(True)
        slicer.util.setSliceViewerLayers(background=self.volumeNode, foreground=node, foregroundOpacity=self.opacity)
        return node

    def setHeatmapOpacity(self, opacity):
        """Opacity 0..1 of the heatmap layer."""
        self.opacity = float(opacity)
        if self.heatmapNode is not None:
            slicer.util.setSliceViewerLayers(foregroundOpacity=self.opacity)

    def setHeatmapThreshold(self, fraction):
        """Hide heatmap values below ``fraction`` (0..1) of its range, so only the salient regions are coloured."""
        if self.heatmapNode is None:
            return
        low, high = self.heatmapRange
        self.heatmapNode.GetDisplayNode().SetLowerThreshold(low + float(fraction) * (high - low))
        self.heatmapNode.GetDisplayNode().SetUpperThreshold(high)

    def setHeatmapVisible(self, visible):
        if self.heatmapNode is not None:
            slicer.util.setSliceViewerLayers(foregroundOpacity=self.opacity if visible else 0.0)

    @staticmethod
    def _setGeometry(node, spacing):
        matrix = vtk.vtkMatrix4x4()
        for row, values in enumerate(ijk_to_ras(spacing)):
            for column, value in enumerate(values):
                matrix.SetElement(row, column, value)
        node.SetIJKToRASMatrix(matrix)

    # ---------------------------------------------------------------- lesions
    def placeLesionPoint(self):
        """Start placing points in one fiducial list (one per case)."""
        points = next((node for node in self.lesionNodes if node.IsA("vtkMRMLMarkupsFiducialNode")), None)
        if points is None:
            points = self._newLesionNode("vtkMRMLMarkupsFiducialNode", "Lesion points")
        self._startPlacing(points, persistent=True)

    def placeLesionBox(self):
        """Start drawing one new ROI box."""
        self._startPlacing(self._newLesionNode("vtkMRMLMarkupsROINode", "Lesion box"), persistent=False)

    def clearLesions(self):
        for node in self.lesionNodes:
            self._removeNode(node)
        self.lesionNodes = []

    def lesions(self):
        """The marked lesions as label entries in original pixel coordinates of the current image."""
        if not self.lesionNodes:
            return []
        if self.volumeNode is None:
            raise MammoXAIClientError("No image is loaded: open a case before marking lesions", "input")
        rasToIjk = vtk.vtkMatrix4x4()
        self.volumeNode.GetRASToIJKMatrix(rasToIjk)
        matrix = [[rasToIjk.GetElement(row, column) for column in range(4)] for row in range(4)]
        columns, rows, _ = self.volumeNode.GetImageData().GetDimensions()
        lesions = []
        for node in self.lesionNodes:
            if node.IsA("vtkMRMLMarkupsROINode"):
                bounds = [0.0] * 6
                node.GetRASBounds(bounds)
                lesions.append(box_lesion(matrix, bounds, (rows, columns)))
            else:
                for index in range(node.GetNumberOfControlPoints()):
                    ras = [0.0, 0.0, 0.0]
                    node.GetNthControlPointPositionWorld(index, ras)
                    lesions.append(point_lesion(matrix, ras, (rows, columns)))
        return lesions

    def save(self, imageId, className, birads=None):
        """Build the label from the class, BI-RADS and markups, and send it (kept on disk until it is accepted)."""
        session = self.session_or_fail()
        shape = None
        if self.volumeNode is not None:
            columns, rows, _ = self.volumeNode.GetImageData().GetDimensions()
            shape = (rows, columns)
        label = session.make_label(className, birads=birads, lesions=self.lesions(), image_shape=shape)
        return session.submit(imageId, label)

    def _newLesionNode(self, className, name):
        node = slicer.mrmlScene.AddNewNodeByClass(className, name)
        self.lesionNodes.append(node)
        return node

    @staticmethod
    def _startPlacing(node, persistent):
        markupsLogic = slicer.modules.markups.logic()
        markupsLogic.SetActiveList(node)
        markupsLogic.StartPlaceMode(persistent)

    def _removeCaseNodes(self):
        self.clearLesions()
        for node in (self.heatmapNode, self.volumeNode):
            self._removeNode(node)
        self.heatmapNode = self.volumeNode = None

    @staticmethod
    def _removeNode(node):
        if node is not None:
            slicer.mrmlScene.RemoveNode(node)


class MammoXAITest(ScriptedLoadableModuleTest):
    """Self-tests Slicer's CTest runs: they need no server (one test uses a port nothing listens on)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_roi_and_points_become_original_pixel_coordinates()
        self.setUp()
        self.test_unreachable_server_is_reported_and_leaves_no_session()

    def test_roi_and_points_become_original_pixel_coordinates(self):
        import numpy as np

        self.delayDisplay("Markups to original pixels")
        logic = MammoXAILogic(pendingFolder=tempfile.mkdtemp())
        volume = slicer.util.addVolumeFromArray(np.zeros((1, 80, 60), dtype=np.float32), name="mammogram")
        logic._setGeometry(volume, (0.2, 0.1))  # rows 0.2 mm, columns 0.1 mm
        logic.volumeNode = volume
        box = logic._newLesionNode("vtkMRMLMarkupsROINode", "box")
        # pixel box x 10..40, y 20..60: I edges at 9.5 and 39.5, J edges at 19.5 and 59.5 (RAS = -index * spacing)
        box.SetXYZ(-(9.5 + 39.5) / 2 * 0.1, -(19.5 + 59.5) / 2 * 0.2, 0.0)
        box.SetRadiusXYZ(30 * 0.1 / 2, 40 * 0.2 / 2, 0.5)
        points = logic._newLesionNode("vtkMRMLMarkupsFiducialNode", "points")
        points.AddControlPoint(-30.0 * 0.1, -44.0 * 0.2, 0.0)  # pixel centre (30.5, 44.5)

        lesions = logic.lesions()

        self.assertEqual(lesions[0]["type"], "box")
        for value, expected in zip(lesions[0]["box"], (10, 20, 40, 60)):
            self.assertAlmostEqual(value, expected, places=3)
        self.assertAlmostEqual(lesions[1]["point"][0], 30.5, places=3)
        self.assertAlmostEqual(lesions[1]["point"][1], 44.5, places=3)
        self.delayDisplay("Test passed")

    def test_unreachable_server_is_reported_and_leaves_no_session(self):
        import socket

        self.delayDisplay("Unreachable server")
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        logic = MammoXAILogic(pendingFolder=tempfile.mkdtemp())
        with self.assertRaises(MammoXAIClientError) as raised:
            logic.connect(f"http://127.0.0.1:{port}")
        self.assertEqual(raised.exception.kind, "unreachable")
        self.assertIsNone(logic.session)
        self.delayDisplay("Test passed")
