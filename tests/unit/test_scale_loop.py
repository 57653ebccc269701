"""The loop every run goes through, without root: what it records for a datapath this
kernel lacks, for either kind of scenario."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from bench.measure import scale_loop as loop_mod
from bench.measure.scenario import parse_scenario
from bench.measure.sync_runner import SyncRunner
from bench.results import load_result

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
