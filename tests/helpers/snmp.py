"""A namespace's own UDP counters (its /proc/net/snmp): what its UDP layer took in,
counted by the kernel itself, with no probe attached."""

from __future__ import annotations

from bench.cluster.topology import run_netns


def udp_counters(netns: str) -> dict[str, int]:
    """The ``Udp:`` row of ``netns``'s /proc/net/snmp, by field name."""
    out = run_netns(netns, ["cat", "/proc/net/snmp"]).stdout
    head, values = [ln.split()[1:] for ln in out.splitlines() if ln.startswith("Udp:")][:2]
    return dict(zip(head, map(int, values), strict=True))


def udp_stack_packets(netns: str) -> int:
    """Datagrams that reached the UDP layer of ``netns`` (to a socket, to no socket, or
    in error)."""
    counts = udp_counters(netns)
    return counts["InDatagrams"] + counts["NoPorts"] + counts["InErrors"]
