"""The run's generator ceilings: one measurement per (workload, flows), closed loop."""

from __future__ import annotations

from typing import Any

import pytest

from bench.errors import KpbenchError
from bench.measure import generator_ceiling as G
from bench.measure import sockets as S


def test_each_load_is_measured_once_and_a_failure_is_kept_with_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, str]] = []

    def fake(work: S.SocketWorkload, netns: str, seconds: float = G.CEILING_S,
             responders: int = 1) -> dict[str, Any]:
        calls.append((work.workload, work.flows, netns))
        if work.workload == "udp-rr":
            raise KpbenchError("sockperf failed")
        return {"transactions_per_s": 100.0 * work.flows, "throughput_bps": None,
                "seconds": seconds, "measured_at": "t"}

    monkeypatch.setattr(G, "measure", fake)
    c = G.Ceilings()
    crr8 = S.SocketWorkload("tcp-crr", flows=8, duration_s=5)
    first = c.get(crr8, "kpb0a-p0")
    # Another namespace (another scale's cluster) and duration: the same ceiling.
    assert c.get(S.SocketWorkload("tcp-crr", flows=8, duration_s=2), "kpb0a-p1") is first
    assert first == ({"transactions_per_s": 800.0, "throughput_bps": None, "seconds": 1.0,
                      "measured_at": "t"}, None)
    assert c.get(S.SocketWorkload("tcp-crr", flows=1), "kpb0a-p0")[0]["transactions_per_s"] == 100.0  # type: ignore[index]
    # An open-loop point's ceiling is the closed loop's at its flows: the same one.
    assert c.get(S.SocketWorkload("tcp-crr", flows=8, loop="open", rate_tps=500),
                 "kpb0a-p0") is first
    none, why = c.get(S.SocketWorkload("udp-rr"), "kpb0a-p0")
    assert none is None and why and "sockperf failed" in why
    c.get(S.SocketWorkload("udp-rr"), "kpb0a-p0")
    assert c.measured == 3 and len(calls) == 3


def test_the_ceiling_runs_in_one_namespace_over_its_loopback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[S.SocketWorkload, S.SocketPath]] = []

    class Result:
        transactions_per_s, throughput_bps, seconds = 5.0, None, 0.5

    def fake_run(work: S.SocketWorkload, path: S.SocketPath, **kw: Any) -> Result:
        seen.append((work, path))
        return Result()

    monkeypatch.setattr(S, "run", fake_run)
    out = G.measure(S.SocketWorkload("tcp-rr", flows=8, loop="open", rate_tps=1000,
                                     duration_s=5, count=3), "kpb0a-p0")
    work, path = seen[0]
    assert work.duration_s == G.CEILING_S and work.count is None and work.flows == 8
    assert (work.loop, work.rate_tps) == ("closed", None)  # the generator's most
    assert path.client_netns == "kpb0a-p0" and path.dst_ip == "127.0.0.1"
    assert [(r.netns, r.ip) for r in path.responders] == [("kpb0a-p0", "127.0.0.1")]
    assert path.spread == () and path.node_netns == ()
    assert out["transactions_per_s"] == 5.0 and out["seconds"] == 0.5 and out["measured_at"]
    # As many responders as the point's backends (one process uses one CPU: a single one
    # bounded the ceiling below what points through ten backends reached); a stream, one.
    G.measure(S.SocketWorkload("tcp-rr", flows=8), "kpb0a-p0", responders=3)
    work, path = seen[1]
    assert [r.ip for r in path.responders] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert path.destinations() == [(f"127.0.0.{i}", G.CEILING_PORT) for i in (1, 2, 3)]
    G.measure(S.SocketWorkload("tcp-stream", flows=8), "kpb0a-p0", responders=3)
    assert len(seen[2][1].responders) == 1
