"""``kpbench show RESULT``: a result's environment and one summary row per point.

RESULT is a result file, or a directory holding runs of one scenario (its
newest run is shown). Latency percentiles come from the merged histograms of
the repetitions; cpu/pkt is CPU time per delivered packet, the sum of NET_RX
softirq time (softirq) and the datapath's own processes' time (process: a
userspace proxy; 0 for a datapath that runs none); sync is
the wall time of the full rule sync, settle the wait after it. Socket points
have a table of their own (docs/sockets.md): their load (flows, closed or open
loop), transactions/s, RTT p50/p99, CPU per transaction, failed transactions
and the Service minus the direct path (svc-dir). A file written by an older or
newer kpbench is refused with what to do.
"""

from __future__ import annotations

import argparse

FORMATS = ("table", "markdown")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="print a result's environment and summary table",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", metavar="RESULT", help="result file (or a directory: its newest run)")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="output format (default: table)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that other subcommands do not pay for numpy at start-up.
    from bench.present.summary import environment_table, overhead_line, run_line, tables
    from bench.present.tables import render
    from bench.results.store import resolve_one

    stored = resolve_one(args.result)
    md = args.format == "markdown"
    print(f"# {stored.path}" if md else f"result: {stored.path}")
    print()
    result = stored.result
    print(run_line(result))
    overhead = overhead_line(result)
    if overhead:
        print(overhead)
    print()
    print(render(environment_table(result), args.format))
    for table in tables(result):  # packet and sync points, then socket points
        print()
        print(render(table, args.format))
    return 0
