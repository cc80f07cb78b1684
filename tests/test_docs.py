"""The user docs name what the code has: every manifest key, every schema field, every page."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMAS = Path(__file__).resolve().parent.parent / "harness" / "leaderboard" / "schema"


def test_write_a_submission_lists_every_manifest_and_train_key():
    from harness.models.submission import TOP_KEYS, TRAIN_KEYS

    text = (DOCS / "write-a-submission.md").read_text()
    for key in [*TOP_KEYS, *TRAIN_KEYS]:
        assert f"`{key}`" in text, key


def test_write_a_submission_lists_every_batch_and_spec_field():
    from dataclasses import fields

    from harness.models.protocol import Batch

    text = (DOCS / "write-a-submission.md").read_text()
    for f in fields(Batch):
        assert f"`{f.name}`" in text, f.name


def test_formats_page_names_every_top_level_field():
    text = (DOCS / "formats.md").read_text()
    for name in ("result", "leaderboard"):
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        for key in schema["properties"]:
            assert f"`{key}`" in text, (name, key)
    row = json.loads((SCHEMAS / "leaderboard.schema.json").read_text())
    items = row["properties"]["rankings"]["items"]["properties"]["rows"]["items"]["properties"]
    for key in items:
        assert f"`{key}`" in text, key


def test_every_linked_page_exists():
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([a-z-]+\.md)\)", page.read_text()):
            assert (DOCS / target).is_file(), (page.name, target)
