"""Stand-in for ``slicer.util``: .ui loading into stub widgets, volume loading, slice-viewer layers."""

from __future__ import annotations

import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import nrrd
import qt
import slicer

layers: dict[str, Any] = {}
"""What the last ``setSliceViewerLayers`` calls set, merged (background, foreground, foregroundOpacity)."""

_PROPERTY_READERS = {"string": str, "bool": lambda text: text == "true", "double": float, "number": int, "enum": str}


def loadUI(path: str) -> qt.QWidget:
    """Every named ``<widget>`` of the .ui as a stub widget with its designer properties; layouts attached."""
    root = ElementTree.parse(path).getroot().find("widget")
    return _build(root)


def _build(element: ElementTree.Element) -> qt.QWidget:
    widget = qt.QWidget(kind=element.get("class"), name=element.get("name"))
    for prop in element.findall("property"):
        value = next(iter(prop))
        if value.tag in _PROPERTY_READERS:
            setattr(widget, prop.get("name"), _PROPERTY_READERS[value.tag](value.text or ""))
    layout = element.find("layout")
    if layout is not None:
        widget.setLayout(qt.QLayout(layout.get("class")))
    widget.children = [_build(child) for child in _child_widgets(element)]
    return widget


def _child_widgets(element: ElementTree.Element):
    """The <widget> elements directly inside ``element``, looking through layouts and items."""
    for child in element:
        if child.tag == "widget":
            yield child
        else:
            yield from _child_widgets(child)


def childWidgetVariables(widget: qt.QWidget) -> types.SimpleNamespace:
    names = {}

    def collect(node: qt.QWidget) -> None:
        for child in node.children:
            names[child.objectName] = child
            collect(child)

    collect(widget)
    return types.SimpleNamespace(**names)


def loadVolume(path: str, properties: dict[str, Any] | None = None) -> slicer.VolumeNode:
    """Read a DICOM mammogram or a 2D NRRD as Slicer would: pixels, and spacing (1 mm when the file states none)."""
    if Path(path).suffix == ".nrrd":
        array, header = nrrd.read(path, index_order="C")
        column_mm, row_mm = (float(abs(vector).max()) for vector in header["space directions"])
        spacing = (row_mm, column_mm)
    else:
        from mammoxai.io import read_mammogram  # the project's reader stands in for ITK's

        mammogram = read_mammogram(path)
        array, spacing = mammogram.pixels, mammogram.spacing or (1.0, 1.0)
    node = slicer.VolumeNode(Path(path).stem, array, spacing)
    return slicer.mrmlScene.AddNode(node)


def setSliceViewerLayers(**kwargs: Any) -> None:
    layers.update(kwargs)
