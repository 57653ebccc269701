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


def die_with_parent() -> None:
    """In a child before it execs (``preexec_fn``): SIGTERM it when its parent dies, so no
    process a run started outlives a SIGKILLed run."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
