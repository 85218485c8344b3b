"""The one exception type for errors a user can cause.

A ``MammoXAIError`` names the input that is wrong and what to do about it. The command-line tools print its
message as one line on stderr; the MONAI Label app turns it into a 4xx response. Anything else that escapes
is a bug in MammoXAI, not in the user's data.
"""

from __future__ import annotations

import os


class MammoXAIError(ValueError):
    """A problem with an input (file, field, config) that the user can fix.

    Args:
        source: the file, field or setting at fault; shown first in the message.
        problem: what is wrong with it.
        fix: what the user can do about it (optional).

    Example:
        raise MammoXAIError("scan.dcm", "Modality is CT, not a mammogram (MG/DX)", "pass an MG or DX image")
    """

    def __init__(self, source: str | os.PathLike, problem: str, fix: str | None = None):
        self.source = str(source)
        self.problem = problem
        self.fix = fix
        message = f"{self.source}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


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
