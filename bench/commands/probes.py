"""``kpbench probes``: the BPF probes, and with ``--ebpf NAME`` one probe's program
as a run compiles it (like BCC tools' ``--ebpf``).

The printed program is ``probes/NAME.c`` with the ``-D`` flags the loader passes
written as ``#define`` lines ahead of it, configured as a run attaches the probe
(the drops and transit probes count the run's own packets). Some flags are read
from the running kernel's tracepoint formats (cpu, drops, transit): those need
root, as tracefs does.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from bench.errors import FeatureMissing, KpbenchError
from bench.paths import PROBES_DIR

if TYPE_CHECKING:
    from bench.measure.probes.loader import Probe

NAMES = ("latency", "cpu", "drops", "transit", "kfunc", "syscalls", "effect", "oneway",
         "gone", "null")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probes", help="list the BPF probes, or print one as compiled",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ebpf", metavar="NAME", choices=NAMES,
                   help=f"print probe NAME's program as compiled ({', '.join(NAMES)})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.ebpf is None:
        for name in NAMES:
            print(f"{name:<10}probes/{name}.c: {summary(name)}")
        return 0
    from bench.measure.probes.loader import compiled_source

    probe = as_a_run_compiles()[args.ebpf]()
    try:
        cflags = probe.cflags()
    except FeatureMissing as e:
        hint = "" if os.geteuid() == 0 else " (its flags come from tracefs: run as root)"
        raise KpbenchError(f"{e}{hint}") from e
    print(compiled_source(probe.name, cflags), end="")
    return 0


def as_a_run_compiles() -> dict[str, Callable[[], Probe]]:
    """Per probe name, the probe configured as a run compiles it. Its hooks are
    placeholders: they decide where a probe attaches, never how it compiles."""
    from bench.measure.probes.cpu import CpuProbe
    from bench.measure.probes.drops import DropsProbe
    from bench.measure.probes.effect import EffectProbe
    from bench.measure.probes.gone import GoneProbe
    from bench.measure.probes.kfunc import KfuncProbe
    from bench.measure.probes.latency import LatencyProbe
    from bench.measure.probes.loader import TcHook
    from bench.measure.probes.null import NullProbe
    from bench.measure.probes.oneway import OneWayProbe
    from bench.measure.probes.syscalls import SyscallProbe
    from bench.measure.probes.transit import RUN_SAMPLE_EVERY, TransitProbe

    client, backend = TcHook("<client>"), TcHook("<backend>")
    return {
        "latency": lambda: LatencyProbe(client, [backend]),
        "oneway": lambda: OneWayProbe(client, [backend]),
        "cpu": CpuProbe,
        # As the breakdown repetition: sinking, the run's drops only.
        "drops": lambda: DropsProbe(client, [backend], sink=True, machine_wide=False),
        "transit": lambda: TransitProbe([TcHook("<node>", "pc")], [TcHook("<node>", "p0")],
                                        sample_every=RUN_SAMPLE_EVERY),
        "kfunc": KfuncProbe,
        "syscalls": SyscallProbe,
        "effect": lambda: EffectProbe([backend]),
        "gone": lambda: GoneProbe([backend]),
        "null": lambda: NullProbe([backend]),
    }


def summary(name: str) -> str:
    """The one-line summary in ``probes/<name>.c``'s header ("<name>.c - what it measures")."""
    for line in (PROBES_DIR / f"{name}.c").read_text().splitlines():
        head, sep, rest = line.partition(f"{name}.c - ")
        if sep:
            return rest.strip()
    return ""
