"""Integrity signatures of ``result.json``: HMAC-SHA256 with a secret key kept in the cache.

:func:`harness.results.document.write_result` signs the canonical JSON of a result (keys sorted,
separators ``,`` and ``:``, the ``signature`` field left out) with the cache's key,
``<cache>/.keys/result-signing.key`` (32 random bytes, mode 0600, created atomically on first
use). `harness leaderboard` verifies it, so a result edited by hand, or copied from a cache with
another key, is rejected. The key never leaves the cache; submissions run without access to it
(isolated executor), and the executors derive the stay-id pseudonyms from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
from pathlib import Path

from harness.errors import InputError

log = logging.getLogger(__name__)

SIGNATURE_FIELD = "signature"
SIGNATURE_PREFIX = "hmac-sha256:"
KEY_BYTES = 32
KEY_DIR = ".keys"
KEY_FILE = "result-signing.key"


def signing_key_path(root: str | Path | None = None) -> Path:
    """``<cache root>/.keys/result-signing.key`` (``root`` defaults to the cache root)."""
    if root is None:
        from harness import config

        root = config.cache_root()
    return Path(root) / KEY_DIR / KEY_FILE


def _create_key(path: Path) -> None:
    """Write a new key atomically; never replaces a key another process created meanwhile."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{KEY_FILE}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: use its key
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(tmp, path)
        else:
            log.info("created the result signing key %s", path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def signing_key(*, create: bool = True, root: str | Path | None = None) -> bytes | None:
    """The cache's signing key; created when absent and ``create``, else None when absent."""
    path = signing_key_path(root)
    if not path.is_file():
        if not create:
            return None
        _create_key(path)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise InputError(
            f"the result signing key holds {len(key)} bytes, expected {KEY_BYTES}",
            path=path,
            fix="restore it from a backup; deleting it makes every signed result unverifiable "
            "(re-run `harness evaluate` for each, or publish with --accept-unsigned)",
        )
    mode = path.stat().st_mode & 0o077
    if mode:
        log.warning("%s is readable by other users (mode %o); chmod 600 it", path, mode)
    return key


def canonical_bytes(doc: dict) -> bytes:
    """The signed form: sorted keys, no whitespace, no ``signature`` field, no NaN."""
    body = {k: v for k, v in doc.items() if k != SIGNATURE_FIELD}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True
    ).encode("ascii")


def sign(doc: dict, key: bytes) -> str:
    """``hmac-sha256:<hex>`` over :func:`canonical_bytes` of ``doc``."""
    return SIGNATURE_PREFIX + hmac.new(key, canonical_bytes(doc), hashlib.sha256).hexdigest()


def verify(doc: dict, key: bytes) -> bool:
    """True when ``doc`` carries the signature ``key`` gives its content (constant-time)."""
    given = doc.get(SIGNATURE_FIELD)
    if not isinstance(given, str):
        return False
    try:
        expected = sign(doc, key)
    except ValueError:  # NaN or infinity: never signed by the harness
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("ascii"))
