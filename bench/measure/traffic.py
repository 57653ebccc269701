"""Packet workloads: frames built with scapy, written to a pcap, replayed by tcpreplay.

Timing comes from tcpreplay, never from a Python send loop, and every replay
reports what tcpreplay says it really sent (packets, seconds, rate): an
offered rate is a request, not a fact.

Every measured packet carries an identity the probes read back: its
transport payload starts with :data:`MAGIC` and a big-endian u32 sequence
number (TCP SYNs carry it too). Warm-up and settle packets carry
:data:`WARMUP_MAGIC` instead, so probes ignore them (``magic=``).

Workloads (:data:`WORKLOADS`):

``udp-new``
    every packet a new flow (new source port; the source address steps on
    after 64,512 ports when ``src_span`` > 1): a conntrack miss and a full
    rule walk for every packet.
``tcp-syn``
    the SYN of a new TCP flow per packet, flows chosen as for ``udp-new``.
``udp-established``
    :data:`ESTABLISHED_FLOWS` flows used round-robin: conntrack hits once the
    warm-up pcap (one packet per flow) has been replayed.

Flow spaces never overlap: per source address, new flows use source ports
:data:`SPORT_FIRST`-65535, the established flows the ports just below them
(and the paired control's established flows the 16 ports below those,
:data:`CONTROL_SPORT_FIRST`), and the new-flow warm-up port
:data:`SPORT_FIRST` - 1 lies between. The
flow of a new-flow packet is a function of its sequence number (flow =
seq mod 64,512 x ``src_span``), so traffic that takes consecutive,
non-overlapping sequence ranges (bench.measure.repetition's ``SeqSpace``) uses fresh
flows without flushing conntrack, until the flow space wraps.

``dst_ips`` spreads a pcap over several destinations (packet or flow ``i``
to ``dst_ips[i mod n]``): the runner's paired control sends the measured
traffic straight to the backend pods' own addresses this way.

Frames are made by patching one scapy-built template with numpy (ports,
addresses, sequence numbers, checksums), because scapy builds only tens of
thousands of packets per second and a run may need two million.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from bench import interrupts
from bench.cluster.netns_exec import dying_with_parent, netns_argv
from bench.cluster.topology import CLIENT_POD_IF, NODE_UNDERLAY_IF, Cluster, in_netns
from bench.errors import KpbenchError
from bench.model import layout as L

MAGIC = b"KPB1"
WARMUP_MAGIC = b"KPBW"
IDENTITY_LEN = 8  # magic + u32 sequence number
WORKLOADS = ("udp-new", "tcp-syn", "udp-established")
NEW_FLOW_WORKLOADS = ("udp-new", "tcp-syn")
ESTABLISHED_FLOWS = 16
MAX_COUNT = 2_000_000
SPORT_FIRST = 1024
SPORTS = 65536 - SPORT_FIRST  # source ports per source address for new flows
NEW_FLOW_WARMUP_SPORT = SPORT_FIRST - 1  # the new-flow warm-up's one flow
# The established flows' ports lie below both: no new flow ever reuses their entries.
ESTABLISHED_SPORT_FIRST = NEW_FLOW_WARMUP_SPORT - ESTABLISHED_FLOWS
# The paired control's established flows have ports of their own, just below. With the
# Service's ports, control flow k sent to the pod Service flow k reached would have the
# reply tuple of that flow's conntrack entry at the node (pod:port -> client:sport);
# netfilter then remaps the control's source port (an implicit SNAT, nf_nat's unique
# tuple), so the "untranslated" control was translated on every netfilter datapath.
CONTROL_SPORT_FIRST = ESTABLISHED_SPORT_FIRST - ESTABLISHED_FLOWS
MAX_SRC_SPAN = 128  # source addresses a new-flow pcap may step through
MAX_FRAME = 1514
NETNS_DIR = Path("/run/netns")
_CHUNK = 65536  # frames patched per numpy block: bounds memory for large pcaps

# Offsets in an untagged Ethernet frame with a 20-byte IPv4 header.
_ETH = 14
_IP_CSUM = _ETH + 10
_IP_SRC = _ETH + 12
_IP_DST = _ETH + 16
_L4 = _ETH + 20
_UDP_CSUM = _L4 + 6
_TCP_SEQ = _L4 + 4
_TCP_CSUM = _L4 + 16
_PROTO = {"udp": 17, "tcp": 6}


@dataclass(frozen=True)
class Target:
    """Where a workload's frames leave from and what they are addressed to.

    ``netns``/``ifname`` is where tcpreplay injects; the MACs make the frames
    acceptable to the next hop without ARP.
    """

    netns: str
    ifname: str
    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    dport: int
    dst_ips: tuple[str, ...] | None = None  # several destinations (see the module doc)
    # The first source port of the established flows (CONTROL_SPORT_FIRST for a control).
    established_sport_first: int = ESTABLISHED_SPORT_FIRST

    @classmethod
    def from_client_pod(cls, cluster: Cluster, dst_ip: str, dport: int) -> Target:
        """The in-cluster client pod to ``dst_ip:dport`` (a ClusterIP VIP, or a pod IP).

        Frames go from the pod's eth0 to its peer ``pc`` in node 0.
        """
        return cls(cluster.client_pod_ns, "eth0", link_mac(cluster.client_pod_ns, "eth0"),
                   link_mac(cluster.node_ns(0), CLIENT_POD_IF), L.client_pod_ip(), dst_ip, dport)

    @classmethod
    def from_external_client(cls, cluster: Cluster, node: int, dport: int,
                             dst_ip: str | None = None) -> Target:
        """The external client to node ``node``'s IP (or ``dst_ip``) on ``dport`` (NodePort).

        Frames cross the underlay bridge to that node's ``ul0``.
        """
        return cls(cluster.client_ns, "eth0", link_mac(cluster.client_ns, "eth0"),
                   link_mac(cluster.node_ns(node), NODE_UNDERLAY_IF), L.CLIENT_IP,
                   dst_ip or L.node_ip(node), dport)

    def build_pcap(self, workload: str, count: int, path: Path, seq_start: int = 0,
                   payload_len: int = IDENTITY_LEN, src_span: int = 1,
                   magic: bytes = MAGIC) -> Path:
        """:func:`build_pcap` for this target."""
        return build_pcap(workload, self.src_mac, self.dst_mac, self.src_ip, self.dst_ip,
                          self.dport, count, path, seq_start, payload_len, src_span,
                          magic=magic, dst_ips=self.dst_ips,
                          established_sport_first=self.established_sport_first)

    def build_warmup_pcap(self, workload: str, path: Path,
                          payload_len: int = IDENTITY_LEN) -> Path:
        """:func:`build_warmup_pcap` for this target."""
        return build_warmup_pcap(workload, self.src_mac, self.dst_mac, self.src_ip,
                                 self.dst_ip, self.dport, path, payload_len,
                                 dst_ips=self.dst_ips,
                                 established_sport_first=self.established_sport_first)

    def to_addresses(self, dst_ips: Sequence[str], dport: int) -> Target:
        """The same frames from the same place, spread over ``dst_ips`` on ``dport``."""
        if not dst_ips:
            raise ValueError("to_addresses needs at least one address")
        return replace(self, dst_ip=dst_ips[0], dst_ips=tuple(dst_ips), dport=dport)

    def to_backend_pods(self, layout: L.Layout, tcp: bool) -> Target:
        """The same frames to the backend pods' own addresses (no Service translation), on
        the port they serve, spread over the pods as a Service spreads new flows; the
        established flows on source ports of their own (:data:`CONTROL_SPORT_FIRST`)."""
        pods = [p for p in layout.pods if (p.tcp_ports if tcp else p.udp_ports)]
        if not pods:
            raise KpbenchError("the measured service has no backend pod serving "
                               f"{'TCP' if tcp else 'UDP'} to send to")
        port = (pods[0].tcp_ports if tcp else pods[0].udp_ports)[0]
        return replace(self.to_addresses([p.ip for p in pods], port),
                       established_sport_first=CONTROL_SPORT_FIRST)

    def replay(self, pcap: Path, pps: int | None, timeout: float,
               stop: threading.Event | None = None) -> ReplayStats:
        """:func:`replay` from this target's namespace and interface."""
        return replay(self.netns, self.ifname, pcap, pps, timeout, stop)


def link_mac(netns: str, ifname: str) -> str:
    """The MAC address of ``ifname`` inside run namespace ``netns``."""
    if not (NETNS_DIR / netns).exists():  # opening a missing one would create it
        raise KpbenchError(f"no namespace {netns}")
    with in_netns(netns) as ns:
        idx = ns.link_lookup(ifname=ifname)
        if not idx:
            raise KpbenchError(f"no interface {ifname} in namespace {netns}")
        mac = ns.link("get", index=idx[0])[0].get("address")
    if not mac:
        raise KpbenchError(f"{ifname} in {netns} has no MAC address")
    return str(mac)


# --- building ----------------------------------------------------------------

def build_pcap(workload: str, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str,
               dport: int, count: int, path: Path, seq_start: int = 0,
               payload_len: int = IDENTITY_LEN, src_span: int = 1, *,
               magic: bytes = MAGIC, dst_ips: Sequence[str] | None = None,
               established_sport_first: int = ESTABLISHED_SPORT_FIRST) -> Path:
    """Write ``count`` frames of ``workload`` to the pcap ``path``; returns ``path``.

    Packet ``i`` carries sequence number ``seq_start + i`` after ``magic``
    (:data:`WARMUP_MAGIC` for traffic the probes must ignore). All frames
    have the same length (``payload_len`` bytes of transport payload, at
    least the 8-byte identity). New-flow workloads take the source port, and
    with ``src_span`` > 1 the source address among ``src_span`` consecutive
    addresses from ``src_ip``, from the sequence number. With ``dst_ips``,
    a new-flow packet goes to ``dst_ips[seq mod n]`` and an established flow
    ``k`` to ``dst_ips[k mod n]`` (``dst_ip`` is then unused), from source port
    ``established_sport_first + k``.
    """
    _check(workload, count, seq_start, payload_len)
    _check_sports(established_sport_first)
    if not 1 <= src_span <= MAX_SRC_SPAN:
        raise ValueError(f"src_span {src_span} out of range (1-{MAX_SRC_SPAN})")
    if workload in NEW_FLOW_WORKLOADS and count > SPORTS * src_span:
        raise ValueError(f"{workload}: {count} packets exceed the {SPORTS * src_span} new flows "
                         f"of {src_span} source address(es); raise src_span or lower count")
    if len(magic) != 4:
        raise ValueError(f"magic must be 4 bytes, not {magic!r}")
    proto = "tcp" if workload == "tcp-syn" else "udp"
    template = _template(proto, src_mac, dst_mac, src_ip, dst_ip, dport, payload_len, magic)
    base_src = int(ipaddress.IPv4Address(src_ip))
    dsts = np.array([int(ipaddress.IPv4Address(a)) for a in (dst_ips or [dst_ip])],
                    dtype=np.uint64)
    with path.open("wb") as f:
        f.write(_PCAP_HEADER)
        for first in range(0, count, _CHUNK):
            seq = (np.arange(first, min(first + _CHUNK, count), dtype=np.uint64)
                   + np.uint64(seq_start))
            if workload in NEW_FLOW_WORKLOADS:
                flow = seq % np.uint64(SPORTS * src_span)
                sport = flow % np.uint64(SPORTS) + np.uint64(SPORT_FIRST)
                src = np.uint64(base_src) + flow // np.uint64(SPORTS)
                dst = dsts[seq % np.uint64(len(dsts))]
            else:
                flow = seq % np.uint64(ESTABLISHED_FLOWS)
                sport = flow + np.uint64(established_sport_first)
                src = np.full(len(seq), base_src, dtype=np.uint64)
                dst = dsts[flow % np.uint64(len(dsts))]
            frames = _patch(template, proto, seq.astype(np.uint32), sport.astype(np.uint16),
                            src.astype(np.uint32), dst.astype(np.uint32))
            f.write(_records(frames, first).tobytes())
    return path


def build_warmup_pcap(workload: str, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str,
                      dport: int, path: Path, payload_len: int = IDENTITY_LEN, *,
                      dst_ips: Sequence[str] | None = None,
                      established_sport_first: int = ESTABLISHED_SPORT_FIRST) -> Path:
    """Write the warm-up frames of ``workload`` (magic :data:`WARMUP_MAGIC`) to ``path``.

    ``udp-established`` gets one packet per flow (to the same destination as
    :func:`build_pcap` gives it), so the measured packets hit conntrack; the
    new-flow workloads get one packet per destination on a flow the run does
    not use (source port :data:`NEW_FLOW_WARMUP_SPORT`), which resolves
    neighbours and routes on the way so the first measured packet does not
    pay for ARP.
    """
    _check(workload, 1, 0, payload_len)
    _check_sports(established_sport_first)
    proto = "tcp" if workload == "tcp-syn" else "udp"
    template = _template(proto, src_mac, dst_mac, src_ip, dst_ip, dport, payload_len,
                         WARMUP_MAGIC)
    dsts = np.array([int(ipaddress.IPv4Address(a)) for a in (dst_ips or [dst_ip])],
                    dtype=np.uint32)
    if workload == "udp-established":
        flow = np.arange(ESTABLISHED_FLOWS, dtype=np.uint32)
        sport = (flow + established_sport_first).astype(np.uint16)
        dst = dsts[flow % len(dsts)]
    else:
        # Just below the new-flow port space, so no measured packet shares its flow.
        dst = dsts
        sport = np.full(len(dst), NEW_FLOW_WARMUP_SPORT, dtype=np.uint16)
    src = np.full(len(sport), int(ipaddress.IPv4Address(src_ip)), dtype=np.uint32)
    seq = np.arange(len(sport), dtype=np.uint32)
    frames = _patch(template, proto, seq, sport, src, dst)
    with path.open("wb") as f:
        f.write(_PCAP_HEADER)
        f.write(_records(frames, 0).tobytes())
    return path


def frame_len(workload: str, payload_len: int = IDENTITY_LEN) -> int:
    """The length of every frame of ``workload`` (Ethernet header included)."""
    return _L4 + (20 if workload == "tcp-syn" else 8) + payload_len


def _check_sports(first: int) -> None:
    """The established flows' ports must stay out of the new flows' (and be ports)."""
    if not 1 <= first <= NEW_FLOW_WARMUP_SPORT - ESTABLISHED_FLOWS:
        raise ValueError(f"established_sport_first {first} out of range "
                         f"(1-{NEW_FLOW_WARMUP_SPORT - ESTABLISHED_FLOWS})")


def _check(workload: str, count: int, seq_start: int, payload_len: int) -> None:
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count {count} out of range (1-{MAX_COUNT})")
    if seq_start < 0 or seq_start + count > 2**32:
        raise ValueError(f"sequence numbers {seq_start}+{count} do not fit a u32")
    if not IDENTITY_LEN <= payload_len <= MAX_FRAME - _L4 - 20:
        raise ValueError(f"payload_len {payload_len} out of range "
                         f"({IDENTITY_LEN}-{MAX_FRAME - _L4 - 20})")


def _template(proto: str, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, dport: int,
              payload_len: int, magic: bytes) -> bytes:
    payload = Raw(magic + bytes(payload_len - len(magic)))
    l4 = (TCP(sport=SPORT_FIRST, dport=dport, flags="S", seq=0, window=64240)
          if proto == "tcp" else UDP(sport=SPORT_FIRST, dport=dport))
    # A fixed IP ID and DF keep every frame identical but for the patched fields.
    frame = bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip, ttl=64, id=0,
                                                       flags="DF") / l4 / payload)
    assert len(frame) == _L4 + (20 if proto == "tcp" else 8) + payload_len
    return frame


def _patch(template: bytes, proto: str, seq: np.ndarray, sport: np.ndarray,
           src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Frames (one row each) from ``template`` with these fields, checksums recomputed."""
    n, size = len(seq), len(template)
    frames = np.tile(np.frombuffer(template, dtype=np.uint8), (n, 1))
    payload = _L4 + (20 if proto == "tcp" else 8)
    _put(frames, payload + 4, seq.astype(">u4"))
    _put(frames, _L4, sport.astype(">u2"))
    _put(frames, _IP_SRC, src.astype(">u4"))
    _put(frames, _IP_DST, dst.astype(">u4"))
    if proto == "tcp":
        _put(frames, _TCP_SEQ, seq.astype(">u4"))  # the identity in the header too
    frames[:, _IP_CSUM:_IP_CSUM + 2] = 0
    _put(frames, _IP_CSUM, _csum(_sum16(frames[:, _ETH:_L4])).astype(">u2"))
    csum_at = _TCP_CSUM if proto == "tcp" else _UDP_CSUM
    frames[:, csum_at:csum_at + 2] = 0
    # Pseudo-header: source and destination address, protocol, L4 length.
    pseudo = _sum16(frames[:, _IP_SRC:_L4]) + np.uint64(_PROTO[proto] + size - _L4)
    l4 = _csum(pseudo + _sum16(frames[:, _L4:]))
    if proto == "udp":
        l4[l4 == 0] = 0xFFFF  # 0 means "no checksum" in UDP
    _put(frames, csum_at, l4.astype(">u2"))
    return frames


def _put(frames: np.ndarray, offset: int, values: np.ndarray) -> None:
    width = values.dtype.itemsize
    frames[:, offset:offset + width] = values.reshape(-1, 1).view(np.uint8).reshape(-1, width)


def _sum16(block: np.ndarray) -> np.ndarray:
    if block.shape[1] % 2:
        block = np.pad(block, ((0, 0), (0, 1)))
    words = np.ascontiguousarray(block).view(">u2").astype(np.uint64)
    return words.sum(axis=1, dtype=np.uint64)


def _csum(total: np.ndarray) -> np.ndarray:
    for _ in range(3):
        total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    return (~total) & np.uint64(0xFFFF)


# Little-endian classic pcap, microsecond timestamps, Ethernet link type.
_PCAP_HEADER = np.array([0xA1B2C3D4, 0x00040002, 0, 0, 65535, 1], dtype="<u4").tobytes()


def _records(frames: np.ndarray, first: int) -> np.ndarray:
    """pcap records: a 16-byte header (timestamp = index in microseconds) then the frame."""
    n, size = frames.shape
    ts = np.arange(first, first + n, dtype=np.uint64)
    hdr = np.zeros((n, 4), dtype="<u4")
    hdr[:, 0] = ts // 1_000_000
    hdr[:, 1] = ts % 1_000_000
    hdr[:, 2] = size
    hdr[:, 3] = size
    return np.hstack([hdr.view(np.uint8).reshape(n, 16), frames])


# --- replaying ---------------------------------------------------------------

@dataclass(frozen=True)
class ReplayStats:
    """What tcpreplay reports it did (parsed from its own output)."""

    sent: int  # packets tcpreplay says it sent
    seconds: float  # its own elapsed time for those packets
    achieved_pps: float  # its own "Rated: … pps"
    failed: int  # "Failed packets" (send errors)
    offered_pps: int | None  # what was asked for; None = top speed
    timed_out: bool = False  # stopped by the wall-clock timeout (sent is partial)


_ACTUAL = re.compile(r"Actual:\s+(\d+) packets \((\d+) bytes\) sent in ([\d.]+) seconds")
_RATED = re.compile(r"Rated:\s+[\d.]+ Bps,\s+[\d.]+ Mbps,\s+([\d.]+) pps")
_FAILED = re.compile(r"Failed packets:\s+(\d+)")


def parse_tcpreplay(output: str, offered_pps: int | None,
                    timed_out: bool = False) -> ReplayStats:
    """Parse tcpreplay's summary; raises :class:`KpbenchError` if it has none."""
    actual, rated = _ACTUAL.search(output), _RATED.search(output)
    if not actual or not rated:
        lines = [ln for ln in output.strip().splitlines() if ln.strip()]
        raise KpbenchError("tcpreplay printed no summary: "
                           + (lines[-1] if lines else "no output"))
    failed = _FAILED.search(output)
    return ReplayStats(sent=int(actual.group(1)), seconds=float(actual.group(3)),
                       achieved_pps=float(rated.group(1)),
                       failed=int(failed.group(1)) if failed else 0,
                       offered_pps=offered_pps, timed_out=timed_out)


def replay(netns: str, ifname: str, pcap: Path, pps: int | None,
           timeout: float, stop: threading.Event | None = None) -> ReplayStats:
    """Replay ``pcap`` out of ``ifname`` in ``netns`` at ``pps`` (None: top speed).

    The pcap is preloaded so disk reads do not pace the replay. After
    ``timeout`` seconds, or once ``stop`` is set (traffic that only has to
    last as long as something else), tcpreplay is interrupted (it then prints
    what it did send) and the result says ``timed_out``.
    """
    if pps is not None and pps <= 0:
        raise ValueError(f"pps must be positive or None (top speed), not {pps}")
    rate = [f"--pps={pps}"] if pps is not None else ["--topspeed"]
    argv = dying_with_parent(netns_argv(netns, ["tcpreplay", f"--intf1={ifname}",
                                                "--preload-pcap", *rate, str(pcap)]))
    proc: subprocess.Popen[str] | None = None
    timed_out = False
    deadline = time.monotonic() + timeout
    try:
        # A signal while Popen starts it would leave tcpreplay running unknown to us: it
        # waits until proc is known, so the finally below stops it.
        with interrupts.deferred():
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
        while True:
            left = deadline - time.monotonic()
            try:
                # Retrying communicate() after its timeout loses no output.
                out, _ = proc.communicate(timeout=max(0.0, min(left, 0.1) if stop else left))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                    raise
    except subprocess.TimeoutExpired:
        # SIGINT makes tcpreplay stop and print its statistics so far.
        timed_out = True
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    finally:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    if proc.returncode != 0 and not timed_out:
        lines = [ln for ln in out.strip().splitlines() if ln.strip()]
        raise KpbenchError(f"tcpreplay failed in {netns} on {ifname} (exit "
                           f"{proc.returncode}): {lines[-1] if lines else 'no output'}")
    return parse_tcpreplay(out, pps, timed_out)
