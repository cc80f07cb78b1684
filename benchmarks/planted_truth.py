"""Compare a finished leaderboard run with the synthetic dataset's planted ground truth.

Reads ``ground_truth.json`` of the default synthetic dataset and every ``result.json`` under the
results folder, and prints, side by side with the planted source of each label:
- the per-label fusion gain of each fusion submission over the EHR-only reference (delta, q),
- the insurance group with the lowest TPR for each submission (planted: Medicaid),
- the normalised area under the CXR-missingness curves per submission.
Run after `make demo` (or `harness evaluate ...` on the default dataset):
    python benchmarks/planted_truth.py [--task phenotype] [--cohort base]
"""

from __future__ import annotations

import argparse
import json

from harness import config


def _results(dataset: str) -> dict[str, dict]:
    out = {}
    for path in sorted(config.results_dir().rglob("result.json")):
        r = json.loads(path.read_text())
        if r.get("status") == "ok" and r.get("dataset") == dataset:
            out[r["name"]] = r
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="phenotype")
    parser.add_argument("--cohort", default="base")
    parser.add_argument("--fairness-task", default="mortality_in_hospital")
    args = parser.parse_args()

    truth = json.loads((config.default_dataset_dir() / "ground_truth.json").read_text())
    results = _results(config.DEFAULT_DATASET)
    if not results:
        raise SystemExit(f"no results for {config.DEFAULT_DATASET} under {config.results_dir()}")
    from harness.cohort.spec import load_phenotypes

    ids = {p.name: p.id for p in load_phenotypes()}
    source = {ids[name]: rec["source"] for name, rec in truth["labels"]["phenotype"].items()}

    print(f"== fusion gain over the EHR-only reference per label ({args.task}, {args.cohort}):"
          " significant count by planted source")  # fmt: skip
    print(f"{'submission':16s} " + " ".join(f"{s:>12s}" for s in ("ehr", "cxr", "both", "neither")))
    for name, r in results.items():
        block = r["tasks"].get(args.task, {}).get(args.cohort, {})
        gain = block.get("fusion_gain")
        if not gain:
            continue
        counts = {}
        for label, rec in gain["labels"].items():
            src = source.get(label, "?")
            n_sig, n = counts.get(src, (0, 0))
            counts[src] = (n_sig + bool(rec.get("significant")), n + 1)
        cells = [f"{counts.get(s, (0, 0))[0]:>5d} of {counts.get(s, (0, 0))[1]:<3d}"
                 for s in ("ehr", "cxr", "both", "neither")]  # fmt: skip
        print(f"{name:16s} " + " ".join(f"{c:>12s}" for c in cells) + f"  vs {gain['reference']}")

    print(f"\n== lowest-TPR insurance group ({args.fairness_task}, {args.cohort}); "
          f"planted: {[f['group'] for f in truth['fairness']]}")  # fmt: skip
    for name, r in results.items():
        fair = r["tasks"].get(args.fairness_task, {}).get(args.cohort, {}).get("fairness")
        if not fair:
            continue
        rows = [g for g in fair["attributes"]["insurance"]["groups"] if not g.get("suppressed")]
        tpr = {g["group"]: g["tpr"] for g in rows if g.get("tpr") is not None}
        worst = min(tpr, key=tpr.get) if tpr else None
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(tpr.items()))
        print(f"{name:16s} lowest {worst!s:10s} ({shown})")

    print(f"\n== phenotype labels whose lowest-TPR insurance group is the planted one "
          f"({args.task}, {args.cohort}), by planted source")  # fmt: skip
    planted = truth["fairness"][0]["group"]
    for name, r in results.items():
        fair = r["tasks"].get(args.task, {}).get(args.cohort, {}).get("fairness", {})
        counts: dict[str, list[int]] = {}
        for label, rep in (fair.get("labels") or {}).items():
            groups = rep["attributes"]["insurance"]["groups"]
            tpr = {g["group"]: g["tpr"] for g in groups if g.get("tpr") is not None}
            if len(tpr) < 2:
                continue
            hit = min(tpr, key=tpr.get) == planted
            c = counts.setdefault(source.get(label, "?"), [0, 0])
            c[0] += hit
            c[1] += 1
        if counts:
            cells = [f"{s} {counts[s][0]}/{counts[s][1]}" for s in ("ehr", "cxr", "both", "neither")
                     if s in counts]  # fmt: skip
            print(f"{name:16s} " + "  ".join(cells))

    print(f"\n== CXR missingness, normalised area under the curve ({args.task}, {args.cohort})")
    for name, r in results.items():
        rob = r["tasks"].get(args.task, {}).get(args.cohort, {}).get("robustness", {})
        cells = [f"{s.removeprefix('cxr_missing_')} {rob[s]['auc_normalised']:.3f}"
                 for s in sorted(rob) if s.startswith("cxr_missing")]  # fmt: skip
        if cells:
            print(f"{name:16s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
