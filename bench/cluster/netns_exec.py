"""Running a command inside one of the run's named network namespaces.

Every tool kpbench starts in a namespace (iptables, nft, tc, ethtool,
tcpreplay, the userspace proxy, the connection client) goes through
:func:`netns_argv`, so there is one way in and one refusal of an empty name:
a command given no namespace would otherwise run in the host's own.
``ip netns exec`` execs the command in the same process, so the pid of what
is started is the command's own (sync timing traces it by pid).
"""

from __future__ import annotations

import ctypes
import functools
import signal
import subprocess
from collections.abc import Sequence

#: The default bound on a command run with :func:`run_netns`, in seconds.
TIMEOUT_S = 30.0


def netns_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` inside the named namespace ``netns``."""
    if not netns:
        raise ValueError(f"refusing to run {argv[0] if argv else 'a command'} outside a "
                         "run's namespace (no namespace name given)")
    return ["ip", "netns", "exec", netns, *argv]


def run_netns(netns: str, argv: Sequence[str], *, stdin: str | None = None,
              timeout: float | None = TIMEOUT_S,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``netns`` to completion, its output captured as text.

    With ``check`` a non-zero exit raises :class:`subprocess.CalledProcessError`;
    without it the caller reads ``returncode``. Past ``timeout`` seconds the
    command is killed and :class:`subprocess.TimeoutExpired` raised.
    """
    return subprocess.run(netns_argv(netns, argv), input=stdin, capture_output=True,
                          text=True, timeout=timeout, check=check)


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` started so that it gets SIGTERM when the thread that started it dies (no
    process a run started outlives a SIGKILLed run), without a ``preexec_fn``.

    A ``preexec_fn`` makes Python fork() the whole harness (hundreds of MB at 10,000
    services) instead of vfork(): every page of it is then copy-on-write, and the next
    write to each faults (a few µs apiece). The sync runner started its change's traffic
    right before the timed apply, whose first ~140 pages written were such faults: up to
    half of ebpf-tc's one-change apply figure. util-linux's setpriv sets the same
    parent-death signal and execs ``argv`` (the setting survives the exec); unlike the
    ``preexec_fn`` it is set a moment after Popen returns (setpriv's own start), so a
    harness killed within that moment leaves the child (``kpbench clean`` removes its
    namespace).
    """
    return ["setpriv", "--pdeathsig", "TERM", *argv]


def die_with_parent() -> None:
    """In a child before it execs (``preexec_fn``): SIGTERM it when its parent dies, so no
    process a run started outlives a SIGKILLed run. For children that must do more before
    their exec (enter a cgroup); otherwise :func:`dying_with_parent` (no fork)."""
    PR_SET_PDEATHSIG = 1
    libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, for the calls Python 3.11 does not wrap (prctl, setns)."""
    return ctypes.CDLL("libc.so.6", use_errno=True)
