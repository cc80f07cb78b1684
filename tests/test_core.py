"""The registry, atomic writes and the CLI shell."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.errors import UnknownNameError
from harness.io import atomic_directory, atomic_write_json
from harness.registry import Registry


def test_registry_suggests_close_names():
    reg: Registry[int] = Registry("encoder")
    reg.add("timm:resnet50", 1)
    reg.add("timm:efficientnet_lite0", 2)
    assert reg.get("timm:resnet50") == 1
    with pytest.raises(UnknownNameError) as info:
        reg.get("timm:resnet5")
    msg = str(info.value)
    assert "Did you mean 'timm:resnet50'" in msg and "timm:efficientnet_lite0" in msg
    with pytest.raises(ValueError, match="already registered"):
        reg.add("timm:resnet50", 3)


def test_atomic_directory_keeps_old_content_on_failure(tmp_path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(final, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("crash mid-write")
    assert (final / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(FileExistsError), atomic_directory(final) as tmp:
        pass


def test_atomic_write_json_roundtrip(tmp_path):
    import json

    atomic_write_json(tmp_path / "x" / "r.json", {"a": 1})
    assert json.loads((tmp_path / "x" / "r.json").read_text()) == {"a": 1}


def test_cli_help_does_not_import_torch():
    code = (
        "import sys; from harness.cli.main import main; "
        "rc = main(['--help']); "
        "assert 'torch' not in sys.modules, 'torch imported by --help'; "
        "assert 'duckdb' not in sys.modules; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_cli_version(capsys):
    from harness import __version__
    from harness.cli.main import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"harness {__version__}"


def test_an_unknown_cohort_name_suggests_the_built_ones(tmp_path, monkeypatch):
    from harness import config
    from harness.cohort.load import resolve_cohort_dir
    from harness.errors import InputError

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    root = config.cohorts_dir() / config.DEFAULT_DATASET
    root.mkdir(parents=True)
    for name in ("base", "matched"):
        (root / f"{name}.latest").write_text(f"{name}-0\n")
    with pytest.raises(InputError, match=r"did you mean 'matched'\?\); built: base, matched"):
        resolve_cohort_dir("matchd")
    with pytest.raises(InputError) as info:
        resolve_cohort_dir("zzz")
    assert "did you mean" not in str(info.value) and "built: base, matched" in str(info.value)
