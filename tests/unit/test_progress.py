"""The runner's ETA: a fixed part per scale point plus a sync that grows with services,
from this run's own measurements only; unknown, or a lower bound, until they exist."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from bench.measure.progress import Progress
from bench.measure.scenario import load_scenario
from tests.conftest import ROOT


def progress(**kw: object) -> Progress:
    sc = load_scenario(ROOT / "scenarios/default.toml")
    return Progress(replace(sc, **kw), out=io.StringIO())  # type: ignore[arg-type]


def test_a_one_service_sync_is_not_extrapolated_to_thousands() -> None:
    p = progress()
    p.record_sync("iptables-legacy", 1, 6.0)  # all fixed cost: tool start, first table
    # 6 s at 1 service must not become 6 s x 5000 = 8 hours; nor is 6 s a known figure.
    assert p._sync_estimate("iptables-legacy", 5000) == (6.0, False)
    assert p._sync_estimate("iptables-legacy", 1) == (6.0, True)


def test_the_rate_comes_from_the_largest_recent_sync_of_the_variant() -> None:
    p = progress()
    p.record_sync("iptables-legacy", 1, 6.0)
    p.record_sync("iptables-legacy", 1000, 10.0)
    assert p._sync_estimate("iptables-legacy", 5000) == (50.0, True)
    # A variant not seen yet: the median rate of those seen.
    assert p._sync_estimate("nftables", 1000) == (10.0, True)


def test_measured_growth_beyond_linear_is_extrapolated_and_capped_by_the_time_limit() -> None:
    p = progress(point_time_limit=10_000.0)
    # nftables here: 1.41 s at 1000, 275 s at 10,000 (about n**2.3).
    p.record_sync("nftables", 100, 0.1)
    p.record_sync("nftables", 1000, 1.41)
    seconds, known = p._sync_estimate("nftables", 10_000)
    assert known and seconds == pytest.approx(1.41 * 10 ** (1 + 0.149), rel=0.05)  # n**1.149
    p.record_sync("nftables", 5000, 100.0)
    seconds, _ = p._sync_estimate("nftables", 10_000)
    assert seconds > 2 * 100.0  # faster than linear, as measured between 1000 and 5000
    # A sync past point_time_limit is stopped there: it never costs more than that.
    assert progress(point_time_limit=600.0).sc.point_time_limit == 600.0
    q = progress(point_time_limit=600.0)
    q.record_sync("nftables", 1000, 1.41)
    q.record_sync("nftables", 5000, 100.0)
    assert q._sync_estimate("nftables", 10_000) == (600.0, True)


def test_the_fixed_part_is_measured_without_sync_and_one_off_work() -> None:
    p = progress()
    p.record_sync("iptables-legacy", 1000, 10.0)
    p.one_off = 30.0  # the probes' overhead, measured once per run
    p.record_scale("iptables-legacy", 1000, 100.0)
    assert p.fixed_seconds == [60.0]
    assert p.one_off == 0.0
    per_point, known = p._estimate("iptables-legacy", 1000)
    assert known and per_point == (60.0 + 10.0) / len(p.sc.measured)


def test_eta_is_unknown_until_the_first_point_then_a_lower_bound_until_a_sync_at_scale() -> None:
    p = progress()
    assert str(p.eta()) == "ETA unknown until the first point is measured"
    p.record_sync("iptables-legacy", 1, 0.5)
    p.record_scale("iptables-legacy", 1, 40.0)
    p.done += len(p.sc.measured)
    eta = p.eta()
    assert eta.lower_bound and str(eta).startswith("ETA > ")
    assert "no sync at 100+ services measured yet" in str(eta)
    p.record_sync("iptables-legacy", 1000, 10.0)
    p.record_scale("iptables-legacy", 1000, 50.0)
    p.done += len(p.sc.measured)
    eta = p.eta()
    assert not eta.lower_bound and str(eta).startswith("ETA ~")
    p.done = p.total
    assert eta.seconds and eta.seconds > 0 and p.eta().seconds == 0.0


def test_eta_shrinks_as_points_are_done() -> None:
    p = progress()
    p.record_sync("iptables-legacy", 1000, 10.0)
    p.record_scale("iptables-legacy", 1000, 40.0)
    before = p.eta().seconds
    p.done += len(p.sc.measured)
    after = p.eta().seconds
    assert before is not None and after is not None and 0 < after < before


def test_a_sync_scenario_knows_its_eta_after_its_first_sync() -> None:
    sc = load_scenario(ROOT / "scenarios/sync.toml")
    p = Progress(sc, out=io.StringIO())
    assert p.eta().seconds is None
    p.record_sync(sc.datapaths[0], sc.services[0], 0.3)
    assert p.eta().seconds is not None


def test_datapaths_this_kernel_lacks_cost_nothing_in_the_eta() -> None:
    p = progress()
    p.record_sync("iptables-legacy", 1000, 10.0)
    p.record_scale("iptables-legacy", 1000, 40.0)
    full = p.eta().seconds
    p.skipped = {"ipvs"}  # recorded as failed at once, never measured
    lacking = p.eta().seconds
    assert full is not None and lacking is not None and lacking < full


def test_before_a_scale_ends_the_eta_comes_from_its_points_done_so_far(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.measure.progress as P
    clock = [1000.0]
    monkeypatch.setattr(P.time, "monotonic", lambda: clock[0])
    p = progress()
    p.start_scale()
    p.record_sync("iptables-legacy", 1, 2.0)
    assert p.eta().seconds is None  # no point of the scale done yet
    clock[0] += 2.0 + 10.0  # the sync, then one point of 10 s
    p.done += 1
    per_scale = 10.0 * len(p.sc.measured)
    per_point, _ = p._estimate("iptables-legacy", 1)
    assert per_point == pytest.approx((per_scale + 2.0) / len(p.sc.measured))
    assert p.eta().seconds is not None and p.eta().seconds > 0
    # Once a scale has ended, its measured fixed part is used.
    p.record_scale("iptables-legacy", 1, 2.0 + 11.0 * len(p.sc.measured))
    assert p._fixed_estimate() == pytest.approx(11.0 * len(p.sc.measured))
