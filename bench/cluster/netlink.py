"""The one way kpbench opens a pyroute2 netlink handle into a run's namespace.

pyroute2 (0.9) runs every request on an asyncio event loop of its own. A
Ctrl-C or SIGTERM raised in the middle of a request leaves that loop with a
pending "stop" callback, so the handle's next call — its own ``close()`` in
the ``with`` block that is unwinding — fails with "Event loop stopped before
Future completed" and hides the interrupt. Every handle is therefore used
inside :func:`bench.interrupts.deferred`: a signal waits until the block of
netlink requests (milliseconds) is done and the handle closed, then stops the
run as usual, and no tc filter or link is left half-made.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from pyroute2 import NetNS

from bench import interrupts


@contextlib.contextmanager
def in_netns(name: str, *, create: bool = False) -> Iterator[NetNS]:
    """An open handle to the run namespace ``name``; ``create`` makes it (and fails if
    it exists), otherwise it must exist (never created by accident)."""
    if not name:
        raise ValueError("refusing to open a netlink handle without a namespace name")
    flags = os.O_CREAT | os.O_EXCL if create else 0
    with interrupts.deferred():
        ns = NetNS(name, flags=flags)
        try:
            yield ns
        finally:
            ns.close()


def rx_packets(netns: str, ifname: str = "eth0") -> int:
    """Packets ``ifname`` in ``netns`` has received (its own counter, no probe)."""
    with in_netns(netns) as ns:
        (link,) = ns.get_links(ifname=ifname)
        return int(link.get_attr("IFLA_STATS64")["rx_packets"])
