"""Alias of :mod:`harness.signing`, which holds the result signing key and signatures.

The key is shared by `harness evaluate` (it signs what it writes), the executors (stay-id
pseudonyms are derived from it) and the leaderboard (it verifies), so it lives outside all three.
"""

from __future__ import annotations

from harness.signing import (
    KEY_BYTES,
    KEY_DIR,
    KEY_FILE,
    SIGNATURE_FIELD,
    SIGNATURE_PREFIX,
    canonical_bytes,
    sign,
    signing_key,
    signing_key_path,
    verify,
)

__all__ = [
    "KEY_BYTES",
    "KEY_DIR",
    "KEY_FILE",
    "SIGNATURE_FIELD",
    "SIGNATURE_PREFIX",
    "canonical_bytes",
    "sign",
    "signing_key",
    "signing_key_path",
    "verify",
]
