"""Disruption events of kube-proxy's own making, end to end at small scale: churn runs
the syncs its coalescing schedule says (bench.measure.churn) and leaves the kernel as a
full sync of the churned state would; endpoint-removed with kube-proxy's conntrack
cleanup moves an established UDP flow off the removed endpoint, without it not."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.cluster.testbed import Testbed
from bench.datapaths import make_variant
from bench.datapaths.base import run_in_netns
from bench.measure.disruption_runner import WARMUP_S, DisruptionRunner
from bench.measure.scenario import parse_scenario
from bench.model.generate import GenSpec, generate
from bench.results.reader import load_result

pytestmark = pytest.mark.privileged
RATE = 2000


def scenario(datapaths: list[str], **disruption: Any) -> Any:
    doc = {"name": "disruption-churn-test", "kind": "disruption",
           "sweep": {"datapaths": datapaths, "services": [20], "endpoints": 3},
           "traffic": {"repetitions": 1},
           "disruption": {"background": ["udp-new"], "rate_pps": RATE, "before_s": 0.5,
                          "after_s": 1.0, **disruption},
           "measure": {"point_time_limit": 60}}
    return parse_scenario(doc, "<test>", json.dumps(doc))


def check_accounting(rep: dict[str, Any]) -> None:
    tl = rep["disruption"]["timeline"]
    sent, delivered = np.array(tl["sent"]), np.array(tl["delivered"])
    assert (delivered <= sent).all() and sent.sum() == rep["sent"]


@pytest.mark.parametrize("variant", ["iptables-legacy", "nftables"])
def test_churn_runs_one_sync_per_min_sync_period(tmp_path: Path, variant: str) -> None:
    # 20 changes/s for 2 s (40 changes), at most one sync per 0.5 s: the first change
    # at once, then one sync per period while changes keep coming, the last one's at
    # 2.0 s -- 5 syncs when each takes under 0.5 s (fewer only if one took longer).
    sc = scenario([variant], events=["churn"], churn_per_s=[20], churn_s=2,
                  min_sync_period_s=0.5)
    doc = load_result(DisruptionRunner(sc, tmp_path).run())
    (point,) = doc["points"]
    assert point["workload"] == "disruption-churn-20/udp-new"
    assert point["status"] == "ok", point.get("error")
    rep = point["repetitions"][0]
    check_accounting(rep)
    fig = rep["disruption"]
    print(json.dumps({k: v for k, v in fig.items() if k != "timeline"}))
    assert fig["changes"] == 40 and fig["churn_per_s"] == 20
    starts = fig["sync_start_ms"]
    assert all(b - a >= 500 - 1e-6 for a, b in zip(starts, starts[1:], strict=False)), starts
    longest = max(fig["sync_apply_s"])
    if longest < 0.4:  # syncs (render + apply) kept to their period: the schedule's count
        assert fig["syncs"] == 5, starts
    assert 2 <= fig["syncs"] <= 5 and len(fig["sync_apply_s"]) == fig["syncs"]
    assert fig["full_syncs"] == 0 and sum(fig["sync_changes"]) == 40
    assert fig["sync_cpu_s_per_s"] > 0 and fig["syncs_per_s"] > 0
    summary = point["summary"]["disruption"]
    assert summary["syncs"] == fig["syncs"] and summary["churn_per_s"] == 20


def after_end(rep: dict[str, Any], from_ms: float) -> tuple[int, int]:
    """(sent, lost) of the background packets sent from ``from_ms`` after the event's end."""
    tl = rep["disruption"]["timeline"]
    sent, delivered = np.array(tl["sent"]), np.array(tl["delivered"])
    starts = tl["t0_ns"] + np.arange(len(sent)) * tl["bin_ns"]
    late = starts >= tl["event_end_ns"] + from_ms * 1e6
    return int(sent[late].sum()), int((sent - delivered)[late].sum())


def test_endpoint_removed_conntrack_cleanup_moves_the_established_flow(tmp_path: Path) -> None:
    # udp-established: 16 flows pinned by conntrack; the endpoint most of them reach is
    # removed and its pod gone. With kube-proxy's cleanup the flows move to the live
    # endpoints; without it they keep going to the gone pod until the window ends.
    # A full sync's point first: the endpoint is chosen by this repetition's own
    # arrivals, not by what earlier points' traffic reached.
    sc = scenario(["iptables-legacy"], events=["full-sync", "endpoint-removed"],
                  background=["udp-established"], after_s=1.5)
    doc = load_result(DisruptionRunner(sc, tmp_path).run())
    points = {p["workload"]: p for p in doc["points"]
              if p["workload"] != "disruption-full-sync/udp-established"}
    assert set(points) == {"disruption-endpoint-removed/udp-established",
                           "disruption-endpoint-removed-no-cleanup/udp-established"}
    for p in points.values():  # counted from the repetition's warm-up on: no more than it sent
        rep = p["repetitions"][0]
        assert rep["disruption"]["removed_endpoint_packets_before"] <= (
            rep["sent"] + RATE * WARMUP_S * 1.2), rep["disruption"]
    for p in points.values():
        assert p["status"] == "ok", p.get("error")
        check_accounting(p["repetitions"][0])
    with_ = points["disruption-endpoint-removed/udp-established"]["repetitions"][0]
    without = points["disruption-endpoint-removed-no-cleanup/udp-established"]["repetitions"][0]
    w, wo = with_["disruption"], without["disruption"]
    print(json.dumps({name: {k: v for k, v in f.items() if k != "timeline"}
                      for name, f in (("cleanup", w), ("no-cleanup", wo))}))
    # Both removed an endpoint that flows were pinned to, and packets to it were lost.
    for f in (w, wo):
        assert f["removed_endpoint_packets_before"] > 0 and f["to_removed_packets"] > 0, f
        assert f["lost"] > 0, f
    # (The gone pod's drops count to the sender's stop, a little past the window.)
    assert w["lost"] >= w["to_removed_packets"], w
    # With cleanup: its entries deleted, nothing reaches the gone pod after the event
    # (bounded: the sync and the cleanup), and everything is delivered again.
    assert w["conntrack_cleanup"] is True and w["conntrack_deleted"] >= 1, w
    assert w["to_removed_ms"] <= w["event_ms"] + 50, w
    sent, lost = after_end(with_, 200)
    assert sent > RATE * 0.5 and lost == 0, (sent, lost)
    # Without: the entries stay (refreshed by every packet): the flows pinned there keep
    # going to the gone pod to the end of the window.
    assert wo["conntrack_cleanup"] is False and wo["conntrack_deleted"] is None, wo
    assert wo["to_removed_ms"] >= wo["event_ms"] + 1500 * 0.8, wo
    sent, lost = after_end(without, 200)
    assert lost > 0 and lost >= sent / 16, (sent, lost)


def svc_to_sep(text: str) -> set[tuple[str, str]]:
    """(service chain, endpoint chain) of every jump from a KUBE-SVC to a KUBE-SEP chain."""
    return set(re.findall(r"^-A (KUBE-SVC-\w+) .*-j (KUBE-SEP-\w+)", text, re.M))


def test_churn_leaves_node_0_as_a_full_sync_of_the_churned_state(tmp_path: Path) -> None:
    # The partial syncs really reach the kernel: after a churn, node 0's service ->
    # endpoint jumps are those a fresh full sync of the state would write.
    services, slices = generate(GenSpec(services=20, endpoints=3, nodes=2, protocol="UDP"))
    measured = services[-1]
    bed = Testbed(make_variant("iptables-legacy"), services, slices, 2,
                  pod_services={measured.key}, echo=False)
    sc = scenario(["iptables-legacy"], events=["churn"], churn_per_s=[30], churn_s=1,
                  min_sync_period_s=0.3)
    runner = DisruptionRunner(sc, tmp_path)
    with bed:
        before = svc_to_sep(run_in_netns(bed.cluster.node_ns(0),
                                         ["iptables-legacy-save", "-t", "nat"]).stdout)
        fire = runner.churn_event(bed, measured.key, 30)
        fire()
        kernel = svc_to_sep(run_in_netns(bed.cluster.node_ns(0),
                                         ["iptables-legacy-save", "-t", "nat"]).stdout)
        fresh = svc_to_sep(make_variant("iptables-legacy").render(bed.views(0),
                                                                   bed.node_context(0)))
    figures = fire.figures  # type: ignore[attr-defined]
    assert figures["changes"] == 30 and figures["syncs"] >= 2, figures
    assert bed.slices != slices and kernel != before  # the churn changed something
    assert kernel == fresh, (kernel ^ fresh)
