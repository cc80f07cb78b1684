"""Task kinds: the one list that task specs, the training loop and the metrics check a kind against.

A task is ``binary`` (one 0/1 label), ``multilabel`` (several independent 0/1 labels) or
``multiclass`` (one integer class out of ``n_classes``). The kind decides the loss, the link
function and the metrics, so every layer validates against this tuple rather than its own copy.
"""

from __future__ import annotations

from typing import Literal, get_args

TaskKind = Literal["binary", "multilabel", "multiclass"]
#: The valid task kinds, in the order error messages list them.
TASK_KINDS: tuple[TaskKind, ...] = get_args(TaskKind)
