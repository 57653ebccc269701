"""The ``kpbench`` command line: one module per subcommand under bench.commands."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from bench.commands import clean, doctor, export, generate, plot, render, run, up
from bench.errors import KpbenchError

COMMANDS = (run, render, up, generate, doctor, clean, export, plot)

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


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so every cleanup path runs."""


_MAIN_PID = os.getpid()


def _on_sigterm(signum: int, frame: object) -> None:
    # pyroute2 forks helper processes that inherit this handler and are stopped with
    # SIGTERM: in them, die the default way instead of running our cleanup paths.
    if os.getpid() != _MAIN_PID:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise _Terminated()


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
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except KpbenchError as e:
        print(f"kpbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        what = "terminated" if isinstance(e, _Terminated) else "interrupted"
        print(f"kpbench: {what}; everything this run created was removed", file=sys.stderr)
        return 130 if not isinstance(e, _Terminated) else 143


if __name__ == "__main__":
    sys.exit(main())
