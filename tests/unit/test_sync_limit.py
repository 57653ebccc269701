"""The per-point time limit stops a sync, whatever it is made of: an IPVS apply (several
steps, netlink from our own thread), the netlink programming itself, and the nodes of
one full sync; the runner records the point as exceeded-limit with the time reached.

No root and no real waiting: the applies are fakes that cost time on a fake clock, and
honour a timeout as the real tools do (stopped there, ApplyTimeout).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import results as R
from bench.cluster import testbed as testbed_mod
from bench.cluster.testbed import Testbed
from bench.datapaths import NodeContext, _ipvs_netlink, make_variant
from bench.datapaths import ipvs as ipvs_mod
from bench.datapaths import kube_proxy as kube_proxy_mod
from bench.datapaths.base import Datapath
from bench.errors import ApplyTimeout
from bench.measure.runner import Runner
from bench.measure.scenario import parse_scenario
from bench.model.generate import GenSpec, generate
from bench.model.objects import service_port_views

LIMIT = 1.0


@dataclass
class Clock:
    now: float = 0.0

    def monotonic(self) -> float:
        return self.now

    def spend(self, cost: float, timeout: float | None, what: str) -> None:
        """``cost`` seconds of work, stopped at ``timeout`` as run_in_netns stops a tool."""
        if timeout is not None and cost > timeout:
            self.now += timeout
            raise ApplyTimeout(f"{what} did not finish within {timeout:g} s", timeout)
        self.now += cost


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    fake_time = SimpleNamespace(monotonic=c.monotonic, monotonic_ns=lambda: int(c.now * 1e9))
    for mod in (ipvs_mod, _ipvs_netlink, testbed_mod):
        monkeypatch.setattr(mod, "time", fake_time, raising=False)
    return c


def test_an_ipvs_apply_stops_at_its_limit_although_no_step_reaches_it(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step of an IPVS apply (sysctl, chains, netlink, ipset, iptables-restore) takes
    less than the limit; together they take more: the apply must stop at the limit."""
    costs = {"sysctl": 0.01, "iptables-legacy": 0.01, "ipset": 0.2,
             "iptables-legacy-restore": 0.3}

    def tool(netns: str, argv: list[str], stdin: str | None = None,
             timeout: float | None = None, check: bool = True) -> Any:
        clock.spend(costs[argv[0]], timeout, argv[0])
        return subprocess.CompletedProcess(argv, 1 if "-C" in argv else 0, "", "")

    def netlink(netns: str, plan: dict[str, Any]) -> dict[str, int]:
        clock.spend(0.45, plan["timeout"], "IPVS programming")
        return {}

    monkeypatch.setattr(ipvs_mod, "run_in_netns", tool)
    monkeypatch.setattr(kube_proxy_mod, "run_in_netns", tool)  # IptablesTools
    monkeypatch.setattr(ipvs_mod, "_netlink", netlink)
    monkeypatch.setattr(ipvs_mod, "_ensure_module", lambda name: None)
    dp = make_variant("ipvs")
    dp.apply_timeout = LIMIT
    services, slices = generate(GenSpec(services=5, endpoints=2, nodes=1, protocol="UDP"))
    ctx = NodeContext(node_name="node-0", node_ips=("192.168.0.2",),
                      cluster_cidr="10.0.0.0/8")
    text = dp.render(service_port_views(services, slices, "node-0"), ctx)
    with pytest.raises(ApplyTimeout, match=f"did not finish within {LIMIT:g} s"):
        dp.apply(text, "kpbtest-node0")
    assert clock.now <= LIMIT + 1e-9, "a step ran past the apply's limit"


class FakeIpvs:
    """pyroute2's IPVS and IPRoute as _ipvs_netlink uses them: every request costs time."""

    def __init__(self, clock: Clock, **kw: Any) -> None:
        self.clock = clock

    def __enter__(self) -> FakeIpvs:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def service(self, op: str, **kw: Any) -> list[Any]:
        self.clock.now += 0.001
        return []

    def dest(self, op: str, **kw: Any) -> list[Any]:
        self.clock.now += 0.001
        return []

    def link_lookup(self, **kw: Any) -> list[int]:
        return [1]

    def get_addr(self, **kw: Any) -> list[Any]:
        return []

    def addr(self, op: str, **kw: Any) -> None:
        self.clock.now += 0.1  # binding one service address


def test_netlink_programming_checks_its_limit_while_binding_addresses(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ipvs_netlink, "IPVS", lambda **kw: FakeIpvs(clock))
    monkeypatch.setattr(_ipvs_netlink, "IPRoute", lambda **kw: FakeIpvs(clock))
    addresses = [f"172.30.0.{i}" for i in range(1, 41)]  # 4 s of binding
    plan = {"device": "kube-ipvs0", "addresses": addresses, "timeout": LIMIT,
            "services": [{"protocol": 17, "addr": a, "port": 80, "sched": "rr", "flags": 0,
                          "timeout": 0, "dests": [["10.1.1.1", 8080, 1]]}
                         for a in addresses]}
    with pytest.raises(TimeoutError, match="did not finish"):
        _ipvs_netlink.sync(plan)
    assert clock.now <= LIMIT + 0.1 + 1e-9  # at most the request under way when it passed


class SlowDatapath(Datapath):
    """Each node's apply costs NODE_COST on the fake clock, stopped at apply_timeout."""

    name = "iptables-legacy"  # recorded as this variant; nothing is programmed
    NODE_COST = 0.7

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def render(self, ports: Any, ctx: NodeContext) -> str:
        return "rules\n"

    def apply(self, rendered: str, netns: str) -> None:
        self.clock.spend(self.NODE_COST, self.apply_timeout, f"restore in {netns}")


def test_the_limit_is_the_whole_sync_s_and_the_point_records_the_time_reached(
        clock: Clock, tmp_path: Path) -> None:
    """Two nodes at 0.7 s each: each apply fits the 1 s limit, the sync does not. The
    point is exceeded-limit with the time each node reached, the second stopped."""
    doc = {"name": "limit", "sweep": {"datapaths": ["iptables-legacy"], "services": [3],
                                      "nodes": 2},
           "traffic": {"workloads": ["udp-new", "udp-established"]},
           "measure": {"point_time_limit": LIMIT}}
    sc = parse_scenario(doc, "<test>", json.dumps(doc))
    runner = Runner(sc, tmp_path)
    runner.loop.writer = R.ResultWriter(tmp_path / "r.json", scenario=sc.document(),
                                        environment=R.capture_environment())
    dp = SlowDatapath(clock)
    dp.apply_timeout = LIMIT  # as the loop sets it
    services, slices = generate(GenSpec(services=3, endpoints=1, nodes=2, protocol="UDP"))
    bed = Testbed(dp, services, slices, 2, pod_services=set(), echo=False,
                  sync_on_enter=False)  # never entered: nothing is built
    assert runner._program(bed, "iptables-legacy", 3) is None
    points = runner.loop.writer.document["points"]
    assert [p["workload"] for p in points] == ["udp-new", "udp-established"]
    for p in points:
        assert p["status"] == "exceeded-limit" and "within" in p["error"]
        assert p["setup"]["sync_node_seconds"] == pytest.approx([0.7, 0.3])
        assert p["setup"]["sync_seconds"] == pytest.approx(0.7)
    assert clock.now == pytest.approx(LIMIT)
