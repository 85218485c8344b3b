"""Stand-in for 3D Slicer's ``slicer`` module: a scene of minimal MRML nodes, the app and the markups logic.

Nodes keep what the MammoXAI module sets on them (matrices, colour node, thresholds, control points) so a
test can check it; volumes are read from the real files with pydicom / pynrrd, as Slicer's readers would.
"""

from __future__ import annotations

import types

import numpy as np
import vtk


class DisplayNode:
    def __init__(self) -> None:
        self.colorNodeID, self.autoWindowLevel, self.windowLevelMinMax = None, True, None
        self.applyThreshold, self.lowerThreshold, self.upperThreshold = False, None, None

    def SetAndObserveColorNodeID(self, node_id: str) -> None:
        self.colorNodeID = node_id

    def AutoWindowLevelOff(self) -> None:
        self.autoWindowLevel = False

    def SetWindowLevelMinMax(self, low: float, high: float) -> None:
        self.windowLevelMinMax = (low, high)

    def SetApplyThreshold(self, apply: bool) -> None:
        self.applyThreshold = bool(apply)

    def SetLowerThreshold(self, value: float) -> None:
        self.lowerThreshold = value

    def SetUpperThreshold(self, value: float) -> None:
        self.upperThreshold = value


class Node:
    className = "vtkMRMLNode"

    def __init__(self, name: str = "") -> None:
        self.name = name

    def IsA(self, class_name: str) -> bool:
        return class_name == self.className

    def GetName(self) -> str:
        return self.name

    def SetName(self, name: str) -> None:
        self.name = name


class ImageData:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def GetDimensions(self) -> tuple[int, int, int]:
        rows, columns = self.array.shape
        return columns, rows, 1

    def GetScalarRange(self) -> tuple[float, float]:
        return float(self.array.min()), float(self.array.max())


class VolumeNode(Node):
    className = "vtkMRMLScalarVolumeNode"

    def __init__(self, name: str, array: np.ndarray, spacing: tuple[float, float]) -> None:
        super().__init__(name)
        self.imageData, self.displayNode = ImageData(array), DisplayNode()
        self.ijkToRas = np.diag([-spacing[1], -spacing[0], 1.0, 1.0])

    def GetImageData(self) -> ImageData:
        return self.imageData

    def GetDisplayNode(self) -> DisplayNode:
        return self.displayNode

    def GetSpacing(self) -> tuple[float, float, float]:
        return tuple(float(np.linalg.norm(self.ijkToRas[:3, axis])) for axis in range(3))

    def SetIJKToRASMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        self.ijkToRas = np.array(matrix.elements)

    def GetRASToIJKMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        matrix.elements = np.linalg.inv(self.ijkToRas).tolist()


class FiducialNode(Node):
    className = "vtkMRMLMarkupsFiducialNode"

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.points: list[list[float]] = []

    def AddControlPoint(self, r: float, a: float, s: float) -> int:
        self.points.append([r, a, s])
        return len(self.points) - 1

    def GetNumberOfControlPoints(self) -> int:
        return len(self.points)

    def GetNthControlPointPositionWorld(self, index: int, position: list[float]) -> None:
        position[:] = self.points[index]


class ROINode(Node):
    className = "vtkMRMLMarkupsROINode"

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.center, self.radius = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]

    def SetXYZ(self, r: float, a: float, s: float) -> None:
        self.center = [r, a, s]

    def SetRadiusXYZ(self, r: float, a: float, s: float) -> None:
        self.radius = [r, a, s]

    def GetRASBounds(self, bounds: list[float]) -> None:
        bounds[:] = [value for c, h in zip(self.center, self.radius, strict=True) for value in (c - h, c + h)]


class Scene:
    classes = {cls.className: cls for cls in (FiducialNode, ROINode)}

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def AddNewNodeByClass(self, class_name: str, name: str = "") -> Node:
        node = self.classes[class_name](name)
        self.nodes.append(node)
        return node

    def AddNode(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def RemoveNode(self, node: Node) -> None:
        self.nodes.remove(node)

    def Clear(self) -> None:
        self.nodes.clear()


class MarkupsLogic:
    def __init__(self) -> None:
        self.activeList, self.placeMode = None, None

    def SetActiveList(self, node: Node) -> None:
        self.activeList = node

    def StartPlaceMode(self, persistent: bool) -> None:
        self.placeMode = bool(persistent)


mrmlScene = Scene()
app = types.SimpleNamespace(slicerUserSettingsFilePath="", processEvents=lambda: None)
_markups_logic = MarkupsLogic()
modules = types.SimpleNamespace(markups=types.SimpleNamespace(logic=lambda: _markups_logic))

from . import util  # noqa: E402  (util needs the scene above)

__all__ = ["app", "modules", "mrmlScene", "util"]
