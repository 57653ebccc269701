"""Rule-sync latency end to end: a small sync scenario, time to effect proven by a
delayed apply, and a half-applied sync repaired by the next one."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from bench.cluster.netclient import connect_many
from bench.cluster.testbed import Testbed
from bench.cluster.topology import new_prefix, remove_run
from bench.datapaths import make_variant
from bench.datapaths.base import run_in_netns
from bench.errors import ApplyError
from bench.measure import scale_loop as loop_mod
from bench.measure.scenario import parse_scenario
from bench.measure.sync_runner import SyncRunner
from bench.results.reader import load_result
from tests.helpers import semantics as S

pytestmark = pytest.mark.privileged
DELAY = 1.0


def scenario(datapaths: list[str], **measure: float) -> object:
    doc = {"name": "sync-test", "kind": "sync",
           "sweep": {"datapaths": datapaths, "services": [50], "endpoints": 3},
           "sync": {"repetitions": 2, "changes": ["add-service", "remove-endpoint",
                                                   "endpoint-not-ready", "add-endpoint",
                                                   "remove-service"]},
           "measure": {"point_time_limit": 60, **measure}}
    return parse_scenario(doc, "<test>", json.dumps(doc))


def one_change() -> object:
    """nftables, one add-endpoint change, one repetition: for the tests that bend an apply."""
    sc = scenario(["nftables"])
    return type(sc)(**{**sc.__dict__, "changes": ("add-endpoint",), "sync_repetitions": 1})  # type: ignore[attr-defined]


def test_sync_scenario_measures_full_partial_kernel_and_effect(tmp_path: Path) -> None:
    path = SyncRunner(scenario(["iptables-legacy", "nftables"]), tmp_path).run()  # type: ignore[arg-type]
    points = load_result(path)["points"]
    assert {p["workload"] for p in points} == {
        "sync-full", "sync-add-service", "sync-remove-endpoint", "sync-endpoint-not-ready",
        "sync-add-endpoint", "sync-remove-service"}
    for p in points:
        assert p["status"] == "ok", p
        assert p["setup"]["sync_seconds"] > 0 and p["setup"]["state_size"]
        for rep in p["repetitions"]:
            sync = rep["sync"]
            assert sync["render"] > 0 and sync["apply"] > 0
            # The tool's time in the kernel is part of its apply time.
            assert 0 < sync["commit"] <= sync["kernel"] <= sync["apply"]
            if p["workload"] != "sync-full":
                assert sync["effect"] is not None, p["id"]
                if p["workload"] in ("sync-add-service", "sync-add-endpoint"):
                    assert sync["effect"] > 0  # the first packet after the change
        assert p["summary"]["sync"]["apply"] > 0 and "total" not in p["summary"]["sync"]
        # One meaning in both runners: node 0's apply of the first full sync, render apart.
        setup = p["setup"]
        assert setup["sync_node_seconds"] == [setup["sync_seconds"]]
        assert setup["sync_render_seconds"] > 0


def test_time_to_effect_is_measured_by_traffic(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The apply returns at once but the rules land DELAY seconds later: a time to effect
    # inferred from the apply would be ~0; the traffic must see the delay.
    real = loop_mod.make_variant

    def delayed(variant: str):  # type: ignore[no-untyped-def]
        dp = real(variant)
        apply = dp.apply_partial

        def late(rendered: str, netns: str) -> None:
            if late.threads:  # only the measured change is late; the revert is not
                late.threads[0].join()
                apply(rendered, netns)
                return
            t = threading.Thread(target=lambda: (time.sleep(DELAY), apply(rendered, netns)))
            t.start()
            late.threads.append(t)  # type: ignore[attr-defined]
        late.threads = []  # type: ignore[attr-defined]
        dp.apply_partial = late  # type: ignore[method-assign]
        return dp

    monkeypatch.setattr(loop_mod, "make_variant", delayed)
    sc = one_change()
    path = SyncRunner(sc, tmp_path).run()  # type: ignore[arg-type]
    (point,) = [p for p in load_result(path)["points"] if p["workload"] == "sync-add-endpoint"]
    (rep,) = point["repetitions"]
    assert rep["sync"]["apply"] < DELAY / 2
    assert DELAY <= rep["sync"]["effect"] < DELAY + 1.0


_FORKS: list[int] = []
os.register_at_fork(before=lambda: _FORKS.append(1))


def test_nothing_forks_the_harness_between_a_change_s_preparation_and_its_apply(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork() of the harness leaves every page of it copy-on-write: the timed apply of
    an in-process datapath (ebpf-tc: map writes from this process) then takes a fault on
    each page it writes. The change's traffic (its target's addresses, tcpreplay) used to
    fork right before the apply: ~140 faults, up to half of a one-change figure."""
    real = loop_mod.make_variant
    seen: list[int] = []

    def counting(variant: str):  # type: ignore[no-untyped-def]
        dp = real(variant)
        apply, apply_partial = dp.apply, dp.apply_partial

        def full(rendered: str, netns: str) -> None:
            apply(rendered, netns)
            _FORKS.clear()  # from the end of the last full sync ...

        def partial(rendered: str, netns: str) -> None:
            if not seen:
                seen.append(len(_FORKS))  # ... to the start of the change's apply
            apply_partial(rendered, netns)

        dp.apply, dp.apply_partial = full, partial  # type: ignore[method-assign]
        return dp

    monkeypatch.setattr(loop_mod, "make_variant", counting)
    path = SyncRunner(one_change(), tmp_path).run()  # type: ignore[arg-type]
    (point,) = [p for p in load_result(path)["points"] if p["workload"] == "sync-add-endpoint"]
    assert point["status"] == "ok" and point["repetitions"][0]["sync"]["effect"] is not None
    assert seen == [0], f"{seen[0]} fork(s) of the harness right before the timed apply"


def test_ctrl_c_during_a_change_stops_its_traffic_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The change's traffic is sized for twice the full sync (here 20 s of it): Ctrl-C
    during the change must stop it, not wait for it to run out."""
    real = loop_mod.make_variant
    replays: list[threading.Thread] = []
    raised: list[float] = []

    def slow_full_then_interrupt(variant: str):  # type: ignore[no-untyped-def]
        dp = real(variant)
        apply = dp.apply

        def slow(rendered: str, netns: str) -> None:
            time.sleep(10)  # the full sync the change's traffic window is sized on
            apply(rendered, netns)

        def interrupted(rendered: str, netns: str) -> None:
            replays.extend(t for t in threading.enumerate() if t.name != "MainThread")
            time.sleep(1)  # the traffic is running
            raised.append(time.monotonic())
            raise KeyboardInterrupt

        dp.apply, dp.apply_partial = slow, interrupted  # type: ignore[method-assign]
        return dp

    monkeypatch.setattr(loop_mod, "make_variant", slow_full_then_interrupt)
    sc = one_change()
    runner = SyncRunner(sc, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    # The clean-up (namespaces, probes) takes seconds; the traffic alone would take 20.
    assert time.monotonic() - raised[0] < 12, "the run waited for the change's traffic"
    assert replays, "no traffic was running during the change"
    assert not any(t.is_alive() for t in replays)
    doc = load_result(runner.loop.writer.path)  # type: ignore[union-attr]
    assert doc["status"] == "interrupted"


def test_a_change_s_traffic_ends_once_the_change_shows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The traffic that watches a change is sized for twice the full sync (20 s here);
    it ends once the change has shown, so a fast partial sync takes about a second."""
    real = loop_mod.make_variant
    calls: list[tuple[str, float]] = []  # (which, when it returned)

    def slow_full(variant: str):  # type: ignore[no-untyped-def]
        dp = real(variant)
        apply, partial = dp.apply, dp.apply_partial

        def slow(rendered: str, netns: str) -> None:
            time.sleep(10)  # the full sync the change's traffic window is sized on
            apply(rendered, netns)

        def timed(rendered: str, netns: str) -> None:
            calls.append(("start", time.monotonic()))
            partial(rendered, netns)
            calls.append(("end", time.monotonic()))

        dp.apply, dp.apply_partial = slow, timed  # type: ignore[method-assign]
        return dp

    monkeypatch.setattr(loop_mod, "make_variant", slow_full)
    sc = one_change()
    path = SyncRunner(sc, tmp_path).run()  # type: ignore[arg-type]
    (point,) = [p for p in load_result(path)["points"] if p["workload"] == "sync-add-endpoint"]
    assert point["status"] == "ok" and point["repetitions"][0]["sync"]["effect"] is not None
    # The measured change, then the change back (no traffic): the gap between them is
    # the watching traffic's tail, not its 20 s window.
    (_, measured_end), (_, revert_start) = calls[1], calls[2]
    assert revert_start - measured_end < 8, revert_start - measured_end


def _save(netns: str, variant: str) -> list[str]:
    if variant == "nftables":
        text = run_in_netns(netns, ["nft", "list", "ruleset"]).stdout
    else:
        text = run_in_netns(netns, [f"{variant}-save"]).stdout
    # Counters and comments of the save format differ between two equal rulesets.
    return sorted(re.sub(r"\[\d+:\d+\]", "", ln) for ln in text.splitlines()
                  if ln and not ln.startswith("#"))


@pytest.mark.parametrize("variant", ["iptables-legacy", "iptables-nft", "nftables"])
def test_a_half_applied_sync_is_repaired_by_the_next(variant: str) -> None:
    services, slices = S.semantics_cluster()
    with Testbed(make_variant(variant), services, slices) as bed:
        dp, ns = bed.datapath, bed.cluster.node_ns(0)
        good = dp.render(bed.views(0), bed.node_context(0))
        # Break the last table of the transaction: for iptables-restore the filter
        # table before it is already committed (half applied); nft rejects it all.
        bad_rule = ("-A KUBE-SERVICES -m no-such-match -j ACCEPT\nCOMMIT\n"
                    if variant.startswith("iptables") else "add rule ip kube-proxy nosuch drop\n")
        broken = good[: good.rstrip().rfind("COMMIT")] + bad_rule if "COMMIT" in good \
            else good + bad_rule
        with pytest.raises(ApplyError) as exc:
            dp.apply(broken, ns)
        assert variant.split("-")[0] in str(exc.value) or "nft" in str(exc.value)
        bed.sync()  # the next sync repairs
        ok = connect_many(bed.cluster.client_pod_ns, "TCP", "172.30.0.10", 80, count=20)
        assert all(a.ok for a in ok)
        # The repaired state equals a clean apply of the same rendering.
        prefix = new_prefix()
        scratch = f"{prefix}-check"
        from pyroute2 import netns as nsmod

        nsmod.create(scratch)
        try:
            fresh = make_variant(variant)
            fresh.apply(fresh.render(bed.views(0), bed.node_context(0)), scratch)
            assert _save(ns, variant) == _save(scratch, variant)
        finally:
            remove_run(prefix)


def test_a_repetition_past_the_limit_is_exceeded_limit_and_the_run_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first full sync fits; the first measured re-sync does not (as nftables at
    10,000 services here): that point keeps what it measured and says exceeded-limit,
    the other changes are still measured."""
    from bench.errors import ApplyTimeout

    real = SyncRunner._sync
    calls = []

    def sync(self: SyncRunner, *args: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) == 2:  # the first repetition of sync-full
            raise ApplyTimeout("nft in node0 did not finish within 60 s", 60.0)
        return real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(SyncRunner, "_sync", sync)
    path = SyncRunner(scenario(["nftables"]), tmp_path).run()  # type: ignore[arg-type]
    doc = load_result(path)
    assert doc["status"] == "complete"
    by = {p["workload"]: p for p in doc["points"]}
    full = by.pop("sync-full")
    assert full["status"] == "exceeded-limit" and "did not finish" in full["error"]
    assert full["repetitions"] == []
    assert full["setup"]["sync_seconds"] > 0  # the first full sync was measured
    assert len(by) == 5 and all(p["status"] == "ok" for p in by.values()), by


@pytest.mark.parametrize("variant", ["iptables-legacy", "nftables"])
def test_a_partial_sync_leaves_what_a_fresh_full_sync_of_the_new_state_leaves(
        variant: str) -> None:
    """Partial renders take unchanged services from a cache: after each change, the
    node's rules must equal a fresh full sync of the new state in a clean namespace."""
    from dataclasses import replace

    from bench.measure.sync_runner import State, _make_change
    from bench.model.generate import GenSpec, generate
    from bench.model.objects import service_port_views

    services, slices = generate(GenSpec(services=21, endpoints=3, protocol="UDP"))
    spare = services[-1]
    base = State(services[:-1], [s for s in slices if s.service_name != spare.name],
                 [s for s in slices if s.service_name == spare.name])
    measured = base.services[7]
    with Testbed(make_variant(variant), base.services, base.slices, nodes=1,
                 echo=False) as bed:
        dp, ns, ctx = bed.datapath, bed.cluster.node_ns(0), bed.node_context(0)
        prefix = new_prefix()
        from pyroute2 import netns as nsmod

        try:
            for kind in ("add-service", "remove-service", "add-endpoint", "remove-endpoint",
                         "endpoint-not-ready"):
                change = _make_change(kind, base, measured, spare)
                for state, changed in ((change, change.changed),
                                       (replace(change, services=base.services,
                                                slices=base.slices), change.changed)):
                    views = service_port_views(state.services, state.slices, ctx.node_name)
                    dp.apply_partial(dp.render_partial(views, ctx, changed), ns)
                    # nftables, as kube-proxy, deletes a flushed chain one sync later.
                    dp.apply_partial(dp.render_partial(views, ctx, set()), ns)
                    scratch = f"{prefix}-{kind[:8]}{len(changed)}"
                    nsmod.create(scratch)
                    fresh = make_variant(variant)
                    fresh.apply(fresh.render(views, ctx), scratch)
                    assert _save(ns, variant) == _save(scratch, variant), (kind, state.changed)
                    nsmod.remove(scratch)
        finally:
            remove_run(prefix)
