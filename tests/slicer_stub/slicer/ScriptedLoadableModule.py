"""Stand-in for ``slicer.ScriptedLoadableModule``: the four base classes of a scripted module."""

from __future__ import annotations

import os
import sys
import unittest

import qt


class ScriptedLoadableModule:  # noqa: B903 (a base class the module's classes extend, as Slicer's is)
    def __init__(self, parent: object) -> None:
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent: object = None) -> None:
        self.parent = parent
        self.layout = qt.QLayout()

    def setup(self) -> None:
        pass

    def resourcePath(self, filename: str) -> str:
        module_file = sys.modules[type(self).__module__].__file__
        return os.path.join(os.path.dirname(module_file), "Resources", filename)


class ScriptedLoadableModuleLogic:  # noqa: B903 (as above)
    def __init__(self, parent: object = None) -> None:
        self.parent = parent


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 0) -> None:
        pass


__all__ = [
    "ScriptedLoadableModule",
    "ScriptedLoadableModuleLogic",
    "ScriptedLoadableModuleTest",
    "ScriptedLoadableModuleWidget",
]
