"""``kpbench baseline RESULT... -o OUT``: pool several runs of one scenario into a baseline.

Each point of the baseline keeps the repetitions of every run that measured
it, and which run measured which (its summary is recomputed from them;
setup times are the median over the runs). Compared against a baseline made
this way, a new run is judged against how much whole runs of the same code
vary (`kpbench compare` tests the per-run figures too), not only against
the repetitions inside one run — and with 3 repetitions per run the
repetition test gets enough samples (3 vs 3 can never reach p < 0.05).
Pool at least five runs: the spread between runs is then known well enough
to call changes of a few tens of percent. It prints that spread (the sd of
the per-run figures at the median point, for latency, CPU per packet and
the socket points' RTT and rate) and each run's offset from the others,
and warns of a run that stands out by more than 10 %.

The runs must be complete, of the same scenario text and from the same
environment (as `kpbench compare` checks it). A baseline can be pooled
again with more runs; it keeps every run.

example:
  for i in 1 2 3 4 5; do kpbench run scenarios/default.toml --results /tmp/b --no-export; done
  kpbench baseline /tmp/b/*/*_default.json -o results/baselines/default.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="pool several runs of a scenario into one baseline",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", metavar="RESULT", nargs="+", help="result files to pool (>= 2)")
    p.add_argument("-o", "--out", metavar="FILE", required=True,
                   help="baseline file to write, e.g. results/baselines/default.json")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.analysis.spread import spread_lines
    from bench.results.baseline import merge_runs
    from bench.results.reader import load_result
    from bench.results.writer import write_json_atomic

    out = Path(args.out)
    if out.is_dir():
        raise InputError("is a directory; give a file name", source=str(out))
    if out.exists() and not args.force:
        raise InputError("exists; pass --force to replace it", source=str(out))
    runs = [(path, load_result(path)) for path in args.results]
    doc, warnings = merge_runs(runs)
    for w in warnings:
        print(f"kpbench: warning: {w}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, doc)
    reps = sum(len(p["repetitions"]) for p in doc["points"])
    n_runs = max([len(p.get("per_run") or []) for p in doc["points"]] + [len(runs)])
    print(f"{out}: {len(doc['points'])} points, {reps} repetitions from {n_runs} runs",
          file=sys.stderr)
    for line in spread_lines(doc):
        print(line, file=sys.stderr)
    return 0
