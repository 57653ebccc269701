"""The runner's measurement loop on a fake target and fake probes (no root): what it
replays, in which order, on which sequence numbers, and what it records when the
traffic or the kernel does not behave."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.cluster.testbed import SyncTiming
from bench.errors import KpbenchError
from bench.measure import traffic as T
from bench.measure.probes.latency import LatencyReading
from bench.measure.repetition import ProbeSet, SeqSpace
from bench.measure.runner import Runner
from bench.measure.scenario import parse_scenario
from bench.results.summarise import summarise_point


def scenario(**traffic: Any) -> Any:
    doc = {"name": "fake", "sweep": {"datapaths": ["iptables-legacy"], "services": [1]},
           "traffic": {"workloads": ["udp-new"], "rate_pps": 1000, "packets": 100,
                       "repetitions": 3, "warmup_packets": 20, **traffic},
           "measure": {"settle_timeout": 2}}
    return parse_scenario(doc, "<test>", json.dumps(doc))


@dataclass
class Pcap:
    workload: str
    count: int
    seq_start: int
    magic: bytes
    dst: str


@dataclass
class Wire:
    """What the fake network did: every pcap replayed, in order."""

    replayed: list[Pcap] = field(default_factory=list)
    built: dict[str, Pcap] = field(default_factory=dict)
    fail: dict[int, str] = field(default_factory=dict)  # replay index -> "error" | "timeout"
    stragglers: int = 0  # identified packets of earlier traffic arriving in each window


@dataclass(frozen=True)
class FakeTarget:
    wire: Wire
    dst_ip: str = "172.30.0.10"
    dst_ips: tuple[str, ...] | None = None

    def build_pcap(self, workload: str, count: int, path: Path, seq_start: int = 0,
                   payload_len: int = T.IDENTITY_LEN, src_span: int = 1,
                   magic: bytes = T.MAGIC) -> Path:
        self.wire.built[str(path)] = Pcap(workload, count, seq_start, magic, self.dst_ip)
        return path

    def build_warmup_pcap(self, workload: str, path: Path) -> Path:
        self.wire.built[str(path)] = Pcap(workload, T.ESTABLISHED_FLOWS, 0, T.WARMUP_MAGIC,
                                          self.dst_ip)
        return path

    def to_addresses(self, dst_ips: list[str], dport: int) -> FakeTarget:
        return FakeTarget(self.wire, dst_ips[0], tuple(dst_ips))

    def replay(self, pcap: Path, pps: int | None, timeout: float) -> T.ReplayStats:
        p = self.wire.built[str(pcap)]
        i = len(self.wire.replayed)
        self.wire.replayed.append(p)
        how = self.wire.fail.get(i)
        if how == "error":
            raise KpbenchError("tcpreplay failed in ns on eth0 (exit 1): injected")
        sent = p.count // 2 if how == "timeout" else p.count
        return T.ReplayStats(sent, sent / (pps or 1), float(pps or 1), 0, pps,
                             timed_out=how == "timeout")


class FakeLatency:
    """Every packet of the last replay arrives 1 us after it left, plus stragglers."""

    sink = False  # stamping, as the measured repetitions' probe

    def __init__(self, wire: Wire, latencies: list[float] | None = None) -> None:
        self.wire = wire
        self.latencies = list(latencies or [])  # per window, a level in ns (settle)
        self.base = 0
        self.starts: list[int] = []

    def start(self, seq_base: int = 0) -> None:
        self.base = seq_base
        self.starts.append(seq_base)

    def read(self) -> LatencyReading:
        p = self.wire.replayed[-1]
        level = self.latencies.pop(0) if self.latencies else 1000.0
        mine = (np.arange(p.count, dtype=np.int64) + p.seq_start) if p.magic == T.MAGIC \
            else np.empty(0, dtype=np.int64)
        # Stragglers: identified packets of the traffic before this window.
        old = np.arange(self.wire.stragglers, dtype=np.int64) + max(self.base - 500, 0)
        seqs = np.concatenate([old[old < self.base], mine])
        lat = np.full(len(seqs), int(level), dtype=np.int64)
        arrive = (np.arange(len(seqs), dtype=np.uint64) * np.uint64(1_000_000)
                  + np.uint64(10**9))
        return LatencyReading(seqs=seqs.astype(np.uint32), latency_ns=lat,
                              sent_seen=len(seqs), delivered_seen=len(seqs),
                              departed=len(seqs), lost=0, out_of_range=0, duplicates=0,
                              seconds=1.0, arrival_ns=arrive)


def runner(tmp_path: Path, sc: Any) -> Runner:
    r = Runner(sc, tmp_path)
    r.seqs = SeqSpace()
    return r


def measure(r: Runner, wire: Wire, workload: str = "udp-new") -> Any:
    target = FakeTarget(wire)
    control = target.to_addresses(["10.1.1.1", "10.2.1.1"], 8080)
    probes = ProbeSet(FakeLatency(wire))  # type: ignore[arg-type]
    return r._measure(target, control, "iptables-legacy", 1, workload,  # type: ignore[arg-type]
                      probes, SyncTiming(), (0.5, True), {})


def test_every_phase_takes_its_own_flows_and_warm_up_is_not_measured(tmp_path: Path) -> None:
    wire = Wire()
    r = runner(tmp_path, scenario())
    probes = ProbeSet(FakeLatency(wire, latencies=[5000, 3000, 3100]))  # type: ignore[arg-type]
    r._settle(FakeTarget(wire), probes)  # type: ignore[arg-type]
    measure(r, wire)
    ranges = [(p.seq_start, p.seq_start + p.count) for p in wire.replayed]
    flat = sorted(ranges)
    assert all(a[1] <= b[0] for a, b in zip(flat, flat[1:], strict=False)), ranges
    # New flows are a function of the sequence number below the flow space's size.
    assert flat[-1][1] <= r.seqs.flows
    warm = [p for p in wire.replayed if p.count == 20]
    assert warm and all(p.magic == T.WARMUP_MAGIC for p in warm)


def test_control_repetitions_are_interleaved_and_kept_apart(tmp_path: Path) -> None:
    wire = Wire()
    point = measure(runner(tmp_path, scenario(control_packets=40)), wire)
    measured = [p for p in wire.replayed if p.magic == T.MAGIC]
    assert [(p.count, p.dst) for p in measured] == [(100, "172.30.0.10"), (40, "10.1.1.1")] * 3
    assert len(point["repetitions"]) == 3 and len(point["control"]) == 3
    assert all(rep["sent"] == 40 for rep in point["control"])
    s = summarise_point(point)
    assert s["service_minus_control_p50_ns"] == pytest.approx(0, abs=20)
    assert s["control"]["latency_ns"]["count"] == 120


def test_scenario_without_control_measures_none(tmp_path: Path) -> None:
    wire = Wire()
    point = measure(runner(tmp_path, scenario(control_packets=0)), wire)
    assert "control" not in point and len(wire.replayed) == 1 + 3  # warm-up + reps
    assert "service_minus_control_p50_ns" not in summarise_point(point)


@pytest.mark.parametrize("how,reason", [("error", "injected"), ("timeout", "timed out")])
def test_a_failed_replay_is_recorded_as_a_failed_repetition(tmp_path: Path, how: str,
                                                            reason: str) -> None:
    wire = Wire(fail={4: how})  # warm-up x2, rep 0, control 0, rep 1 <- this one
    point = measure(runner(tmp_path, scenario()), wire)
    assert point["status"] == "ok"
    assert len(point["repetitions"]) == 2  # the failed one is not among them
    (failed,) = point["failed_repetitions"]
    assert failed["phase"] == "measured" and failed["index"] == 1
    assert reason in failed["error"]


def test_a_point_whose_every_replay_failed_is_a_failed_point(tmp_path: Path) -> None:
    wire = Wire(fail={i: "error" for i in range(2, 8)})
    point = measure(runner(tmp_path, scenario()), wire)
    assert point["status"] == "failed" and "injected" in point["error"]
    assert point["repetitions"] == []


def test_stragglers_of_earlier_traffic_are_not_delivered(tmp_path: Path) -> None:
    wire = Wire(stragglers=50)
    point = measure(runner(tmp_path, scenario()), wire)
    assert point["repetitions"] and all(r["delivered"] == r["sent"] == 100
                                        for r in point["repetitions"])
    assert summarise_point(point)["loss"] == 0


def test_delivered_rate_is_measured_from_arrival_stamps(tmp_path: Path) -> None:
    point = measure(runner(tmp_path, scenario()), Wire())
    # The fake receiver saw one packet a millisecond, whatever the sender's rate (1000/s
    # here too, but tcpreplay's figure is sent/seconds = pps exactly): 99 gaps in 99 ms.
    for rep in point["repetitions"]:
        assert rep["arrival_seconds"] == pytest.approx(0.099)
    assert summarise_point(point)["delivered_pps"] == pytest.approx(1000)


def test_settle_uses_the_scenarios_protocol(tmp_path: Path) -> None:
    wire = Wire()
    r = runner(tmp_path, scenario(workloads=["tcp-syn"]))
    probes = ProbeSet(FakeLatency(wire, latencies=[5000, 3000, 3100]))  # type: ignore[arg-type]
    seconds, converged = r._settle(FakeTarget(wire), probes,  # type: ignore[arg-type]
                                   r._settle_workload())
    assert converged and {p.workload for p in wire.replayed} == {"tcp-syn"}


def test_a_settle_that_never_converges_says_so(tmp_path: Path) -> None:
    wire = Wire()
    r = runner(tmp_path, scenario())
    drifting = [1000.0, 2000.0] * 1000  # every round 2x or 0.5x the last
    probes = ProbeSet(FakeLatency(wire, latencies=drifting))  # type: ignore[arg-type]
    seconds, converged = r._settle(FakeTarget(wire), probes)  # type: ignore[arg-type]
    assert not converged and seconds >= r.sc.settle_timeout


def test_a_settle_with_nothing_arriving_is_not_converged(tmp_path: Path) -> None:
    class Silent(FakeLatency):
        def read(self) -> LatencyReading:
            empty = np.empty(0, dtype=np.int64)
            return LatencyReading(empty.astype(np.uint32), empty, 0, 0, 0, 0, 0, 0, 1.0)

    wire = Wire()
    r = runner(tmp_path, scenario())
    seconds, converged = r._settle(FakeTarget(wire), ProbeSet(Silent(wire)))  # type: ignore[arg-type]
    assert not converged and len(wire.replayed) == 1


def test_a_probe_set_without_the_latency_probe_counts_with_a_sinking_drops_probe() -> None:
    """The breakdown repetition's set: its drops probe counts (and drops) what reaches the
    backends; without one made to sink, nothing would count delivered packets."""
    from bench.measure.probes.drops import DropsProbe
    from bench.measure.probes.loader import TcHook

    client, pod = TcHook("client"), TcHook("pod")
    sinking = DropsProbe(client, [pod], sink=True)
    assert ProbeSet(None, {"drops": sinking}).counter is sinking
    assert ProbeSet(None, {"drops": sinking}).all() == [sinking]
    for others in ({}, {"drops": DropsProbe(client, [pod])}):
        with pytest.raises(ValueError, match="sinking drops probe"):
            ProbeSet(None, others).counter  # noqa: B018
    with pytest.raises(ValueError, match="backend hooks"):
        DropsProbe(client, sink=True)


def test_a_breakdown_set_whose_drops_probe_cannot_attach_counts_with_the_latency_sink() -> None:
    """On a kernel the drops probe cannot read (no drop reasons before 5.17), the breakdown
    set records it as missing and counts with the latency probe's sink mode instead."""
    from bench.errors import FeatureMissing
    from bench.measure.probes.drops import DropsProbe
    from bench.measure.probes.loader import TcHook

    class NoDrops(DropsProbe):
        def attach(self) -> None:
            raise FeatureMissing("drops probe: skb:kfree_skb has no reason field")

    class Sink:
        sink = True
        attached = False

        def attach(self) -> None:
            self.attached = True

        def detach(self) -> None:
            self.attached = False

    made: list[Sink] = []
    probes = ProbeSet(None, {"drops": NoDrops(TcHook("c"), [TcHook("p")], sink=True)},
                      sink_fallback=lambda: made.append(Sink()) or made[-1])  # type: ignore[arg-type,return-value]
    with probes.attached():
        assert probes.counter is made[0] and made[0].attached
        assert "drops" not in probes.others and "no reason field" in probes.missing["drops"]
    assert not made[0].attached


def test_flow_endpoints_reads_each_flow_s_pod_and_the_last_where_it_moved() -> None:
    import ipaddress

    import numpy as np

    from bench.measure.probes.latency import LatencyReading
    from bench.measure.repetition import flow_endpoints
    from bench.measure.traffic import ESTABLISHED_FLOWS

    def ip(s: str) -> int:
        return int(ipaddress.IPv4Address(s))

    seqs = np.arange(32, 32 + 2 * ESTABLISHED_FLOWS, dtype=np.uint32)  # each flow twice
    dst = np.array([ip(f"10.1.0.{s % 16 + 1}") for s in seqs], dtype=np.uint32)
    dst[-1] = ip("10.2.0.9")  # flow 15's second packet reached another pod: a new session
    order = np.random.default_rng(1).permutation(len(seqs))  # readings need not be sorted

    def reading(keep: np.ndarray) -> LatencyReading:
        return LatencyReading(seqs=seqs[keep], latency_ns=np.ones(len(keep), dtype=np.int64),
                              sent_seen=0, delivered_seen=0, departed=0, lost=0,
                              out_of_range=0, duplicates=0, seconds=1.0,
                              arrival_dst=dst[keep])

    pods = flow_endpoints(reading(order))
    assert pods == [f"10.1.0.{k + 1}" for k in range(15)] + ["10.2.0.9"]
    no_flow_5 = order[seqs[order] % ESTABLISHED_FLOWS != 5]
    assert flow_endpoints(reading(no_flow_5)) is None  # a flow without a packet
