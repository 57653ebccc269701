"""The socket workloads' generators and responders: their command lines and their output.

``kpb-crr`` is built from ``tools/crr/crr.c`` by ``scripts/setup.sh`` into
``build/``: connect, request, response, close per transaction (``tcp-crr``), and
with ``--keep`` request/response on one kept-alive connection per flow
(``tcp-rr``). ``sockperf`` (UDP ping-pong and under-load: ``udp-rr``) and
``iperf3`` (streams) come from Debian. ``tcp-rr`` does not use sockperf's TCP
mode because its client sleeps a fixed 2 s after connecting on every run, which
a suite of short points cannot absorb (``--pre-warmup-wait`` cannot be 0). Nothing
here starts a process: :mod:`bench.measure.sockets` does, and hands the output to
these parsers, which fail loudly (:class:`KpbenchError`) on output they do not know.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import KpbenchError
from bench.measure.processes import last_line
from bench.paths import CHECKOUT

CRR_SOURCE = CHECKOUT / "tools" / "crr" / "crr.c"
CRR_BINARY = CHECKOUT / "build" / "kpb-crr"
# What scripts/setup.sh built it from: "<sha256 of the source> <gcc version>".
CRR_STAMP = CHECKOUT / "build" / "kpb-crr.stamp"
SOCKPERF_MIN_MSG = 14  # sockperf's own header; smaller messages are refused


def require(tool: str) -> None:
    """KpbenchError naming the fix if ``tool`` is not on PATH."""
    if shutil.which(tool) is None:
        raise KpbenchError(f"{tool} is not installed: run scripts/setup.sh (Debian package "
                           f"{tool})")


def crr_binary() -> Path:
    """The built generator; a one-line error naming the fix if it is missing or stale."""
    if not CRR_BINARY.is_file():
        raise KpbenchError(f"{CRR_BINARY} is missing: run scripts/setup.sh to build it "
                           f"from {CRR_SOURCE.relative_to(CHECKOUT)}")
    if crr_stale():
        raise KpbenchError(f"{CRR_BINARY} was built from another "
                           f"{CRR_SOURCE.relative_to(CHECKOUT)}: run scripts/setup.sh to "
                           "rebuild it")
    return CRR_BINARY


def crr_stale() -> bool:
    """Whether the built generator is not the current source's: by the source's hash in
    the stamp setup.sh writes beside it (a checkout that rewrites the source with the same
    bytes changes its time, not what the binary was built from), by file times without
    a stamp."""
    try:
        built_from = CRR_STAMP.read_text().split()[0]
    except (OSError, IndexError):
        return CRR_BINARY.stat().st_mtime < CRR_SOURCE.stat().st_mtime
    return built_from != hashlib.sha256(CRR_SOURCE.read_bytes()).hexdigest()


# --- kpb-crr -----------------------------------------------------------------

@dataclass(frozen=True)
class CrrClientStats:
    """``kpb-crr client``'s summary line."""

    transactions: int  # completed (response read in full)
    connect_failed: int  # refused, unreachable, or no SYN-ACK within the timeout
    timeouts: int  # connected, but no full response within the timeout
    errors: int  # reset or closed early, or any other socket error
    seconds: float  # wall time of the whole run
    flows: int
    loop: str  # "open" | "closed"
    rate: float  # offered transactions/s (0 in closed loop)

    @property
    def failed(self) -> int:
        return self.connect_failed + self.timeouts + self.errors


_CRR_CLIENT = re.compile(
    r"^crr-client transactions=(\d+) connect_failed=(\d+) timeouts=(\d+) errors=(\d+) "
    r"seconds=([\d.]+) flows=(\d+) loop=(open|closed) rate=([\d.]+)$", re.M)
_CRR_SERVER = re.compile(r"^crr-server served=(\d+) errors=(\d+) connections=(\d+)$", re.M)


def parse_crr_client(output: str) -> CrrClientStats:
    """Parse ``kpb-crr client``'s output; KpbenchError if it has no summary line."""
    m = _CRR_CLIENT.search(output)
    if m is None:
        raise KpbenchError(f"kpb-crr client printed no summary: {last_line(output)}")
    g = m.groups()
    return CrrClientStats(int(g[0]), int(g[1]), int(g[2]), int(g[3]), float(g[4]), int(g[5]),
                          g[6], float(g[7]))


@dataclass(frozen=True)
class CrrServerStats:
    """``kpb-crr serve``'s summary line."""

    served: int  # responses written in full
    errors: int  # connections closed or reset mid-request, responses not written in full
    connections: int  # connections accepted (tcp-crr: one per transaction; --keep: per flow)


def parse_crr_server(output: str) -> CrrServerStats:
    """Parse ``kpb-crr serve``'s output; KpbenchError without its summary line."""
    m = _CRR_SERVER.search(output)
    if m is None:
        raise KpbenchError(f"kpb-crr responder printed no summary: {last_line(output)}")
    return CrrServerStats(*(int(g) for g in m.groups()))


def read_crr_samples(path: Path, expected: int) -> np.ndarray:
    """The latencies (ns) ``kpb-crr client --samples`` wrote: little-endian uint32 each."""
    raw = path.read_bytes()
    if len(raw) != 4 * expected:
        raise KpbenchError(f"{path}: {len(raw)} bytes of samples for {expected} "
                           f"transactions (expected {4 * expected})")
    return np.frombuffer(raw, dtype="<u4").astype(np.float64)


# ``kpb-crr client --records``: one record per transaction (tools/crr/crr.c).
CRR_RECORD = np.dtype([("due_ns", "<u8"), ("rtt_ns", "<u8"), ("status", "<u2"),
                       ("flags", "<u2"), ("flow", "<u4")])
CRR_STATUS = ("ok", "connect_failed", "timeout", "error", "not_started")
CRR_RECONNECTED = 1  # flags: the transaction opened its flow's connection first (--keep)


def read_crr_records(path: Path) -> np.ndarray:
    """The transactions ``kpb-crr client --records`` wrote, in transaction (due) order:
    a structured array of :data:`CRR_RECORD` (due_ns on CLOCK_MONOTONIC)."""
    raw = path.read_bytes()
    if len(raw) % CRR_RECORD.itemsize:
        raise KpbenchError(f"{path}: {len(raw)} bytes is not a whole number of "
                           f"{CRR_RECORD.itemsize}-byte transaction records")
    records = np.frombuffer(raw, dtype=CRR_RECORD)
    if len(records) and int(records["status"].max()) >= len(CRR_STATUS):
        raise KpbenchError(f"{path}: a transaction record with an unknown status "
                           f"{int(records['status'].max())}")
    return records


# --- sockperf ----------------------------------------------------------------

@dataclass(frozen=True)
class SockperfStats:
    """One sockperf UDP client's measured part (its warm-up excluded, as sockperf does)."""

    seconds: float  # "[Valid Duration] RunTime"
    sent: int
    received: int
    dropped: int  # replies that never came
    rtt_ns: np.ndarray  # rxTime - txTime of every message in the full log


_VALID = re.compile(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); "
                    r"ReceivedMessages=(\d+)")
_DROPPED = re.compile(r"# dropped messages = (\d+)")
_LOG_ROW = re.compile(r"^\s*\d+,\s*([\d.]+),\s*([\d.]+)", re.M)


def parse_sockperf(output: str, full_log: str) -> SockperfStats:
    """Parse a sockperf client's summary and its ``--full-log`` CSV.

    The CSV's rows are ``packet, txTime(s), rxTime(s)[, latency(us)]``; the
    RTT of a message is rxTime - txTime (sockperf's own "latency" is half of it).
    """
    m = _VALID.search(output)
    if m is None:
        raise KpbenchError(f"sockperf printed no measured duration: {last_line(output)}")
    rows = np.array([(float(a), float(b)) for a, b in _LOG_ROW.findall(full_log)],
                    dtype=np.float64).reshape(-1, 2)
    rtt = np.round((rows[:, 1] - rows[:, 0]) * 1e9)
    # A message that got no reply has no rxTime worth reading (logged as 0).
    rtt = rtt[(rows[:, 1] > 0) & (rtt >= 0)]
    dropped = _DROPPED.search(output)
    return SockperfStats(seconds=float(m.group(1)), sent=int(m.group(2)),
                         received=int(m.group(3)),
                         dropped=int(dropped.group(1)) if dropped else 0, rtt_ns=rtt)


# --- conntrack -E ---------------------------------------------------------------

_CT_EVENTS = re.compile(r"(\d+) flow events have been shown")


def parse_conntrack_events(output: str) -> int:
    """How many events ``conntrack -E`` says it showed (its last line, on SIGTERM).

    KpbenchError if it lost some (ENOBUFS: the count would be short) or printed no total.
    """
    if "ENOBUFS" in output:
        raise KpbenchError("conntrack -E lost events (ENOBUFS): the count of new "
                           "entries would be short")
    m = _CT_EVENTS.search(output)
    if m is None:
        raise KpbenchError(f"conntrack -E printed no event count: {last_line(output)}")
    return int(m.group(1))


# --- iperf3 --------------------------------------------------------------------

@dataclass(frozen=True)
class Iperf3Stats:
    """An iperf3 client's totals (``-J``)."""

    seconds: float  # the receiver's
    bytes_received: int
    bits_per_second: float  # received, the figure a stream is reported by
    retransmits: int  # the sender's, as iperf3 reads them from TCP_INFO
    streams: int


def parse_iperf3(output: str) -> Iperf3Stats:
    """Parse ``iperf3 -c ... -J``; KpbenchError on an error or unknown output."""
    try:
        doc = json.loads(output)
    except json.JSONDecodeError:
        raise KpbenchError(f"iperf3 printed no JSON: {last_line(output)}") from None
    if "error" in doc:
        raise KpbenchError(f"iperf3 failed: {doc['error']}")
    try:
        end = doc["end"]
        received, sent = end["sum_received"], end["sum_sent"]
        return Iperf3Stats(seconds=float(received["seconds"]),
                           bytes_received=int(received["bytes"]),
                           bits_per_second=float(received["bits_per_second"]),
                           retransmits=int(sent.get("retransmits", 0)),
                           streams=len(end["streams"]))
    except (KeyError, TypeError, ValueError) as e:
        raise KpbenchError(f"iperf3's JSON has no usable totals ({e!r})") from None

