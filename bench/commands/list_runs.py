"""``kpbench list [DIR]``: the runs stored under a results directory, oldest first.

Runs are stored as ``<DIR>/<machine>/<date>_<commit>[-dirty]_<scenario>.json``
(baselines under ``<DIR>/baselines/``). For each: when it started, the
folder it is filed under (the machine), the scenario, the commit, the run's
status and how many of its points were measured. Files that cannot be read
(damaged, or another schema version) are listed on stderr with the reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.commands.run import DEFAULT_RESULTS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the runs stored under a results directory",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", metavar="DIR", nargs="?", default=str(DEFAULT_RESULTS),
                   help=f"results directory (default {DEFAULT_RESULTS})")
    p.add_argument("--format", choices=("table", "markdown"), default="table",
                   help="output format (default: table)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.present.tables import Table, render
    from bench.results.environment import commit_label
    from bench.results.store import scan

    root = Path(args.results)
    runs, errors = scan(root)
    t = Table(["started", "machine", "scenario", "commit", "status", "points ok", "file"],
              align=["l", "l", "l", "l", "l", "r", "l"])
    for r in runs:
        env = r.doc["environment"]
        commit = commit_label(env)
        ok = sum(1 for p in r.doc["points"] if p["status"] == "ok")
        rel = r.path.relative_to(root)
        t.add([r.started, rel.parts[0] if len(rel.parts) > 1 else "", r.scenario, commit,
               r.doc["status"], f"{ok}/{len(r.doc['points'])}", str(rel)])
    if runs:
        print(render(t, args.format))
    else:
        print(f"no runs stored under {root}", file=sys.stderr)
    for e in errors:
        print(f"kpbench: warning: unreadable: {e}", file=sys.stderr)
    return 0
