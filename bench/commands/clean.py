"""``kpbench clean``: remove what earlier runs left behind.

A run that was killed (SIGKILL, power loss) cannot clean up after itself.
This removes the network namespaces of every kpbench run whose process is
gone (names start with ``kpb<6 hex>-``), and with them every interface, rule
and BPF program inside them. Runs still in progress are left alone unless
--all is given.
"""

from __future__ import annotations

import argparse

from bench.cluster.topology import remove_run, run_namespaces, run_owner


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clean", help="remove leftovers of earlier runs",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true",
                   help="also remove runs whose process is still alive")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    runs = run_namespaces()
    if not runs:
        print("nothing to clean")
        return 0
    for prefix, names in sorted(runs.items()):
        owner = run_owner(prefix)
        if owner is not None and not args.all:
            print(f"{prefix}: in use by pid {owner}, kept ({len(names)} namespaces)")
            continue
        if args.dry_run:
            print(f"{prefix}: would remove {len(names)} namespaces")
            continue
        removed = remove_run(prefix)
        print(f"{prefix}: removed {len(removed)} namespaces")
    return 0
