"""Stand-in for ``vtk``: the 4x4 matrix the MammoXAI module passes to and from MRML volume nodes."""

from __future__ import annotations


class vtkMatrix4x4:  # noqa: N801 (VTK's name)
    def __init__(self) -> None:
        self.elements = [[float(row == column) for column in range(4)] for row in range(4)]

    def SetElement(self, row: int, column: int, value: float) -> None:
        self.elements[row][column] = float(value)

    def GetElement(self, row: int, column: int) -> float:
        return self.elements[row][column]

    def DeepCopy(self, other: vtkMatrix4x4) -> None:
        self.elements = [list(row) for row in other.elements]
