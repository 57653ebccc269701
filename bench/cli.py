"""The ``kpbench`` command line: one module per subcommand under bench.commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
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
    probes,
    render,
    report,
    run,
    show,
    up,
    vm,
)
from bench.errors import KpbenchError

COMMANDS = (run, render, up, generate, doctor, clean, export, plot, list_runs, show, compare,
            baseline, report, vm, probes)

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
    parser.add_argument("--debug", action="store_true",
                        help="on an unexpected error (a bug), print the full traceback "
                             "instead of writing it to a file")
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
    except Exception as e:
        return _bug(e, args.debug, sys.argv[1:] if argv is None else list(argv))
    signalled = interrupts.received()
    # A signal whose raise Python swallowed (see interrupts) still ends the run as stopped.
    return _stopped(signalled) if signalled is not None else code


def entry() -> None:
    """The process entry (``kpbench``, ``python -m bench``): :func:`main`, then exit.

    A run stopped by a signal ends with ``os._exit`` right after its clean-up and
    message: the interpreter's own shutdown (finalizers, atexit) once ended such a run by
    SIGINT (-2) after its message instead of with its exit code.
    """
    code = main()
    if interrupts.received() is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


BUG_EXIT = 70  # EX_SOFTWARE: an internal error, not bad input (2) or a failed gate (1)


def _bug(e: Exception, debug: bool, argv: list[str]) -> int:
    """An exception no code expected is a bug: one line saying where its traceback went
    (a log file, or stderr with --debug); never a wall of text, never a silent success."""
    text = "".join(traceback.format_exception(e))
    what = f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
    if debug:
        sys.stderr.write(text)
        print(f"kpbench: internal error (a bug): {what}", file=sys.stderr)
        return BUG_EXIT
    where = "not saved (rerun with --debug to see it)"
    try:
        fd, path = tempfile.mkstemp(prefix="kpbench-traceback-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(f"kpbench {' '.join(argv)}\n{text}")
        where = f"traceback in {path}"
    except OSError:
        pass
    print(f"kpbench: internal error (a bug): {what}; {where}; please report it",
          file=sys.stderr)
    return BUG_EXIT


def _stopped(e: KeyboardInterrupt) -> int:
    term = isinstance(e, interrupts.Terminated)
    print(f"kpbench: {'terminated' if term else 'interrupted'}; everything this run "
          "created was removed", file=sys.stderr)
    return 143 if term else 130


if __name__ == "__main__":
    sys.exit(main())
