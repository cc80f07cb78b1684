"""Check a finished leaderboard run against the synthetic dataset's planted ground truth.

Reads ``ground_truth.json`` of the default synthetic dataset and every ``result.json`` of that
dataset, prints the evidence side by side with the planted truth, and ends with four checks:

1. fusion gain: among fusion entries whose macro metric is significantly above the best
   unimodal reference, at least half of the (entry, planted ``both`` label) pairs show a
   significant gain over the best single modality on that label, and across all fusion entries
   at most 5 % of the single-source (``ehr``, ``cxr``) and ``neither`` pairs do;
2. fairness: the planted group (Medicaid) has the lowest TPR for the EHR-only reference and for
   most entries on in-hospital mortality;
3. robustness, on absolute values: on the ``matched`` cohort (every stay has an image), among
   fusion entries significantly better than the EHR-only reference with every image (those
   that use it), the ones that never saw a missing image in training (train CXR dropout 0)
   keep less of their lead over the EHR-only reference when every image is removed than
   missingness-aware ones (dropout > 0); an entry that ignores the image cannot pass it;
4. complementarity and reliance: the planted ``both`` labels have the highest complementarity
   (the smaller of the EHR-only and CXR-only references' AUROC on the label, minus 0.5; the
   highest mean of the four sources, and the single most complementary label is a ``both``
   label), and fusion entries trained without CXR dropout lean on the EHR (median imbalance
   index above 0.5).

Run after an evaluation of the zoo on the default dataset, ideally with all five folds, e.g.
    harness demo --folds 1,2,3,4,5
    python benchmarks/planted_truth.py
With one fold (`make demo`) the bootstrap CIs are wide and checks 1 and 2 may not hold.
Exit status 0 when the four checks pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from harness import config
from harness.leaderboard.aggregate import protocol_key, protocol_of
from harness.leaderboard.summary import is_fusion
from harness.results import Block, FusionGain, Result

SOURCES = ("ehr", "cxr", "both", "neither")


def _results(root: Path, dataset: str) -> dict[str, Result]:
    """The ``ok`` results of ``dataset`` under ``root``, by entry name."""
    out = {}
    for path in sorted((root / dataset).glob("*/result.json")):
        r = Result.load(path)
        if r.ok and r.name:
            out[r.name] = r
    return out


def one_protocol(results: dict[str, Result], task: str, cohort: str, profile: str) -> dict:
    """The entries evaluated under one protocol, so that no check pools a quick (one fold) entry
    with full ones or a ``carebench`` entry with ``honest`` ones: among the entries of ``profile``,
    those of the protocol with the most folds x seeds (then the most entries). The others are
    listed as left out."""
    groups: dict[str, list[str]] = {}
    labels: dict[str, dict] = {}
    for name, r in results.items():
        proto = protocol_of(r, task, cohort)
        if proto["profile"] != profile:
            continue
        key = protocol_key(proto)
        groups.setdefault(key, []).append(name)
        labels[key] = proto
    if not groups:
        raise SystemExit(f"no {profile!r} results for {task}/{cohort}")

    def size(key: str) -> tuple[int, int]:
        proto = labels[key]
        return (len(proto["folds"]) * len(proto["seeds"]), len(groups[key]))

    chosen = max(groups, key=size)
    print(f"protocol: {labels[chosen]['label']} ({len(groups[chosen])} entries)")
    left = sorted(set(results) - set(groups[chosen]))
    if left:
        print(f"left out (another protocol): {', '.join(left)}")
    return {name: results[name] for name in groups[chosen]}


def _is_fuser(block: Block) -> bool:
    """Macro metric significantly above the best unimodal reference (delta CI above 0)."""
    delta = block.paired_delta(block.references.best_unimodal)
    return bool(delta and delta.ci_low is not None and delta.ci_low > 0)


def _counts_by_source(gain: FusionGain, source: dict) -> dict[str, list[int]]:
    """Per planted source: [significant labels, labels]."""
    counts = {s: [0, 0] for s in SOURCES}
    for label, rec in gain.labels.items():
        c = counts[source.get(label, "neither")]
        c[0] += bool(rec.significant)
        c[1] += 1
    return counts


def fusion_check(results: dict, source: dict, task: str, cohort: str, field: str) -> bool:
    """Among 'fusers' (macro metric significantly above the best unimodal reference) at least
    half of the (entry, 'both' label) cells show a significant gain; across all fusion entries at
    most 5 % of the single-source and 'neither' cells do. Also printed: how many fusers reach
    >= 2 of the 3 'both' labels on their own.
    """
    print(f"\n== {field} per label ({task}, {cohort}): significant labels by planted source")
    print(f"{'entry':26s} fuser " + " ".join(f"{s:>9s}" for s in SOURCES) + "   reference")
    fuser_ok, both_hits, single_hits, n_single = [], [], 0, 0
    for name, r in results.items():
        block = r.block(task, cohort)
        gain = None if block is None else block.gain(field)
        if block is None or not gain or not is_fusion(r):
            continue
        fuser = _is_fuser(block)
        counts = _counts_by_source(gain, source)
        print(f"{name:26s} {'yes' if fuser else 'no':5s} "
              + " ".join(f"{c[0]:>4d} of {c[1]:<2d}" for c in counts.values())
              + f"   {' / '.join(gain.references)}")  # fmt: skip
        if fuser:
            fuser_ok.append(counts["both"][0] >= 2)
            both_hits.append(counts["both"])
        for s in ("ehr", "cxr", "neither"):
            single_hits += counts[s][0]
            n_single += counts[s][1]
    both_sig, both_n = (sum(c[0] for c in both_hits), sum(c[1] for c in both_hits))
    print(
        f"fusers: 'both' labels significant in {both_sig} of {both_n} (entry x label) cells; "
        f"{sum(fuser_ok)} of {len(fuser_ok)} fusers have >= 2 of the 3"
    )
    print(f"all fusion entries: single-source/neither labels significant in {single_hits} of "
          f"{n_single} cells")  # fmt: skip
    return bool(both_n and both_sig >= 0.5 * both_n and single_hits <= 0.05 * n_single)


def fairness_check(results: dict, planted: str, task: str, cohort: str) -> bool:
    print(f"\n== lowest-TPR insurance group ({task}, {cohort}); planted: {planted}")
    worst_of, ehr_refs = {}, []
    for name, r in results.items():
        block = r.block(task, cohort)
        fair = None if block is None else block.fairness
        insurance = None if fair is None else fair.attribute("insurance")
        tpr = {} if insurance is None else insurance.rates("tpr")
        if block is None or not tpr:
            continue
        worst_of[name] = min(tpr, key=tpr.__getitem__)
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(tpr.items()))
        print(f"{name:26s} lowest {worst_of[name]:10s} ({shown})")
        ref = block.references.ehr_only
        if ref:
            ehr_refs.append(ref)
    hits = sum(w == planted for w in worst_of.values())
    ehr_ref = max(set(ehr_refs), key=ehr_refs.count) if ehr_refs else None
    print(f"{planted} lowest for {hits} of {len(worst_of)} entries; "
          f"EHR-only reference {ehr_ref}: {worst_of.get(ehr_ref)}")  # fmt: skip
    return bool(worst_of.get(ehr_ref) == planted and hits > len(worst_of) / 2)


def robustness_check(results: dict, task: str, cohort: str) -> bool:
    """On absolute values, against the EHR-only reference: among fusion entries that use the
    image (significantly better than the EHR-only reference with every image), those that
    never saw a missing image in training keep less of their lead when every image is removed
    than missingness-aware ones. Entries that ignore the image are left out, so the check
    cannot pass because a model has nothing to lose."""
    print(f"\n== CXR missingness ({task}, {cohort}): each entry minus the EHR-only reference, "
          "with every image and with none (MCAR)")  # fmt: skip
    groups: dict[str, list[float]] = {"dependent (dropout 0)": [], "aware (dropout > 0)": []}
    for name, r in sorted(results.items()):
        if not is_fusion(r):
            continue
        block = r.block(task, cohort)
        curve = None if block is None else block.curve("cxr_missing_mcar")
        ehr = None if block is None else block.references.ehr_only
        versus = None if curve is None or curve.versus is None else curve.versus.get(ehr or "")
        dropout = r.train_cxr_dropout
        if curve is None or versus is None or dropout is None or not versus.delta:
            continue
        uses_image = (versus.ci_low[0] or 0.0) > 0
        first, last = versus.delta[0] or 0.0, versus.delta[-1] or 0.0
        note = "" if uses_image else "  (left out: not above the EHR-only reference)"
        print(f"{name:26s} dropout {dropout:.2f}  vs {ehr}: all CXR {first:+.3f}  "
              f"none {last:+.3f}  all CXR {curve.values[0]:.3f}  none {curve.values[-1]:.3f}"
              + note)  # fmt: skip
        if uses_image:
            group = "aware (dropout > 0)" if dropout > 0 else "dependent (dropout 0)"
            groups[group].append(first - last)
    for group, lost in groups.items():
        if lost:
            print(f"{group:24s} n={len(lost):2d}  mean lead over the EHR-only reference lost "
                  f"without images {np.mean(lost):+.3f}")  # fmt: skip
    dep, aware = groups.values()
    return bool(dep and aware and np.mean(dep) > np.mean(aware))


def complementarity_check(results: dict, source: dict, task: str, cohort: str) -> bool:
    """The planted ``both`` labels have the highest complementarity (the smaller of the
    EHR-only and CXR-only references' AUROC, minus 0.5), and fusion entries trained without
    CXR dropout lean on the EHR (median imbalance index above 0.5)."""
    print(f"\n== complementarity per label ({task}, {cohort}) and modality reliance")
    blocks = {n: b for n, r in results.items() if (b := r.block(task, cohort)) is not None}
    refs = next(
        (b.references for n, b in blocks.items() if is_fusion(results[n]) and
         b.references.ehr_only and b.references.cxr_only), None,
    )  # fmt: skip
    if refs is None or refs.ehr_only not in blocks or refs.cxr_only not in blocks:
        print("no EHR-only and CXR-only references evaluated")
        return False
    ehr, cxr = blocks[refs.ehr_only].per_label, blocks[refs.cxr_only].per_label
    comp = {}
    for label, by_metric in ehr.items():
        a, b = by_metric.get("auroc"), cxr.get(label, {}).get("auroc")
        if a and b and a.value is not None and b.value is not None and label in source:
            comp[label] = min(a.value, b.value) - 0.5
    means = {}
    for src in SOURCES:
        values = [c for label, c in comp.items() if source[label] == src]
        if values:
            means[src] = float(np.mean(values))
            print(f"{src:8s} n={len(values):2d}  mean complementarity {means[src]:+.3f}")
    top = max(comp, key=comp.__getitem__) if comp else None
    print(f"highest: {top} ({source.get(top)}, {comp.get(top, float('nan')):+.3f})")
    both_highest = bool(means) and max(means, key=means.__getitem__) == "both"
    indices = []
    for name, block in sorted(blocks.items()):
        rel, dropout = block.reliance, results[name].train_cxr_dropout
        if rel is None or not is_fusion(results[name]) or dropout is None or dropout > 0:
            continue
        index = rel.imbalance_index.value if rel.imbalance_index else None
        shown = "n/a" if index is None else f"{index:.2f}"
        print(f"{name:26s} dropout 0  imbalance index {shown}  ({rel.dominant})")
        if index is not None:
            indices.append(index)
    ehr_leaning = bool(indices) and float(np.median(indices)) > 0.5
    if indices:
        print(f"median imbalance index of the dropout-0 fusion entries: {np.median(indices):.2f}")
    return both_highest and top is not None and source[top] == "both" and ehr_leaning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="phenotype")
    parser.add_argument("--cohort", default="base")
    parser.add_argument("--fairness-task", default="mortality_in_hospital")
    parser.add_argument("--robustness-cohort", default="matched")
    parser.add_argument("--profile", default="honest", help="protocol profile to check")
    parser.add_argument("--results", type=Path, default=None, help="folder of <dataset>/<name>/")
    args = parser.parse_args()

    truth = json.loads((config.default_dataset_dir() / "ground_truth.json").read_text())
    root = args.results or config.results_dir()
    results = _results(root, config.DEFAULT_DATASET)
    if not results:
        raise SystemExit(f"no results for {config.DEFAULT_DATASET} under {root}")
    results = one_protocol(results, args.task, args.cohort, args.profile)
    from harness.cohort.spec import load_phenotypes

    ids = {p.name: p.id for p in load_phenotypes()}
    source = {ids[name]: rec["source"] for name, rec in truth["labels"]["phenotype"].items()}
    folds = sorted({f for r in results.values() for f in r.folds})
    print(f"{len(results)} entries on {config.DEFAULT_DATASET}; folds {folds}")

    fusion_check(results, source, args.task, args.cohort, "fusion_gain")
    checks = {
        "fusion gain on 'both' labels only (over the best single modality)": fusion_check(
            results, source, args.task, args.cohort, "fusion_gain_unimodal"
        ),
        "planted group has the lowest TPR": fairness_check(
            results, truth["fairness"][0]["group"], args.fairness_task, args.cohort
        ),
        "missing CXR hurts CXR-dependent fusion more than missingness-aware": robustness_check(
            results, args.task, args.robustness_cohort
        ),
        "'both' labels are the most complementary; dropout-0 fusion leans on the EHR": (
            complementarity_check(results, source, args.task, args.cohort)
        ),
    }
    print()
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
