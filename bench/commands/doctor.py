"""``kpbench doctor``: which datapaths and probe kinds this kernel supports, and why not.

Every feature is tried in a throwaway namespace, not read from a table.
"""

from __future__ import annotations

import argparse
import platform

from bench.features import DATAPATH_NEEDS, detect


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="report supported datapaths and probes",
                       description=__doc__)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    found = detect()
    print(f"kernel {platform.release()} ({platform.machine()})")
    print("datapaths:")
    for dp, needs in DATAPATH_NEEDS.items():
        missing = [found[n] for n in needs if not found[n].ok]
        why = "; ".join(f"{f.name}: {f.detail}" for f in missing) or "supported"
        print(f"  {'yes' if not missing else 'no ':<4}{dp:<18}{why}")
    print("features:")
    for f in found.values():
        print(f"  {'yes' if f.ok else 'no ':<4}{f.name:<18}{f.detail}")
    return 0
