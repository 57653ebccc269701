"""``kpbench run``: measure a scenario and write its result, CSV and plots.

Runs every point of the scenario (datapath x services x workload, with
repetitions), printing progress with an ETA on stderr. The result is one JSON
file under --results (results/<machine>/<date>_<commit>_<scenario>.json),
rewritten atomically after each point, so Ctrl-C keeps what was measured.
Then it writes the tidy CSV, the plots and the report next to it and prints
the figures (p50 latency and CPU per packet per workload, datapath and number
of services), where those files are, and what was left out, once: datapaths
this kernel lacks come with the command that measures them in a VM. The first
line of stdout is the result file (for scripts).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import InputError
from bench.measure.scenario import load_scenario, select_datapaths
from bench.paths import CHECKOUT, RESULTS_DIR

if TYPE_CHECKING:
    from bench.measure.runner import Runner
    from bench.measure.sync_runner import SyncRunner

DEFAULT_RESULTS = RESULTS_DIR


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
    scenario = load_scenario(args.scenario)  # refused before anything is imported or built
    if args.datapaths is not None:
        scenario = select_datapaths(scenario, args.datapaths)
    from bench.cluster.topology import leftovers
    from bench.measure.runner import Runner

    for prefix, names in leftovers().items():
        print(f"kpbench: warning: leftovers of an earlier run {prefix} ({len(names)} "
              "namespaces): run `kpbench clean`", file=sys.stderr)
    if scenario.kind == "sync":
        from bench.measure.sync_runner import SyncRunner

        if args.inject_rules:
            raise InputError("--inject-rules slows packets down; this is a sync scenario "
                             "(rule programming): run it without the option",
                             source=args.scenario)
        runner: Runner | SyncRunner = SyncRunner(scenario, Path(args.results))
    elif scenario.kind == "disruption":
        from bench.measure.disruption_runner import DisruptionRunner

        if args.inject_rules:
            raise InputError("--inject-rules slows packets down; this is a disruption "
                             "scenario: run it without the option", source=args.scenario)
        runner = DisruptionRunner(scenario, Path(args.results))  # type: ignore[assignment]
    else:
        runner = Runner(scenario, Path(args.results), inject_rules=args.inject_rules)
    try:
        path = runner.run()
    except KeyboardInterrupt:
        _say_if_complete(runner)
        raise
    print(path)  # the first line of stdout: the result, for scripts
    _say_if_complete(runner)
    if not args.no_export:
        epilogue(path, args)
    return 0


def epilogue(path: Path, args: argparse.Namespace) -> None:
    """The run's end: CSV, plots and report written, then the figures at a glance, where
    the files are, and what was left out (once)."""
    from bench.present.export import default_csv_path, write_csv
    from bench.present.plots import plot_result
    from bench.present.report import write_report
    from bench.present.summary import figures_tables, left_out
    from bench.present.tables import render_text
    from bench.results.reader import load_result

    result = load_result(path)
    csv = default_csv_path(path)
    rows = write_csv(result, csv)
    plot_notes: list[str] = []
    plots_dir = path.with_name(f"{path.stem}-plots")
    figures = [f for f in plot_result(result, plots_dir, notes=plot_notes) if f.suffix == ".png"]
    html, md = write_report(result, str(path), path.parent, path.stem, notes=[])
    tables, notes = figures_tables(result)
    for title, table in tables:
        print(f"\n{title}\n{render_text(table)}")
    print(f"\nresult:  {path}\ncsv:     {csv} ({rows} rows)")
    print(f"plots:   {plots_dir}/ ({len(figures)} figures, PNG and SVG"
          + ("; what a figure leaves out is named in its footnote)" if plot_notes else ")"))
    print(f"report:  {html} (and {md.name})")
    for note in notes:
        print(f"note:    {note}")
    lacking = left_out(result)
    if lacking:
        print("left out (this kernel lacks them): "
              + "; ".join(f"{v} ({why})" for v, why in lacking.items()))
        from bench.kernel.vm import in_guest

        if not in_guest():
            print(f"measure them on Debian's kernel in a VM, as a result of their own:\n"
                  f"  {vm_command(args, list(lacking))}\n  {_vm_time(args, result, lacking)}")


def vm_command(args: argparse.Namespace, variants: list[str], exe: str | None = None) -> str:
    """The command that measures ``variants`` of this run's scenario in a VM (``exe``: the
    kpbench to name, by default the one running)."""
    if exe is None:
        kpbench = Path(sys.argv[0]) if Path(sys.argv[0]).name == "kpbench" else None
        exe = (os.path.relpath(kpbench) if kpbench and not kpbench.is_absolute()
               else str(kpbench or ".venv/bin/kpbench"))
    extra: list[str] = []
    if Path(args.results).resolve() != DEFAULT_RESULTS.resolve():
        extra = ["--results", args.results]
    vm_opts = ["--rwdir", args.results] if extra else []
    return shlex.join([exe, "vm", "run", *vm_opts, "--", "run", args.scenario, "--datapaths",
                       ",".join(variants), *extra])


def _vm_time(args: argparse.Namespace, result: Any, lacking: dict[str, str]) -> str:
    """How long that takes: the last run of that very command stored here, else the time
    docs/machines.md records for it (measured on this project's host), else where to look."""
    from bench.results.store import scan

    runs = []
    for root in dict.fromkeys((Path(args.results), DEFAULT_RESULTS)):
        if root.is_dir():
            runs += scan(root)[0]
    # The same command: the scenario and exactly the left-out datapaths (a whole-suite VM
    # run takes hours longer, its time is not this command's).
    done = [r for r in runs if r.doc["environment"].get("where") == "vm"
            and r.doc["status"] == "complete" and r.doc.get("finished")
            and r.scenario == result["scenario"]["name"]
            and set(r.doc["scenario"].get("selected_datapaths") or ()) == set(lacking)]
    if done:
        last = max(done, key=lambda r: r.started)
        minutes = (_dt.datetime.fromisoformat(last.doc["finished"])  # type: ignore[arg-type]
                   - _dt.datetime.fromisoformat(last.started)).total_seconds() / 60
        vm = last.doc["environment"].get("vm") or {}
        return (f"(the last such run here, {str(vm.get('accel', '?')).upper()}, measured for "
                f"{minutes:.0f} min after booting: {last.path})")
    scenario = Path(args.scenario)
    if scenario.is_absolute() and scenario.is_relative_to(CHECKOUT):
        scenario = scenario.relative_to(CHECKOUT)
    plain = argparse.Namespace(scenario=str(scenario), results=str(DEFAULT_RESULTS))
    measured = documented_time(vm_command(plain, list(lacking), exe="kpbench"))
    if measured:
        return f"(measured on a 2-core host, the VM under TCG emulation: {measured}; " \
               f"{MACHINES_DOC.relative_to(CHECKOUT)})"
    return ("(a VM under TCG emulation is several times slower than the host: see "
            "docs/machines.md for the times measured on a 2-core host)")


#: The machine facts, with the measured times of VM runs (a table row per command).
MACHINES_DOC = CHECKOUT / "docs" / "machines.md"


def documented_time(command: str, doc: Path = MACHINES_DOC) -> str | None:
    """The time a Markdown table in ``doc`` records for ``command``: in the first row with a
    cell that quotes exactly that command in backticks, the next cell (None if no row does)."""
    try:
        text = doc.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for i, cell in enumerate(cells[:-1]):
            if f"`{command}`" in cell and cells[i + 1]:
                return cells[i + 1]
    return None


def _say_if_complete(runner: Runner | SyncRunner) -> None:
    """A signal that came after the last point stops the process, not the measurement:
    say that the result on disk is complete (the exit code still reports the signal)."""
    from bench import interrupts

    path = runner.loop.finished_complete()
    if path is not None and interrupts.received() is not None:
        print(f"kpbench: the signal came after the last point: {path} is complete",
              file=sys.stderr)
