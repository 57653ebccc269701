"""The ``tcp-rr`` background of a disruption scenario (docs/disruption.md).

Request/response on established TCP connections through the measured Service's
ClusterIP: ``kpb-crr client --keep`` (tools/crr/crr.c) in the client pod, open
loop at the scenario's ``rate_pps`` transactions per second over :data:`FLOWS`
kept connections, answered by ``kpb-crr serve --keep`` in the backend pods (the
socket points' responders, :func:`bench.measure.sockets.serve`, started once per
point). Transaction ``i`` is due at ``start + i / rate`` and its RTT counts from
when it was due, so a stall shows as late transactions, not as missing ones.

Its timeline comes from the client's ``--records`` (one record per transaction:
due time on CLOCK_MONOTONIC, the clock of ``time.monotonic_ns()`` and
``bpf_ktime_get_ns()``, RTT, status): :func:`stamps` maps each transaction to a
packet of the UDP backgrounds' timeline (bench.measure.disruption), its due time
as the departure, its completion as the arrival, a failed one (connection
refused or reset, no response within :data:`TIMEOUT_MS`, or due but not started
when the traffic stopped) as lost.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.errors import KpbenchError
from bench.measure import socket_tools as T
from bench.measure import sockets as S
from bench.measure.processes import Processes

if TYPE_CHECKING:
    from bench.cluster.testbed import Testbed

FLOWS = 8  # kept connections (the socket points' default concurrency)
# A transaction not answered within this long is lost (its connection closed; the flow's
# next transaction reconnects). Longer than TCP's first retransmissions (200 ms, 400 ms,
# 800 ms, ... after the first send) so that a stall of a few seconds shows as latency.
TIMEOUT_MS = 5000
WARMUP_S = 0.5  # an unmeasured run before each repetition: connections, caches, a proxy
# The namespace counters a repetition reports, summed over the client pod, node 0 (a
# userspace proxy's sockets) and the backend pods (bench.measure.sockets.TCP_COUNTERS).
COUNTERS = ("retransmits", "resets_sent", "estab_resets", "attempt_fails")


def work(rate: float, duration_s: float) -> S.SocketWorkload:
    """The background's workload: ``rate`` transactions/s for at most ``duration_s``."""
    return S.SocketWorkload("tcp-rr", flows=FLOWS, loop="open", rate_tps=rate,
                            duration_s=duration_s, timeout_ms=TIMEOUT_MS,
                            count=math.ceil(rate * duration_s) + 1)


def stamps(records: np.ndarray, until_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(due ns, completion ns or 0) of the transactions due before ``until_ns``, sorted
    by due time: the departure and arrival of bench.measure.disruption's timeline."""
    r = records[records["due_ns"] < np.uint64(until_ns)]
    due = r["due_ns"].astype(np.int64)
    done = np.where(r["status"] == 0, due + r["rtt_ns"].astype(np.int64), 0)
    order = np.argsort(due, kind="stable")
    return due[order], done[order]


@dataclass
class TcpRrTraffic:
    """One repetition's tcp-rr background (the disruption runner's ``Traffic``).
    ``serving``: the point's responders; ``cgroup``: where the client must run
    (socket-lb balances only its own cgroup's sockets); ``spaces``: the namespaces
    whose TCP counters are read."""

    path: S.SocketPath
    serving: S.Serving | None
    rate: float
    cgroup: Path | None
    spaces: tuple[str, ...]
    workdir: Path

    @classmethod
    def on(cls, bed: Testbed, path: S.SocketPath, serving: S.Serving | None, rate: float,
           workdir: Path) -> TcpRrTraffic:
        """The background over ``path`` in ``bed``: the client in the datapath's client
        cgroup; TCP counters where its sockets are: the client, node 0 (a userspace
        proxy's), the backends."""
        spaces = tuple(dict.fromkeys((path.client_netns, bed.cluster.node_ns(0),
                                      *(r.netns for r in path.responders))))
        return cls(path, serving, rate, bed.datapath.client_cgroup(), spaces, workdir)

    def __post_init__(self) -> None:
        self.records = self.workdir / "tcp-rr.records"
        self._stack = contextlib.ExitStack()
        self._first = 0
        self._out: str | None = None
        self._error: KpbenchError | None = None
        self._before: dict[str, dict[str, int]] = {}

    def start(self, window_s: float) -> None:
        """Warm up, read the counters, start the client (at most ``window_s``)."""
        S.run(work(self.rate, WARMUP_S), self.path, cgroup=self.cgroup,
              serving=self.serving)  # also sets the path's port range
        self.records.unlink(missing_ok=True)
        self._before = S.nstat_all(list(self.spaces))
        procs = self._stack.enter_context(Processes())
        try:
            argv = S.crr_client_argv(work(self.rate, window_s), self.path,
                                     "--records", str(self.records))
            self._proc = procs.start("kpb-crr client", self.path.client_netns, argv,
                                     self.cgroup)
            procs.wait_ready(self._proc, "running", "kpb-crr client (tcp-rr background)")
        except BaseException:
            self._stack.close()  # the client killed
            raise
        self._first = time.monotonic_ns()  # its first transaction is due now
        self._procs = procs

    def first(self) -> int:
        """When the first transaction was due (ns, CLOCK_MONOTONIC; the client's clock
        start, read as it said so)."""
        return self._first

    def running(self) -> bool:
        return self._proc.poll() is None

    def end(self) -> None:
        """Stop the client (SIGTERM: it finishes the transactions in flight, bounded by
        :data:`TIMEOUT_MS`, and writes its records); never raises (see :meth:`result`)."""
        try:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
            self._out = self._procs.finish(self._proc, TIMEOUT_MS / 1e3 + S.GRACE_S,
                                           "kpb-crr client (tcp-rr background)")
        except KpbenchError as e:
            self._error = e
        finally:
            self._stack.close()

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def result(self, until_ns: int) -> tuple[np.ndarray, np.ndarray, float | None,
                                             dict[str, Any]]:
        """(due, completion or 0) of the transactions due before ``until_ns``, the
        achieved rate, and the repetition's TCP figures (docs/disruption.md)."""
        self.check()
        assert self._out is not None
        stats = T.parse_crr_client(self._out)
        after = S.nstat_all(list(self.spaces))
        records = T.read_crr_records(self.records)
        kept = records[records["due_ns"] < np.uint64(until_ns)]
        due, done = stamps(records, until_ns)
        counters = {name: sum(after[ns].get(S.TCP_COUNTERS[name], 0)
                              - self._before[ns].get(S.TCP_COUNTERS[name], 0)
                              for ns in self.spaces) for name in COUNTERS}
        status = kept["status"]
        figures: dict[str, Any] = {
            **counters,
            "reconnects": int(np.count_nonzero(kept["flags"] & T.CRR_RECONNECTED)),
            **{f"tx_{name}": int(np.count_nonzero(status == i))
               for i, name in enumerate(T.CRR_STATUS) if name != "ok"},
        }
        achieved = stats.transactions / stats.seconds if stats.seconds else None
        return due, done, achieved, figures


@contextlib.contextmanager
def responders(path: S.SocketPath, rate: float, window_s: float,
               runs: int) -> Iterator[S.Serving | None]:
    """The point's responders for ``runs`` repetitions of up to ``window_s`` (and their
    warm-ups): :func:`bench.measure.sockets.serve`."""
    with S.serve(work(rate, window_s + WARMUP_S), path, runs) as serving:
        yield serving

