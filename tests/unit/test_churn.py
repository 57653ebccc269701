"""Churn (bench.measure.churn): kube-proxy's coalescing schedule on a fake clock, and the
changes themselves."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.measure.churn import Churn, SyncRecord, change_times, run_schedule
from bench.measure.scenario import parse_scenario
from bench.model.generate import GenSpec, generate
from bench.model.objects import service_port_views


class FakeClock:
    """Time moves only when the schedule sleeps or a sync takes time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s > 0
        self.now += s


def schedule(per_s: int, seconds: float, min_period: float, full_period: float = 3600.0,
             sync_s: float = 0.05) -> tuple[list[SyncRecord], list[tuple[int, int, bool]]]:
    clock = FakeClock()
    calls: list[tuple[int, int, bool]] = []

    def sync(first: int, stop: int, full: bool) -> float:
        calls.append((first, stop, full))
        clock.now += sync_s
        return 0.01

    records = run_schedule(change_times(per_s, seconds), min_period, full_period, clock,
                           clock.sleep, sync)
    return records, calls


@pytest.mark.parametrize("per_s", [1, 10, 100, 1000])
def test_at_most_one_sync_per_min_sync_period_and_every_change_applied(per_s: int) -> None:
    records, calls = schedule(per_s, 10, 1.0)
    starts = [r.start for r in records]
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(starts, starts[1:], strict=False)), starts
    # Every change applied once, in order: the calls tile 0..K*T.
    assert calls[0][0] == 0 and calls[-1][1] == per_s * 10
    assert all(a[1] == b[0] for a, b in zip(calls, calls[1:], strict=False))
    assert sum(r.changes for r in records) == per_s * 10
    # The first change is applied at once; then one sync per period: 10 s of changes,
    # the last arriving at 10 - 1/K s, take 10 or 11 syncs (the last one's changes).
    assert records[0].start == 0.0 and records[0].changes == 1
    assert len(records) == (10 if per_s == 1 else 11), starts
    assert not any(r.full for r in records)


def test_a_sync_longer_than_the_period_is_followed_at_once() -> None:
    records, _ = schedule(100, 5, 1.0, sync_s=2.5)
    starts = [round(r.start, 6) for r in records]
    assert starts == [0.0, 2.5, 5.0]  # no idle gap, no overlap
    assert sum(r.changes for r in records) == 500


def test_no_min_sync_period_syncs_every_change_as_it_arrives() -> None:
    records, _ = schedule(10, 1, 0.0, sync_s=0.01)
    assert [r.changes for r in records] == [1] * 10


def test_a_full_sync_every_full_sync_period() -> None:
    records, calls = schedule(10, 10, 1.0, full_period=3.0)
    full = [r.start for r in records if r.full]
    assert full == [3.0, 6.0, 9.0], [(r.start, r.full) for r in records]
    assert [c[2] for c in calls] == [r.full for r in records]


def test_churn_changes_other_services_and_every_kind() -> None:
    services, slices = generate(GenSpec(services=5, endpoints=3, nodes=2, protocol="UDP"))
    keep = services[-1].key
    churn = Churn(services, slices, keep=keep)
    before = {s.service_key: s for s in churn.slices()}
    seen: list[tuple[int, int]] = []
    for _ in range(8):  # two rounds over the 4 other services
        changed = churn.apply(1)
        assert len(changed) == 1 and keep not in changed
        key = changed.pop()
        sl = next(s for s in churn.slices() if s.service_key == key)
        seen.append((len(sl.endpoints), sum(not e.ready for e in sl.endpoints)))
    # Round 1: removed, not ready, added, removed; round 2: each put back as generated.
    assert seen[:4] == [(2, 0), (3, 1), (4, 0), (2, 0)], seen
    assert seen[4:] == [(3, 0)] * 4, seen
    assert {s.service_key: s for s in churn.slices()} == before
    # The measured Service's slice is never touched; its views stay the same.
    views = service_port_views(services, churn.slices(), None)
    assert [v for v in views if v.service.key == keep] == \
        [v for v in service_port_views(services, slices, None) if v.service.key == keep]


def scenario(**table: Any) -> Any:
    doc = {"kind": "disruption", "sweep": {"datapaths": ["nftables"], "services": [100]},
           "disruption": table}
    return parse_scenario(doc, "<t>", json.dumps(doc))


def test_churn_points_one_per_rate() -> None:
    sc = scenario(events=["churn"], background=["udp-new"], churn_per_s=[10, 100],
                  full_sync_period_s=30)
    assert sc.measured == ("disruption-churn-10/udp-new", "disruption-churn-100/udp-new")
    assert sc.full_sync_period_s == 30.0 and sc.min_sync_period_s == 1.0
    from bench.errors import InputError
    with pytest.raises(InputError, match=r"full_sync_period_s"):
        scenario(events=["churn"], full_sync_period_s=0)


def test_endpoint_removed_points_with_and_without_cleanup() -> None:
    sc = scenario(events=["endpoint-removed"], background=["udp-new", "udp-established"])
    # Established UDP flows only, with kube-proxy's conntrack cleanup and without it.
    assert sc.measured == ("disruption-endpoint-removed/udp-established",
                           "disruption-endpoint-removed-no-cleanup/udp-established")
    sc = scenario(events=["endpoint-removed"], conntrack_cleanup=[False])
    assert sc.measured == ("disruption-endpoint-removed-no-cleanup/udp-established",)
    from bench.errors import InputError
    with pytest.raises(InputError, match=r"add \"udp-established\" to disruption\.background"):
        scenario(events=["endpoint-removed"], background=["udp-new"])
    with pytest.raises(InputError, match=r"conntrack_cleanup: must be \[true\], \[false\]"):
        scenario(events=["endpoint-removed"], conntrack_cleanup=[True, True])


class _Agent:
    """A datapath that records the order of its calls (no kernel)."""

    def __init__(self, reads: bool) -> None:
        self.reads = reads
        self.calls: list[str] = []

    def list_state(self, netns: str, full: bool) -> bool:
        self.calls.append(f"list {netns} full={full}")
        return self.reads

    def apply(self, text: str, netns: str) -> None:
        self.calls.append(f"apply {text}")

    def apply_partial(self, text: str, netns: str) -> None:
        self.calls.append(f"apply_partial {text}")

    def transaction_seconds(self) -> list[float]:
        return []


@pytest.mark.parametrize("full", [True, False])
def test_an_agent_sync_reads_back_first_then_applies_each_timed_apart(full: bool) -> None:
    from bench.measure.disruption_runner import _apply_figures, agent_sync

    dp = _Agent(reads=True)
    listed, applied = agent_sync(dp, "kpb-node-0", "T", full=full)  # type: ignore[arg-type]
    assert dp.calls == [f"list kpb-node-0 full={full}", "apply T" if full else "apply_partial T"]
    assert listed is not None and listed >= 0 and applied >= 0
    figures = _apply_figures(dp, listed, applied)  # type: ignore[arg-type]
    assert figures == {"apply": applied, "list": listed}


def test_an_agent_that_reads_nothing_has_no_list_figure() -> None:
    from bench.measure.disruption_runner import _apply_figures, agent_sync

    dp = _Agent(reads=False)
    listed, applied = agent_sync(dp, "kpb-node-0", "T", full=True)  # type: ignore[arg-type]
    assert listed is None
    assert _apply_figures(dp, listed, applied) == {"apply": applied}  # type: ignore[arg-type]


def test_churn_figures_keep_each_syncs_read_back() -> None:
    from bench.measure.disruption_runner import churn_figures

    records = [SyncRecord(start=0.0, end=0.5, changes=3, full=False, cpu_s=0.1),
               SyncRecord(start=1.0, end=1.6, changes=2, full=False, cpu_s=0.2)]
    with_list = churn_figures(records, [0.01, 0.02], 5, 2.0, [0.5, 0.6])
    assert with_list["sync_list_s"] == [0.5, 0.6]
    assert with_list["syncs"] == 2 and with_list["sync_apply_s"] == [0.01, 0.02]
    assert "sync_list_s" not in churn_figures(records, [0.01, 0.02], 5, 2.0)
