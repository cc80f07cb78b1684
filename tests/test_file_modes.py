"""Published files follow the umask (a leaderboard is meant to be read by others); the signing
key stays private whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from harness.io import atomic_directory, atomic_write_json, atomic_write_text, current_umask


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing_it(umask):
    os.umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    os.umask(mask)
    atomic_write_text(tmp_path / "a.md", "x")
    atomic_write_json(tmp_path / "b.json", {"a": 1})
    assert _mode(tmp_path / "a.md") == file_mode
    assert _mode(tmp_path / "b.json") == file_mode
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("y")
    assert _mode(tmp_path / "d") == dir_mode
    # overwriting keeps the umask's mode too (the temporary file's 0600 never shows)
    atomic_write_text(tmp_path / "a.md", "z")
    assert _mode(tmp_path / "a.md") == file_mode and (tmp_path / "a.md").read_text() == "z"


def test_scaffold_and_signing_key_modes(tmp_path, umask, monkeypatch):
    from harness.models.scaffold import new_submission
    from harness.signing import signing_key, signing_key_path

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    target = new_submission("mine", tmp_path / "subs")
    assert _mode(target) == 0o755
    assert all(_mode(p) == 0o644 for p in target.iterdir() if p.is_file())
    signing_key()
    assert _mode(signing_key_path()) == 0o600  # never readable by others
