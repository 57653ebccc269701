"""What a packet point's figures mean, checked against the kernel's own counters.

One tiny run (iptables-legacy, one service, two endpoints on two nodes) with every
replay watched: node 0's conntrack insert counter around each replay proves that
a ``udp-new`` repetition's packets are all new flows (settle, warm-up, control,
breakdown and the other repetitions never took them), and the backend pods'
interface counters bound what the probes may call delivered.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.cluster.netlink import rx_packets
from bench.measure import runner as runner_mod
from bench.measure import traffic as T
from bench.measure.probes.transit import RUN_SAMPLE_EVERY
from bench.measure.runner import Runner
from bench.measure.scenario import parse_scenario
from bench.results.reader import load_result
from tests.conftest import require_feature

pytestmark = pytest.mark.privileged

PACKETS, CONTROL, REPS = 400, 200, 2


def conntrack_entries(netns: str) -> int:
    """Connections in node ``netns``'s conntrack table (``conntrack -C``).

    Its growth over a replay is the inserts (this kernel's ``conntrack -S``
    no longer counts them), as no entry expires: the test raises the node's
    unreplied-UDP timeout far beyond the run.
    """
    out = subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-C"], capture_output=True,
                         text=True, check=True).stdout
    return int(out.strip())


def keep_entries(netns: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w",
                    "net.netfilter.nf_conntrack_udp_timeout=600"], check=True)


@dataclass
class Replay:
    pcap: str
    sent: int
    inserts: int  # on node 0 during this replay
    pod_rx: int  # packets the backend pods' eth0 received during it


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any],
                                                                              list[Replay]]]:
    require_feature("bcc")
    require_feature("tracepoints")
    doc = {"name": "watched",
           "sweep": {"datapaths": ["iptables-legacy"], "services": [1], "endpoints": 2},
           "traffic": {"workloads": ["udp-new"], "rate_pps": 4000, "packets": PACKETS,
                       "repetitions": REPS, "warmup_packets": 100,
                       "control_packets": CONTROL},
           "measure": {"settle_timeout": 3, "overhead": False,
                       "probes": ["latency", "cpu", "drops", "transit"]}}
    sc = parse_scenario(doc, "<test>", json.dumps(doc))
    beds: list[Any] = []
    replays: list[Replay] = []
    real_replay, real_enter = T.replay, runner_mod.Testbed.__enter__

    def enter(bed: Any) -> Any:
        beds.append(bed)
        return real_enter(bed)

    def watched(netns: str, ifname: str, pcap: Path, pps: int | None, timeout: float,
                stop: Any = None) -> T.ReplayStats:
        node = beds[-1].cluster.node_ns(0)
        pods = [beds[-1].cluster.pod_ns(p) for p in beds[-1].layout.pods]
        if not replays:
            keep_entries(node)
        i0, r0 = conntrack_entries(node), sum(rx_packets(p) for p in pods)
        stats = real_replay(netns, ifname, pcap, pps, timeout, stop)
        runner_mod.time.sleep(runner_mod.DRAIN_SECONDS)
        replays.append(Replay(pcap.name, stats.sent, conntrack_entries(node) - i0,
                              sum(rx_packets(p) for p in pods) - r0))
        return stats

    mp = pytest.MonkeyPatch()
    mp.setattr(T, "replay", watched)
    mp.setattr(runner_mod.Testbed, "__enter__", enter)
    try:
        path = Runner(sc, tmp_path_factory.mktemp("watched")).run()
    finally:
        mp.undo()
    (point,) = load_result(path)["points"]
    yield point, replays  # type: ignore[misc]


def test_every_measured_packet_is_a_new_flow(watched_run: tuple[dict[str, Any],
                                                                list[Replay]]) -> None:
    point, replays = watched_run
    assert point["status"] == "ok", point.get("error")
    measured = [r for r in replays if r.pcap == "udp-new.pcap"]
    # Repetitions, controls and the breakdown repetition each replay udp-new.pcap.
    assert [r.sent for r in measured] == [PACKETS, CONTROL] * REPS + [PACKETS]
    # Settle, warm-up and the earlier repetitions took none of these flows: node 0's
    # conntrack inserted one entry per packet, so every one missed conntrack.
    assert [r.inserts for r in measured] == [r.sent for r in measured], replays


def test_breakdown_is_kept_apart(watched_run: tuple[dict[str, Any], list[Replay]]) -> None:
    point, _ = watched_run
    assert len(point["repetitions"]) == REPS and point["breakdown"]["sent"] == PACKETS
    s = point["summary"]
    assert s["latency_ns"]["count"] == sum(r["delivered"] for r in point["repetitions"])
    assert s["loss"] == pytest.approx(
        1 - sum(r["delivered"] for r in point["repetitions"]) / (REPS * PACKETS))
    assert point["breakdown"].get("drops") is not None and s["drops"] is not None


def test_delivered_is_bounded_by_what_the_backends_received(
        watched_run: tuple[dict[str, Any], list[Replay]]) -> None:
    point, replays = watched_run
    measured = [r for r in replays if r.pcap == "udp-new.pcap"]
    reps = [*((point["repetitions"][i], point["control"][i]) for i in range(REPS))]
    for (rep, ctl), (m_rep, m_ctl) in zip(reps, zip(measured[::2], measured[1::2],
                                                    strict=False), strict=False):
        for doc, seen in ((rep, m_rep), (ctl, m_ctl)):
            assert doc["sent"] == seen.sent
            assert 0.9 * seen.sent <= doc["delivered"] <= min(seen.sent, seen.pod_rx)


def test_the_breakdown_repetition_counts_what_the_backends_took(
        watched_run: tuple[dict[str, Any], list[Replay]]) -> None:
    # Its drops probe sinks (no latency probe, nothing stamped): delivered is what reached
    # the backends, bounded by their own interface counters over its replay (the last of
    # udp-new.pcap), and the sink's own drops are not the datapath's.
    point, replays = watched_run
    seen = [r for r in replays if r.pcap == "udp-new.pcap"][-1]
    bd = point["breakdown"]
    assert bd["sent"] == seen.sent == PACKETS
    assert 0.9 * seen.sent <= bd["delivered"] <= min(seen.sent, seen.pod_rx), (bd, seen)
    assert bd["latency_hist"] is None
    assert sum(bd["drops"].values()) <= bd["sent"] - bd["delivered"], bd["drops"]
    # Transit timed 1 in RUN_SAMPLE_EVERY of its packets, and says so: one transit for
    # a packet to node 0's backend, two (node 0, node 1) for one to node 1's.
    assert bd["transit_sample_every"] == RUN_SAMPLE_EVERY
    timed = PACKETS // RUN_SAMPLE_EVERY
    transits = point["summary"]["transit_ns"]["count"]
    assert 0.9 * timed <= transits <= 2 * (timed + 2), transits


def test_delivered_rate_comes_from_the_receiver(
        watched_run: tuple[dict[str, Any], list[Replay]]) -> None:
    point, _ = watched_run
    for rep in point["repetitions"]:
        # 400 packets at 4000/s arrive over about 0.1 s; an independent bound: the
        # receiver cannot see them over a span longer than the whole repetition.
        assert 0.08 <= rep["arrival_seconds"] <= 0.5, rep["arrival_seconds"]
    assert 2000 < point["summary"]["delivered_pps"] < 6000


def test_the_paired_control_goes_to_the_pods_and_is_compared(
        watched_run: tuple[dict[str, Any], list[Replay]]) -> None:
    point, _ = watched_run
    assert len(point["control"]) == REPS
    s = point["summary"]
    assert s["control"]["latency_ns"]["count"] >= 0.9 * REPS * CONTROL
    assert s["service_minus_control_p50_ns"] == pytest.approx(
        s["latency_ns"]["p50"] - s["control"]["latency_ns"]["p50"])
    assert s["service_minus_control_cpu_ns_per_packet"] is not None
    assert point["setup"]["settle_converged"] in (True, False)
