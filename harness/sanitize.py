"""Publishable free text: no control characters, absolute paths, URLs or long digit runs.

A failure's message is written into ``result.json`` by `harness evaluate` and may be published
by the leaderboard, and a submission controls that text: both sides sanitize it with
:func:`sanitize_message` (idempotent) and name the failure with one of :data:`ERROR_CATEGORIES`.
:data:`FINAL_PATH_PATTERNS` are the path shapes the leaderboard's last check over its serialized
output refuses (:func:`harness.leaderboard.publish.find_paths`).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

#: Longest published message (failure messages, rejection reasons, skip reasons).
MESSAGE_LIMIT = 300
#: What a failed evaluation is published as (``failed[].category``).
ERROR_CATEGORIES = (
    "timeout",  # a time limit was exceeded
    "memory",  # a memory limit was exceeded
    "crashed",  # the submission's process died (segfault, killed)
    "exited",  # the submission ended its process itself (sys.exit, os._exit)
    "sandbox_violation",  # it reached for files, network or processes it may not use
    "sandbox_denied",  # the isolated executor's word for the same
    "invalid_output",  # wrong shape, NaN, values outside [0, 1]
    "invalid_spec",  # submission.yaml or a definition file is invalid
    "error",  # anything else
)
#: A run of more than 4 digits (an identifier, a date, a count): never published.
LONG_DIGITS = re.compile(r"\d{5,}")
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"`<>]*")
_SEG = r"[^\s/\\:'\"`<>|,;()\[\]{}]"
_POSIX = re.compile(rf"(?<![\w.\-~])(?:~[\w.\-]*)?/{_SEG}+(?:/+{_SEG}*)*")
_WINDOWS = re.compile(rf"(?<![\w])[A-Za-z]:[\\/]+(?:{_SEG}+[\\/]*)*")
_UNC = re.compile(rf"\\\\{_SEG}+(?:\\+{_SEG}*)*")
_FILE_NAME = re.compile(r"^[\w\-+]+(?:\.[\w\-+]+)+$")
#: Path shapes the final check refuses: two or more components, a well-known root, a home.
_ROOTS = (
    "home", "Users", "root", "tmp", "var", "mnt", "media", "data", "opt", "srv", "private",
    "Volumes", "nfs", "scratch", "gpfs", "work", "etc", "proc", "dev", "usr",
)  # fmt: skip
FINAL_PATH_PATTERNS = (
    re.compile(rf"(?<![\w.\-])/{_SEG}+/"),
    re.compile(rf"(?<![\w.\-])/(?:{'|'.join(_ROOTS)})\b"),
    re.compile(r"(?<![\w])~[\w.\-]*/"),
    re.compile(r"(?<![\w])[A-Za-z]:(?:\\\\?|/)\w"),
    re.compile(r"\\\\{1,2}[\w.$\-]+\\\\{1,2}\w"),
    re.compile(r"\bfile:/"),
)


def _drop_controls(text: str) -> str:
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\t\n\r\v\f" or cat in ("Zl", "Zp"):
            out.append(" ")
        elif cat in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        else:
            out.append(ch)
    return "".join(out)


def _last_component(match: re.Match) -> str:
    parts = [p for p in re.split(r"[\\/]+", match.group(0)) if p]
    last = parts[-1] if parts else ""
    return last if _FILE_NAME.match(last) else "<path>"


def strip_paths(text: str) -> str:
    """``text`` with URLs replaced by ``<url>`` and absolute paths (POSIX, ``~``, ``C:\\``, UNC)
    by their last component when it is a file name (``model.py``), else by ``<path>``."""
    text = _URL.sub("<url>", text)
    for pattern in (_UNC, _WINDOWS, _POSIX):
        text = pattern.sub(_last_component, text)
    return text


def _scrub(text: str) -> str:
    """Whatever the final check would still call a path becomes ``<path>`` (so that sanitized
    text can never stop a publication)."""
    home = str(Path.home())
    for _ in range(5):
        before = text
        for pattern in FINAL_PATH_PATTERNS:
            text = pattern.sub("<path>", text)
        if len(home) > 1:
            text = text.replace(home, "<path>")
        if text == before:
            break
    return text


def clean_text(text: Any) -> str:
    """Control, format and surrogate characters removed and paths stripped (digits kept)."""
    return _scrub(strip_paths(_drop_controls(str(text))))


def sanitize_message(text: Any, limit: int = MESSAGE_LIMIT) -> str:
    """Publishable form of free text: no control characters, no absolute paths or URLs, no run
    of more than 4 digits (``<n>``), whitespace collapsed, at most ``limit`` characters.

    Idempotent: sanitizing a sanitized message changes nothing.
    """
    text = clean_text("" if text is None else text)
    text = LONG_DIGITS.sub("<n>", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def error_category(exc: BaseException | str | None) -> str:
    """The published category of a failure: an exception's ``category`` attribute when it names
    one of :data:`ERROR_CATEGORIES`, else one inferred from its type; a string is normalised."""
    if exc is None:
        return "error"
    if isinstance(exc, str):
        word = exc.strip().lower()
        return word if word in ERROR_CATEGORIES else "error"
    named = getattr(exc, "category", None)
    if isinstance(named, str) and named.strip().lower() in ERROR_CATEGORIES:
        return named.strip().lower()
    from harness.errors import SpecError

    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, SystemExit):
        return "exited"
    if isinstance(exc, SpecError):
        return "invalid_spec"
    return "error"
