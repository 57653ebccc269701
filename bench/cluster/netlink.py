"""The one way kpbench opens a pyroute2 netlink handle into a run's namespace.

pyroute2 (0.9) runs every request on an asyncio event loop of its own. A
Ctrl-C or SIGTERM raised in the middle of a request leaves that loop with a
pending "stop" callback, so the handle's next call — its own ``close()`` in
the ``with`` block that is unwinding — fails with "Event loop stopped before
Future completed" and hides the interrupt. Every handle is therefore used
inside :func:`bench.interrupts.deferred`: a signal waits until the block of
netlink requests (milliseconds) is done and the handle closed, then stops the
run as usual, and no tc filter or link is left half-made.

pyroute2 makes a handle's socket inside a namespace by forking a child that
joins it. A fork() of the harness (hundreds of MB at 10,000 services) costs
milliseconds of page-table copying and leaves every page copy-on-write, so
whatever the harness times next pays a fault on each page it writes (the
sync runner's apply of ebpf-tc's maps did). Here the socket of an existing
namespace is made by a short-lived thread that joins the namespace
(``setns`` acts on the calling thread only) and hands the socket over: no
process is made. Creating a namespace still goes through pyroute2 (set-up).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Iterator

from pyroute2 import IPRoute, NetNS

from bench import interrupts
from bench.cluster.netns_exec import libc


@contextlib.contextmanager
def in_netns(name: str, *, create: bool = False) -> Iterator[IPRoute]:
    """An open handle to the run namespace ``name``; ``create`` makes it (and fails if
    it exists), otherwise it must exist (never created by accident)."""
    if not name:
        raise ValueError("refusing to open a netlink handle without a namespace name")
    with interrupts.deferred():
        ns = (NetNS(name, flags=os.O_CREAT | os.O_EXCL) if create
              else IPRoute(fileno=_route_socket_in(name)))
        try:
            yield ns
        finally:
            ns.close()


def rx_packets(netns: str, ifname: str = "eth0") -> int:
    """Packets ``ifname`` in ``netns`` has received (its own counter, no probe)."""
    with in_netns(netns) as ns:
        (link,) = ns.get_links(ifname=ifname)
        return int(link.get_attr("IFLA_STATS64")["rx_packets"])


_CLONE_NEWNET = 0x40000000
_NETNS_DIR = "/run/netns"


def _route_socket_in(name: str) -> int:
    """The file descriptor of a new NETLINK_ROUTE socket inside the run namespace
    ``name`` (which must exist), made without a fork (module doc)."""
    path = os.path.join(_NETNS_DIR, name)
    made: list[int] = []
    failed: list[BaseException] = []

    def join_and_make() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc().setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
            made.append(sock.detach())
        except BaseException as e:  # re-raised in the caller's thread
            failed.append(e)

    t = threading.Thread(target=join_and_make, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if failed:
        raise failed[0]
    return made[0]
