"""The stage clock of `harness.timing` and the `harness list` command."""

from __future__ import annotations

import time

import pytest

from harness import timing
from harness.cli.main import main


def test_nested_stages_add_up_without_double_counting():
    with timing.measure() as clock:
        with timing.stage("outer"):
            time.sleep(0.05)
            with timing.stage("inner"):
                time.sleep(0.1)
            time.sleep(0.2)  # a worker's round trip: its time is measured there and added
            timing.add("remote", 0.2)
    assert clock.seconds["inner"] == pytest.approx(0.1, abs=0.03)
    assert clock.seconds["outer"] == pytest.approx(0.05, abs=0.03)
    assert clock.seconds["remote"] == 0.2
    assert clock.total() == pytest.approx(0.35, abs=0.05)


def test_stages_without_a_clock_are_free_and_clocks_do_not_leak():
    with timing.stage("nowhere"):
        pass
    timing.add("nowhere", 1.0)
    with timing.measure() as first:
        with timing.stage("a"):
            pass
    with timing.measure() as second:
        pass
    assert "nowhere" not in first.seconds and "a" in first.seconds
    assert second.total() == 0.0


def test_union_of_spans_counts_overlaps_once():
    spans = [(5.0, 6.0), (0.0, 2.0), (1.0, 3.0), (5.5, 5.7), (3.0, 3.0)]
    assert timing.union_seconds(spans) == pytest.approx(4.0)  # [0, 3] and [5, 6]
    assert timing.union_seconds([]) == 0.0
    with timing.measure() as clock:
        timing.add_spans("train.steps", [(1, 2)])
    timing.add_spans("train.steps", [(3, 4)])  # no clock: dropped
    assert clock.spans["train.steps"] == [(1.0, 2.0)]


def test_worker_step_spans_outside_the_request_window_are_refused():
    """A worker (untrusted) reporting spans it cannot have spent inside the request it served
    (before it was sent, after the answer came, reversed, booleans, floods) has them dropped."""
    from harness.executors.isolated import MAX_STEP_SPANS, _step_spans

    window = (100.0, 110.0)
    assert _step_spans([[101, 102], [103.5, 109]], window) == [(101.0, 102.0), (103.5, 109.0)]
    for bad in (
        [[99, 102]], [[101, 111]], [[105, 104]], [[True, 102]], [[101, "102"]], [[101]],
        "[[101, 102]]", {"a": 1}, [[101, 102]] * (MAX_STEP_SPANS + 1),
    ):  # fmt: skip
        assert _step_spans(bad, window) == [], bad


def _registered(what: str) -> list[str]:
    if what == "tasks":
        from harness.cohort.spec import list_tasks

        return list_tasks()
    from harness.encode.registry import ENCODERS
    from harness.evaluate.scenarios import SCENARIOS
    from harness.metrics.registry import METRICS

    return {"metrics": METRICS, "scenarios": SCENARIOS, "encoders": ENCODERS}[what].names()


@pytest.mark.parametrize("what", ["tasks", "metrics", "scenarios", "encoders"])
def test_list_shows_every_registered_name(what, capsys):
    assert main(["list", what]) == 0
    out = " ".join(capsys.readouterr().out.split())
    names = _registered(what)
    assert names
    for name in names:
        assert name in out.replace("│ ", "").replace(" │", ""), name


def test_cli_usage_errors_are_one_message_not_a_traceback(capsys):
    assert main(["list", "widgets"]) == 2
    assert main(["evaluate", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert "widgets" in err and "no-such-flag" in err and "Traceback" not in err


def test_worker_timings_are_sanitised_and_bounded_by_the_round_trip():
    from harness.executors.isolated import _stage_seconds

    assert _stage_seconds("9e6", 2.0) == {}
    assert _stage_seconds({"train.steps": True, "train.validation": -1, "x": 5}, 2.0) == {}
    # a worker claiming more time than the round trip took cannot skew the breakdown
    got = _stage_seconds({"train.steps": 9e6, "train.validation": 3e6}, 2.0)
    assert sum(got.values()) == pytest.approx(2.0)
    assert got["train.steps"] == pytest.approx(1.5)
    assert _stage_seconds({"train.steps": 0.5}, 2.0) == {"train.steps": 0.5}
