"""Connecting to Ray, the optional engine of ``--executor ray`` (evaluate and encode).

Kept apart from both users (:mod:`harness.evaluate.cluster`, :mod:`harness.encode.run`) so that
neither imports the other; Ray itself is imported only when a command asks for it.
"""

from __future__ import annotations

import os
from typing import Any

from harness.errors import UsageError

#: Environment variable naming the cluster when ``--ray-address`` is not given.
ADDRESS_VARIABLE = "HARNESS_RAY_ADDRESS"


def require_ray() -> Any:
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--executor ray needs Ray, an optional extra: pip install -e '.[ray]' "
            "(`make setup` installs it)"
        ) from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to the cluster at ``address`` (``auto``: the one ``ray start`` runs on this
    machine; ``ray://host:10001``: a remote one), else to ``HARNESS_RAY_ADDRESS``, else start a
    local Ray instance with ``num_cpus`` (default: every core). Idempotent."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get(ADDRESS_VARIABLE) or None
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address in (None, "local"):
        ray.init(num_cpus=num_cpus, **options)
    else:
        ray.init(address=address, **options)
    return ray
