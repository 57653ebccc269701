"""Disruption end to end: a known stall measured within one bin, and proxy-down on the
userspace proxy (an outage) against ebpf-tc (none)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.cluster.testbed import Testbed
from bench.datapaths import make_variant
from bench.datapaths.base import run_in_netns
from bench.measure.disruption import BIN_NS
from bench.measure.disruption_runner import DisruptionRunner
from bench.measure.probes.latency import LatencyProbe
from bench.measure.scenario import parse_scenario
from bench.measure.traffic import Target
from bench.model.generate import GenSpec, generate
from bench.present.export import write_csv
from bench.present.plots import plot_result
from bench.results.reader import load_result

pytestmark = pytest.mark.privileged
RATE = 5000
DROP_S = 0.3


def scenario(datapaths: list[str], **disruption: Any) -> Any:
    doc = {"name": "disruption-test", "kind": "disruption",
           "sweep": {"datapaths": datapaths, "services": [10], "endpoints": 3},
           "traffic": {"repetitions": 1},
           "disruption": {"events": ["proxy-down"], "background": ["udp-new"],
                          "rate_pps": RATE, "before_s": 0.5, "after_s": 1.0, "down_s": 1.0,
                          **disruption},
           "measure": {"point_time_limit": 60}}
    return parse_scenario(doc, "<test>", json.dumps(doc))


def check_accounting(rep: dict[str, Any]) -> None:
    tl = rep["disruption"]["timeline"]
    sent, delivered = np.array(tl["sent"]), np.array(tl["delivered"])
    lost = sent - delivered
    assert (lost >= 0).all() and (delivered + lost == sent).all()
    assert sent.sum() == rep["sent"] and delivered.sum() == rep["delivered"]
    assert rep["disruption"]["lost"] + rep["disruption"]["baseline_lost"] == lost.sum()


def test_a_known_stall_is_measured_within_one_bin(tmp_path: Path) -> None:
    services, slices = generate(GenSpec(services=10, endpoints=3, nodes=2, protocol="UDP"))
    measured = services[-1]
    bed = Testbed(make_variant("iptables-legacy"), services, slices, 2,
                  pod_services={measured.key}, echo=False)
    runner = DisruptionRunner(scenario(["iptables-legacy"]), tmp_path)
    window: dict[str, int] = {}

    def drop() -> tuple[int, int, dict[str, float | None]]:
        ns = bed.cluster.node_ns(0)
        start = time.monotonic_ns()
        run_in_netns(ns, ["iptables-legacy", "-w", "-I", "FORWARD", "1", "-j", "DROP"])
        window["in"] = time.monotonic_ns()  # the DROP is in place from here on
        time.sleep(DROP_S)
        window["out"] = time.monotonic_ns()  # ... until at least here
        run_in_netns(ns, ["iptables-legacy", "-w", "-D", "FORWARD", "-j", "DROP"])
        return start, time.monotonic_ns(), {}

    with bed:
        target = Target.from_client_pod(bed.cluster, measured.cluster_ip,
                                        measured.ports[0].port)
        with LatencyProbe.for_cluster(bed.cluster) as probe:
            rep = runner.repetition(bed, target, probe, "drop", "udp-new", 3.0, fire=drop)
    fig = rep["disruption"]
    check_accounting(rep)
    known_ms = (window["out"] - window["in"]) / 1e6
    event_ms = fig["event_ms"]  # the DROP was in for at most this long
    bin_ms = BIN_NS / 1e6
    assert known_ms - bin_ms <= fig["stall_ms"] <= event_ms + bin_ms, (known_ms, event_ms, fig)
    # The packets of the stall were lost (the rule drops them), and none before it.
    assert abs(fig["lost"] - RATE * fig["stall_ms"] / 1e3) <= RATE * bin_ms / 1e3 * 2, fig
    assert fig["baseline_lost"] == 0 and fig["baseline_stall_ms"] < bin_ms, fig
    assert fig["recovery_ms"] is not None and fig["recovery_ms"] < 200, fig


def test_proxy_down_is_an_outage_for_userspace_and_none_for_ebpf_tc(tmp_path: Path) -> None:
    path = DisruptionRunner(scenario(["ebpf-tc", "userspace"]), tmp_path).run()
    doc = load_result(path)
    points = {p["variant"]: p for p in doc["points"]}
    assert {p["workload"] for p in doc["points"]} == {"disruption-proxy-down/udp-new"}
    for p in points.values():
        assert p["status"] == "ok", p.get("error")
        check_accounting(p["repetitions"][0])
    user = points["userspace"]["repetitions"][0]["disruption"]
    ebpf = points["ebpf-tc"]["repetitions"][0]["disruption"]
    # userspace: nothing reaches the service while its proxy is dead (1 s down).
    assert user["stall_ms"] >= 900 and user["lost"] >= RATE * 0.9, user
    # ebpf-tc: the kernel keeps forwarding without its agent.
    assert ebpf["lost"] == 0 and ebpf["stall_ms"] < 50, ebpf
    assert points["ebpf-tc"]["summary"]["disruption"]["lost"] == 0
    # The result exports and plots.
    csv_path = tmp_path / "out.csv"
    write_csv(doc, csv_path)
    assert "disruption.stall_ms" in csv_path.read_text()
    files = plot_result(doc, tmp_path / "plots", formats=("png",))
    assert any("timeline" in f.name for f in files), files
