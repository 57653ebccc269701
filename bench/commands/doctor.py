"""``kpbench doctor``: which datapaths and probe kinds this kernel supports, and why not.

Every feature is tried in a throwaway namespace, not read from a table. "no"
means the kernel lacks it (a minimal kernel-only probe failed too); "FAILED"
means the kernel has it but kpbench's own code or a tool fails: doctor then
exits 1.
"""

from __future__ import annotations

import argparse
import os
import platform

from bench.errors import KpbenchError
from bench.kernel.features import DATAPATH_NEEDS, Feature, detect


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="report supported datapaths and probes",
                       description=__doc__)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print every datapath and feature; exit 1 if one is broken (ours to fix, not the kernel)."""
    if os.geteuid() != 0:
        raise KpbenchError("kpbench doctor needs root: it tries every feature in a throwaway "
                           "namespace; run it with sudo")
    found = detect()
    print(f"kernel {platform.release()} ({platform.machine()})")
    print("datapaths:")
    for dp, needs in DATAPATH_NEEDS.items():
        bad = [found[n] for n in needs if not found[n].ok]
        why = "; ".join(f"{f.name}: {f.detail}" for f in bad) or "supported"
        print(f"  {_mark(bad):<7}{dp:<18}{why}")
    print("features:")
    for f in found.values():
        print(f"  {_mark([f] if not f.ok else []):<7}{f.name:<18}{f.detail}")
    broken = [f.name for f in found.values() if not f.ok and not f.missing]
    if broken:
        print(f"FAILED: {', '.join(broken)} fail although the kernel supports them: kpbench or "
              "its set-up is broken (see above; scripts/setup.sh installs the tools)")
        return 1
    return 0


def _mark(bad: list[Feature]) -> str:
    """yes; no (the kernel lacks it); FAILED (the kernel has it, our code or tools fail)."""
    if not bad:
        return "yes"
    return "no" if all(f.missing for f in bad) else "FAILED"
