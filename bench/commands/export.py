"""``kpbench export RESULT``: a result in a format other tools read.

--format csv (default): a tidy CSV, one row per point x metric. Columns:
run_id, datapath, variant, services, endpoints, workload, rate_pps,
position, repetition ("all" for the summary pooled over repetitions, else the
repetition's index), metric, value, unit. Failed points appear with their
status and error; missing measurements with the reason they are missing.

--format opensearch: the body of an OpenSearch/Elasticsearch _bulk request
(NDJSON), one document per point x metric with the run's environment:
  curl -H 'Content-Type: application/x-ndjson' --data-binary @OUT \\
      https://HOST:9200/_bulk

--format perfdash: the PerfData JSON of Kubernetes perfdash / ClusterLoader2
({"version": "v1", "dataItems": [{"data", "unit", "labels"}]}).

OUT defaults to RESULT's name with .csv, .opensearch.ndjson or
.perfdash.json; '-' writes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.commands._common import output_file
from bench.errors import InputError

FORMATS = ("csv", "opensearch", "perfdash")
SUFFIXES = {"csv": ".csv", "opensearch": ".opensearch.ndjson", "perfdash": ".perfdash.json"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a result as CSV, OpenSearch bulk NDJSON or "
                       "perfdash JSON", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", metavar="RESULT", help="result JSON written by a run")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: csv)")
    p.add_argument("-o", "--out", metavar="OUT", default=None,
                   help="file to write, '-' for stdout (default: next to RESULT)")
    p.add_argument("--csv", metavar="OUT", default=None,
                   help="the same as --format csv -o OUT")
    p.add_argument("--index", default=None, metavar="NAME",
                   help="opensearch: the index the documents go to (default kpbench)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that other subcommands do not pay for numpy at start-up.
    from bench.present.export import write_csv
    from bench.present.export_formats import DEFAULT_INDEX, opensearch_lines, perfdash
    from bench.results.reader import load_result

    if args.csv is not None:
        if args.format not in (None, "csv") or args.out is not None:
            raise InputError("--csv OUT is --format csv -o OUT; give one or the other",
                             source="--csv")
        fmt, out = "csv", args.csv
    else:
        fmt = args.format or "csv"
        out = args.out
    if args.index is not None and fmt != "opensearch":
        raise InputError("only --format opensearch has an index", source="--index")
    out = out or str(Path(args.result).with_suffix(SUFFIXES[fmt]))
    if out != "-":
        output_file(out)  # refused in one line before the result is read
    result = load_result(args.result)
    try:
        if fmt == "csv":
            n = write_csv(result, out)
            what = f"{n} rows"
        else:
            if fmt == "opensearch":
                lines = list(opensearch_lines(result, args.index or DEFAULT_INDEX))
                text = "".join(f"{line}\n" for line in lines)  # _bulk wants the final newline
                what = f"{len(lines) // 2} documents"
            else:
                doc = perfdash(result)
                text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
                what = f"{len(doc['dataItems'])} data items"
            if out == "-":
                sys.stdout.write(text)
            else:
                Path(out).write_text(text, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot write ({e.strerror or e})", source=str(out)) from None
    if out != "-":
        print(f"{out}: {what}", file=sys.stderr)
    return 0
