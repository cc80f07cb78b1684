"""The typed result reader and schema migration, on a real result.json of schema 1.1.

``fixtures/results/late_fusion.schema-1.1.json`` was written by `harness evaluate` (schema 1.1)
for ``late_fusion`` on the tiny synthetic dataset (quick: fold 1, seed 0, 2 epochs, 50 resamples,
the ``matched`` cohort, two scenarios) after the EHR-only and CXR-only references: it holds every
block (paired deltas, fusion gains, robustness, fairness) and aggregates of synthetic data only.
Older layouts are derived from it: without ``provenance.protocol``, and the unsigned 1.0 layout.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.evaluate.run import headline_rows
from harness.leaderboard.aggregate import protocol_of, rank_results
from harness.results import SCHEMA_VERSION, AttributeTable, Block, Curve, Delta, Estimate, Result
from harness.results.document import build_result, failed_result, provenance
from harness.results.migrate import LEGACY_THRESHOLD, legacy_protocol, migrate
from harness.results.schema import schema_errors

FIXTURE = Path(__file__).parent / "fixtures" / "results" / "late_fusion.schema-1.1.json"
BINARY, MULTILABEL, COHORT = "mortality_in_hospital", "phenotype", "matched"


@pytest.fixture
def doc() -> dict:
    return json.loads(FIXTURE.read_text())


def _without_protocol(doc: dict) -> dict:
    """The layout of results written before protocols were recorded."""
    old = copy.deepcopy(doc)
    del old["provenance"]["protocol"]
    return old


def _schema_1_0(doc: dict) -> dict:
    """The unsigned 1.0 layout: no signature, references, resamples or unimodal gain."""
    old = {**_without_protocol(doc), "schema_version": "1.0"}
    old.pop("signature")
    for by_cohort in old["tasks"].values():
        for block in by_cohort.values():
            for key in ("references", "main_resamples", "fusion_gain_unimodal"):
                block.pop(key, None)
    return old


# --------------------------------------------------------------------------------------------
# The current layout


def test_a_schema_1_1_result_loads_and_reads_through_typed_accessors(doc):
    result = Result.load(FIXTURE)
    assert result.source_version == "1.1" and result.schema_version == SCHEMA_VERSION
    assert (result.name, result.status, result.ok) == ("late_fusion", "ok", True)
    assert result.dataset == "synthetic-default" and result.error is None
    assert result.fingerprint(COHORT) == doc["cohorts"][COHORT]["fingerprint"]
    assert result.fingerprint("base") is None
    assert result.run_key == doc["provenance"]["run_key"]
    assert (result.folds, result.seeds, result.max_epochs) == ([1], [0], 2)
    assert result.inputs == {"ehr", "cxr"} and result.train_cxr_dropout == 0.0
    assert list(result.tasks) == [BINARY, MULTILABEL]
    assert [(b.task, b.cohort) for b in result] == [(BINARY, COHORT), (MULTILABEL, COHORT)]
    assert result.block(BINARY, "base") is None and result.block("los", COHORT) is None


def test_block_accessors_return_what_the_document_holds(doc):
    raw = doc["tasks"][BINARY][COHORT]
    block = Result(doc).block(BINARY, COHORT)
    assert isinstance(block, Block)
    assert (block.kind, block.main_metric, block.n_stays) == ("binary", "auroc", raw["n_stays"])
    assert block.n_resamples == 50 and len(block.main_resamples or []) == 50
    headline = block.headline
    assert isinstance(headline, Estimate)
    assert headline.value == raw["metrics"]["auroc"]["value"]
    assert (headline.ci_low, headline.ci_high) == (
        raw["metrics"]["auroc"]["ci_low"],
        raw["metrics"]["auroc"]["ci_high"],
    )
    assert set(block.metrics) == set(raw["metrics"]) and block.metric("nope") is None
    refs = block.references
    assert (refs.ehr_only, refs.cxr_only, refs.best_unimodal) == (
        "ehr_lstm",
        "cxr_probe",
        "ehr_lstm",
    )
    delta = block.delta_vs_ehr
    assert isinstance(delta, Delta)
    assert delta.delta == raw["paired_deltas"]["ehr_lstm"]["auroc"]["delta"]
    assert set(block.paired_deltas) == {"ehr_lstm", "cxr_probe"}
    assert block.paired_delta("cxr_probe", "brier") == Delta.of(
        raw["paired_deltas"]["cxr_probe"]["brier"]
    )
    assert block.paired_delta(None) is None and block.paired_delta("nobody") is None
    assert block.fusion_gain is None and block.fusion_gain_unimodal is None  # binary task
    assert block.per_label == {} and block.cross_cohort == {}


def test_multilabel_blocks_hold_fusion_gains_curves_and_per_label_fairness(doc):
    raw = doc["tasks"][MULTILABEL][COHORT]
    block = Result(doc).block(MULTILABEL, COHORT)
    assert block is not None
    gain = block.fusion_gain
    assert gain is not None and gain.reference == "ehr_lstm" and gain.metric == "auroc"
    assert set(gain.labels) == set(raw["fusion_gain"]["labels"])
    assert gain.bh_m == raw["fusion_gain"]["bh_m"]
    uni = block.fusion_gain_unimodal
    assert uni is not None and uni.references == ("ehr_lstm", "cxr_probe")
    assert {d.reference for d in uni.labels.values()} <= {"ehr_lstm", "cxr_probe"}
    assert block.gain("fusion_gain_unimodal") == uni
    with pytest.raises(KeyError):
        block.gain("robustness")
    curve = block.curve("cxr_missing_mcar")
    assert isinstance(curve, Curve) and curve.has_ci
    assert curve.values == tuple(raw["robustness"]["cxr_missing_mcar"]["values"])
    assert set(block.robustness) == {"cxr_missing_mcar", "ehr_truncate_24h"}
    assert block.curve("cxr_missing_acuity") is None
    fairness = block.fairness
    assert fairness is not None and fairness.attributes == {}
    assert set(fairness.labels) == set(raw["fairness"]["labels"])
    assert set(block.per_label) == set(raw["per_label"])


def test_fairness_tables_read_rates_of_reported_groups_only(doc):
    block = Result(doc).block(BINARY, COHORT)
    fairness = None if block is None else block.fairness
    assert fairness is not None and fairness.threshold_rule == LEGACY_THRESHOLD
    insurance = fairness.attribute("insurance")
    assert insurance is not None and insurance.rates("tpr") == {}  # every group suppressed
    assert fairness.attribute("shoe_size") is None
    rows = [
        {"group": "a", "tpr": 0.5},
        {"group": "b", "tpr": None},
        {"group": "c", "suppressed": True},
    ]
    table = AttributeTable.of("x", {"groups": rows, "summary": {"tpr": {"worst_group": "a"}}})
    assert table.rates("tpr") == {"a": 0.5} and table.across("tpr") == {"worst_group": "a"}
    assert table.across("fpr") == {}


def test_headline_rows_read_the_result(doc):
    rows = headline_rows(doc)
    assert [(r["task"], r["cohort"], r["metric"]) for r in rows] == [
        (BINARY, COHORT, "auroc"),
        (MULTILABEL, COHORT, "auroc_macro"),
    ]
    block = doc["tasks"][BINARY][COHORT]
    assert rows[0]["value"] == block["metrics"]["auroc"]["value"]
    assert rows[0]["ehr_reference"] == "ehr_lstm"
    assert rows[0]["p_value"] == block["paired_deltas"]["ehr_lstm"]["auroc"]["p_value"]


# --------------------------------------------------------------------------------------------
# Older layouts


def test_results_without_a_recorded_protocol_get_the_legacy_one(doc):
    old = _without_protocol(doc)
    result = Result(old)
    assert result.source_version == "1.1" and result.schema_version == SCHEMA_VERSION
    assert "protocol" not in old["provenance"]  # the document itself is never changed
    assert result.protocol_record == legacy_protocol(old)
    protocol = result.protocol(BINARY, COHORT)
    assert protocol == {
        "profile": "honest",
        "folds": [1],
        "seeds": [0],
        "max_epochs": 2,
        "n_resamples": 50,  # the block's own bootstrap size
        "selection": "auroc",
        "threshold": LEGACY_THRESHOLD,
        "tuning": "default",  # written before tuning existed: the submission's own settings
    }
    assert result.protocol()["selection"] == {BINARY: "auroc", MULTILABEL: "auroc_macro"}
    # the recorded protocol of the same run says the same, so both rank together
    assert Result(doc).protocol(BINARY, COHORT) == protocol
    tables = rank_results([doc, {**old, "name": "late_fusion_old"}])
    assert [len(t["rows"]) for t in tables] == [2, 2]  # one board per task, both entries on it
    assert protocol_of(old, BINARY, COHORT)["label"] == protocol_of(doc, BINARY, COHORT)["label"]


def test_schema_1_0_results_read_absent_blocks_as_none_or_empty(doc):
    old = _schema_1_0(doc)
    result = Result(old)
    assert result.source_version == "1.0" and result.schema_version == SCHEMA_VERSION
    assert schema_errors(old) == []  # 1.0 and 1.1 need no recorded protocol
    block = result.block(MULTILABEL, COHORT)
    assert block is not None and block.main_resamples is None
    assert block.references.ehr_only is None and block.delta_vs_ehr is None
    assert block.fusion_gain_unimodal is None and block.fusion_gain is not None
    assert result.protocol(MULTILABEL, COHORT)["profile"] == "honest"
    assert headline_rows(old)[0]["delta_vs_ehr"] is None


def test_migration_keeps_current_documents_and_refuses_another_major_version(doc):
    current = migrate(doc)
    assert migrate(current) is current
    newer = {**current, "schema_version": "1.9"}
    assert migrate(newer) is newer  # a newer minor version is read as it is
    with pytest.raises(InputError, match="schema_version 2.0"):
        Result({**doc, "schema_version": "2.0"})
    with pytest.raises(InputError, match="<major>.<minor>"):
        Result({**doc, "schema_version": "latest"})


def test_minimal_and_failed_documents_read_without_errors(tmp_path):
    bare = Result({"name": "x"})  # no schema_version: read as 1.0
    assert (
        bare.source_version == "1.0"
        and bare.run_key is None
        and bare.tasks == {}
        and bare.fingerprint("base") is None
    )
    assert bare.protocol()["profile"] == "honest"
    failed = Result(failed_result("bad", "1", "synthetic-default", "boom at /home/me/x.py"))
    assert not failed.ok and failed.category == "error" and "/home" not in str(failed.error)
    path = tmp_path / "result.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        Result.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        Result.load(path)


# --------------------------------------------------------------------------------------------
# Schema 1.2


def test_new_results_are_1_2_and_must_record_their_protocol(doc):
    tasks = {BINARY: {COHORT: doc["tasks"][BINARY][COHORT]}}
    cohorts = {COHORT: doc["cohorts"][COHORT]}
    record = provenance(protocol=doc["provenance"]["protocol"])
    result = build_result("x", "1", "synthetic-default", cohorts=cohorts, tasks=tasks,
                          provenance_record=record)  # fmt: skip
    assert result["schema_version"] == SCHEMA_VERSION == "1.3"
    del result["provenance"]["protocol"]
    assert any("protocol" in e for e in schema_errors(result))
    with pytest.raises(InputError, match="protocol"):
        build_result("x", "1", "synthetic-default", cohorts=cohorts, tasks=tasks,
                     provenance_record=provenance())  # fmt: skip
    # a failed evaluation has no protocol to record
    assert schema_errors(failed_result("x", "1", "synthetic-default", "boom")) == []


def _group_rows(node):
    """Every fairness group row of a document (dicts with ``group`` and ``suppressed``)."""
    if isinstance(node, dict):
        if "group" in node and "suppressed" in node:
            yield node
        for value in node.values():
            yield from _group_rows(value)
    elif isinstance(node, list):
        for value in node:
            yield from _group_rows(value)


def _break(doc: dict, how: str) -> dict:
    trial = copy.deepcopy(doc)
    trial.pop("signature", None)
    rows = list(_group_rows(trial))
    kept = next(r for r in rows if not r["suppressed"])
    hidden = next(r for r in rows if r["suppressed"])
    if how == "text_number":
        trial["tasks"][BINARY][COHORT]["metrics"]["auroc"] = "0.9"
    elif how == "unknown_key":
        kept["stay_ids"] = 3
    elif how == "per_stay_array":
        kept["tpr"] = [0.1, 0.2]
    elif how == "numbers_on_a_suppressed_group":
        hidden["n"] = 3
    elif how == "bad_name":
        trial["name"] = "a b/../c"
    return trial


@pytest.mark.parametrize(
    "how",
    ["text_number", "unknown_key", "per_stay_array", "numbers_on_a_suppressed_group", "bad_name"],
)
def test_inlined_schema_rejects_exactly_what_the_published_schema_rejects(doc, how):
    """The validator inlines leaf definitions for speed; a plain Draft 2020-12 validator of the
    schema as shipped must report the same violations on broken documents."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    from harness.results.schema import LEADERBOARD_SCHEMA, RESULT_SCHEMA, load_schema

    registry = Registry().with_resources(
        (n, Resource.from_contents(load_schema(n))) for n in (RESULT_SCHEMA, LEADERBOARD_SCHEMA)
    )
    plain = Draft202012Validator(load_schema(RESULT_SCHEMA), registry=registry)
    trial = _break(doc, how)
    fast = schema_errors(trial)
    slow = sorted(
        "/".join(map(str, e.absolute_path)) or "(top level)" for e in plain.iter_errors(trial)
    )
    assert fast, f"{how}: a broken document passed"
    assert sorted(e.split(": ")[0] for e in fast) == slow


def _leaves(node, path=()):
    """(path, value) of every leaf of a JSON document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path, node


def test_the_compiled_validator_agrees_with_the_python_reference(doc):
    """jsonschema-rs (what the harness validates with) against the pure-Python jsonschema on
    the real result and on 160 single-field corruptions of it."""
    import random

    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    from harness.results.schema import LEADERBOARD_SCHEMA, RESULT_SCHEMA, load_schema

    registry = Registry().with_resources(
        (name, Resource.from_contents(load_schema(name)))
        for name in (RESULT_SCHEMA, LEADERBOARD_SCHEMA)
    )
    reference = Draft202012Validator(load_schema(RESULT_SCHEMA), registry=registry)
    doc["schema_version"] = SCHEMA_VERSION
    doc.pop("signature", None)
    assert reference.is_valid(doc) and schema_errors(doc) == []
    leaves = list(_leaves(doc))
    rng = random.Random(3)
    bad_values = ["x", -1, 1e9, None, True, [], {}, "a" * 500, 2]
    rejected = 0
    for _ in range(80):
        path, _value = rng.choice(leaves)
        mutated = copy.deepcopy(doc)
        node = mutated
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = rng.choice(bad_values)
        expected = reference.is_valid(mutated)
        assert (schema_errors(mutated) == []) == expected, path
        rejected += not expected
        extra = copy.deepcopy(doc)  # an unknown key where keys are closed
        parent = extra
        for part in path[:-1]:
            parent = parent[part]
        if isinstance(parent, dict):
            parent["unexpected_field"] = 1
            assert (schema_errors(extra) == []) == reference.is_valid(extra), path
    assert rejected > 20  # most corruptions are caught by both
    # NaN is not JSON: the reference takes it for a number, the harness refuses it (a result
    # is written with allow_nan=False anyway)
    with_nan = copy.deepcopy(doc)
    with_nan["tasks"][MULTILABEL][COHORT]["metrics"]["auroc_macro"]["value"] = float("nan")
    assert reference.is_valid(with_nan) and schema_errors(with_nan) != []
