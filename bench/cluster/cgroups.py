"""Run-prefixed cgroup v2 groups, for datapaths that act on a pod's processes.

Socket load balancing attaches BPF programs to a cgroup: only sockets of
processes inside it are load-balanced. A pod is a network namespace here, not
a container, so kpbench gives the client pod a cgroup of its own, named like
its namespace (``kpb<6 hex>-cpod``) directly under the cgroup v2 mount
(``/sys/fs/cgroup`` on a unified host, ``/sys/fs/cgroup/unified`` on a hybrid
one). Processes meant to act as that pod must be inside it: ``ip netns exec``
only changes the network namespace, so :func:`member` moves the calling
process in (its children follow) and back out afterwards.

Datapaths that run processes of their own while packets flow (the userspace
proxy) start them in a run cgroup too (``kpb<6 hex>-procs``), so their CPU time
is read from the cgroup's ``cpu.stat`` (:func:`cpu_usage_ns`): every process
and thread in it, ns-exact (the scheduler's own runtime), however many there are.

A cgroup is removed (after moving any process still inside to the root) by
:func:`remove`; nothing else of the host's cgroup tree is touched.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from bench.errors import FeatureMissing

RUN_CGROUP_RE = re.compile(r"^kpb[0-9a-f]{6}-[a-z0-9-]+$")


def cgroup2_root() -> Path:
    """Where cgroup v2 is mounted; FeatureMissing if it is not."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    raise FeatureMissing("cgroup v2 is not mounted (socket load balancing attaches to a "
                         "cgroup v2 group): mount -t cgroup2 none /sys/fs/cgroup/unified")


def run_cgroup(name: str) -> Path:
    """The path of the run cgroup ``name`` (which must carry a run prefix)."""
    if not RUN_CGROUP_RE.match(name):
        raise ValueError(f"refusing a cgroup without a run prefix: {name!r}")
    return cgroup2_root() / name


def create(name: str) -> Path:
    """Create the run cgroup ``name`` (existing is fine); returns its path."""
    path = run_cgroup(name)
    try:
        path.mkdir(exist_ok=True)
    except OSError as e:
        raise FeatureMissing(f"cannot create cgroup {path}: {e.strerror}") from None
    return path


def remove(path: Path) -> None:
    """Remove a run cgroup, first moving any process left in it to the root; gone is fine."""
    if not RUN_CGROUP_RE.match(path.name) or not path.is_dir():
        return
    root = path.parent
    with contextlib.suppress(OSError):
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()


def current() -> Path:
    """The cgroup v2 group this process is in."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return cgroup2_root() / line[3:].lstrip("/")
    raise FeatureMissing("this process has no cgroup v2 membership (/proc/self/cgroup)")


@contextlib.contextmanager
def member(path: Path) -> Iterator[Path]:
    """Run the block with this process inside ``path``; processes started there stay in it."""
    before = current()
    (path / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            (before / "cgroup.procs").write_text(str(os.getpid()))


def cpu_usage_ns(path: Path) -> int:
    """CPU time (user + system, ns) the processes of cgroup ``path`` have used so far.

    From ``cpu.stat``'s ``usage_usec``, which the kernel keeps in every cgroup v2
    group whether or not the cpu controller is enabled.
    """
    try:
        text = (path / "cpu.stat").read_text()
    except OSError as e:
        raise FeatureMissing(f"cannot read {path / 'cpu.stat'}: {e.strerror}") from None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) * 1000
    raise FeatureMissing(f"{path / 'cpu.stat'} has no usage_usec")


def group_id(path: Path) -> int:
    """The kernel's id of cgroup ``path`` (what bpf_get_current_cgroup_id() returns)."""
    return path.stat().st_ino


def enter_in_child(path: Path) -> None:
    """Move the calling process into ``path`` (for a ``preexec_fn``: its exec follows)."""
    (path / "cgroup.procs").write_text("0")  # "0": the writing process itself
