"""The harness installed from its wheel (not the clone): task definitions ship as package data,
and a user's own submission folder is evaluated from another directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(python: Path, args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [str(python), "-m", "harness", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"harness {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_the_wheel_runs_synth_to_evaluate_from_another_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheels)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("harness-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    # the dependencies come from this environment (offline); the harness only from the wheel
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz_dependencies.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
         str(site), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    user = tmp_path / "user"
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "PYTHON"))}
    env["HARNESS_CACHE"] = str(tmp_path / "cache")
    where = subprocess.run(
        [str(python), "-c", "import harness, harness.config as c; print(harness.__file__);"
         "print(c.tasks_dir())"],
        cwd=user, env=env, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(site) for p in where), where  # not the clone
    assert (Path(where[1]) / "mortality_in_hospital.yaml").is_file()

    _run(python, ["synth", "--n-patients", "150", "--image-size", "64"], user, env)
    _run(python, ["cohort", "build"], user, env)
    _run(python, ["encode", "-e", "test_tiny"], user, env)
    _run(python, ["new-submission", "my_submission", "--dir", "."], user, env)
    out = _run(
        python,
        ["evaluate", "./my_submission", "--quick", "-t", "mortality_in_hospital", "-c", "base",
         "--encoder", "test_tiny", "--max-epochs", "1", "--n-resamples", "50", "--trusted"],
        user, env,
    )  # fmt: skip
    result = json.loads(
        (tmp_path / "cache" / "results" / "synthetic-default" / "my_submission" / "result.json")
        .read_text()
    )  # fmt: skip
    assert result["status"] == "ok", out
    assert result["cohorts"]["base"]["audit"]["verdict"] == "passed"
    assert not (user / "tasks").exists()
