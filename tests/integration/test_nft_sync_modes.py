"""nftables sync modes on a real kernel: a chunked full sync (nftables-chunked) leaves
the table one transaction leaves, cold and on a resync; a chunked resync never empties
what is live between its transactions; sync results carry the list cost and the
longest transaction apart from apply; the disruption kind's cold start."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.cluster.topology import new_prefix, remove_run
from bench.datapaths import make_variant
from bench.datapaths.base import NodeContext, run_in_netns
from bench.datapaths.nftables import TABLE, split_transactions
from bench.measure.disruption_runner import DisruptionRunner
from bench.measure.scenario import parse_scenario
from bench.measure.sync_runner import SyncRunner
from bench.model.generate import GenSpec, generate
from bench.model.objects import EndpointSlice, Service, ServicePortView, service_port_views
from bench.present.export import write_csv
from bench.present.summary import tables
from bench.present.tables import render
from bench.results.reader import load_result

pytestmark = pytest.mark.privileged
CTX = NodeContext("node-0", ("192.168.0.2",), "10.0.0.0/8", service_cidrs=("172.30.0.0/16",))
SERVICES = 300  # several transactions of 1000 operations at 3 endpoints each


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    from pyroute2 import netns as nsmod

    prefix = new_prefix()
    pair = (f"{prefix}-one", f"{prefix}-chunked")
    try:
        for ns in pair:
            nsmod.create(ns)
        yield pair
    finally:
        remove_run(prefix)


def table(netns: str) -> dict[str, Any]:
    """The kube-proxy table as a comparable value: every chain with its rules in order,
    every set and map with its elements as a set (handles and listing order dropped)."""
    doc = json.loads(run_in_netns(netns, ["nft", "--json", "list", "table", "ip", TABLE]).stdout)
    chains: dict[str, list[str]] = {}
    objects: dict[str, Any] = {}
    for item in doc["nftables"]:
        (kind, body), = item.items()
        body = {k: v for k, v in body.items() if k != "handle"}
        if kind == "rule":
            chains.setdefault(body["chain"], []).append(json.dumps(body, sort_keys=True))
        elif kind == "chain":
            chains.setdefault(body["name"], [])
            objects[f"chain {body['name']}"] = json.dumps(body, sort_keys=True)
        elif kind in ("set", "map"):
            elem = body.pop("elem", [])
            objects[f"{kind} {body['name']}"] = (
                json.dumps(body, sort_keys=True),
                sorted(json.dumps(e, sort_keys=True) for e in elem))
        elif kind == "table":
            objects["table"] = json.dumps(body, sort_keys=True)
    return {"chains": chains, "objects": objects}


def views(services: list[Service], slices: list[EndpointSlice]) -> list[ServicePortView]:
    return service_port_views(services, slices, CTX.node_name)


def changed_state(services: list[Service],
                  slices: list[EndpointSlice]) -> tuple[list[Service], list[EndpointSlice]]:
    """Ten services gone, one service's endpoints cut to one, another's first endpoint
    not ready: elements deleted and changed, chains rewritten."""
    gone = {s.key for s in services[:10]}
    kept = [s for s in services if s.key not in gone]
    out = []
    for sl in slices:
        if sl.service_key in gone:
            continue
        if sl.service_key == kept[0].key:
            sl = replace(sl, endpoints=sl.endpoints[:1])
        elif sl.service_key == kept[1].key:
            first = replace(sl.endpoints[0], ready=False, serving=False)
            sl = replace(sl, endpoints=(first, *sl.endpoints[1:]))
        out.append(sl)
    return kept, out


def test_chunked_full_sync_leaves_the_one_transaction_table(
        namespaces: tuple[str, str]) -> None:
    one_ns, chunked_ns = namespaces
    services, slices = generate(GenSpec(services=SERVICES, endpoints=3, protocol="UDP"))
    one, chunked = make_variant("nftables"), make_variant("nftables-chunked")
    # Cold start: both tables created from nothing.
    cold = chunked.render(views(services, slices), CTX)
    assert len(split_transactions(cold)) > 3
    one.apply(one.render(views(services, slices), CTX), one_ns)
    chunked.apply(cold, chunked_ns)
    assert len(chunked.transaction_seconds()) == len(split_transactions(cold))
    assert table(one_ns) == table(chunked_ns)
    # Resync to another state: the table present.
    services, slices = changed_state(services, slices)
    resync = chunked.render(views(services, slices), CTX)
    assert "flush map" not in resync and "delete element" in resync
    one.apply(one.render(views(services, slices), CTX), one_ns)
    chunked.apply(resync, chunked_ns)
    assert table(one_ns) == table(chunked_ns)
    # And back (elements added again, chains of returning services refilled).
    services, slices = generate(GenSpec(services=SERVICES, endpoints=3, protocol="UDP"))
    one.apply(one.render(views(services, slices), CTX), one_ns)
    chunked.apply(chunked.render(views(services, slices), CTX), chunked_ns)
    assert table(one_ns) == table(chunked_ns)


def test_a_chunked_resync_never_empties_what_is_live(namespaces: tuple[str, str]) -> None:
    """Between any two transactions of a chunked resync, every service of the state
    before it is still dispatched (its element in service-ips) to a chain with rules,
    whose endpoint chains have rules too: unchanged services keep working."""
    _, ns = namespaces
    services, slices = generate(GenSpec(services=SERVICES, endpoints=3, protocol="UDP"))
    dp = make_variant("nftables-chunked")
    dp.apply(dp.render(views(services, slices), CTX), ns)
    before = table(ns)
    live = before["objects"]["map service-ips"][1]
    assert len(live) == SERVICES
    resync = split_transactions(dp.render(views(services, slices), CTX))
    assert len(resync) > 3
    for i, tx in enumerate(resync):
        run_in_netns(ns, ["nft", "-f", "-"], stdin=tx)
        now = table(ns)
        assert now["objects"]["map service-ips"][1] == live, f"after transaction {i + 1}"
        for chain, rules in before["chains"].items():
            # The same state: a chain holds its rules before, after and between.
            assert now["chains"][chain] == rules, f"{chain} after transaction {i + 1}"
    assert table(ns) == before


def sync_scenario(datapaths: list[str]) -> Any:
    doc = {"name": "sync-modes-test", "kind": "sync",
           "sweep": {"datapaths": datapaths, "services": [100], "endpoints": 3},
           "sync": {"repetitions": 1, "changes": ["add-endpoint"]},
           "measure": {"point_time_limit": 60}}
    return parse_scenario(doc, "<test>", json.dumps(doc))


def test_sync_results_carry_list_and_longest_transaction_apart(tmp_path: Path) -> None:
    path = SyncRunner(sync_scenario(["nftables", "nftables-chunked", "iptables-legacy"]),
                      tmp_path).run()
    doc = load_result(path)
    by = {(p["variant"], p["workload"]): p for p in doc["points"]}
    for variant in ("nftables", "nftables-chunked"):
        full, change = by[(variant, "sync-full")], by[(variant, "sync-add-endpoint")]
        assert full["status"] == "ok" and change["status"] == "ok"
        assert full["setup"]["sync_seconds"] > 0  # the cold start
        sync = full["repetitions"][0]["sync"]
        assert sync["list"] > 0 and sync["apply"] > 0 and sync["transaction_max"] > 0
        assert sync["transaction_max"] <= sync["apply"]
        assert change["repetitions"][0]["sync"]["list"] > 0
    # 100 services x 3 endpoints: several transactions when chunked, so the longest is
    # a part of the whole.
    chunked = by[("nftables-chunked", "sync-full")]["repetitions"][0]["sync"]
    assert chunked["transaction_max"] < chunked["apply"]
    # A datapath whose agent reads nothing back has no list figure.
    assert "list" not in by[("iptables-legacy", "sync-full")]["repetitions"][0]["sync"]
    csv_path = tmp_path / "out.csv"
    write_csv(doc, csv_path)
    text = csv_path.read_text()
    assert "sync.list" in text and "sync.transaction_max" in text
    # kpbench show: the sync figures apart, the cold start beside the resync.
    shown = render(tables(doc)[-1], "table")
    assert shown.splitlines()[0].split()[:4] == ["variant", "workload", "services", "cold"]
    assert "longest tx" in shown and "list" in shown


def test_cold_start_disruption_keeps_the_pod_traffic_through_node_0(tmp_path: Path) -> None:
    doc = {"name": "cold-start-test", "kind": "disruption",
           "sweep": {"datapaths": ["nftables-chunked"], "services": [100], "endpoints": 3},
           "traffic": {"repetitions": 2},
           "disruption": {"events": ["cold-start", "full-sync"], "background": ["udp-new"],
                          "rate_pps": 2000, "before_s": 0.5, "after_s": 0.5},
           "measure": {"point_time_limit": 60}}
    sc = parse_scenario(doc, "<test>", json.dumps(doc))
    result = load_result(DisruptionRunner(sc, tmp_path).run())
    by = {p["workload"]: p for p in result["points"]}
    cold = by["disruption-cold-start/udp-new"]
    assert cold["status"] == "ok", cold.get("error")
    assert len(cold["repetitions"]) == 2  # the node emptied again for the second
    for rep in cold["repetitions"]:
        assert rep["sync"]["apply"] > 0 and 0 < rep["sync"]["transaction_max"] < rep[
            "sync"]["apply"]
        # The pod traffic does not need node 0's Service rules: nothing lost.
        assert rep["disruption"]["lost"] == 0, rep["disruption"]
    assert by["disruption-full-sync/udp-new"]["status"] == "ok"


def test_the_syscall_probe_watches_more_tools_than_its_map_holds() -> None:
    """A chunked sync runs one nft per transaction, hundreds of them: tools that have
    exited make room for the next (the probe's map holds 64 threads)."""
    import subprocess

    from bench.measure.probes.syscalls import SyscallProbe

    probe = SyscallProbe()
    probe.attach()
    try:
        probe.start()
        for _ in range(100):
            child = subprocess.Popen(["true"])
            probe.watch(child.pid)
            child.wait()
    finally:
        probe.detach()
