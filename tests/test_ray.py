"""The Ray executor (`--executor ray`): the same units and results as the local executor, a
worker killed mid-unit retried, a killed driver resumed from the finished units.

Ray is an optional extra that `make setup` installs; without it this module fails to import
(loudly), it is never skipped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray  # the `[ray]` extra: `make setup` installs it

from harness.errors import SpecError, UsageError
from harness.evaluate import cluster
from harness.evaluate.run import EvalSettings, evaluate, read_unit
from harness.executors import UnitFailure
from harness.models.submission import load_submission
from harness.results import Result

REPO = Path(__file__).resolve().parents[1]
DATASET = "synthetic-default"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_address(tiny_pipeline_copy):
    """A local two-CPU Ray instance for the module (the workers see the module's cache)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        cluster._SHARED.clear()
        cluster._IN_FLIGHT.clear()


def _settings(scheduler: str, **kw) -> EvalSettings:
    base = dict(
        tasks=("mortality_in_hospital",), encoder="test_tiny", n_resamples=50,
        scheduler=scheduler,
    )  # fmt: skip
    base.update(kw)
    return EvalSettings.quick(**base)


def _units(root: Path, name: str) -> dict[str, tuple[np.ndarray, dict]]:
    """Every unit file of entry ``name``: its predictions and metadata less the timing."""
    out = {}
    for path in sorted((root / "results" / DATASET / name / "predictions").rglob("*.parquet")):
        frame, meta = read_unit(path)
        meta.pop("train_seconds")
        key = str(path.relative_to(root / "results"))
        out[key] = (frame.filter(like="prob_").to_numpy(), meta, frame["stay_id"].to_numpy())
    return out


def _forget(root: Path, name: str) -> None:
    shutil.rmtree(root / "results" / DATASET / name)


def _metrics(result: dict) -> list:
    """Every (task, cohort, metric, value, CI) of a result: what a leaderboard reads."""
    out = []
    for block in Result.of(result).blocks():
        for metric, m in sorted(block.metrics.items()):
            out.append((block.task, block.cohort, metric, m.value, m.ci_low, m.ci_high))
    return out


def _same_units(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        (pa, ma, ia), (pb, mb, ib) = a[key], b[key]
        assert ia.tobytes() == ib.tobytes(), key
        assert pa.tobytes() == pb.tobytes(), f"{key}: predictions differ"
        assert ma == mb, key


@pytest.mark.parametrize(
    "name,trusted", [("late_fusion", False), ("tabular_gbm", True)], ids=["sandboxed", "trusted"]
)
def test_ray_gives_byte_identical_units_and_the_same_result(
    ray_address, tiny_pipeline_copy, name, trusted
):
    root = tiny_pipeline_copy
    folder = REPO / "submissions" / name
    runner = {"executor": "local"} if trusted else {}
    on_ray = evaluate(folder, _settings("ray", ray_address=ray_address, **runner))
    assert on_ray.units_run == 2
    units_ray = _units(root, name)
    _forget(root, name)
    here = evaluate(folder, _settings("local", **runner))  # this process's threads: as many
    assert here.units_run == 2  # as cores; a unit's own are its `resources.cpus` everywhere
    _same_units(units_ray, _units(root, name))
    assert _metrics(on_ray.result) == _metrics(here.result)
    assert on_ray.result["provenance"]["run_key"] == here.result["provenance"]["run_key"]


KILLER = '''
import os, signal
from pathlib import Path
import numpy as np

class Killer:
    """Logistic regression on the EHR summary; kills its own process on its first fit."""
    def __init__(self, spec, marker):
        self.spec, self.marker = spec, Path(marker)
    def fit(self, x, y):
        if not self.marker.exists():
            self.marker.write_text("killed once")
            os.kill(os.getpid(), signal.SIGKILL)
        from sklearn.linear_model import LogisticRegression
        self.model = LogisticRegression(max_iter=500).fit(x, y)
        return self
    def predict_proba(self, x):
        return self.model.predict_proba(x)[:, 1]
'''


def _killer(tmp_path: Path, name: str = "killer") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.py").write_text(KILLER)
    marker = tmp_path / "marker"
    (folder / "submission.yaml").write_text(
        f"name: {name}\nversion: 1\nkind: estimator\nentry: model:Killer\n"
        f"inputs: [ehr_summary]\ntasks: [mortality_in_hospital]\nparams: {{marker: '{marker}'}}\n"
    )
    return folder


def test_a_worker_killed_mid_unit_is_retried_with_the_same_predictions(
    ray_address, tiny_pipeline_copy, tmp_path
):
    root = tiny_pipeline_copy
    folder = _killer(tmp_path)
    # trusted: the model runs in the Ray worker's own process, so its SIGKILL kills the worker
    outcome = evaluate(folder, _settings("ray", ray_address=ray_address, executor="local",
                                         cohorts=("base",)))  # fmt: skip
    assert (tmp_path / "marker").read_text() == "killed once"  # the first attempt died
    assert outcome.units_run == 1 and outcome.result["status"] == "ok"
    retried = _units(root, "killer")
    _forget(root, "killer")
    here = evaluate(folder, _settings("local", executor="local", cohorts=("base",)))
    _same_units(retried, _units(root, "killer"))
    assert _metrics(outcome.result) == _metrics(here.result)


def test_a_unit_that_fails_in_the_sandbox_fails_the_evaluation_with_its_category(
    ray_address, tiny_pipeline_copy, tmp_path
):
    folder = _killer(tmp_path, "killer_sandboxed")
    # sandboxed, the model cannot reach the Ray worker: its unit fails (the marker cannot be
    # written, or the SIGKILL ends the sandboxed process) and the category crosses Ray intact
    with pytest.raises(UnitFailure) as caught:
        evaluate(folder, _settings("ray", ray_address=ray_address, cohorts=("base",)))
    assert caught.value.category in ("exited", "sandbox_denied")
    assert not (tmp_path / "marker").exists()
    result = json.loads(
        (tiny_pipeline_copy / "results" / DATASET / "killer_sandboxed" / "result.json").read_text()
    )
    assert result["status"] == "failed" and result["category"] == caught.value.category


def _cli(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HARNESS_CACHE": str(root)}
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "evaluate", *args], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_a_killed_driver_resumes_from_the_finished_units(ray_address, tiny_pipeline_copy):
    root = tiny_pipeline_copy
    args = (
        str(REPO / "submissions" / "ehr_lstm"), "--quick", "--folds", "1,2",
        "-t", "mortality_in_hospital", "-t", "phenotype", "--encoder", "test_tiny",
        "--n-resamples", "50",
        "--trusted", "--executor", "ray", "--ray-address", ray_address,
    )  # fmt: skip
    where = root / "results" / DATASET / "ehr_lstm" / "predictions"
    driver = _cli(root, *args)
    deadline = time.monotonic() + 600
    while not list(where.rglob("*.parquet")) and time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()[0]
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    written = {p: p.stat().st_mtime_ns for p in where.rglob("*.parquet")}
    assert 1 <= len(written) < 8, "the driver was killed between the first and the last unit"
    again = _cli(root, *args)
    out = again.communicate(timeout=900)[0]
    assert again.returncode == 0, out
    assert f"{8 - len(written)} units trained, {len(written)} reused" in " ".join(out.split()), out
    # the finished units were kept as they were, the missing ones written
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())
    assert len(list(where.rglob("*.parquet"))) == 8


def test_resources_are_validated(tmp_path):
    (tmp_path / "model.py").write_text("")
    base = "name: x\nversion: 1\nkind: torch\nentry: model:M\ninputs: [ehr]\n"
    for line, message in [
        ("resources: {cpus: 0}", "resources.cpus"),
        ("resources: {cpus: 1.5}", "resources.cpus"),
        ("resources: {gpus: -1}", "resources.gpus"),
        ("resources: {memory: 4}", "unknown key `resources.memory`"),
        ("resources: 2", "must be a mapping"),
    ]:
        (tmp_path / "submission.yaml").write_text(base + line + "\n")
        with pytest.raises(SpecError, match=message):
            load_submission(tmp_path)
    (tmp_path / "submission.yaml").write_text(base + "resources: {cpus: 2, gpus: 0.25}\n")
    sub = load_submission(tmp_path)
    assert cluster.Resources.of(sub) == cluster.Resources(cpus=2, gpus=0.25)


def test_a_request_the_cluster_cannot_meet_is_refused(ray_address, tmp_path):
    (tmp_path / "model.py").write_text("")
    (tmp_path / "submission.yaml").write_text(
        "name: x\nversion: 1\nkind: torch\nentry: model:M\ninputs: [ehr]\nresources: {cpus: 64}\n"
    )
    sub = load_submission(tmp_path)
    with pytest.raises(UsageError, match="asks 64 CPU per unit but the largest Ray node has 2"):
        cluster.Resources.of(sub).check(ray, sub)


def test_unknown_executor_is_a_usage_error():
    with pytest.raises(UsageError, match="valid executors: local, ray"):
        EvalSettings(scheduler="dask")


def test_encode_through_ray_equals_encode_locally_row_for_row(
    ray_address, tiny_pipeline, tmp_path, monkeypatch
):
    from harness.cohort import load_cohort
    from harness.encode.run import RayEncode, cohort_images, encode
    from harness.store import read_cxr

    for part in ("datasets", "cohorts"):  # the same cohorts, no features yet
        shutil.copytree(tiny_pipeline / part, tmp_path / part)

    def stored(root: Path, key: str):
        monkeypatch.setenv("HARNESS_CACHE", str(root))
        ids = sorted(cohort_images(load_cohort("base")))
        return ids, read_cxr(key, ids)

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    report = encode("base", encoder="test_tiny", ray=RayEncode(ray_address, 2))
    assert report.n_encoded == report.n_images > 0 and report.forward_calls > 0
    ids_ray, on_ray = stored(tmp_path, report.cxr_key)
    ids_here, here = stored(tiny_pipeline, report.cxr_key)
    assert ids_ray == ids_here
    assert on_ray.status.tolist() == here.status.tolist()
    assert on_ray.embedding.tobytes() == here.embedding.tobytes()
    # the store is complete and resumable as any other: a second run encodes nothing
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    again = encode("base", encoder="test_tiny", ray=RayEncode(ray_address, 2))
    assert again.forward_calls == 0 and again.n_reused == again.n_images


def test_several_submissions_share_the_cluster(ray_address, tiny_pipeline_copy):
    """`prefetch` puts the pending units of every submission in flight before the first is
    scored; each evaluation then collects its own, training nothing twice."""
    settings = _settings("ray", ray_address=ray_address, executor="local")
    folders = [REPO / "submissions" / n for n in ("ehr_lstm", "cxr_probe")]
    for name in ("ehr_lstm", "cxr_probe"):
        if (tiny_pipeline_copy / "results" / DATASET / name).exists():
            _forget(tiny_pipeline_copy, name)
    before = cluster.SUBMITTED[0]
    assert cluster.prefetch(folders, settings) == 4
    assert len(cluster._IN_FLIGHT) == 4
    outcomes = [evaluate(f, settings) for f in folders]
    assert not cluster._IN_FLIGHT  # every prefetched unit was collected by its evaluation
    assert cluster.SUBMITTED[0] - before == 4  # and none was submitted a second time
    assert [o.units_run for o in outcomes] == [2, 2]
    assert all(o.result["status"] == "ok" for o in outcomes)


def test_a_link_in_the_submission_folder_is_refused_not_shipped(tmp_path):
    """A link would reach a Ray worker as the file it points to (the cache's labels, say), and
    the sandbox would read it: the folder is refused, as the local sandbox refuses it."""
    from harness.errors import SubmissionError

    folder = _killer(tmp_path, "linker")
    sub = load_submission(folder)  # refuses a link itself; this one appears after the check
    secret = tmp_path / "labels.csv"
    secret.write_text("stay_id,label\n1,1\n")
    (folder / "labels.csv").symlink_to(secret)
    with pytest.raises(SubmissionError, match="no links"):
        cluster.folder_files(sub)
    (folder / "labels.csv").unlink()
    shipped = cluster.folder_files(sub)
    assert set(shipped) == {"model.py", "submission.yaml"}
    placed = cluster.materialise(shipped, "linker", tmp_path / "node")
    assert (placed / "model.py").read_bytes() == (folder / "model.py").read_bytes()
    with pytest.raises(UsageError, match="outside its folder"):
        cluster.materialise({"../escape.py": b""}, "x", tmp_path / "node2")
