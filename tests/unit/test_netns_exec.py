"""Children started with dying_with_parent end when the process that started them is
killed, and starting them does not fork the harness."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bench.cluster.netns_exec import dying_with_parent, netns_argv

PARENT = """
import subprocess, sys, time
from bench.cluster.netns_exec import dying_with_parent
child = subprocess.Popen(dying_with_parent(["sleep", "60"]))
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def test_a_child_ends_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(os.path.dirname(
                                  os.path.dirname(os.path.abspath(__file__)))))
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        # setpriv sets the signal, then execs: once the child is "sleep", it is set.
        deadline = time.monotonic() + 10
        while _comm(child) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its SIGKILLed parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_starting_one_does_not_fork_this_process() -> None:
    forks: list[int] = []
    os.register_at_fork(before=lambda: forks.append(1))
    subprocess.run(dying_with_parent(["true"]), check=True)
    assert not forks


def test_it_wraps_a_namespaced_command_whole() -> None:
    argv = dying_with_parent(netns_argv("kpb-x-node0", ["tcpreplay", "-V"]))
    assert argv[:3] == ["setpriv", "--pdeathsig", "TERM"]
    assert argv[3:] == ["ip", "netns", "exec", "kpb-x-node0", "tcpreplay", "-V"]
