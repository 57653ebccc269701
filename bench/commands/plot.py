"""``kpbench plot``: draw a result's figures as PNG and SVG.

Per workload: p50/p99 latency and CPU ns per packet against the number of
services (one curve per datapath variant), and each variant's latency CDF at
its largest scale. Points that failed or lack a measurement are skipped and
named in the figure's footnote and on stderr.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands._common import output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw a result's figures (PNG and SVG)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", metavar="RESULT", help="result JSON written by a run")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="directory for the figures (default: <RESULT without .json>-plots "
                        "next to RESULT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.results.reader import load_result

    src = Path(args.result)
    out = output_dir(args.out if args.out else src.with_name(f"{src.stem}-plots"))
    result = load_result(args.result)
    # Imported once the input is known good: matplotlib takes a while to import.
    from bench.present.plots import plot_result

    for path in plot_result(result, out):
        print(path)
    return 0
