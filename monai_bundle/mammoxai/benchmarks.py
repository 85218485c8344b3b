"""What the benchmark scripts share: their sections of ``BENCHMARKS.md`` and their ``HxW`` arguments.

A benchmark figure is only worth its command, its hardware and what else ran on that hardware, so every section
carries the three. Each script keeps one section per hardware: a rerun on the same hardware replaces its earlier
section (a stale figure beside a fresh one invites reading the wrong one), a run on other hardware adds one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from mammoxai.reports import hardware_description

__all__ = ["load_average", "record_section", "replace_section", "image_size"]

TITLE = "# Benchmarks\n\nEvery figure with the command that produced it and the hardware it ran on.\n"


def load_average() -> str:
    """The system load average, for the record: other processes competing for the CPU (or for feeding the GPU)
    slow a run down, and a reader comparing two sections needs to know."""
    if not hasattr(os, "getloadavg"):
        return "load unknown"
    return "load average (1, 5, 15 min) " + ", ".join(f"{value:.1f}" for value in os.getloadavg())


def record_section(
    path: Path,
    section: str,
    device: torch.device,
    command: str,
    description: str,
    table: Sequence[str],
    notes: Sequence[str] = (),
) -> None:
    """Write a run as the ``section`` of ``path`` for the hardware of ``device``, dated, with its ``command``,
    the hardware and load, ``description`` (what was measured and how), the Markdown ``table`` lines and ``notes``.

    The file is created with a title when absent; an earlier section of the same name and hardware is replaced.
    """
    heading = f"## {section}: {hardware_description(device)},"
    lines = [
        f"{heading} {datetime.now(timezone.utc):%Y-%m-%d}",
        "",
        f"Command: `{command}`",
        "",
        f"Hardware: {hardware_description(device)}; torch {torch.__version__}; {load_average()}. {description}",
        "",
        *table,
        "",
        *[f"- {note}" for note in notes],
        "",
    ]
    existing = path.read_text(encoding="utf-8") if path.is_file() else TITLE
    path.write_text(replace_section(existing, heading, "\n".join(lines)), encoding="utf-8")


def replace_section(text: str, heading: str, section: str) -> str:
    """``text`` with the ``##`` section whose heading starts with ``heading`` replaced by ``section``, or with
    ``section`` appended when there is none."""
    start = text.find(f"\n{heading}")
    if start < 0:
        return text.rstrip("\n") + "\n\n" + section
    end = text.find("\n## ", start + 1)
    rest = text[end:] if end >= 0 else ""
    return text[: start + 1] + section.rstrip("\n") + ("\n" + rest if rest else "\n")


def image_size(text: str) -> tuple[int, int]:
    """An argparse type: ``"512x416"`` -> ``(512, 416)`` (height, width)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW, e.g. 512x416") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive HxW")
    return height, width
