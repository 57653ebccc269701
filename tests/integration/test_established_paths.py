"""A udp-established point: its latency split by path, and a control that takes the
same paths as the Service.

The 16 established flows each reach the backend pod the Service drew for them at
random, on the node the traffic entered or on the other one: two paths of different
length. One tiny run (iptables-legacy, one service, ten endpoints on two nodes):
every repetition's packets are split by the node of the pod each one reached, and
the paired control sends each flow to the pod the Service's flow of the same number
reached in the repetition before it, so it takes the other node's path as often,
whatever the draw was (round-robin over the ten pods sent 6 of 16 there every time).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from bench.analysis.metrics import METRICS_BY_NAME
from bench.measure.runner import Runner
from bench.measure.scenario import parse_scenario
from bench.measure.traffic import ESTABLISHED_FLOWS
from bench.results.reader import load_result
from tests.conftest import require_feature

pytestmark = pytest.mark.privileged

# Multiples of the 16 flows: every flow sends as many packets, so a path's share of
# the packets is exactly its share of the flows.
PACKETS, CONTROL, REPS = 25 * ESTABLISHED_FLOWS, 10 * ESTABLISHED_FLOWS, 2


@pytest.fixture(scope="module", params=["iptables-legacy", "userspace"])
def point(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """iptables-legacy: conntrack keeps each flow's pod for the whole point; the userspace
    proxy's sessions expire after 250 ms idle, so its flows draw again (round-robin)
    between repetitions."""
    require_feature("bcc")
    require_feature("tracepoints")
    doc = {"name": "paths",
           "sweep": {"datapaths": [request.param], "services": [1], "endpoints": 10},
           "traffic": {"workloads": ["udp-established"], "rate_pps": 4000,
                       "packets": PACKETS, "repetitions": REPS, "warmup_packets": 100,
                       "control_packets": CONTROL},
           "measure": {"settle_timeout": 3, "overhead": False, "probes": ["latency"]}}
    sc = parse_scenario(doc, "<test>", json.dumps(doc))
    path = Runner(sc, tmp_path_factory.mktemp("paths")).run()
    (p,) = load_result(path)["points"]
    assert p["status"] == "ok", p.get("error")
    yield p


def flows_to_other_node(rep: dict[str, Any], packets: int) -> float:
    """How many of the 16 flows reached the other node, from the repetition's split."""
    entry, other = rep["latency_entry_node_hist"], rep["latency_other_node_hist"]
    n_other = other["count"] if other else 0
    assert (entry["count"] if entry else 0) + n_other == rep["delivered"] == packets
    return n_other * ESTABLISHED_FLOWS / packets


def test_every_packet_is_on_one_path_and_the_flows_keep_theirs(point: dict[str, Any]) -> None:
    ks = [flows_to_other_node(r, PACKETS) for r in point["repetitions"]]
    assert all(k == int(k) for k in ks)  # whole flows: each flow stays on its pod
    if point["variant"] != "userspace":
        assert len(set(ks)) == 1  # conntrack keeps each flow's pod across repetitions


def test_the_control_takes_the_other_node_as_often_as_the_service(
        point: dict[str, Any]) -> None:
    assert [flows_to_other_node(c, CONTROL) for c in point["control"]] == \
        [flows_to_other_node(r, PACKETS) for r in point["repetitions"]]


def test_the_summary_and_the_metrics_read_each_path(point: dict[str, Any]) -> None:
    s = point["summary"]
    ks = [flows_to_other_node(r, PACKETS) for r in point["repetitions"]]
    by_path, cby_path = s["latency_by_path_ns"], s["control"]["latency_by_path_ns"]
    share = sum(ks) / len(ks) / ESTABLISHED_FLOWS
    if 0 < share < 1:
        assert by_path["other_node"]["share"] == pytest.approx(share)
        assert cby_path["other_node"]["share"] == pytest.approx(share)
    for path in ("entry_node", "other_node"):
        if by_path[path] is None:
            continue
        diff = s["service_minus_control_p50_by_path_ns"][path]
        assert diff == pytest.approx(by_path[path]["p50"] - cby_path[path]["p50"])
        if point["variant"] == "iptables-legacy":
            # One service of iptables-legacy adds tens of ns on a path; the two paths
            # differ by one more node (about 2 us here): the same path on both sides.
            assert abs(diff) < 1000
        metric = METRICS_BY_NAME[f"p50_latency_{path}"]
        assert metric.pooled(point) == by_path[path]["p50"]
        assert len(metric.samples(point)) == REPS
