"""``kpbench run``: measure a scenario and write its result, CSV and plots.

Runs every point of the scenario (datapath x services x workload, with
repetitions), printing progress with an ETA on stderr. The result is one JSON
file under --results (results/<machine>/<date>_<commit>_<scenario>.json),
rewritten atomically after each point, so Ctrl-C keeps what was measured.
Then it exports the tidy CSV and draws the plots next to it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import InputError
from bench.scenario import load_scenario, select_datapaths

if TYPE_CHECKING:
    from bench.runner import Runner

DEFAULT_RESULTS = Path(__file__).resolve().parents[2] / "results"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a benchmark scenario (TOML) and write its results",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", metavar="SCENARIO", help="scenario file, e.g. "
                   "scenarios/default.toml")
    p.add_argument("--results", metavar="DIR", default=str(DEFAULT_RESULTS),
                   help=f"results directory (default {DEFAULT_RESULTS})")
    p.add_argument("--no-export", action="store_true", help="skip the CSV and the plots")
    p.add_argument("--datapaths", metavar="LIST", type=_names, default=None,
                   help="measure only these of the scenario's datapaths, comma-separated (e.g. "
                        "ipvs: in `kpbench vm run -- run scenarios/default.toml --datapaths "
                        "ipvs`, the ones a host run left out); the result records the choice")
    p.add_argument("--inject-rules", type=_count, default=0, metavar="N",
                   help="a known slowdown, to prove a `kpbench compare` gate catches one: N "
                        "never-matching rules in each node's raw PREROUTING, walked by every "
                        "packet that enters a node's netfilter (with the eBPF datapaths, what "
                        "the node stack still forwards). Recorded in the result; not for "
                        "real measurements (default 0)")
    p.set_defaults(func=run)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= n <= 100_000:
        raise argparse.ArgumentTypeError(f"{n} is outside 0..100000")
    return n


def run(args: argparse.Namespace) -> int:
    from bench.runner import Runner
    from bench.topology import leftovers

    scenario = load_scenario(args.scenario)
    if args.datapaths is not None:
        scenario = select_datapaths(scenario, args.datapaths)
    for prefix, names in leftovers().items():
        print(f"kpbench: warning: leftovers of an earlier run {prefix} ({len(names)} "
              "namespaces): run `kpbench clean`", file=sys.stderr)
    if scenario.kind == "sync":
        from bench.sync_runner import SyncRunner

        if args.inject_rules:
            raise InputError("--inject-rules slows packets down; this is a sync scenario "
                             "(rule programming): run it without the option",
                             source=args.scenario)
        runner: Runner = SyncRunner(scenario, Path(args.results))
    else:
        runner = Runner(scenario, Path(args.results), inject_rules=args.inject_rules)
    try:
        path = runner.run()
    except KeyboardInterrupt:
        _say_if_complete(runner)
        raise
    print(path)
    _say_if_complete(runner)
    if not args.no_export:
        from bench.export import default_csv_path, write_csv
        from bench.plots import plot_result
        from bench.results import load_result

        result = load_result(path)
        csv = default_csv_path(path)
        write_csv(result, csv)
        print(csv)
        for fig in plot_result(result, path.with_name(f"{path.stem}-plots")):
            print(fig)
    return 0


def _say_if_complete(runner: Runner) -> None:
    """A signal that came after the last point stops the process, not the measurement:
    say that the result on disk is complete (the exit code still reports the signal)."""
    from bench import interrupts

    path = runner.finished_complete()
    if path is not None and interrupts.received() is not None:
        print(f"kpbench: the signal came after the last point: {path} is complete",
              file=sys.stderr)
