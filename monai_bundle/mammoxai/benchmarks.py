"""What the benchmark scripts share: their sections of ``BENCHMARKS.md`` and their ``HxW`` arguments.

A benchmark figure is only worth its command, its hardware and what else ran on that hardware, so every section
carries the three. The scripts write a section only when asked (``--record``), and keep one section per hardware
and settings: a rerun of the same settings on the same hardware replaces its earlier section (a stale figure beside
a fresh one invites reading the wrong one); a run on other hardware, or of other settings (a reduced-size check of
a full-size figure), adds one beside it and leaves the earlier figures alone.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import torch

from mammoxai.reports import hardware_description

__all__ = ["add_record_option", "load_average", "command_settings", "record_section", "replace_section", "image_size"]

TITLE = "# Benchmarks\n\nEvery figure with the command that produced it and the hardware it ran on.\n"


def load_average() -> str:
    """The system load average, for the record: other processes competing for the CPU (or for feeding the GPU)
    slow a run down, and a reader comparing two sections needs to know."""
    if not hasattr(os, "getloadavg"):
        return "load unknown"
    return "load average (1, 5, 15 min) " + ", ".join(f"{value:.1f}" for value in os.getloadavg())


def add_record_option(parser: argparse.ArgumentParser, default: Path) -> None:
    """The benchmark scripts' ``--record [FILE]``: recording is asked for, never a side effect of a run, so a reduced
    smoke run cannot replace the recorded figures (:func:`record_section` keys sections by hardware and settings)."""
    parser.add_argument(
        "--record", nargs="?", type=Path, const=default, metavar="FILE",
        help=f"write the run into {default.name} (or FILE) as a section that replaces an earlier one of the same "
        "hardware and settings, or is added beside the others; without --record the table is only printed",
    )  # fmt: skip


def command_settings(
    build_parser: Callable[[], argparse.ArgumentParser], ignore: Collection[str]
) -> Callable[[str], dict[str, Any] | None]:
    """The ``settings`` function of :func:`record_section` for a script: a recorded command line
    (``python scripts/bench_x.py --option value ...``) -> its options as the script's parser reads them, defaults
    filled in, except the ``ignore`` destinations (those that change no figure: ``device``, ``note``, ``record``).

    Two spellings of one run (``--warmup 5`` or the default, options in another order) thus match, and a command
    that no longer parses (an option since renamed, an abbreviation that two options now share, a quote left open
    by a hand edit) matches nothing: its section is left alone, and the run that is recording goes on. Options are
    read as the script reads them, abbreviations included, so a command matches its own rerun.
    """

    def settings(command: str) -> dict[str, Any] | None:
        try:
            words = shlex.split(command)
        except ValueError:  # a quote left open
            return None
        script = next((index for index, word in enumerate(words) if word.endswith(".py")), None)
        if script is None:
            return None
        parser = build_parser()
        parser.exit_on_error = False  # an unreadable recorded command is no match, not the end of this run
        parser.error = _unreadable  # argparse calls error() itself for some (an ambiguous abbreviation), which exits
        try:
            parsed, unknown = parser.parse_known_args(words[script + 1 :])
        except (argparse.ArgumentError, SystemExit):  # SystemExit: a recorded --help or --version
            return None
        if unknown:
            return None
        return {name: value for name, value in vars(parsed).items() if name not in ignore}

    return settings


def _unreadable(message: str) -> NoReturn:
    """``ArgumentParser.error`` for a recorded command: raise, instead of printing usage and exiting."""
    raise argparse.ArgumentError(None, message)


def record_section(
    path: Path,
    section: str,
    device: torch.device,
    command: str,
    description: str,
    table: Sequence[str],
    notes: Sequence[str] = (),
    settings: Callable[[str], object] = str,
) -> None:
    """Write a run as the ``section`` of ``path`` for the hardware of ``device`` and the run's settings, dated,
    with its ``command``, the hardware and load, ``description`` (what was measured and how), the Markdown
    ``table`` lines and ``notes``.

    The file is created with a title when absent. An earlier section of the same name and hardware whose recorded
    command has the same ``settings`` (default: the very same command; see :func:`command_settings`) is replaced;
    otherwise the section is added after the last one of its name, or at the end.
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
    mine = settings(command)

    def same_run(earlier: str) -> bool:
        recorded = re.search(r"^Command: `(.*)`$", earlier, re.MULTILINE)
        return earlier.startswith(heading) and recorded is not None and settings(recorded.group(1)) == mine

    existing = path.read_text(encoding="utf-8") if path.is_file() else TITLE
    text = replace_section(existing, "\n".join(lines), same_run, lambda earlier: earlier.startswith(f"## {section}:"))
    path.write_text(text, encoding="utf-8")


def replace_section(
    text: str, section: str, same: Callable[[str], bool], kin: Callable[[str], bool] = lambda earlier: False
) -> str:
    """``text`` with its first ``##`` section for which ``same(section text)`` holds replaced by ``section``; when
    none does, ``section`` inserted after the last section for which ``kin`` holds, or appended."""
    starts = [match.start() + 1 for match in re.finditer(r"\n## ", text)]
    spans = list(zip(starts, [*starts[1:], len(text)], strict=False))  # no section: no span, len(text) unpaired
    replaced = next(((start, end) for start, end in spans if same(text[start:end])), None)
    if replaced is None:
        after = [end for start, end in spans if kin(text[start:end])]
        position = after[-1] if after else len(text)
        replaced = position, position
    start, end = replaced
    before, rest = text[:start].rstrip("\n"), text[end:].lstrip("\n")
    return before + "\n\n" + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")


def image_size(text: str) -> tuple[int, int]:
    """An argparse type: ``"512x416"`` -> ``(512, 416)`` (height, width)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW, e.g. 512x416") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive HxW")
    return height, width
