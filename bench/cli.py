"""The ``kpbench`` command line: one module per subcommand under bench.commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import interrupts

if __name__ == "__main__" or Path(sys.argv[0]).name in ("kpbench", "__main__.py"):
    interrupts.install_at_start()  # the process entry: before the slow imports below

from bench.commands import (  # after the start-up signal handlers
    baseline,
    clean,
    compare,
    doctor,
    export,
    generate,
    list_runs,
    plot,
    render,
    report,
    run,
    show,
    up,
    vm,
)
from bench.errors import KpbenchError

COMMANDS = (run, render, up, generate, doctor, clean, export, plot, list_runs, show, compare,
            baseline, report, vm)

DESCRIPTION = """\
kpbench measures what Kubernetes Service datapaths (iptables, nftables, ...)
cost the Linux kernel per packet and per rule change, on a cluster built out of
network namespaces. Nothing is changed in the host's own network namespace.

examples:
  kpbench generate --services 100 --endpoints 10 -o /tmp/svc.yaml
  kpbench render --datapath nftables --services /tmp/svc.yaml
  kpbench up --datapath iptables --iptables-backend nft --services /tmp/svc.yaml
  kpbench doctor
  kpbench clean
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpbench", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMANDS:
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse: exit 2 with a one-line usage error
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="kpbench: %(message)s", stream=sys.stderr)
    interrupts.install()
    try:
        try:
            code = int(args.func(args) or 0)
        finally:
            if argv is None:
                # The process ends after this: a signal from here on must not kill the
                # interpreter while it shuts down (Python restores the default action
                # then). One received before is still reported below.
                interrupts.ignore()
    except KpbenchError as e:
        print(f"kpbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        return _stopped(e)
    signalled = interrupts.received()
    # A signal whose raise Python swallowed (see interrupts) still ends the run as stopped.
    return _stopped(signalled) if signalled is not None else code


def _stopped(e: KeyboardInterrupt) -> int:
    term = isinstance(e, interrupts.Terminated)
    print(f"kpbench: {'terminated' if term else 'interrupted'}; everything this run "
          "created was removed", file=sys.stderr)
    return 143 if term else 130


if __name__ == "__main__":
    sys.exit(main())
