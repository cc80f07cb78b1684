"""The sandboxed side of the ``isolated`` executor: ``python -m harness.executors.worker``.

Runs inside bubblewrap with the submission folder at ``/submission`` (read-only), the request
folder at ``/inbox`` (read-only, written by the harness) and a small private ``/tmp``. It reads
requests from stdin and answers on the original stdout; the submission's own prints go to stderr,
so they cannot be mistaken for answers. While a unit trains, one progress note per finished epoch
(``{"progress": n}``) precedes the answer; the harness checks each before it moves its bar. It
never sees a label of a test or scenario set: the harness sends those inputs without ``y``.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from harness.models.protocol import TaskInfo
    from harness.models.submission import Submission
    from harness.models.train import TrainedModel

SUBMISSION_MOUNT = "/submission"
INBOX_MOUNT = "/inbox"


def _load_request(header: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    name = Path(str(header["file"])).name  # only files of the inbox
    with np.load(Path(INBOX_MOUNT) / name, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return header, arrays


def _task(raw: dict[str, Any]) -> TaskInfo:
    from harness.models.protocol import TaskInfo

    return TaskInfo(
        name=str(raw["name"]),
        kind=str(raw["kind"]),
        label_columns=tuple(raw["label_columns"]),
        n_classes=raw.get("n_classes"),
        main_metric=raw.get("main_metric"),
    )


def _warm_up() -> None:
    """Import and initialise what every training needs (the optimiser's lazy imports, the metric
    registry, recurrent kernels) before saying ready: a worker started ahead of need then has
    nothing left to load when its first unit arrives."""
    import torch
    from torch import nn

    import harness.metrics.registry  # noqa: F401
    import harness.models.blocks  # noqa: F401
    import harness.models.train  # noqa: F401

    rnn, head = nn.LSTM(4, 4, batch_first=True), nn.Linear(4, 1)
    opt = torch.optim.AdamW([*rnn.parameters(), *head.parameters()], lr=1e-3)
    out, _ = rnn(torch.zeros(2, 3, 4))
    head(out[:, -1]).sum().backward()
    opt.step()


def _serve(out: IO[bytes], inp: IO[bytes]) -> int:
    from harness.executors.base import TrainJob, classify_exception, fit_job, summary_of
    from harness.executors.wire import read_message, tensors_from_wire, write_message
    from harness.models.submission import load_submission

    hello, _ = read_message(inp)
    import torch

    threads = int(hello.get("threads") or torch.get_num_threads())
    torch.set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # OpenMP and BLAS pools too, as in-process units
    _warm_up()
    write_message(out, {"ok": True, "ready": True})
    sub: Submission | None = None
    trained: TrainedModel | None = None
    while True:
        try:
            header, _ = read_message(inp)
        except EOFError:
            return 0
        op = header.get("op")
        if op == "exit":
            return 0
        try:
            if sub is None:
                sub = load_submission(SUBMISSION_MOUNT)
            header, arrays = _load_request(header)
            if op == "train":
                trained = None
                job = TrainJob(
                    task=_task(header["task"]),
                    fold=int(header["fold"]),
                    seed=int(header["seed"]),
                    variables=list(header["variables"]),
                    train=tensors_from_wire(header["train"], arrays, "train"),
                    val=tensors_from_wire(header["val"], arrays, "val"),
                    device=header.get("device"),
                    max_epochs=header.get("max_epochs"),
                    cxr_dropout=header.get("cxr_dropout"),
                    config=header.get("config"),
                )
                # one note per finished epoch, before the answer (the harness draws its bar)
                trained = fit_job(sub, job, on_epoch=lambda n: write_message(out, {"progress": n}))
                s = summary_of(trained)
                reply: dict[str, Any] = {"ok": True, "val_score": s.val_score,
                                         "best_epoch": s.best_epoch,
                                         "train_seconds": s.train_seconds,
                                         "stage_seconds": s.stage_seconds,
                                         "step_spans": s.step_spans}  # fmt: skip
                if not np.isfinite(reply["val_score"]):
                    reply["val_score"] = None
                write_message(out, reply)
            elif op == "predict":
                if trained is None:
                    raise RuntimeError("predict before a successful train")
                tensors = tensors_from_wire(header["inputs"], arrays, "x")
                p = trained.predict_proba(tensors)
                write_message(out, {"ok": True}, {"p": np.asarray(p, dtype=np.float64)})
            else:
                raise RuntimeError(f"unknown request {op!r}")
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, then we go on
            category = classify_exception(exc)
            message = str(exc).strip() or type(exc).__name__
            if isinstance(exc, SystemExit):
                message = f"the submission called sys.exit({exc.code!r}) during {op}"
            elif not message.startswith(SUBMISSION_MOUNT) and category != "error":
                message = f"{type(exc).__name__}: {message}"
            traceback.print_exc(file=sys.stderr)
            write_message(out, {"ok": False, "category": category, "message": message[:2000]})
            if isinstance(exc, SystemExit | KeyboardInterrupt):
                return 0


def main() -> int:
    # The answer channel is a private copy of stdout; fd 1 (and print) now go to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return _serve(out, sys.stdin.buffer)


if __name__ == "__main__":
    sys.exit(main())
