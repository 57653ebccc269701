"""``kpbench export``: write a result as a tidy CSV, one row per point x metric.

Columns: run_id, datapath, variant, services, endpoints, workload, rate_pps,
position, repetition ("all" for the summary pooled over repetitions, else the
repetition's index), metric, value, unit. Failed points appear with their
status and error; missing measurements with the reason they are missing.
"""

from __future__ import annotations

import argparse
import sys

from bench.commands._common import output_file
from bench.errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a result as a tidy CSV",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", metavar="RESULT", help="result JSON written by a run")
    p.add_argument("--csv", metavar="OUT", default=None,
                   help="CSV file to write, '-' for stdout (default: next to RESULT, "
                        "same name with .csv)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that other subcommands do not pay for numpy at start-up.
    from bench.export import default_csv_path, write_csv
    from bench.results import load_result

    out = args.csv or default_csv_path(args.result)
    if str(out) != "-":
        out = output_file(str(out))
    result = load_result(args.result)
    try:
        n = write_csv(result, out)
    except OSError as e:
        raise InputError(f"cannot write ({e.strerror or e})", source=str(out)) from None
    if str(out) != "-":
        print(f"{out}: {n} rows", file=sys.stderr)
    return 0
