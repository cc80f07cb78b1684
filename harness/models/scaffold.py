"""`harness new-submission`: create a working submission folder from the packaged template."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template

from harness.errors import UsageError
from harness.io import atomic_directory

TEMPLATE_DIR = "templates/submission"
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def new_submission(name: str, directory: str | Path = "submissions") -> Path:
    """Write ``<directory>/<name>/`` (submission.yaml, model.py, README.md); return its path.

    Raises:
        UsageError: the name is not an identifier, or the folder already exists.
    """
    if not NAME_PATTERN.match(name):
        raise UsageError(
            f"submission name {name!r} must start with a letter and contain only letters, "
            "digits and underscores (e.g. my_fusion)"
        )
    target = Path(directory) / name
    if target.exists():
        raise UsageError(f"{target} already exists; choose another name or remove the folder")
    source = resources.files("harness").joinpath(TEMPLATE_DIR)
    with atomic_directory(target) as tmp:
        for item in source.iterdir():
            if not item.name.endswith(".tmpl"):
                continue
            text = Template(item.read_text(encoding="utf-8")).substitute(name=name)
            (tmp / item.name.removesuffix(".tmpl")).write_text(text, encoding="utf-8")
    return target
