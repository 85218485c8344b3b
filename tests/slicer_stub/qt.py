"""Stand-in for PythonQt's ``qt`` module: just the widgets, signals and settings the MammoXAI panel touches.

Widgets keep their properties as attributes and record signal connections, so a test can ``emit`` a signal
the way a click would and read back what the panel wrote. 3D Slicer (and its Qt) cannot be installed here.
"""

from __future__ import annotations

from typing import Any, Callable

_SIGNALS = ("clicked", "toggled", "valueChanged", "currentTextChanged", "textChanged", "timeout")


class Signal:
    def __init__(self) -> None:
        self.slots: list[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> None:
        self.slots.append(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self.slots):
            slot(*args)


class QLayout:
    def __init__(self, kind: str = "QVBoxLayout") -> None:
        self.kind = kind
        self.widgets: list[Any] = []

    def addWidget(self, widget: Any) -> None:
        self.widgets.append(widget)

    def removeWidget(self, widget: Any) -> None:
        self.widgets.remove(widget)


class QWidget:
    """Any widget: properties are attributes; combo, table and check behaviour on top."""

    def __init__(self, text: str = "", kind: str = "QWidget", name: str = "") -> None:
        self.kind, self.objectName, self.text = kind, name, text
        self.enabled, self.checked, self.value, self.toolTip, self.styleSheet = True, False, 0.0, "", ""
        self.items: list[str] = []
        self._current = ""
        self.rows: dict[tuple[int, int], QTableWidgetItem] = {}
        self.rowCount = 0
        self._layout: QLayout | None = None

    def __getattr__(self, name: str) -> Signal:
        if name in _SIGNALS:
            signal = Signal()
            setattr(self, name, signal)
            return signal
        raise AttributeError(name)

    # combo box
    def addItems(self, items: list[str]) -> None:
        self.items.extend(items)
        self._current = self._current or (items[0] if items else "")

    def clear(self) -> None:
        self.items, self._current = [], ""

    @property
    def currentText(self) -> str:
        return self._current

    @currentText.setter
    def currentText(self, text: str) -> None:
        if text in self.items:
            self._current = text

    # table
    def setRowCount(self, count: int) -> None:
        self.rowCount = count
        self.rows = {key: item for key, item in self.rows.items() if key[0] < count}

    def setItem(self, row: int, column: int, item: QTableWidgetItem) -> None:
        self.rows[(row, column)] = item

    def item(self, row: int, column: int) -> QTableWidgetItem | None:
        return self.rows.get((row, column))

    # layout and the rest
    def setLayout(self, layout: QLayout) -> None:
        self._layout = layout

    def layout(self) -> QLayout | None:
        return self._layout

    def setStyleSheet(self, style: str) -> None:
        self.styleSheet = style

    def setMRMLScene(self, scene: Any) -> None:
        self.mrmlScene = scene

    def deleteLater(self) -> None:
        self.deleted = True


def QRadioButton(text: str = "") -> QWidget:  # noqa: N802 (Qt's name)
    return QWidget(text, kind="QRadioButton")


class QButtonGroup:
    def __init__(self, parent: Any = None) -> None:
        self._buttons: list[QWidget] = []

    def addButton(self, button: QWidget) -> None:
        self._buttons.append(button)

    def removeButton(self, button: QWidget) -> None:
        self._buttons.remove(button)

    def buttons(self) -> list[QWidget]:
        return list(self._buttons)

    def checkedButton(self) -> QWidget | None:
        return next((button for button in self._buttons if button.checked), None)


class QColor:
    def __init__(self, red: int, green: int, blue: int) -> None:
        self.rgb = (red, green, blue)


class QTableWidgetItem:
    def __init__(self, text: str = "") -> None:
        self._text, self.backgroundColor, self.toolTip = text, None, ""

    def text(self) -> str:
        return self._text

    def setBackground(self, color: QColor) -> None:
        self.backgroundColor = color

    def setToolTip(self, text: str) -> None:
        self.toolTip = text


class QSettings:
    """Application settings shared by every instance, as QSettings with one organisation is."""

    store: dict[str, Any] = {}

    def value(self, key: str, default: Any = None) -> Any:
        return self.store.get(key, default)

    def setValue(self, key: str, value: Any) -> None:
        self.store[key] = value


class QTimer:
    def __init__(self) -> None:
        self.timeout = Signal()
        self.interval, self.active = 0, False

    def setInterval(self, milliseconds: int) -> None:
        self.interval = milliseconds

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def isActive(self) -> bool:
        return self.active


class Qt:
    WaitCursor = 3


class QApplication:
    cursors: list[int] = []

    @classmethod
    def setOverrideCursor(cls, cursor: int) -> None:
        cls.cursors.append(cursor)

    @classmethod
    def restoreOverrideCursor(cls) -> None:
        cls.cursors.pop()
