"""Evaluation reports: one folder with ``report.json`` for machines, ``report.md`` for people and PNG figures.

Every evaluation in MammoXAI (metadata pretraining, explanation by ablation, fine-tuning) writes its numbers
through :class:`Report`, so they all look alike, carry the command and the environment that produced them
(a figure without its command cannot be reproduced; a time without its hardware means nothing) and can be read
back by a script. Figures are drawn with matplotlib's object-oriented API on the Agg canvas: no display, no
global ``pyplot`` state, safe in a server or a DataLoader worker.

Example:
    report = Report("Pretraining evaluation", command="python scripts/evaluate_pretrain.py ...")
    report.add_values("matching", {"auc": 0.97, "accuracy": 0.93})
    report.add_table("fields", [{"field": "view", "accuracy": 0.99}], title="Per-field accuracy")
    report.add_figure("confusion_view", confusion_matrix_figure(matrix, ["CC", "MLO"], "view"))
    report.write("eval/pretrain")      # report.json, report.md, confusion_view.png
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

import mammoxai

__all__ = ["Report", "hardware_description", "confusion_matrix_figure", "roc_figure", "bar_figure"]


def hardware_description(device: torch.device | str | None = None) -> str:
    """The processor a run used, for the record next to any time: the GPU name on CUDA, else the CPU model."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(errors="replace"), flags=re.MULTILINE)
        model = names[0].strip() if names else model
    return f"CPU {model} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy and torch scalars and arrays become Python values, NaN and infinities null."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    return value


def _cell(value: Any, float_format: str) -> str:
    value = _plain(value)
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format(value, float_format)
    return str(value).replace("|", "\\|").replace("\n", " ")


@dataclass
class _Block:
    kind: str  # "text", "values", "table" or "figure"
    title: str
    content: Any
    float_format: str = ".3f"


class Report:
    """The results of one evaluation, written as JSON, Markdown and PNG figures into one folder.

    Blocks appear in the Markdown in the order they are added; the JSON holds ``values``, ``tables`` and
    ``figures`` keyed by name, plus the title, command, creation time and environment.

    Args:
        title: the report's heading.
        description: a paragraph under the heading (what was evaluated, on what data, how to read it).
        command: the command that produced the report, recorded verbatim.
        device: the device the numbers were computed on, for the hardware line.
    """

    def __init__(
        self, title: str, description: str = "", command: str | None = None, device: torch.device | str | None = None
    ):
        self.title = title
        self.description = description
        self.command = command
        self.environment = {
            "mammoxai": mammoxai.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "hardware": hardware_description(device),
        }
        self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.values: dict[str, Any] = {}
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.figures: dict[str, Figure] = {}
        self._blocks: list[_Block] = []

    def _claim(self, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"report entry name {name!r} must be a file-name-safe identifier")
        if name in self.values or name in self.tables or name in self.figures:
            raise ValueError(f"report entry {name!r} was added twice")

    def add_text(self, title: str, text: str) -> None:
        """A Markdown paragraph under a heading (method notes, caveats); not part of the JSON results."""
        self._blocks.append(_Block("text", title, text))

    def add_values(
        self, name: str, values: Mapping[str, Any], title: str | None = None, float_format: str = ".3f"
    ) -> None:
        """Named scalars (or small nested values), shown as a two-column table."""
        self._claim(name)
        self.values[name] = dict(values)
        self._blocks.append(_Block("values", title or name, name, float_format))

    def add_data(self, name: str, data: Any) -> None:
        """Results for machines only (arrays, nested structures): in the JSON ``values``, not in the Markdown."""
        self._claim(name)
        self.values[name] = data

    def add_table(
        self,
        name: str,
        rows: Sequence[Mapping[str, Any]],
        title: str | None = None,
        columns: Sequence[str] | None = None,
        float_format: str = ".3f",
    ) -> None:
        """Rows of a table; ``columns`` picks and orders the Markdown columns (default: keys of all rows, in
        order of appearance). The JSON keeps every key of every row."""
        self._claim(name)
        self.tables[name] = [dict(row) for row in rows]
        columns = list(columns) if columns is not None else list(dict.fromkeys(key for row in rows for key in row))
        self._blocks.append(_Block("table", title or name, (name, columns), float_format))

    def add_figure(self, name: str, figure: Figure, title: str | None = None) -> None:
        """A matplotlib figure, saved as ``<name>.png`` and linked from the Markdown."""
        self._claim(name)
        self.figures[name] = figure
        self._blocks.append(_Block("figure", title or name, name))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (figures as their file names)."""
        return _plain(
            {
                "title": self.title,
                "description": self.description,
                "command": self.command,
                "created": self.created,
                "environment": self.environment,
                "values": self.values,
                "tables": self.tables,
                "figures": {name: f"{name}.png" for name in self.figures},
            }
        )

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        if self.description:
            lines += [self.description, ""]
        if self.command:
            lines += ["Command:", "", "```", self.command, "```", ""]
        environment = ", ".join(f"{key} {value}" for key, value in self.environment.items())
        lines += [f"Created {self.created}; {environment}.", ""]
        for block in self._blocks:
            lines += [f"## {block.title}", ""]
            if block.kind == "text":
                lines += [block.content, ""]
            elif block.kind == "values":
                rows = [{"": key, "value": value} for key, value in self.values[block.content].items()]
                lines += _markdown_table(rows, ["", "value"], block.float_format)
            elif block.kind == "table":
                name, columns = block.content
                lines += _markdown_table(self.tables[name], columns, block.float_format)
            else:
                lines += [f"![{block.title}]({block.content}.png)", ""]
        return "\n".join(lines)

    def write(self, out_dir: str | os.PathLike, dpi: int = 120) -> Path:
        """Write ``report.json``, ``report.md`` and one PNG per figure into ``out_dir`` (created); returns it."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, figure in self.figures.items():
            figure.savefig(out_dir / f"{name}.png", dpi=dpi, bbox_inches="tight")
        (out_dir / "report.json").write_text(
            json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        (out_dir / "report.md").write_text(self.to_markdown(), encoding="utf-8")
        return out_dir


def _markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], float_format: str) -> list[str]:
    if not rows:
        return ["(no rows)", ""]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(column), float_format) for column in columns) + " |" for row in rows]
    return lines + [""]


# -- figures ----------------------------------------------------------------------------------------------------
def confusion_matrix_figure(
    matrix: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str], title: str
) -> Figure:
    """Confusion matrix as a heat map of row-normalised rates (recall per true class), annotated with counts.

    Colouring by rate rather than count keeps a rare class's row readable next to a frequent one.
    """
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)
    side = 1.2 + 0.55 * len(class_names)
    figure = Figure(figsize=(side + 1.2, side))
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(
            column, row, str(count), ha="center", va="center", color="white" if rates[row, column] > 0.5 else "black"
        )
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="share of true class")
    return figure


def roc_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]], title: str) -> Figure:
    """ROC curves ``{label: (false positive rates, true positive rates, auc)}`` with the chance diagonal."""
    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.add_subplot()
    for label, (fpr, tpr, auc) in curves.items():
        axes.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title(title)
    axes.legend(loc="lower right")
    return figure


def bar_figure(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    xlabel: str,
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
) -> Figure:
    """Horizontal bars, first label on top, with optional interval whiskers ``[low, high]``."""
    values = np.asarray(values, dtype=np.float64)
    shown = np.where(np.isfinite(values), values, 0.0)  # an undefined value gets no bar
    figure = Figure(figsize=(5.5, 1.0 + 0.4 * len(labels)))
    axes = figure.add_subplot()
    positions = np.arange(len(labels))[::-1]
    errors = None
    if low is not None and high is not None:
        spans = np.stack([shown - np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64) - shown]).clip(
            min=0.0
        )
        errors = np.where(np.isfinite(spans), spans, 0.0)
    axes.barh(positions, shown, xerr=errors, color="tab:blue", capsize=3)
    axes.set_yticks(positions, labels)
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    return figure
