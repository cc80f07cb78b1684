"""Evaluation units as Ray tasks: ``harness evaluate --executor ray``.

Nothing of the orchestration changes: the evaluation plans its units, reuses the finished ones,
pools and scores them exactly as with the local executor. What changes is where a pending unit
runs: each is one Ray task that trains it and predicts every scenario (through the sandbox, the
default, or in the Ray worker's process with ``--trusted``) and returns the unit file's bytes;
this process writes each file with the usual atomic protocol as soon as its task finishes.

- A worker that dies mid-unit (killed, out of memory, its node lost) is retried by Ray
  (:data:`MAX_RETRIES`); a unit is a pure function of its inputs and seed, so the retry gives
  the same predictions. A unit that fails in the submission's code is not retried: it fails
  the evaluation as it would locally.
- A driver that dies loses only the units still running: a rerun finds the written ones.
- Every unit of the evaluation (all tasks, cohorts, folds and seeds) is in flight at once, and
  :func:`prefetch` puts the units of several submissions in flight before the first is scored,
  so the submissions of one call share the cluster.
- The cohorts' feature sets are put in the object store once per (task, cohort) and shared by
  every unit and submission of the call.
- Workers need no shared file system with this process: the submission's folder (its regular
  files only, as the sandbox takes it) travels with the task and is written afresh per unit,
  and the stay-id pseudonym key is derived here, where the cache's secret is. They do need the
  same harness version installed (a unit checks it).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cluster import connect
from harness.errors import UsageError
from harness.executors.base import UnitFailure

if TYPE_CHECKING:  # pragma: no cover
    from harness.evaluate.execute import Progress
    from harness.evaluate.plan import Plan, PlannedUnit, TaskPlan
    from harness.executors.base import Limits
    from harness.models.submission import Submission

log = logging.getLogger(__name__)

#: Times Ray retries a unit whose worker died (not one that failed in the submission's code).
MAX_RETRIES = 3
#: Largest submission folder shipped to the workers (weights included).
MAX_FOLDER_BYTES = 512 * 2**20


@dataclass(frozen=True)
class Resources:
    """What one unit reserves on the cluster (``resources:`` of ``submission.yaml``)."""

    cpus: int = 1
    gpus: float = 0.0

    @classmethod
    def of(cls, sub: Submission) -> Resources:
        declared = sub.resources or {}
        return cls(cpus=int(declared.get("cpus", 1)), gpus=float(declared.get("gpus", 0.0)))

    def check(self, ray: Any, sub: Submission) -> None:
        """Refuse a request no node of the cluster can meet (Ray would wait for it forever)."""
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        for what, need in (("CPU", self.cpus), ("GPU", self.gpus)):
            have = max((float(n.get(what, 0.0)) for n in nodes), default=0.0)
            if need > have:
                raise UsageError(
                    f"{sub.yaml_path}: `resources` asks {need:g} {what} per unit but the largest "
                    f"Ray node has {have:g}. Fix: lower `resources` or add a node with {what}s"
                )


# --------------------------------------------------------------------------------------------
# The submission's folder travels with its units


def folder_files(sub: Submission) -> dict[str, bytes]:
    """The submission folder's regular files (caches aside), by path relative to it.

    Read through the sandbox's own snapshot (:func:`~harness.executors.isolated.stage_submission`),
    so the same rule holds: a link, pipe or device is refused rather than followed (a link
    shipped as the file it points to would carry, say, the cache's labels into the sandbox).
    """
    from harness.executors.isolated import stage_submission

    files: dict[str, bytes] = {}
    total = 0
    with tempfile.TemporaryDirectory(prefix="harness-ship-") as tmp:
        staged = stage_submission(sub.path, Path(tmp) / sub.path.name)
        for path in sorted(staged.rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            total += len(data)
            if total > MAX_FOLDER_BYTES:
                raise UsageError(
                    f"{sub.path}: the submission folder holds more than "
                    f"{MAX_FOLDER_BYTES >> 20} MiB; Fix: keep large weights out of it, or "
                    "evaluate with the local executor"
                )
            files[path.relative_to(staged).as_posix()] = data
    return files


def materialise(files: Mapping[str, bytes], name: str, where: Path) -> Path:
    """The submission folder ``files`` describe, written afresh under ``where`` (never a
    folder found on the node: another user of a shared node could have planted it)."""
    folder = where / name
    folder.mkdir(parents=True)
    for rel, data in files.items():
        target = (folder / rel).resolve()
        if folder.resolve() not in target.parents:
            raise UsageError(f"submission file {rel!r} lies outside its folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder


# --------------------------------------------------------------------------------------------
# One unit, on a Ray worker


def run_remote_unit(
    version: str,
    files: Mapping[str, bytes],
    folder_name: str,
    runner_name: str,
    limits: Limits,
    cpus: int,
    fs: Any,
    unit: Any,
    settings: Any,
    scenarios: Sequence[str],
    other_names: Sequence[str],
    *other_sets: Any,
    inputs: Sequence[str] | None,
    config: dict[str, Any] | None,
    key: bytes,
) -> tuple[str, Any, str]:
    """Train and predict one unit where Ray placed it: ``("ok", file bytes, "")``, or
    ``("failed", category, message)`` when the submission failed (not retried)."""
    from harness import __version__
    from harness.errors import HarnessError
    from harness.evaluate.parallel import limit_threads
    from harness.evaluate.units import compute_unit, unit_file_bytes
    from harness.executors import get_executor
    from harness.models.submission import load_submission

    if version != __version__:
        return ("failed", "error", f"this Ray worker runs harness {__version__}, not {version}: "
                "install the same version on every node")  # fmt: skip
    limit_threads(cpus)  # the sandbox inherits the variables
    others = dict(zip(other_names, other_sets, strict=True))
    with tempfile.TemporaryDirectory(prefix="harness-unit-") as tmp:
        try:
            sub = load_submission(materialise(files, folder_name, Path(tmp)))
            with get_executor(runner_name).session(sub, limits) as runner:
                table, meta = compute_unit(
                    runner, fs, unit, settings, scenarios, others, inputs=inputs,
                    config=config, key=key,
                )  # fmt: skip
        except UnitFailure as exc:
            return ("failed", exc.category, str(exc))
        except HarnessError as exc:
            return ("failed", "error", str(exc))
    return ("ok", unit_file_bytes(table, meta), "")


# --------------------------------------------------------------------------------------------
# The driver's side


#: Feature sets already in the object store, by what they were loaded from.
_SHARED: dict[tuple[str, ...], Any] = {}
#: Units submitted to Ray by this process (those found in flight are not submitted again).
SUBMITTED = [0]
#: Units in flight ((file path, run key) -> object ref), submitted ahead by :func:`prefetch`.
_IN_FLIGHT: dict[tuple[Path, str], Any] = {}


def _share(ray: Any, plan: Plan, task: str, cohort: str, fs: Any) -> Any:
    """The object ref of ``fs``, put in the object store on first use."""
    key = (
        plan.entry.dataset, str(plan.cohorts[cohort].path),
        str(plan.cohorts[cohort].fingerprint), task, plan.encoder_key,
        ",".join(sorted(plan.cohorts)), str(plan.settings.cross_cohort),
    )  # fmt: skip
    if key not in _SHARED:
        _SHARED[key] = ray.put(fs)
    return _SHARED[key]


class RayUnits:
    """The pending units of one evaluation, as Ray tasks."""

    def __init__(self, sub: Submission, runner_name: str, limits: Limits, address: str | None):
        from harness import __version__

        self.ray = connect(address)
        self.sub, self.runner_name, self.limits = sub, runner_name, limits
        self.resources = Resources.of(sub)
        self.resources.check(self.ray, sub)
        self.version = __version__
        self.files = self.ray.put(folder_files(sub))  # once in the object store, not per unit
        self.remote = self.ray.remote(run_remote_unit).options(
            num_cpus=self.resources.cpus, num_gpus=self.resources.gpus,
            max_retries=MAX_RETRIES, retry_exceptions=False,
        )  # fmt: skip

    def submit(self, plan: Plan, task_plan: TaskPlan) -> dict[Any, PlannedUnit]:
        """Put every pending unit of ``task_plan`` in flight (those :func:`prefetch` already
        submitted are not submitted twice); ref -> planned unit."""
        from harness.evaluate.units import unit_pseudonym_key

        refs: dict[Any, PlannedUnit] = {}
        for (c, _, _), planned in task_plan.units.items():
            if planned.reuse:
                continue
            ref = _IN_FLIGHT.pop((planned.path, plan.key), None)
            if ref is None:
                others = task_plan.others[c]
                ref = self.remote.remote(
                    self.version, self.files, self.sub.path.name, self.runner_name, self.limits,
                    self.resources.cpus, _share(self.ray, plan, task_plan.task, c,
                                                task_plan.sets[c]),
                    planned.unit, self._settings(plan), plan.scenarios, list(others),
                    *(_share(self.ray, plan, task_plan.task, o, f) for o, f in others.items()),
                    inputs=plan.sub.inputs, config=plan.config(planned.unit),
                    key=unit_pseudonym_key(planned.unit),
                )  # fmt: skip
                SUBMITTED[0] += 1
            refs[ref] = planned
        return refs

    def _settings(self, plan: Plan) -> Any:
        """The plan's settings with the device fixed here, not guessed on the worker: CUDA when
        the unit reserves a GPU, else the CPU (Ray hides the GPUs of a task that reserved none),
        so a unit computes where its resources say, whatever node runs it."""
        from dataclasses import replace

        device = plan.settings.device or ("cuda" if self.resources.gpus > 0 else "cpu")
        return replace(plan.settings, device=device)

    def collect(
        self, in_flight: Sequence[tuple[TaskPlan, Mapping[Any, PlannedUnit]]], progress: Progress
    ) -> None:
        """Count the reused units, then write each unit's file the moment its task finishes,
        whatever task it belongs to; the first failure is raised (the caller cancels the rest
        with :meth:`cancel`; the files already written stay, as locally)."""
        from harness.io import atomic_write_bytes

        refs: dict[Any, PlannedUnit] = {}
        for task_plan, task_refs in in_flight:
            for planned in task_plan.units.values():
                if planned.reuse:
                    progress.starting(planned.unit.label)
                    progress.finished(reused=True)
            refs.update(task_refs)
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            for ref in done:
                planned = refs[ref]
                progress.starting(planned.unit.label)
                atomic_write_bytes(planned.path, self._result(ref, planned))
                progress.finished(reused=False)

    def cancel(self, in_flight: Sequence[tuple[TaskPlan, Mapping[Any, PlannedUnit]]]) -> None:
        """Cancel every unit of ``in_flight`` still running (after a failure or an interrupt)."""
        for _, task_refs in in_flight:
            for ref in task_refs:
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - finished already, or its worker is gone
                    log.debug("unit %s not cancelled", task_refs[ref].unit.label)

    def _result(self, ref: Any, planned: PlannedUnit) -> bytes:
        ray = self.ray
        errors = ray.exceptions
        died = (errors.WorkerCrashedError, errors.NodeDiedError, errors.TaskCancelledError,
                errors.ObjectLostError, errors.OwnerDiedError)  # fmt: skip
        try:
            status, value, message = ray.get(ref)
        except errors.RayTaskError as exc:  # the harness's own code failed there
            raise UnitFailure("error", f"{planned.unit.label}: {exc.cause or exc}") from None
        except errors.OutOfMemoryError:
            raise UnitFailure(
                "memory", f"{planned.unit.label}: its Ray worker ran out of memory"
            ) from None
        except died as exc:
            raise UnitFailure(
                "exited",
                f"{planned.unit.label}: its Ray worker died {MAX_RETRIES + 1} times "
                f"({type(exc).__name__})",
            ) from None
        if status != "ok":
            raise UnitFailure(str(value), f"{planned.unit.label}: {message}")
        return bytes(value)


def prefetch(paths: Sequence[Path], settings: Any) -> int:
    """Put every pending unit of each submission of ``paths`` in flight, so that several
    submissions evaluated in one call share the cluster (each is then evaluated, and scored,
    in turn, finding its units already running). Returns the units submitted; a submission that
    cannot be planned is left for its evaluation to report."""
    from harness.evaluate.plan import plan_task
    from harness.evaluate.run import open_entry, plan_evaluation
    from harness.executors import Limits
    from harness.models.submission import load_submission

    n = 0
    for path in paths:
        try:
            sub = load_submission(path)
            entry, executor = open_entry(sub, settings)
            plan = plan_evaluation(sub, settings, entry)
            units = RayUnits(sub, executor.name, Limits.for_submission(sub.limits),
                             settings.ray_address)  # fmt: skip
            for task in plan.tasks:
                for ref, planned in units.submit(plan, plan_task(plan, task)).items():
                    _IN_FLIGHT[(planned.path, plan.key)] = ref
                    n += 1
        except Exception as exc:  # noqa: BLE001 - `evaluate` reports it for that submission
            log.info("%s not prefetched: %s", path, exc)
    return n
