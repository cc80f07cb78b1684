"""Exception types users see. Messages name the file, the field, the valid values and the fix."""

from __future__ import annotations

from pathlib import Path


class HarnessError(Exception):
    """Base class: an error caused by user input or data, reported without a traceback."""

    exit_code = 2


class InputError(HarnessError):
    """Bad input data: a missing file or column, an unexpected layout, an unreadable value."""

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        parts = [f"{path}: {message}" if path is not None else message]
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__("\n".join(parts))
        self.path = Path(path) if path is not None else None
        self.fix = fix


class SpecError(InputError):
    """A malformed definition file (task YAML, submission YAML, mapping file)."""


class UsageError(HarnessError):
    """Bad command-line arguments (negative sizes, an output directory that is in the way)."""


class SubmissionError(HarnessError):
    """A submission that cannot be loaded, trained or that produced invalid output."""


class UnknownNameError(HarnessError, KeyError):
    """A name that is not in a registry; the message lists close matches and all valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
