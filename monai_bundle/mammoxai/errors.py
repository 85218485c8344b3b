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
