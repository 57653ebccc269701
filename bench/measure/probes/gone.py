"""The gone probe (``probes/gone.c``): a removed endpoint's pod is gone -- packets still
sent to it are dropped and counted, with the first and last one's time; and packets per
backend address, to find the endpoint established flows are pinned to."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from bench.measure.probes.loader import TC_INGRESS, TC_PRIO_FIRST, Probe, TcHook, compile_probe


def _ip_key(ip: str) -> int:
    """An IPv4 address as the u32 the program reads from the packet (network order)."""
    return socket.htonl(int(ipaddress.IPv4Address(ip)))


class GoneProbe(Probe):
    """Drops what reaches the gone pod, and counts arrivals per pod (see the module doc)."""

    name = "gone"
    tc_prio = TC_PRIO_FIRST - 1  # before every other probe at the pods' ingress

    def __init__(self, backends: Sequence[TcHook]) -> None:
        super().__init__()
        self.backends = list(backends)

    def _attach(self) -> None:
        self._bpf = compile_probe(self.name, self.cflags())
        self._attach_tc("kpb_gone", self.backends, TC_INGRESS)

    def _zero(self) -> None:
        self._bpf[b"arrived"].clear()
        dropped = self._bpf[b"dropped"]
        for i in range(3):
            dropped[dropped.Key(i)] = dropped.Leaf(0)

    def set_gone(self, ip: str | None) -> None:
        """From now, drop every packet to ``ip`` at its pod (None: nothing is gone)."""
        self._require()
        gone = self._bpf[b"gone"]
        gone[gone.Key(0)] = gone.Leaf(_ip_key(ip) if ip else 0)

    def arrivals(self) -> dict[str, int]:
        """Packets that reached each backend address (not dropped) since :meth:`start`."""
        self._require()
        return {str(ipaddress.IPv4Address(socket.ntohl(k.value))): int(v.value)
                for k, v in self._bpf[b"arrived"].items()}

    def dropped(self) -> tuple[int, int, int]:
        """(first drop ns, last drop ns, packets dropped) since :meth:`start`."""
        self._require()
        table = self._bpf[b"dropped"]
        return tuple(int(table[table.Key(i)].value) for i in range(3))  # type: ignore[return-value]
