"""The effect probe (``probes/effect.c``): when traffic really reached each backend
during a rule sync (time to effect), as first and last arrival per backend address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from bench.measure.probes.loader import (
    TC_INGRESS,
    TC_PRIO,
    Probe,
    TcHook,
    clear_live,
    compile_probe,
)


@dataclass(frozen=True)
class Arrivals:
    first_ns: int
    last_ns: int
    packets: int


class EffectProbe(Probe):
    """First and last arrival of identified packets per backend address (probes/effect.c)."""

    name = "effect"
    tc_prio = TC_PRIO + 8

    def __init__(self, backends: Sequence[TcHook]) -> None:
        super().__init__()
        self.backends = list(backends)

    def attach(self) -> None:
        if self.attached:
            return
        self._bpf = compile_probe(self.name, self.cflags())
        self._attach_guarded(lambda: self._attach_tc("kpb_effect", self.backends, TC_INGRESS))

    def _zero(self) -> None:
        clear_live(self._bpf[b"seen"])

    def read(self) -> dict[str, Arrivals]:
        """Arrivals since :meth:`start`, by backend IP."""
        self._require()
        out = {}
        for k, v in self._bpf[b"seen"].items():
            ip = str(ipaddress.IPv4Address(socket.ntohl(k.value)))
            out[ip] = Arrivals(int(v.first_ns), int(v.last_ns), int(v.packets))
        return out

