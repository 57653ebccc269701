"""The loop every run goes through, without root: what it records for a datapath this
kernel lacks, for either kind of scenario, and for a point the result file refuses."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from bench.measure import scale_loop as loop_mod
from bench.measure.scale_loop import ScaleLoop
from bench.measure.scenario import parse_scenario
from bench.measure.sync_runner import SyncRunner
from bench.results import load_result, make_repetition

LACKS = "ipvs: no IPVS generic-netlink family"


def sync_scenario() -> Any:
    doc = {"name": "sync-lacking", "kind": "sync",
           "sweep": {"datapaths": ["ipvs"], "services": [10, 100], "endpoints": 2},
           "sync": {"repetitions": 1, "changes": ["add-service", "remove-endpoint"]}}
    return parse_scenario(doc, "<test>", json.dumps(doc))


@pytest.fixture
def kernel_lacks_ipvs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_mod, "lacking",
                        lambda names: (LACKS, None) if "ipvs" in names else (None, None))


@pytest.mark.usefixtures("kernel_lacks_ipvs")
def test_a_left_out_sync_datapath_records_its_sync_points(tmp_path: Path) -> None:
    """A sync scenario's points are its sync kinds, not the (default) traffic workloads:
    a left-out datapath's failed points must pair with a VM run's measured ones."""
    sc = sync_scenario()
    out = io.StringIO()
    runner = SyncRunner(sc, tmp_path, out=out)
    doc = load_result(runner.run())
    got = sorted((p["services"], p["workload"]) for p in doc["points"])
    assert got == sorted((n, w) for n in (10, 100) for w in sc.measured)
    assert {p["workload"] for p in doc["points"]} == {"sync-full", "sync-add-service",
                                                      "sync-remove-endpoint"}
    assert all(p["status"] == "failed" and LACKS in p["error"] for p in doc["points"])
    # The same ids a measured run writes (its rate is part of the id).
    assert {p["rate_pps"] for p in doc["points"] if p["workload"] == "sync-full"} == {None}
    assert runner.progress.done == runner.progress.total == len(sc.points)


class BreachingStep:
    """Records, at the first scale, a point whose breakdown counts more drops than packets
    were lost (a harness defect the result file refuses to store), a clean one after."""

    def __init__(self) -> None:
        self.loop: ScaleLoop | None = None

    def rate_pps(self, workload: str) -> int | None:
        return 1000

    def measure_scale(self, variant: str, n: int) -> None:
        assert self.loop is not None
        rep = make_repetition(sent=100, delivered=100)
        drops = {"drops": {"SKB_DROP_REASON_NOT_SPECIFIED": 5}} if n == 1 else {}
        breakdown = make_repetition(sent=100, delivered=100, **drops)  # type: ignore[arg-type]
        point = self.loop.point(variant, n, "udp-new", repetitions=[rep], sync_seconds=0.5,
                                sync_node_seconds=[0.5])
        point["breakdown"] = breakdown
        self.loop.record(point)


def test_a_point_that_breaks_the_drops_invariant_is_failed_and_the_run_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_mod, "lacking", lambda names: (None, None))
    doc = {"name": "breach", "sweep": {"datapaths": ["iptables-legacy"], "services": [1, 2]},
           "traffic": {"workloads": ["udp-new"]}}
    step = BreachingStep()
    loop = step.loop = ScaleLoop(parse_scenario(doc, "<test>", json.dumps(doc)), tmp_path, step,
                                 out=io.StringIO())
    result = load_result(loop.run())
    assert result["status"] == "complete"
    first, second = result["points"]
    assert first["status"] == "failed" and first["services"] == 1
    assert "5 drops attributed to the datapath" in first["error"]
    # Nothing the defect may have touched is stored; what the sync measured is.
    assert first["repetitions"] == [] and "breakdown" not in first
    assert first["setup"]["sync_seconds"] == 0.5
    assert second["status"] == "ok" and second["breakdown"]["sent"] == 100
    assert loop.progress.done == 2
