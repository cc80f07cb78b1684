"""Protocol profiles: what an evaluation fixes besides the model (seeds, tasks, metrics,
threshold), and the entry names that keep protocols apart.

The profiles themselves (:data:`harness.evaluate.run.PROFILES`) are listed with the evaluation's
defaults; this module holds what scoring and unit keys need of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from harness.metrics.registry import main_metric_for

#: The harness's own protocol (entries carry no suffix).
DEFAULT_PROTOCOL = "honest"
#: How the decision threshold of the fairness metrics is set when a profile does not fix one.
VALIDATION_THRESHOLD_RULE = "youden_j_on_validation"


class TaskLike(Protocol):
    """What a profile reads of a task (a task spec, or the `TaskInfo` of a feature set)."""

    @property
    def kind(self) -> str: ...

    @property
    def main_metric(self) -> str | None: ...


@dataclass(frozen=True)
class ProtocolProfile:
    """A named evaluation protocol: seeds, tasks, selection and headline metrics, threshold."""

    name: str
    description: str
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    #: Checkpoint-selection metric per task kind (registry names); None: the task YAML's
    #: ``main_metric``.
    selection: dict[str, str] | None = None
    #: Headline metric per task kind (ranks, deltas, curves); None: the selection metric.
    headline: dict[str, str] | None = None
    #: Fixed decision threshold of the fairness metrics; None: chosen on validation (Youden's J).
    threshold: float | None = None
    #: Tasks the profile does not evaluate, with the reason.
    excluded_tasks: tuple[tuple[str, str], ...] = ()

    def selection_metric(self, task: TaskLike) -> str:
        """The metric checkpoints of ``task`` are selected on."""
        if self.selection is None:
            return main_metric_for(task.kind, task.main_metric)
        return self.selection[task.kind]

    def headline_metric(self, task: TaskLike) -> str:
        """The metric ``task`` is ranked, compared and degraded on."""
        return self.headline[task.kind] if self.headline else self.selection_metric(task)

    @property
    def threshold_rule(self) -> str:
        return VALIDATION_THRESHOLD_RULE if self.threshold is None else f"fixed_{self.threshold:g}"


#: ``provenance.protocol.tuning`` of an entry evaluated with its own settings (not tuned).
UNTUNED = "default"


def protocol_suffix(protocol: str, tuned: bool = False) -> str:
    """``.tuned`` for tuned configurations, then ``.<profile>`` for a profile other than the
    default; empty for the default protocol with the submission's own settings."""
    return (".tuned" if tuned else "") + ("" if protocol == DEFAULT_PROTOCOL else f".{protocol}")


def reference_entry(ref: str, protocol: str, tuned: bool = False) -> str:
    """The entry name of reference submission ``ref`` under ``protocol`` (tuned or not)."""
    return ref + protocol_suffix(protocol, tuned)
