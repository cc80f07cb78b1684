"""What `harness leaderboard` costs on a results folder, and where: schema validation side by side.

Prints, for the results under ``--results`` (default: the cache's, e.g. after `harness demo`):
the time to validate every result.json with the compiled validator the harness uses
(jsonschema-rs) against the pure-Python jsonschema reference on the same documents (both must
agree); the time of a full rebuild of the leaderboard (its inputs record removed first); and the
time of a re-run over unchanged results (nothing rebuilt).

    python benchmarks/leaderboard_speed.py
    python benchmarks/leaderboard_speed.py --results cache/results --repeat 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> int:
    from harness import config
    from harness.leaderboard.aggregate import INPUTS_FILE, aggregate, result_files
    from harness.results.schema import LEADERBOARD_SCHEMA, RESULT_SCHEMA, load_schema, schema_errors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    results = args.results or config.results_dir()
    docs = [json.loads(p.read_text()) for p in result_files(results)]
    if not docs:
        raise SystemExit(f"no result.json under {results}: run `harness demo` first")
    size = sum(p.stat().st_size for p in result_files(results)) / 2**20
    print(f"{len(docs)} results, {size:.1f} MB, under {results}")

    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (n, Resource.from_contents(load_schema(n))) for n in (RESULT_SCHEMA, LEADERBOARD_SCHEMA)
    )
    reference = Draft202012Validator(load_schema(RESULT_SCHEMA), registry=registry)
    schema_errors(docs[0])  # compile once
    t0 = time.perf_counter()
    compiled = [schema_errors(d) == [] for d in docs]
    t1 = time.perf_counter()
    python = [reference.is_valid(d) for d in docs]
    t2 = time.perf_counter()
    assert compiled == python, "the validators disagree"
    ratio = (t2 - t1) / max(t1 - t0, 1e-9)
    print(f"validate every result: jsonschema-rs {t1 - t0:.2f} s vs jsonschema (Python) "
          f"{t2 - t1:.2f} s ({ratio:.0f}x), verdicts identical")  # fmt: skip

    out = Path(tempfile.mkdtemp(prefix="harness-board-"))
    try:
        for _ in range(args.repeat):
            (out / INPUTS_FILE).unlink(missing_ok=True)
            t0 = time.perf_counter()
            board = aggregate(results, out)
            t1 = time.perf_counter()
            aggregate(results, out)
            t2 = time.perf_counter()
            print(f"leaderboard: rebuilt {t1 - t0:.2f} s ({len(board.document['entries'])} "
                  f"entries), unchanged re-run {t2 - t1:.2f} s")  # fmt: skip
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
