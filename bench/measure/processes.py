"""Helper processes of a measurement: each in a run namespace (and cgroup), bounded, killed.

:class:`Processes` starts tools with ``ip netns exec``, in a process group of
their own (so a tool wrapped in ``timeout`` dies with its wrapper), set to die
with this process (``PR_SET_PDEATHSIG``), optionally inside a cgroup (socket-lb
balances only sockets of processes in the client pod's cgroup; a cgroup of
their own also gives their CPU time). Leaving the ``with`` block, normally,
on an error or on Ctrl-C, kills every group that is still alive.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench import interrupts
from bench.cluster import cgroups
from bench.cluster.netns_exec import die_with_parent
from bench.errors import KpbenchError

READY_TIMEOUT_S = 10.0


def last_line(output: str) -> str:
    """The last non-empty line of a tool's output (what an error message quotes)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


class Processes:
    """Processes of one run: started in a namespace (and cgroup), killed at exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[str]]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for _, p in self.procs:
            # The whole process group: a tool under `timeout` is its child.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.communicate(timeout=5)
        self.procs.clear()

    def start(self, tag: str, netns: str, argv: Sequence[str], cgroup: Path | None, *,
              discard_stdout: bool = False) -> subprocess.Popen[str]:
        """Start ``argv`` in ``netns`` (inside ``cgroup``), output piped; ``tag`` groups it.

        ``discard_stdout``: only stderr is kept, for a tool whose stdout is unbounded
        (a full pipe would stall it).
        """
        def child() -> None:
            die_with_parent()
            if cgroup is not None:
                cgroups.enter_in_child(cgroup)

        out, err = ((subprocess.DEVNULL, subprocess.PIPE) if discard_stdout
                    else (subprocess.PIPE, subprocess.STDOUT))
        # Known to the clean-up as soon as it exists (a signal during Popen waits).
        with interrupts.deferred():
            p = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=out,
                                 stderr=err, text=True, preexec_fn=child,
                                 start_new_session=True)
            self.procs.append((tag, p))
        return p

    def wait_ready(self, p: subprocess.Popen[str], marker: str, what: str) -> None:
        """Read ``p``'s output until a line holds ``marker``; KpbenchError if it exits or
        the marker does not come within :data:`READY_TIMEOUT_S`."""
        assert p.stdout is not None
        fd = p.stdout.fileno()
        deadline = time.monotonic() + READY_TIMEOUT_S
        seen = b""
        # Raw reads (select, then os.read): a text readline would block past the deadline.
        while marker.encode() not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
        else:
            return
        raise KpbenchError(f"{what} did not start: {last_line(seen.decode(errors='replace'))}")

    def finish(self, p: subprocess.Popen[str], timeout: float, what: str) -> str:
        """Wait for ``p`` to exit by itself (killed after ``timeout``); its output."""
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise KpbenchError(f"{what} did not finish within {timeout:g} s; killed") from None
        out = (out or "") + (err or "")
        if p.returncode != 0:
            raise KpbenchError(f"{what} failed (exit {p.returncode}): {last_line(out)}")
        return out

    def stop_all(self, sig: int, tag: str) -> list[str]:
        """Send ``sig`` to every live process tagged ``tag``; their outputs."""
        outs = []
        for t, p in self.procs:
            if t != tag:
                continue
            if p.poll() is None:
                p.send_signal(sig)
            outs.append(self.finish(p, 10, tag))
        return outs


