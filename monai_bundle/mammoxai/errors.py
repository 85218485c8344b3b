"""The one exception type for errors a user can cause.

A ``MammoXAIError`` names the input that is wrong and what to do about it. The command-line tools print its
message as one line on stderr; the MONAI Label app turns it into a 4xx response. Anything else that escapes
is a bug in MammoXAI, not in the user's data.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path


class MammoXAIError(ValueError):
    """A problem with an input (file, field, config) that the user can fix.

    Args:
        source: the file, field or setting at fault; shown first in the message.
        problem: what is wrong with it.
        fix: what the user can do about it (optional).

    Example:
        raise MammoXAIError("scan.dcm", "Modality is CT, not a mammogram (MG/DX)", "pass an MG or DX image")
    """

    def __init__(self, source: str | os.PathLike, problem: str, fix: str | None = None):  # noqa: B042 (__reduce__)
        self.source = str(source)
        self.problem = problem
        self.fix = fix
        message = f"{self.source}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None]]:
        """Rebuild from the three parts, so the error survives pickling (worker processes send it to their parent);
        the default would call ``__init__`` with the message alone."""
        return type(self), (self.source, self.problem, self.fix)


def first_of(items: Sequence[str], limit: int, separator: str = ", ") -> str:
    """The first ``limit`` of ``items``, joined by ``separator``, and how many more: how a message names a long list
    (unreadable files, repeated ids, mismatched weights), so that it stays one line.

    Example:
        first_of(["a", "b", "c", "d"], 2)  # "a, b and 2 more"
    """
    return separator.join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_choice(value: object, choices: Sequence[str], name: str, what: str) -> str:
    """``value`` when it is one of ``choices``: a setting that names one of a fixed set of options, checked where it
    is read so a typo is refused before any image is.

    Raises:
        MammoXAIError: any other value, naming ``name``, what it should have been (``what``) and the options.

    Example:
        check_choice("displayrange", ("breast_percentiles", "display_range"), "intensity_scaling", "an intensity scaling")
    """
    if value not in choices:
        options = " or ".join(json.dumps(choice) for choice in choices)
        raise MammoXAIError(name, f"is {value!r}, not {what}", f"use {options}")
    return str(value)


_FLAG_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_flag(value: object, name: str) -> bool:
    """A boolean setting as the user wrote it: ``True``/``False``, or the words a command line passes as text.

    ``python -m monai.bundle run ... --resume false`` hands the config the *string* ``'false'``, which Python
    takes as true; settings that change what a run does on disk read their value through here instead.

    Raises:
        MammoXAIError: the value is neither a boolean nor one of true/false, yes/no, 1/0 (any case).
    """
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in _FLAG_WORDS:
        raise MammoXAIError(name, f"is {value!r}, not a boolean", "use true or false")
    return _FLAG_WORDS[word]


#: a single name as a command line gives it: no brackets, quotes, commas, semicolons or whitespace, which a list has
_BARE_NAME = re.compile(r"[^\s\[\](){}'\",;]+")


def parse_names(value: object, name: str, example: Sequence[str], single: bool = True) -> list[str]:
    """A setting that lists names (record columns, finding classes, metadata fields, class names) as a list.

    Every such setting follows one rule for text, which is how it arrives from a command line when it is one word
    (``--exam_keys study_uid``: neither JSON nor a Python literal, so the option reader passes the word) or a list
    that could not be read as one (``study_uid,laterality``, ``"study_uid laterality"``, an unclosed ``[study_uid``):
    a single bare name is the list of that name; any other text is refused, since split by guesswork it could name
    the wrong things, and taken as a sequence each of its characters became a name (a column "s", one breakdown per
    letter). The settings disagreed: one took a word as a list of one, another refused it. A one-item list is still
    refused by a setting that needs more (a classifier's two or more ``class_names``), with its own message.

    Args:
        value: the setting as given: a list or tuple of names, or text.
        name: the setting, as the command line names it.
        example: a list that works, shown in the message as ``--<name> '<JSON list>'``.
        single: whether one name is a value of the setting. False where two or more are needed (``class_names``,
            ``views``): one bare name is still read as a list of one, for the setting to refuse with its own
            message, but the message of refused text asks for a list, not for one name that would be refused next.

    Raises:
        MammoXAIError: ``value`` is text other than one bare name, or neither text nor a list.

    Example:
        parse_names("study_uid", "exam_keys", ["study_uid", "laterality"])  # ["study_uid"]
    """
    if isinstance(value, str) and _BARE_NAME.fullmatch(value):
        return [value]
    if isinstance(value, str) or not isinstance(value, Sequence):
        what, give = ("a name or a list of names", "one name, or a list") if single else ("a list of names", "a list")
        fix = f"give {give}, e.g. --{name} {shlex.quote(json.dumps(list(example)))}"
        raise MammoXAIError(name, f"is {value!r}, not {what}", fix)
    return [str(item) for item in value]


def parse_class_names(
    value: object, name: str = "class_names", example: Sequence[str] = ("normal", "benign", "malignant")
) -> list[str]:
    """A classifier's class names, one per output logit in order: :func:`parse_names`, then two or more distinct.

    The configs size the network (``$len(@class_names)``) and turn labels into logit indices from this setting
    before any constructor sees it, so the training, evaluation and lesion-crop configs read it here first in their
    ``initialize`` section, and the served predictor in its constructor: read as a sequence, ``--class_names
    normal`` was a network of six classes "n", "o", ... and a failed list one class per character. One class, or a
    name twice (two logits no label can tell apart), gives no classifier.

    Args:
        value: the setting as given: a list or tuple of names, or text.
        name: the setting, as the command line names it (``lesion_class_names``).
        example: a list that works, shown in the message.

    Raises:
        MammoXAIError: text other than one bare name (:func:`parse_names`), fewer than two names, or a name twice.

    Example:
        parse_class_names(["normal", "malignant"])  # ["normal", "malignant"]
    """
    names = parse_names(value, name, example, single=False)
    if len(names) < 2 or len(set(names)) != len(names):
        written = shlex.quote(json.dumps(list(example)))
        fix = f"list each class once, in the order of the outputs, e.g. --{name} {written}"
        raise MammoXAIError(name, f"{names} must name two or more distinct classes", fix)
    return names


def check_output_path(
    path: str | os.PathLike,
    name: str,
    fix: str,
    folder: bool = True,
    overwrite: bool | str | None = None,
    overwrite_option: str = "--overwrite",
) -> Path:
    """``path`` as an output a tool is about to create or write into, refused before any work is spent on it.

    A file where a folder must stand (``path`` itself when it is a folder, or any folder above it), or a folder
    where a file must be written, would otherwise surface as ``NotADirectoryError`` / ``IsADirectoryError`` from
    the ``mkdir`` or ``open`` at the end of minutes of reading, rendering or training.

    Args:
        path: the output folder or file.
        name: the setting that gave it (``"--out"``, ``"ckpt_dir"``), shown before the path at fault.
        fix: what to tell the user, e.g. "give a folder for the checkpoints".
        folder: whether ``path`` is a folder (created if missing) or a file.
        overwrite: for a file, whether an existing one may be replaced (``None``: not asked; a word from a command
            line is read with :func:`parse_flag`). A file an earlier run wrote, or a user's, is refused without it.
        overwrite_option: how the user says ``overwrite``, for the message (``"--overwrite true"`` in a config).

    Raises:
        MammoXAIError: ``path`` or a folder above it is a file, (``folder=False``) ``path`` is a folder, or it
            exists and ``overwrite`` is false.

    Example:
        out = check_output_path(args.out, "--out", "give the CSV file to write", folder=False)
    """
    path = Path(path)
    replace = overwrite is None or parse_flag(overwrite, "overwrite")  # a bad word is refused whatever exists
    if not folder and path.is_dir():
        raise MammoXAIError(f"{name} {path}", "is a folder, not a file", fix)
    if not folder and path.exists() and not replace:
        raise MammoXAIError(
            f"{name} {path}", "already exists", f"pass {overwrite_option} to replace it, or another {name}"
        )
    folders = (path, *path.parents) if folder else path.parents
    blocking = next((above for above in folders if above.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise MammoXAIError(f"{name} {blocking}", "is a file, not a folder", fix)
    return path
