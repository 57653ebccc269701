"""A socket generator's own ceiling, and whether a point reached it.

The most a generator and its responder reach on this machine is measured
with the same workload (same tool and concurrency) run closed loop for
:data:`CEILING_S` inside ONE namespace, over its loopback: no Service, no
veth, no node, no rules, no conntrack. Closed loop also for an open-loop
point: at its own offered rate the run would only reach that rate back, so
every point that sustains its rate would look "at the ceiling"; whether an
open-loop point sustained its rate is ``offered_not_reached``. A point whose rate comes near that
is bound by the generator and the CPUs, not by the datapath, and says so
(``summary.at_generator_ceiling``: :func:`bench.results.summarise.ceiling_flags`)
instead of reporting the generator as the datapath.

:class:`Ceilings` measures each (workload, flows, responders) once per run
and keeps it (the runner holds one); ``scripts/socket_ceilings.py`` prints
the table through :func:`measure`, the same code.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import replace
from typing import Any

from bench.errors import KpbenchError
from bench.measure import sockets as S

CEILING_S = 1.0  # one short run: the ceiling is a bound, not a figure to compare
LOOPBACK = "127.0.0.1"
CEILING_PORT = 7999  # the responder's port on the namespace's loopback


def measure(work: S.SocketWorkload, netns: str, seconds: float = CEILING_S,
            responders: int = 1) -> dict[str, Any]:
    """``work``'s ceiling: the same workload, closed loop, for ``seconds`` within ``netns``
    over its loopback, to ``responders`` responder processes (127.0.0.1, .2, ...: as many
    as the point's path has backends, its flows spread over them alike; one process can
    use one CPU, so a single one would bound the ceiling below what the points reach;
    a stream has one); {transactions_per_s, throughput_bps, seconds, measured_at}."""
    short = replace(work, loop="closed", rate_tps=None, duration_s=seconds, count=None)
    n = 1 if work.workload == "tcp-stream" else max(1, responders)
    ips = [f"127.0.0.{i + 1}" for i in range(n)]
    path = S.SocketPath(netns, ips[0], CEILING_PORT,
                        tuple(S.Responder(netns, ip) for ip in ips), client_ip=LOOPBACK,
                        spread=tuple((ip, CEILING_PORT) for ip in ips[1:]))
    res = S.run(short, path)
    return {"transactions_per_s": res.transactions_per_s,
            "throughput_bps": res.throughput_bps, "seconds": res.seconds,
            "measured_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}


def key(work: S.SocketWorkload, responders: int = 1) -> tuple[str, int, int]:
    """What a ceiling depends on: (workload, flows, responders); it is measured closed
    loop."""
    return (work.workload, work.flows, responders)


class Ceilings:
    """The run's ceilings, each measured once (a failure too, kept with its reason)."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, int, int], tuple[dict[str, Any] | None, str | None]] = {}
        self.measured = 0  # how many ceilings this run measured (not served from the cache)

    def get(self, work: S.SocketWorkload, netns: str,
            responders: int = 1) -> tuple[dict[str, Any] | None, str | None]:
        """(the ceiling, None), or (None, why it could not be measured)."""
        k = key(work, responders)
        if k not in self._found:
            self.measured += 1
            try:
                self._found[k] = measure(work, netns, responders=responders), None
            except KpbenchError as e:
                self._found[k] = None, f"the generator's ceiling could not be measured: {e}"
        return self._found[k]

