"""``kpbench report RESULT [--compare BASE]``: an HTML and a Markdown report of a run.

Writes ``<stem>-report.html`` (self-contained: figures embedded, style
inline — open it anywhere, attach it to a CI run), ``<stem>-report.md`` and
the PNGs the Markdown links (``<stem>-report-files/``), by default next to
RESULT. The report holds the environment, the summary table, the figures
(latency and CPU per packet against services, latency CDFs, full-sync time
against services) and, with --compare, the regressions against BASE (as
``kpbench compare BASE RESULT`` computes them).

examples:
  kpbench report results/<machine>/<date>_<commit>_default.json
  kpbench report NEW.json --compare results/baselines/default.json --out /tmp/report
"""

from __future__ import annotations

import argparse

from bench.commands._common import output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write an HTML and Markdown report of a run",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", metavar="RESULT",
                   help="result file (or a directory: its newest run)")
    p.add_argument("--compare", metavar="BASE", default=None,
                   help="base result (file or directory) to report regressions against")
    p.add_argument("--allow-env-mismatch", action="store_true",
                   help="with --compare: compare results from different environments anyway")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="directory for the report (default: next to RESULT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.results.store import resolve_one

    if args.out:
        output_dir(args.out)
    stored = resolve_one(args.result)
    base = resolve_one(args.compare) if args.compare else None
    # Imported once the inputs are known good: matplotlib and scipy take a while.
    from bench.analysis.compare import compare_runs
    from bench.present.report import write_report

    comparison = None
    if base is not None:
        # The read models, not the documents: the comparison and the report then share
        # one reading of each file (its histograms parsed once).
        comparison = compare_runs(base.result, stored.result,  # type: ignore[arg-type]
                                  base_source=str(base.path), new_source=str(stored.path),
                                  allow_env_mismatch=args.allow_env_mismatch)
    out = output_dir(args.out if args.out else stored.path.parent)
    for path in write_report(stored.result, str(stored.path), out, stored.path.stem, comparison):
        print(path)
    return 0
