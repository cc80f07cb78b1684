"""`harness validate`: check a submission folder end to end on tiny generated data.

Checks, in order: the YAML schema, the import of the entry class, and for each task kind the
submission supports: construction, one forward pass (shape, finite values), a short training
run through the harness loop (probabilities of the right shape in [0, 1]) and determinism (a
second run with the same seed gives identical predictions). Failures are collected as one-line
messages that name the file and the field; nothing is raised for a failing submission.

This module sits above both `harness.models` (what it checks) and `harness.executors` (the
sandbox :func:`validate_isolated` runs it in), so neither of those packages imports the other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import HarnessError
from harness.kinds import TASK_KINDS

if TYPE_CHECKING:  # pragma: no cover
    from harness.models.data import FeatureSet, Split
    from harness.models.submission import Submission

log = logging.getLogger(__name__)


@dataclass
class Check:
    name: str
    ok: bool
    message: str = ""
    seconds: float = 0.0


@dataclass
class ValidationReport:
    """The outcome of `validate_submission`: one `Check` per step."""

    path: Path
    name: str | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    #: Called with each check's name when it is done (the sandboxed worker's progress lines).
    on_check: Callable[[str], None] | None = None

    def run(self, name: str, fn: Callable[[], str | None]) -> bool:
        """Run one check; a `HarnessError` (or any exception) becomes a failed check."""
        t0 = time.perf_counter()
        try:
            message = fn() or ""
            ok = True
        except HarnessError as exc:
            message, ok = str(exc), False
        except Exception as exc:  # a bug in submission code outside the guarded calls
            message, ok = f"{type(exc).__name__}: {exc}", False
        self.checks.append(Check(name, ok, message, time.perf_counter() - t0))
        if self.on_check is not None:
            self.on_check(name)
        return ok


def _kinds_for(sub: Submission) -> list[str]:
    """Task kinds to exercise: those of the listed tasks when known, else all three."""
    if sub.tasks is None:
        return list(TASK_KINDS)
    kinds: set[str] = set()
    try:
        from harness.cohort.spec import load_task

        for name in sub.tasks:
            kinds.add(load_task(name).kind)
    except Exception:  # unknown or unreadable task files: exercise every kind
        return list(TASK_KINDS)
    return [k for k in TASK_KINDS if k in kinds]


def validate_submission(
    path: str | Path,
    *,
    n: int = 100,
    max_epochs: int = 2,
    seed: int = 0,
    on_check: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Validate the submission folder ``path``; see the module docstring for the checks.
    ``on_check`` is called with each check's name when it is done."""
    from harness import progress

    with progress.bar("validate", total=None, unit="check") as bar:

        def done(name: str) -> None:
            bar.advance()
            bar.doing(f"{name} checked")
            if on_check is not None:
                on_check(name)

        return _validate(path, n, max_epochs, seed, done)


def _validate(
    path: str | Path, n: int, max_epochs: int, seed: int, on_check: Callable[[str], None]
) -> ValidationReport:
    import torch

    from harness.models.data import FeatureSet, prepare_split
    from harness.models.submission import load_submission
    from harness.models.train import (
        _model_errors,
        build_spec,
        seeded,
        split_output,
        train_model,
    )

    report = ValidationReport(Path(path), on_check=on_check)
    holder: dict[str, Any] = {}

    def schema() -> str:
        holder["sub"] = load_submission(path)
        report.name = holder["sub"].name
        return f"{holder['sub'].kind} submission, inputs {list(holder['sub'].inputs)}"

    def importing() -> str:
        holder["cls"] = holder["sub"].load_class()
        return f"{holder['sub'].entry_module}:{holder['sub'].entry_class}"

    if not report.run("schema", schema) or not report.run("import", importing):
        return report
    sub: Submission = holder["sub"]
    cls: type = holder["cls"]
    where = sub.module_path
    backbone_name = sub.backbone or ""  # set whenever the inputs include cxr_pixels

    for kind in _kinds_for(sub):
        fs = FeatureSet.synthetic(n, seed=seed, kind=kind)
        if sub.end_to_end:
            from harness.models.pixels import attach_pixels, synthetic_images

            fs = attach_pixels(fs, synthetic_images(fs, size=32, seed=seed), backbone_name)
        split = prepare_split(fs, 1)

        def forward(kind: str = kind, split: Split = split, fs: FeatureSet = fs) -> str:
            if sub.kind == "estimator":
                return "estimator: checked through fit / predict_proba"
            backbone, dim = None, None
            if sub.end_to_end:
                from harness.models.pixels import build_backbone

                backbone, dim = build_backbone(backbone_name)
            spec = build_spec(sub, fs.task, split.train, fs, seed, backbone, dim)
            with seeded(seed), _model_errors(where, f"{cls.__name__}(spec, **params)"):
                model = cls(spec, **sub.params)
            batch = split.train.batch(slice(0, 8)).to("cpu")
            model.eval()
            with torch.no_grad(), _model_errors(where, "forward"):
                logits, _ = split_output(model(batch), spec, len(batch), where)
            return f"logits {tuple(logits.shape)}"

        def training(kind: str = kind, split: Split = split, fs: FeatureSet = fs) -> str:
            preds = []
            for _ in range(2):
                tm = train_model(
                    sub, fs, None, 1, seed, device="cpu", max_epochs=max_epochs, split=split
                )
                preds.append(tm.predict_proba(split.test))
            p = preds[0]
            want = (len(split.test),) if kind == "binary" else (len(split.test), fs.task.n_outputs)
            if p.shape != want or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
                raise HarnessError(f"{where}: predictions of shape {p.shape}, expected {want}")
            holder[f"det_{kind}"] = preds
            return f"trained {max_epochs} epoch(s), predictions {p.shape}"

        def determinism(kind: str = kind) -> str:
            a, b = holder[f"det_{kind}"]
            if not np.array_equal(a, b):
                diff = float(np.max(np.abs(a - b)))
                raise HarnessError(
                    f"{where}: two trainings with seed {seed} gave different predictions (max "
                    f"abs difference {diff:.3g}). Fix: draw randomness only from torch/numpy "
                    "(seeded by the harness); no time-based seeds or unseeded generators."
                )
            return "identical predictions for the same seed"

        if report.run(f"{kind}: forward", forward) and report.run(f"{kind}: train", training):
            report.run(f"{kind}: determinism", determinism)
    return report


def validate_isolated(
    path: str | Path, *, n: int = 100, max_epochs: int = 2, seed: int = 0, timeout: float = 900.0
) -> ValidationReport:
    """`validate_submission` run inside the bubblewrap sandbox of `harness.executors.isolated`.

    The report comes back as JSON on a private channel; a worker that dies or hangs gives a
    failed ``sandbox`` check naming the reason.
    """
    import json
    import os
    import resource
    import subprocess
    import sys
    import tempfile

    from harness.executors.isolated import require_sandbox, sandbox_command, stage_submission
    from harness.executors.worker import SUBMISSION_MOUNT

    path = Path(path)
    report = ValidationReport(path)
    folder = path.parent if path.suffix in (".yaml", ".yml") else path
    if not folder.is_dir():
        report.checks.append(Check("schema", False, f"{folder}: no such submission folder"))
        return report
    require_sandbox()
    argv = [sys.executable, "-I", "-m", "harness.validate", SUBMISSION_MOUNT,
            str(n), str(max_epochs), str(seed)]  # fmt: skip
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="harness-validate-") as tmp:
        os.chmod(tmp, 0o755)
        staged = stage_submission(folder, Path(tmp) / "submission")
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"

        def cap_output() -> None:  # a worker cannot fill the disk through its output
            resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_CAP_BYTES, OUTPUT_CAP_BYTES))

        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                sandbox_command(staged, Path(tmp), argv), stdout=out, stderr=err,
                start_new_session=True, preexec_fn=cap_output,
            )  # fmt: skip
            if not _wait_counting_checks(proc, out_path, t0 + timeout):
                report.checks.append(Check("sandbox", False, f"validation ran past {timeout:g} s"))
                return report
        stdout = _tail(out_path)
        stderr = _tail(err_path)
    try:
        data = json.loads(stdout.decode("utf-8").strip().splitlines()[-1])
        report.name = data.get("name")
        for c in data["checks"]:
            message = str(c["message"]).replace(SUBMISSION_MOUNT + "/", f"{folder.name}/")
            report.checks.append(Check(str(c["name"]), bool(c["ok"]), message, float(c["seconds"])))
    except (ValueError, KeyError, IndexError, TypeError):
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        report.checks.append(
            Check("sandbox", False, f"the validation worker exited with code {proc.returncode} "
                  f"without a report: {' | '.join(tail)}", time.perf_counter() - t0)
        )  # fmt: skip
    return report


def _wait_counting_checks(proc: Any, out_path: Path, deadline: float) -> bool:
    """Wait for the sandboxed validation, advancing a bar for each check it reports done (its
    progress lines); False, with its process group killed, when it runs past ``deadline``."""
    import os
    import signal
    import subprocess

    from harness import progress

    with progress.bar("validate (sandboxed)", total=None, unit="check") as bar:
        seen = 0
        while True:
            try:
                proc.wait(timeout=0.25)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            done = _tail(out_path).count(PROGRESS_LINE)
            if done > seen:
                bar.advance(done - seen)
                seen = done
            if finished:
                return True
            if time.perf_counter() > deadline:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                return False


#: What the sandboxed worker writes when a check is done (a progress line; only counted).
PROGRESS_LINE = b'{"done": '

#: Bytes of output a sandboxed validation may write (its report is one short line).
OUTPUT_CAP_BYTES = 16 * 2**20


def _tail(path: Path, size: int = 65536) -> bytes:
    with path.open("rb") as fh:
        fh.seek(max(path.stat().st_size - size, 0))
        return fh.read()


def _main(argv: list[str]) -> int:
    """Inside the sandbox: validate ``argv[0]`` and print the report as one JSON line."""
    import json
    import os

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the submission's own prints go to stderr
    path, n, epochs, seed = argv[0], int(argv[1]), int(argv[2]), int(argv[3])

    def done(name: str) -> None:
        out.write(PROGRESS_LINE.decode() + json.dumps(name) + "}\n")
        out.flush()

    report = validate_submission(path, n=n, max_epochs=epochs, seed=seed, on_check=done)
    checks = [{"name": c.name, "ok": c.ok, "message": c.message, "seconds": c.seconds}
              for c in report.checks]  # fmt: skip
    out.write(json.dumps({"name": report.name, "checks": checks}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
