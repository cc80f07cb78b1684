"""Several submissions evaluated side by side: one process per job, the cores split between them.

Small models on a few cores use them poorly: two evaluations with one thread each finish sooner
than the same two run one after the other with two threads each (every sandbox round trip,
prediction, scenario and scoring step is single-threaded Python, and intra-op parallelism on
a 32-wide network barely pays). :func:`evaluate_many` runs up to ``jobs`` evaluations at once in
spawned processes, each limited to ``cores // jobs`` threads (torch, OpenMP, BLAS).

Scores of an entry are compared with the reference submissions' predictions (paired deltas,
fusion gains), so the references are started first, each reference scores once the references
before it have finished, and every other evaluation, once trained, waits for all of them: the
results are those of evaluating one after another in that order. Evaluations started in this
order cannot deadlock (one waits only for evaluations started before it). At the end the
references are evaluated again: one whose comparison set grew after it was scored (a later
reference) is re-scored, nothing is trained, and the others return at once (their scoring key
is unchanged). One evaluation failing does not stop the others; its error is returned in its
:class:`JobOutcome`.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.progress import Bar, active, receiving
from harness.progress import bar as progress_bar

if TYPE_CHECKING:
    from harness.evaluate.run import EvalSettings

log = logging.getLogger(__name__)

#: Environment variables that size the thread pools of torch, OpenMP and BLAS.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Most evaluations run at once by default (each holds its cohorts' feature sets in memory).
MAX_DEFAULT_JOBS = 8


@dataclass(frozen=True)
class JobOutcome:
    """What one evaluation of :func:`evaluate_many` gave: its figures, or its error."""

    folder: str
    seconds: float
    units_run: int = 0
    units_reused: int = 0
    headline: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    #: Whether the result was scored (False: the recorded result was still valid).
    scored: bool = True
    #: With ``measure``: seconds per stage (:mod:`harness.timing`) and when the optimizer
    #: steps ran, on the machine's monotonic clock (for `benchmarks/evaluate_speed.py`).
    stage_seconds: dict[str, float] = field(default_factory=dict)
    step_spans: list[tuple[float, float]] = field(default_factory=list)


def default_jobs(n_submissions: int, cpus: int | None = None) -> int:
    """One evaluation per core (at most :data:`MAX_DEFAULT_JOBS`), no more than submissions."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_JOBS, n_submissions))


def threads_per_job(jobs: int, cpus: int | None = None) -> int:
    """The cores divided between ``jobs`` evaluations (at least one thread each)."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // max(1, jobs))


def limit_threads(threads: int) -> None:
    """Set before torch or scikit-learn start their pools (a worker's initializer; a Ray
    unit's first step)."""
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _wait_all(events: Sequence[Any]) -> None:
    for event in events:
        event.wait()


def _evaluate_one(
    path: str,
    settings: EvalSettings,
    waits: Sequence[Any] = (),
    measure: bool = False,
    bars: Any = None,
) -> JobOutcome:
    """Evaluate one folder; every event of ``waits`` is waited for before scoring (the wait is
    timed as ``waiting``). ``measure``: record the stage timings in the outcome. ``bars``: a
    queue the evaluation's progress bars are sent to (:func:`harness.progress.receiving`: the
    parent process draws them), or None."""
    from contextlib import nullcontext

    from harness import progress, timing
    from harness.evaluate.run import evaluate

    def before() -> None:
        with timing.stage("waiting"):
            _wait_all(list(waits))

    started = time.perf_counter()
    sending = progress.reporting(progress.QueueSink(bars)) if bars is not None else nullcontext()
    with sending, timing.measure() if measure else nullcontext() as clock:
        try:
            outcome = evaluate(path, settings, before_scoring=before if waits else None)
        except Exception as exc:  # noqa: BLE001 - one broken submission must not stop the others
            return JobOutcome(Path(path).name, time.perf_counter() - started, error=str(exc))
    stages: dict[str, float] = {}
    spans: list[tuple[float, float]] = []
    if clock is not None:
        stages, spans = dict(clock.seconds), list(clock.spans.get("train.steps", ()))
    return JobOutcome(
        Path(path).name,
        time.perf_counter() - started,
        units_run=outcome.units_run,
        units_reused=outcome.units_reused,
        headline=outcome.headline,
        scored=outcome.scored,
        stage_seconds=stages,
        step_spans=spans,
    )


def _recorded(path: Path, settings: EvalSettings) -> JobOutcome | None:
    from harness.evaluate.run import recorded_outcome

    outcome = recorded_outcome(path, settings)
    if outcome is None:
        return None
    return JobOutcome(
        path.name, outcome.seconds, units_reused=outcome.units_reused,
        headline=outcome.headline, scored=False,
    )  # fmt: skip


def evaluate_many(
    paths: Sequence[Path],
    settings: EvalSettings,
    *,
    references: Sequence[str],
    jobs: int | None = None,
    threads: int | None = None,
    on_done: Callable[[JobOutcome], None] | None = None,
    measure: bool = False,
) -> list[JobOutcome]:
    """Evaluate ``paths`` with ``settings``, up to ``jobs`` at once; outcomes in completion
    order, then those of references re-scored at the end.

    ``references``: folder names the other evaluations are compared with (started first, in
    the order of ``paths``). ``jobs=1`` evaluates in this process, one after another.
    ``threads``: per evaluation (default: the cores divided between the jobs). ``measure``:
    each outcome carries its stage timings (:mod:`harness.timing`).
    """
    with progress_bar("evaluations", len(paths), unit="submission") as bar:
        return _evaluate_many(
            paths, settings, references, jobs, threads, on_done, measure, bar
        )  # fmt: skip


def _evaluate_many(
    paths: Sequence[Path],
    settings: EvalSettings,
    references: Sequence[str],
    jobs: int | None,
    threads: int | None,
    on_done: Callable[[JobOutcome], None] | None,
    measure: bool,
    bar: Bar,
) -> list[JobOutcome]:
    """:func:`evaluate_many`, counting the evaluations done on ``bar`` (those answered from the
    recorded results count without work)."""
    evaluate_one = functools.partial(_evaluate_one, measure=measure)
    outcomes: list[JobOutcome] = []
    counted: set[str] = set()

    def done(outcome: JobOutcome, *, recorded: bool = False) -> None:
        outcomes.append(outcome)
        if outcome.folder not in counted:  # a reference re-scored at the end counts once
            counted.add(outcome.folder)
            if recorded:
                bar.skip()
            else:
                bar.advance()
        if on_done is not None:
            on_done(outcome)

    # What is already done is answered here, without starting a process: every reference, and
    # the others too when no reference is left to evaluate (else they may be compared with a
    # reference about to change, and judge that once it has finished).
    bar.doing("finding the recorded results")
    recorded = {p: _recorded(p, settings) for p in paths}
    all_refs = [p for p in paths if p.name in set(references)]
    if any(recorded[p] is None for p in all_refs):
        recorded = {p: o if p in all_refs else None for p, o in recorded.items()}
    for outcome in recorded.values():
        if outcome is not None:
            done(outcome, recorded=True)
    refs = [p for p in all_refs if recorded[p] is None]
    others = [p for p in paths if p not in all_refs and recorded[p] is None]
    if not refs and not others:
        return outcomes
    # a reference evaluated now may change what the references scored before it compare with
    settle = all_refs if refs and len(all_refs) > 1 else []
    jobs = default_jobs(len(refs) + len(others)) if jobs is None else max(1, jobs)
    bar.doing(None)

    if jobs == 1 or len(refs) + len(others) <= 1:
        errors = set()
        for path in refs + others:
            outcome = evaluate_one(str(path), settings)
            errors |= {path} if outcome.error else set()
            done(outcome)
        settle = [p for p in settle if p not in errors]
        if settle:  # more work the bar counts: a reference comes back only if re-scored
            bar.update(total=len(paths) + len(settle))
            bar.doing("re-scoring the references")
        for path in settle:
            again = evaluate_one(str(path), settings)
            bar.advance()
            if again.scored or again.error:
                done(again)
        return outcomes

    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch's thread pools
    threads = threads or threads_per_job(jobs)
    log.info("%d evaluations, %d at a time, %d thread(s) each", len(refs) + len(others), jobs,
             threads)  # fmt: skip

    def pool_of(n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            n, mp_context=ctx, initializer=limit_threads, initargs=(threads,)
        )

    with ctx.Manager() as manager, receiving(manager.Queue() if active() else None) as bars:
        # each evaluation's bars are sent here and drawn under this one
        evaluate_one = functools.partial(evaluate_one, bars=bars)
        _run_in_processes(
            evaluate_one, refs, others, settle, settings, jobs, pool_of, manager, done, bar
        )  # fmt: skip
    return outcomes


def _run_in_processes(
    evaluate_one: Callable[..., JobOutcome],
    refs: list[Path],
    others: list[Path],
    settle: list[Path],
    settings: EvalSettings,
    jobs: int,
    pool_of: Callable[[int], Any],
    manager: Any,
    done: Callable[[JobOutcome], None],
    bar: Bar,
) -> None:
    """The references, then the others, up to ``jobs`` at once in spawned processes; then a
    process that died is retried alone, and the references are re-scored side by side."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    broken: list[Path] = []
    failed: set[Path] = set()
    with pool_of(jobs) as pool:
        finished = {p: manager.Event() for p in refs}
        gates = list(finished.values())
        futures = {
            pool.submit(evaluate_one, str(p), settings, gates[:i]): p for i, p in enumerate(refs)
        }
        futures |= {pool.submit(evaluate_one, str(p), settings, gates): p for p in others}
        try:
            for future in as_completed(futures):
                path = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool:  # a process died (killed, out of memory): the pool
                    broken.append(path)  # ends every job it ran; each is retried on its own
                    continue
                if path in finished:
                    finished[path].set()
                failed |= {path} if outcome.error else set()
                done(outcome)
        finally:  # whatever happens, no evaluation is left waiting for a reference
            for event in finished.values():
                event.set()
    for path in sorted(broken, key=lambda p: (p not in refs, str(p))):
        with pool_of(1) as alone:
            try:
                outcome = alone.submit(evaluate_one, str(path), settings).result()
            except BrokenProcessPool as exc:
                outcome = JobOutcome(path.name, 0.0, error=f"the evaluation process died: {exc}")
        failed |= {path} if outcome.error else set()
        done(outcome)
    settle = [p for p in settle if p not in failed]
    if settle:  # re-scoring only, side by side; in this process if a process dies
        counted = bar.completed
        bar.update(total=(bar.total or 0) + len(settle))
        bar.doing("re-scoring the references")
        args = ([str(p) for p in settle], [settings] * len(settle))
        rescored: list[JobOutcome] = []
        try:
            with pool_of(min(jobs, len(settle))) as pool:
                for result in pool.map(evaluate_one, *args):
                    rescored.append(result)
                    bar.advance()
        except BrokenProcessPool:
            bar.update(completed=counted)
            rescored = []
            for path in settle:
                rescored.append(evaluate_one(str(path), settings))
                bar.advance()
        for result in rescored:
            if result.scored or result.error:
                done(result)
