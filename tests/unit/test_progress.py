"""The runner's ETA: a fixed part per scale point plus a sync that grows with services."""

from __future__ import annotations

import io

from bench.runner import Progress
from bench.scenario import load_scenario
from tests.conftest import ROOT


def progress() -> Progress:
    return Progress(load_scenario(ROOT / "scenarios/default.toml"), out=io.StringIO())


def test_a_one_service_sync_is_not_extrapolated_to_thousands() -> None:
    p = progress()
    p.record_sync("iptables-legacy", 1, 6.0)  # all fixed cost: tool start, first table
    # 6 s at 1 service must not become 6 s x 5000 = 8 hours.
    assert p._sync_estimate("iptables-legacy", 5000) == 6.0


def test_the_rate_comes_from_the_largest_recent_sync_of_the_variant() -> None:
    p = progress()
    p.record_sync("iptables-legacy", 1, 6.0)
    p.record_sync("iptables-legacy", 1000, 10.0)
    assert p._sync_estimate("iptables-legacy", 5000) == 50.0
    # A variant not seen yet: the median rate of those seen, at least nothing negative.
    assert p._sync_estimate("nftables", 1000) == 10.0


def test_the_fixed_part_is_measured_without_sync_and_one_off_work() -> None:
    p = progress()
    p.record_sync("iptables-legacy", 1000, 10.0)
    p.one_off = 30.0  # the probes' overhead, measured once per run
    p.record_scale("iptables-legacy", 1000, 100.0)
    assert p.fixed_seconds == [60.0]
    assert p.one_off == 0.0
    per_point = p._estimate("iptables-legacy", 1000)
    assert per_point == (60.0 + 10.0) / len(p.sc.measured)


def test_eta_shrinks_as_points_are_done() -> None:
    p = progress()
    p.record_sync("iptables-legacy", 1000, 10.0)
    p.record_scale("iptables-legacy", 1000, 40.0)
    before = p.eta()
    p.done += len(p.sc.measured)
    assert 0 < p.eta() < before
