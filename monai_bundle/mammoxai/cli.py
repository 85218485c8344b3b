"""Running bundle configs from the command line: one-line user errors instead of tracebacks.

``python -m monai.bundle run`` wraps whatever a component raises in the config parser's own exception, so a
user's mistake (a missing file, an unknown field) arrives as a long traceback. The scripts in ``scripts/`` run
their configs through :func:`run_bundle_config`, which prints the :class:`~mammoxai.MammoXAIError` behind such a
failure as one line on stderr and exits with status 1; anything else keeps its traceback, since it is a bug.
``monai.bundle run`` itself is MONAI's command, so the bundle's configs call :func:`brief_user_errors` first in
their ``initialize`` section, which gives its uncaught user errors the same one line.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import fire.parser
import monai.bundle

import mammoxai
from mammoxai.errors import MammoXAIError

__all__ = [
    "BUNDLE_ROOT",
    "USER_ERROR_PREFIX",
    "brief_user_errors",
    "bundle_config_files",
    "check_override_keys",
    "config_overrides",
    "exit_status",
    "run_bundle",
    "run_bundle_config",
    "user_error",
]

#: how the one line of a user error begins on stderr (:func:`exit_status`, :func:`brief_user_errors`)
USER_ERROR_PREFIX = "error: "

#: the bundle this copy of ``mammoxai`` lives in (``monai_bundle/``)
BUNDLE_ROOT = Path(mammoxai.__file__).resolve().parents[1]

#: settings that name a file or folder, by name or by the end of it (``dataset_dir``, ``label_csv``): their value is
#: the text as given (:func:`config_overrides`). Weights files are named one by one: ``class_weights`` and
#: ``field_weights`` are numbers, not files
_PATH_KEYS = frozenset({"bundle_root", "manifest", "checkpoint", "explainer", "init_weights", "backbone_weights"})
_PATH_SUFFIXES = ("_dir", "_path", "_file", "_csv", "_manifest", "_checkpoint")


def user_error(error: BaseException) -> MammoXAIError | None:
    """The MammoXAIError behind an exception, if any: MONAI's config parser wraps what a component raises."""
    while error is not None:
        if isinstance(error, MammoXAIError):
            return error
        error = error.__cause__ or error.__context__
    return None


def brief_user_errors() -> None:
    """Have an uncaught exception with a :class:`~mammoxai.MammoXAIError` behind it end the process with that
    error's one line on stderr (exit status 1, as any uncaught exception), instead of the chained traceback.

    Behind ``python -m monai.bundle run`` a user's mistake is wrapped twice by MONAI's config parser and printed
    as some forty lines of MONAI and ``fire`` frames, the message that says what to fix in their middle. Any other
    exception keeps its traceback, since it is a bug; ``MAMMOXAI_TRACEBACK=1`` keeps it for user errors too.
    Calling this again changes nothing.
    """
    global _excepthook_before
    if sys.excepthook is not _print_user_error_briefly:
        _excepthook_before, sys.excepthook = sys.excepthook, _print_user_error_briefly


_excepthook_before = sys.__excepthook__


def _print_user_error_briefly(kind: type[BaseException], error: BaseException, traceback: Any) -> None:
    cause = user_error(error)
    if cause is None or os.environ.get("MAMMOXAI_TRACEBACK", "").strip() not in ("", "0"):
        _excepthook_before(kind, error, traceback)
    else:
        print(f"{USER_ERROR_PREFIX}{cause}", file=sys.stderr)


def exit_status(action: Callable[[], object]) -> int:
    """Run ``action`` for a script: 0 when it succeeds; 1, with the user error printed as one line on stderr, when
    a :class:`~mammoxai.MammoXAIError` is behind what it raised. Anything else is re-raised with its traceback."""
    try:
        action()
    except Exception as error:  # noqa: BLE001 - anything but a user error is re-raised with its traceback
        cause = user_error(error)
        if cause is None:
            raise
        print(f"{USER_ERROR_PREFIX}{cause}", file=sys.stderr)
        return 1
    return 0


def config_overrides(arguments: Sequence[str]) -> dict[str, Any]:
    """``--key value`` pairs as ``monai.bundle run`` takes them: a value is JSON where it parses as JSON, else a
    Python list, tuple, dict, boolean or None where it parses as one (``"['CC', 'MLO']"``, ``"{5: 'malignant'}"``,
    ``True``, as the model card writes them for ``monai.bundle run``, whose command line reads Python literals), else
    the text itself.

    Within brackets, braces or parentheses, bare words are text, as ``monai.bundle run``'s command line (``fire``)
    reads them: ``[study_uid, laterality]`` is a list of two names, ``(CC, MLO)`` a tuple, ``{Cancer: malignant}``
    a mapping. Some readings of that command line are left out, since scripts are handed folder names and ids: words
    joined by commas without brackets stay text (``data,v2``, where ``fire`` reads a tuple), and so do Python's other
    number spellings (``2024_01``, ``0x1F``): JSON reads the numbers a user means. A setting that names a file or
    folder (``bundle_root``, ``manifest``, ``checkpoint``, ``explainer``, ``init_weights``, ``backbone_weights``, a
    key ending in ``_dir``, ``_path``, ``_file``, ``_csv``, ``_manifest`` or ``_checkpoint``) takes the text as given, ``null`` or
    ``None`` aside (no file): ``--dataset_dir 2024`` is the folder ``2024``, not a number the config cannot join
    to ``'/manifest.csv'``. A set (``{CC, MLO}``) is refused: Python orders it anew in each run, so a setting
    that lists views or names would differ between two runs of one command.

    Raises:
        MammoXAIError: an argument is not part of a ``--key value`` pair, or a value holds a set.
    """
    overrides: dict[str, Any] = {}
    for position in range(0, len(arguments), 2):
        key, value = arguments[position], arguments[position + 1] if position + 1 < len(arguments) else None
        if not key.startswith("--") or value is None:
            raise MammoXAIError(
                " ".join(arguments), f"cannot read {key!r} as --key value", "give config overrides as --key value pairs"
            )
        name = key[2:]
        overrides[name] = _parse_path(value) if _names_a_path(name) else _parse_value(value)
        if _holds_set(overrides[name]):
            problem = f"is {value!r}, which holds a set, whose order Python picks anew in each run"
            raise MammoXAIError(
                key, problem, "write a list in brackets where it has a set in braces: [a, b], not {a, b}"
            )
    return overrides


def _names_a_path(key: str) -> bool:
    """Whether the setting ``key`` (``a#b`` for a nested one: its last part) names a file or folder."""
    name = key.rsplit("#", 1)[-1]
    return name in _PATH_KEYS or name.endswith(_PATH_SUFFIXES)


def _parse_path(text: str) -> str | None:
    """A file or folder as given on the command line: the text, or None for ``null`` / ``None`` (no file)."""
    return None if text in ("null", "None") else text


def _holds_set(value: Any) -> bool:
    """Whether ``value`` is a set or a list, tuple or mapping that holds one at any depth."""
    if isinstance(value, (set, frozenset)):
        return True
    if isinstance(value, dict):
        return any(_holds_set(item) for item in value.values())
    return isinstance(value, (list, tuple)) and any(_holds_set(item) for item in value)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    except (MemoryError, RecursionError):  # nested deeper than a parser goes: no value a setting takes
        return text
    try:
        if text.lstrip()[:1] in ("[", "{", "("):
            value = fire.parser.DefaultParseValue(text)  # bare words inside are text: [CC, MLO] is ["CC", "MLO"]
        else:
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):  # plain text: a path, a name, a word
        return text
    return value if value is None or isinstance(value, (bool, list, tuple, dict, set)) else text


def bundle_config_files(bundle_root: Path, names: Sequence[str]) -> list[Path]:
    """``<bundle_root>/configs/<name>`` for each of ``names``.

    Raises:
        MammoXAIError: one of them is missing (``bundle_root`` is not a MammoXAI bundle).
    """
    files = [bundle_root / "configs" / name for name in names]
    for file in files:
        if not file.is_file():
            raise MammoXAIError(file, "not found", "pass --bundle_root <folder of a MammoXAI bundle>")
    return files


def run_bundle(
    config_files: Sequence[Path], bundle_root: Path, overrides: Mapping[str, Any], logging_file: str | bool = False
) -> None:
    """``monai.bundle.run`` of ``config_files`` (merged in order) in this process, with top-level ``overrides``.

    The overrides travel in an args file: ``monai.bundle.run`` drops keyword overrides whose value is None, so
    ``--explainer null`` would silently keep the config's value, while an args file's values apply as they are.
    """
    with tempfile.TemporaryDirectory(prefix="mammoxai-args-") as folder:
        args_file = Path(folder) / "overrides.json"
        values = {**overrides, "bundle_root": str(bundle_root)}
        args_file.write_text(json.dumps(values, default=str), encoding="utf-8")  # paths as text
        monai.bundle.run(
            config_file=[str(file) for file in config_files], logging_file=logging_file, args_file=str(args_file)
        )


def check_override_keys(config_files: Sequence[Path], overrides: Mapping[str, Any]) -> None:
    """Refuse an override that names no setting of the configs (``--evalution_dir``), before anything runs.

    ``monai.bundle run`` adds any key it is given, so a mistyped option would be silently ignored and the run
    would write where the config's default says (often inside the bundle). Nested settings (``--a#b``) count
    when their path exists; ``command`` is the record every run sets.

    Raises:
        MammoXAIError: an override key is not in the merged configs; the message suggests the closest keys.
    """
    parser = monai.bundle.ConfigParser()
    parser.read_config([str(config_file) for config_file in config_files])
    unknown = [key for key in overrides if key != "command" and key not in parser]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, [str(name) for name in parser.get()], n=3)
        fix = f"did you mean {' or '.join(f'--{name}' for name in close)}?" if close else "see the config for its keys"
        names = ", ".join(config_file.name for config_file in config_files)
        raise MammoXAIError(f"--{key}", f"is not a setting of {names}", fix)


def run_bundle_config(
    config_names: str | Sequence[str], argv: Sequence[str] | None = None, program: str | None = None
) -> int:
    """Run ``configs/<name>`` of the bundle (several names are merged in order) in this process.

    The same as ``python -m monai.bundle run --config_file configs/<name> --key value ...`` from the bundle root,
    except that it works from any folder (paths on the command line are relative to it), records the actual
    command line in the config's ``command``, and prints a user error as one line on stderr with exit status 1
    instead of a traceback.

    Args:
        config_names: file name(s) under ``<bundle_root>/configs``; later files override earlier ones.
        argv: ``--key value`` config overrides (default ``sys.argv[1:]``); ``--bundle_root`` picks another bundle
            (``null``: this one).
        program: how the command is shown in the record (default ``python <sys.argv[0]>``).
    """
    names = [config_names] if isinstance(config_names, str) else list(config_names)
    arguments = list(sys.argv[1:] if argv is None else argv)
    program = program or f"python {sys.argv[0]}"
    if arguments[:1] in (["-h"], ["--help"]):
        print(f"usage: {program} --dataset_dir <studies> [--<config key> <value> ...]")
        print(
            f"runs {' merged with '.join(f'configs/{name}' for name in names)}; every top-level key can be overridden"
        )
        return 0

    def run() -> None:
        overrides = config_overrides(arguments)
        bundle_root = Path(overrides.pop("bundle_root", None) or BUNDLE_ROOT).resolve()
        config_files = bundle_config_files(bundle_root, names)
        check_override_keys(config_files, overrides)
        overrides.setdefault("command", shlex.join([*program.split(), *arguments]))
        run_bundle(config_files, bundle_root, overrides, logging_file=str(bundle_root / "configs" / "logging.conf"))

    return exit_status(run)
