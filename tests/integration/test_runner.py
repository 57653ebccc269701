"""The benchmark runner end to end: results, CSV and plots; failures, limits and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cluster.topology import run_namespaces
from bench.errors import ApplyError
from bench.measure import runner as runner_mod
from bench.measure import scale_loop as loop_mod
from bench.measure.runner import Runner
from bench.measure.scenario import parse_scenario
from bench.results.reader import load_result
from tests.conftest import ROOT

pytestmark = pytest.mark.privileged


def tiny(**measure: float) -> object:
    doc = {"name": "tiny",
           "sweep": {"datapaths": ["iptables-legacy", "nftables"], "services": [1, 20],
                     "endpoints": 2},
           "traffic": {"workloads": ["udp-new"], "rate_pps": 2000, "packets": 200,
                       "repetitions": 2, "warmup_packets": 0},
           "measure": {"settle_timeout": 5, "overhead": False, **measure}}
    return parse_scenario(doc, "<test>", json.dumps(doc))


def test_smoke_run_writes_result_csv_and_plots(tmp_path: Path) -> None:
    before = run_namespaces()
    p = subprocess.run([sys.executable, "-m", "bench", "run", str(ROOT / "scenarios/smoke.toml"),
                        "--results", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "ETA" in p.stderr  # progress is shown
    lines = p.stdout.splitlines()
    result = load_result(lines[0])  # the first line names the result, for scripts
    where = {ln.split(":", 1)[0]: Path(ln.split(":", 1)[1].split(" (")[0].strip())
             for ln in lines if ln.startswith(("result:", "csv:", "plots:", "report:"))}
    assert where["result"] == Path(lines[0])
    assert result["status"] == "complete"
    assert result["environment"]["kernel_release"]
    points = result["points"]
    assert len(points) == 4 and all(pt["status"] == "ok" for pt in points)
    for pt in points:
        s = pt["summary"]
        # Bounds a broken harness crosses: loss, a packet counted twice or not at all, a
        # unit error. On veth one service costs microseconds of latency and of CPU (the
        # CPU probe is machine-wide: other work on the machine adds to it, up to the ceiling).
        assert 0 <= s["loss"] <= 0.01, (pt["id"], s["loss"])
        for r in pt["repetitions"]:
            assert r["sent"] > 0 and abs(r["delivered"] - r["sent"]) <= 0.01 * r["sent"], r
        assert 1_000 <= s["latency_ns"]["p50"] <= 1_000_000, (pt["id"], s["latency_ns"])
        # At most every CPU busy in NET_RX for the whole window: more is a broken probe.
        ceiling = (os.cpu_count() or 1) * 1e9 / pt["rate_pps"]
        assert 200 <= s["cpu_ns_per_packet"] <= ceiling, (pt["id"], s["cpu_ns_per_packet"])
        assert pt["setup"]["sync_seconds"] > 0 and pt["setup"]["state_size"]
        assert sum(r["delivered"] for r in pt["repetitions"]) > 0
    # The probes' own cost is measured once per run, with and without them, stored with
    # every point and related to its CPU per packet.
    overhead = points[0]["probe_overhead"]
    assert overhead and overhead["none_ns_per_packet"] > 0
    for s in ("main", "breakdown"):
        lo, hi = overhead[f"{s}_ns_per_packet_range"]
        assert lo <= overhead[f"{s}_ns_per_packet"] <= hi
        assert points[0]["summary"]["probe_overhead_pct"][s] == pytest.approx(
            100 * overhead[f"{s}_ns_per_packet"] / points[0]["summary"]["cpu_ns_per_packet"])
    # And what their programs take per packet at the scenario's rate, by the kernel's own
    # statistics (tests/integration/test_probes.py proves the figure on a program of
    # known cost): tens to hundreds of ns, a few percent of the point's figure.
    window = overhead["in_window"]
    assert window["rounds"] == 5 and window["rate_pps"] == points[0]["rate_pps"]
    assert len(window["programs"]["latency"]) == 5
    for s in ("main", "breakdown"):
        added = overhead[f"programs_{s}_ns_per_packet"]
        share = points[0]["summary"]["probe_overhead_pct"][f"programs_{s}"]
        assert share == pytest.approx(100 * added / points[0]["summary"]["cpu_ns_per_packet"])
        assert 20 < added < 5_000, window["programs"]
    # The cpu probe runs in the measured repetitions' cpu passes, not in the breakdown
    # repetition (it has no CPU figure): its programs count in the main set's figure only.
    breakdowns = [pt["breakdown"] for pt in points if pt.get("breakdown")]
    assert breakdowns and all(b["cpu_ns_per_packet"] is None for b in breakdowns)
    assert overhead["programs_main_ns_per_packet"] == pytest.approx(
        window["latency_programs_ns_per_packet"] + window["reporter_programs_ns_per_packet"])
    assert overhead["programs_breakdown_ns_per_packet"] == pytest.approx(
        window["breakdown_programs_ns_per_packet"])
    # The cpu probe's own share of its windows, measured once, is taken out of every
    # repetition's cpu pass (and of every control's), per NET_RX softirq it timed.
    own = window["cpu_probe_share"]["taken_ns_per_softirq"]
    assert 20 < own < 2_000, window["cpu_probe_share"]
    for pt in points:
        for r in [*pt["repetitions"], *(pt.get("control") or [])]:
            assert r["softirq_probe_ns"] == round(own * r["net_rx_softirqs"]) > 0, r
    assert where["csv"].suffix == ".csv" and where["csv"].stat().st_size > 0
    assert where["report"].suffix == ".html" and where["report"].stat().st_size > 0
    pngs = list(where["plots"].glob("*.png"))
    assert pngs and all(f.stat().st_size > 1000 for f in pngs)
    assert run_namespaces() == before


def test_a_failed_point_is_recorded_and_the_run_goes_on(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real = loop_mod.make_variant

    def broken(variant: str):  # type: ignore[no-untyped-def]
        dp = real(variant)
        if variant == "iptables-legacy":
            def apply(rendered: str, netns: str) -> None:
                raise ApplyError("iptables-legacy-restore failed: injected fault")
            dp.apply = apply  # type: ignore[method-assign]
        return dp

    monkeypatch.setattr(loop_mod, "make_variant", broken)
    path = Runner(tiny(), tmp_path).run()  # type: ignore[arg-type]
    result = load_result(path)
    by_variant = {(pt["variant"], pt["services"]): pt for pt in result["points"]}
    assert by_variant[("iptables-legacy", 1)]["status"] == "failed"
    assert "injected fault" in by_variant[("iptables-legacy", 1)]["error"]
    assert by_variant[("nftables", 20)]["status"] == "ok"
    assert result["status"] == "complete"


def test_a_sync_beyond_the_limit_is_recorded_as_exceeded(tmp_path: Path) -> None:
    path = Runner(tiny(point_time_limit=0.001), tmp_path).run()  # type: ignore[arg-type]
    points = load_result(path)["points"]
    assert points and all(pt["status"] == "exceeded-limit" for pt in points)
    # The time reached when the tool was stopped, not the limit; per node, node 0 first.
    for pt in points:
        setup = pt["setup"]
        assert setup["sync_seconds"] > 0.001 and setup["sync_node_seconds"][0] == \
            setup["sync_seconds"], setup
    assert all("did not finish within" in pt["error"] for pt in points)


def test_sync_seconds_is_node_0s_apply_with_render_and_other_nodes_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Render slowed by RENDER_DELAY on each node, node 1's apply by NODE1_DELAY: the
    headline is node 0's apply alone (as in sync scenarios), the rest kept apart."""
    render_delay, node1_delay = 0.3, 0.8
    real = loop_mod.make_variant

    def slowed(variant: str):  # type: ignore[no-untyped-def]
        dp = real(variant)
        render, apply = dp.render, dp.apply

        def slow_render(*args, **kw):  # type: ignore[no-untyped-def]
            time.sleep(render_delay)
            return render(*args, **kw)

        def slow_apply(rendered: str, netns: str) -> None:
            if netns.endswith("-node1"):
                time.sleep(node1_delay)
            apply(rendered, netns)
        dp.render, dp.apply = slow_render, slow_apply  # type: ignore[method-assign]
        return dp

    monkeypatch.setattr(loop_mod, "make_variant", slowed)
    doc = {"name": "tiny", "sweep": {"datapaths": ["iptables-legacy"], "services": [1],
                                     "endpoints": 2},
           "traffic": {"workloads": ["udp-new"], "rate_pps": 2000, "packets": 100,
                       "repetitions": 1, "warmup_packets": 0},
           "measure": {"settle_timeout": 2, "overhead": False}}
    sc = parse_scenario(doc, "<test>", json.dumps(doc))
    (pt,) = load_result(Runner(sc, tmp_path).run())["points"]  # type: ignore[arg-type]
    setup = pt["setup"]
    node0, node1 = setup["sync_node_seconds"]
    assert setup["sync_seconds"] == node0 < node1 and node1 >= node1_delay, setup
    assert setup["sync_seconds"] < render_delay + node1_delay  # no render, no other node
    assert setup["sync_render_seconds"] >= render_delay


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"),
                                           (signal.SIGTERM, 143, "terminated")])
def test_interrupt_keeps_measured_points_and_removes_everything(
        tmp_path: Path, sig: int, code: int, word: str) -> None:
    before = run_namespaces()
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run",
                             str(ROOT / "scenarios/smoke.toml"), "--results", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    result_file = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(tmp_path.rglob("*.json"))
        if found and json.loads(found[0].read_text() or "{}").get("points"):
            result_file = found[0]
            break
        time.sleep(0.2)
    if result_file is None:
        proc.kill()
        pytest.fail(f"no point was measured: {proc.communicate()}")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert word in err and "Traceback" not in err
    result = load_result(result_file)
    assert result["status"] == "interrupted"
    assert result["points"] and all(pt["status"] == "ok" for pt in result["points"])
    assert run_namespaces() == before


def test_injected_rules_are_walked_by_every_packet_and_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--inject-rules: the rules are in every node, every packet a node gets walks past all
    of them to the chain's policy, and the result says the run was slowed on purpose."""
    walked: list[tuple[int, int]] = []  # (rules, packets at the policy) per node and scale
    exit_ = runner_mod.Testbed.__exit__

    def count_then_exit(bed: runner_mod.Testbed, *exc: object) -> None:
        for i in range(bed.cluster.node_count):
            out = subprocess.run(["ip", "netns", "exec", bed.cluster.node_ns(i),
                                  "iptables-legacy", "-t", "raw", "-L", "PREROUTING", "-vnx"],
                                 capture_output=True, text=True, check=True).stdout
            head, *rules = out.splitlines()[2:] and out.splitlines()
            policy = int(head.split("policy ACCEPT ")[1].split()[0])
            walked.append((len(rules) - 1, policy))  # minus the column header line
        exit_(bed, *exc)

    monkeypatch.setattr(runner_mod.Testbed, "__exit__", count_then_exit)
    path = Runner(tiny(), tmp_path, inject_rules=300).run()  # type: ignore[arg-type]
    result = load_result(path)
    assert result["environment"]["injected_rules"] == 300
    delivered = sum(r["delivered"] for pt in result["points"] for r in pt["repetitions"])
    assert delivered > 0
    assert walked and all(rules == 300 for rules, _ in walked), walked
    # Packets reach the nodes' PREROUTING on their way to the pods: at least all delivered.
    assert sum(policy for _, policy in walked) >= delivered, (walked, delivered)
