"""The result schema and store: atomic writes, version refusal, summaries."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.analysis import stats
from bench.errors import InputError, KpbenchError
from bench.results import environment, schema, store, summarise, writer
from bench.results.reader import load_result
from bench.results.store import result_path
from bench.results.summarise import summarise_point
from bench.results.writer import ResultWriter, make_point, make_repetition

SCENARIO = {"name": "unit", "path": "scenarios/unit.toml", "text": "name = 'unit'\n"}
ENV: dict[str, Any] = {
    "kernel_release": "6.1.0", "kernel_version": "#1 SMP", "where": "host", "vm": None,
    "cpu_model": "test cpu", "cpu_count": 2, "governor": None, "python": "CPython 3.11",
    "kpbench": "0.1.0", "tools": {}, "git_commit": "0123456789abcdef0123", "git_dirty": False,
    "hostname": "Bench-01.example.org",
}


def point(i: int, **kw: Any) -> schema.PointDoc:
    reps = [make_repetition(sent=1000, delivered=990, offered_pps=1000.0, achieved_pps=1000.0,
                            latency_hist=stats.Histogram.from_samples([10_000] * 990),
                            softirq_ns=990 * 2000)]
    return make_point(datapath="nftables", variant="nftables", services=100 * (i + 1),
                      endpoints=10, workload="udp", rate_pps=1000, position="last",
                      position_index=99, repetitions=reps, **kw)


def test_writer_keeps_a_valid_file_after_every_point(tmp_path: Path) -> None:
    path = tmp_path / "m" / "r.json"
    w = ResultWriter(path, scenario=SCENARIO, environment=ENV, run_id="run1")
    assert load_result(path)["status"] == "running"
    w.add_point(point(0))
    w.add_point(point(1))
    doc = load_result(path)
    assert [p["services"] for p in doc["points"]] == [100, 200]
    assert doc["points"][0]["summary"]["loss"] == pytest.approx(0.01)
    assert doc["status"] == "running" and doc["finished"] is None
    w.finish("complete")
    doc = load_result(path)
    assert doc["status"] == "complete" and doc["finished"]
    assert doc["scenario"] == SCENARIO and doc["environment"] == ENV
    assert list(tmp_path.rglob("*.tmp")) == []
    # Readable by others as any file the user writes (results are shared, committed).
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_crash_mid_write_leaves_the_old_file_intact(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    w = ResultWriter(path, scenario=SCENARIO, environment=ENV)
    w.add_point(point(0))
    before = path.read_bytes()
    real_dump = json.dump

    def dump_half_then_die(obj: Any, fp: Any, **kw: Any) -> None:
        text = json.dumps(obj, **kw)
        fp.write(text[: len(text) // 2])
        fp.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", dump_half_then_die)
    # One line for the user (exit 2), saying the file still holds the earlier point.
    with pytest.raises(writer.ResultWriteError,
                       match=r"No space left on device.*written before \(1 points\)"):
        w.add_point(point(1))
    monkeypatch.setattr(json, "dump", real_dump)
    assert path.read_bytes() == before
    assert [p["services"] for p in load_result(path)["points"]] == [100]
    assert list(tmp_path.glob(".*.tmp")) == []  # the half-written temp file is removed
    # The writer's memory matches the disk, so the run can continue.
    w.add_point(point(1))
    assert len(load_result(path)["points"]) == 2


def test_crash_before_rename_leaves_the_old_file_intact(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    w = ResultWriter(path, scenario=SCENARIO, environment=ENV)
    before = path.read_bytes()

    def die(*a: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        w.add_point(point(0))
    assert path.read_bytes() == before


def test_context_manager_records_interruption(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt), \
            ResultWriter(path, scenario=SCENARIO, environment=ENV) as w:
        w.add_point(point(0))
        raise KeyboardInterrupt
    doc = load_result(path)
    assert doc["status"] == "interrupted" and len(doc["points"]) == 1
    with pytest.raises(KpbenchError, match="already exists"):
        ResultWriter(path, scenario=SCENARIO, environment=ENV)


def test_writer_refuses_nan_and_duplicate_ids(tmp_path: Path) -> None:
    w = ResultWriter(tmp_path / "r.json", scenario=SCENARIO, environment=ENV)
    p = point(0)
    p["setup"]["sync_seconds"] = float("nan")
    with pytest.raises(ValueError, match=r"setup\.sync_seconds is nan"):
        w.add_point(p)
    w.add_point(point(0))
    with pytest.raises(ValueError, match="added twice"):
        w.add_point(point(0))


def write_doc(tmp_path: Path, **changes: Any) -> Path:
    w = ResultWriter(tmp_path / "r.json", scenario=SCENARIO, environment=ENV)
    doc = {**w.document, **changes}
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    return path


def test_newer_schema_is_refused_with_what_to_do(tmp_path: Path) -> None:
    newer = schema.SCHEMA_VERSION + 1
    path = write_doc(tmp_path, schema_version=newer)
    with pytest.raises(InputError,
                       match=rf"edited\.json: schema_version {newer} is newer.*upgrade"):
        load_result(path)


def test_older_schema_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = write_doc(tmp_path, schema_version=0)
    with pytest.raises(InputError, match=r"schema_version 0 is older.*git_commit.*re-run"):
        load_result(path)


@pytest.mark.parametrize("changes,needle", [
    ({"kind": "pyperf"}, "not a kpbench result"),
    ({"schema_version": "1"}, "expected an integer"),
    ({"status": "done"}, "status: 'done' is not one of running, complete"),
    ({"points": [{"id": "x"}]}, "points[0]: datapath: missing"),
])
def test_malformed_documents_are_refused(tmp_path: Path, changes: dict[str, Any],
                                         needle: str) -> None:
    with pytest.raises(InputError) as e:
        load_result(write_doc(tmp_path, **changes))
    assert needle in str(e.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_result(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"kind\": ")
    with pytest.raises(InputError, match="not valid JSON"):
        load_result(bad)


def test_summarise_point_known_answers() -> None:
    # Two repetitions with different rates and latency distributions.
    lat_a = np.full(900, 10_000)                                   # 900 packets at 10 us
    lat_b = np.concatenate([np.full(80, 10_000), np.full(20, 1_000_000)])  # 100, 20 slow
    reps = [
        make_repetition(sent=1000, delivered=900, offered_pps=1000, achieved_pps=1000,
                        arrival_seconds=0.9,
                        latency_hist=stats.Histogram.from_samples(lat_a), softirq_ns=900 * 3000,
                        drops={"NETFILTER_DROP": 60, "NO_SOCKET": 40}),
        make_repetition(sent=1000, delivered=100, offered_pps=1000, achieved_pps=500,
                        arrival_seconds=2.0,
                        latency_hist=stats.Histogram.from_samples(lat_b), softirq_ns=100 * 5000,
                        drops={"NETFILTER_DROP": 900}),
    ]
    p = make_point(datapath="iptables", variant="iptables-legacy", services=1000, endpoints=10,
                   workload="udp", rate_pps=1000, position="last", position_index=999,
                   repetitions=reps)
    s = summarise_point(p)
    assert s["offered_pps"] == 1000
    # 2000 packets sent in 1 s + 2 s.
    assert s["achieved_pps"] == pytest.approx(2000 / 3)
    # Measured at the receiver: 899 + 99 gaps between arrivals over 0.9 s + 2.0 s.
    assert s["delivered_pps"] == pytest.approx((899 + 99) / 2.9)
    assert s["loss"] == pytest.approx(0.5)
    # (900*3000 + 100*5000) / 1000 delivered.
    assert s["cpu_ns_per_packet"] == pytest.approx(3200)
    assert s["drops"] == {"NETFILTER_DROP": 960, "NO_SOCKET": 40}
    lat = s["latency_ns"]
    assert lat is not None and lat["count"] == 1000
    # Merged: 20 slow packets in 1000 are 2 %, so p50/p90 are fast and p99 is slow.
    assert lat["p50"] == pytest.approx(10_000, rel=stats.MAX_RELATIVE_ERROR)
    assert lat["p90"] == pytest.approx(10_000, rel=stats.MAX_RELATIVE_ERROR)
    assert lat["p99"] == pytest.approx(1_000_000, rel=stats.MAX_RELATIVE_ERROR)
    # The per-repetition p90s average to ~505 us; the merged p90 is not that.
    per_rep_p90 = [stats.percentiles(x)["p90"] for x in (lat_a, lat_b)]
    assert np.mean(per_rep_p90) == 505_000
    assert s["transit_ns"] is None


def test_cpu_figures_are_per_packet_of_the_cpu_pass() -> None:
    """A repetition's CPU figures are over the packets of its own cpu pass (cpu_delivered),
    not over those of the pass that measured latency and loss."""
    from bench.analysis.metrics import METRICS_BY_NAME

    reps = [make_repetition(sent=1000, delivered=500, softirq_ns=900 * 3000,
                            cpu_delivered=900),
            make_repetition(sent=1000, delivered=1000, softirq_ns=1000 * 5000,
                            cpu_delivered=1000)]
    p = make_point(datapath="iptables", variant="iptables-legacy", services=1, endpoints=10,
                   workload="udp-new", rate_pps=1000, position="last", position_index=0,
                   repetitions=reps)
    s = summarise_point(p)
    assert s["cpu_ns_per_packet"] == pytest.approx((900 * 3000 + 1000 * 5000) / 1900)
    assert s["loss"] == pytest.approx(0.25)  # the latency pass's own
    assert METRICS_BY_NAME["cpu_ns_per_packet"].samples(p) == pytest.approx([3000, 5000])


def test_the_cpu_probe_s_own_share_is_taken_out_per_softirq_and_kept_apart() -> None:
    """A cpu pass's NET_RX time less the probe's own share (per softirq, times the softirqs
    the pass timed), kept apart; the process time untouched; no share measured: none
    taken out, and the record says so by leaving softirq_probe_ns out."""
    from bench.measure.probes.cpu import CpuReading
    from bench.measure.repetition import cpu_fields

    reading = CpuReading(net_rx_ns=5_000_000, runs=1200, per_cpu_ns=(5_000_000, 0),
                         seconds=0.5, process_ns=300_000)
    f = cpu_fields(reading, 1000, 110.0)
    assert f["softirq_probe_ns"] == 132_000 and f["net_rx_softirqs"] == 1200
    assert f["softirq_ns"] == 5_000_000 - 132_000 and f["process_ns"] == 300_000
    assert f["cpu_ns_per_packet"] == pytest.approx((5_000_000 - 132_000 + 300_000) / 1000)
    raw = cpu_fields(reading, 1000, None)
    assert "softirq_probe_ns" not in raw and raw["softirq_ns"] == 5_000_000
    assert raw["cpu_ns_per_packet"] == pytest.approx(5_300)
    assert cpu_fields(reading, 0, 110.0)["cpu_ns_per_packet"] is None
    # A share larger than the time itself never leaves a negative figure.
    assert cpu_fields(reading, 1000, 1e9)["softirq_ns"] == 0


def test_summarise_point_with_missing_measurements() -> None:
    reps = [make_repetition(sent=10, delivered=10), make_repetition(sent=10, delivered=5)]
    p = make_point(datapath="nftables", variant="nftables", services=10, endpoints=1,
                   workload="udp", rate_pps=None, position="first", position_index=0,
                   repetitions=reps, missing={"latency": "probe failed to attach"})
    s = summarise_point(p)
    assert s["loss"] == pytest.approx(0.25)
    # Not measured stays None, never 0.
    assert s["latency_ns"] is None and s["cpu_ns_per_packet"] is None
    assert s["achieved_pps"] is None and s["drops"] is None
    failed = make_point(datapath="nftables", variant="nftables", services=10, endpoints=1,
                        workload="udp", rate_pps=None, position="first", position_index=0,
                        status="exceeded-limit", error="sync took more than 600 s")
    assert summarise_point(failed)["loss"] is None


def test_result_path_layout() -> None:
    import datetime as dt
    when = dt.datetime(2026, 11, 29, 14, 30, 12, tzinfo=dt.UTC)
    p = result_path("results", "Default Suite", {**ENV, "machine_id": "3f2a9c1e"}, when)
    assert p == Path("results/bench-01-3f2a9c1e-host-6.1.0/"
                     "20261129T143012_0123456789ab_default-suite.json")
    dirty = result_path("results", "x", {**ENV, "git_dirty": True, "git_commit": None}, when)
    assert dirty.name == "20261129T143012_nogit-dirty_x.json"


def test_machine_folders_tell_apart_host_vm_and_machines_sharing_a_host_name() -> None:
    host = {**ENV, "machine_id": "3f2a9c1e"}
    vm = {**host, "where": "vm", "vm": {"accel": "tcg", "kernel": "/boot/vmlinuz-6.1.0-57"},
          "kernel_release": "6.1.0-57-amd64"}
    other = {**host, "machine_id": "77aa00bb"}  # a second machine made from one image
    names = {store.machine_name(e) for e in (host, vm, other)}
    assert len(names) == 3
    assert store.machine_name(vm) == "bench-01-3f2a9c1e-vm-tcg-6.1.0-57-amd64"
    # A result written before machine ids were recorded still gets a folder name.
    assert store.machine_name(ENV) == "bench-01-noid-host-6.1.0"


def test_machine_id_is_a_short_keyed_hash_never_the_id_itself(tmp_path: Path) -> None:
    f = tmp_path / "machine-id"
    f.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    mid = environment.machine_id((str(f),))
    assert mid is not None and len(mid) == 8 and int(mid, 16) >= 0
    assert mid not in f.read_text()
    f.write_text("0123456789abcdef0123456789abcdef\n")
    assert environment.machine_id((str(f),)) != mid
    assert environment.machine_id((str(tmp_path / "absent"),)) is None
    assert environment.capture_environment()["machine_id"] == environment.machine_id()


def test_capture_environment_shape() -> None:
    env = environment.capture_environment()
    assert env["where"] == "host" and env["vm"] is None
    assert env["kernel_release"] and env["hostname"] and env["python"].startswith("CPython")
    for tool in ("iptables", "nft", "tcpreplay", "bcc", "pyroute2", "scapy", "numpy"):
        assert tool in env["tools"]
    assert env["tools"]["numpy"] == np.__version__
    json.dumps(env)
    vm = environment.capture_environment("vm", {"accel": "tcg", "kernel": "6.1.0-amd64"})
    assert vm["vm"] == {"accel": "tcg", "kernel": "6.1.0-amd64"}
    with pytest.raises(ValueError, match="accel"):
        environment.capture_environment("vm", {"accel": "hvf", "kernel": "x"})


def _rep(latency_ns: int, sent: int = 1000, delivered: int = 1000,
         cpu_ns: int = 3000, **kw: Any) -> schema.RepetitionDoc:
    return make_repetition(sent=sent, delivered=delivered, offered_pps=1000, achieved_pps=1000,
                           arrival_seconds=(delivered - 1) / 1000,
                           latency_hist=stats.Histogram.from_samples(
                               np.full(delivered, latency_ns)),
                           softirq_ns=delivered * cpu_ns, **kw)


def test_the_breakdown_repetition_is_kept_apart_from_the_measured_ones() -> None:
    from bench.analysis.metrics import METRICS_BY_NAME

    # The breakdown probes slow packets down and their repetition lost half of them.
    slow = _rep(50_000, delivered=500, cpu_ns=9000, drops={"NETFILTER_DROP": 500})
    p = make_point(datapath="nftables", variant="nftables", services=10, endpoints=1,
                   workload="udp-new", rate_pps=1000, position="last", position_index=9,
                   repetitions=[_rep(10_000), _rep(10_000)])
    p["breakdown"] = slow
    s = summarise_point(p)
    assert s["loss"] == 0 and s["latency_ns"]["count"] == 2000
    assert s["latency_ns"]["p99"] == pytest.approx(10_000, rel=stats.MAX_RELATIVE_ERROR)
    assert s["cpu_ns_per_packet"] == pytest.approx(3000)
    assert s["delivered_pps"] == pytest.approx(1000)
    assert s["drops"] == {"NETFILTER_DROP": 500}  # what the breakdown is for
    for name in ("p50_latency", "cpu_ns_per_packet", "loss", "delivered_pps"):
        assert len(METRICS_BY_NAME[name].samples(p)) == 2, name


def test_delivered_never_exceeds_sent() -> None:
    with pytest.raises(ValueError, match="exceeds sent"):
        make_repetition(sent=10, delivered=11)


def test_delivered_rate_is_the_receivers_not_the_senders() -> None:
    # tcpreplay says 1000/s; the backends saw 999 arrivals spread over 2 s (a queue).
    rep = make_repetition(sent=1000, delivered=1000, offered_pps=1000, achieved_pps=1000,
                          arrival_seconds=2.0)
    p = make_point(datapath="nftables", variant="nftables", services=1, endpoints=1,
                   workload="udp-new", rate_pps=1000, position="last", position_index=0,
                   repetitions=[rep])
    assert summarise_point(p)["delivered_pps"] == pytest.approx(999 / 2)
    p["repetitions"] = [make_repetition(sent=1000, delivered=1000, achieved_pps=1000)]
    assert summarise_point(p)["delivered_pps"] is None  # not measured, not derived


def test_service_minus_control_pairs_each_repetition_with_its_control() -> None:
    from bench.analysis.metrics import METRICS_BY_NAME

    # Drift: the second pair runs 5 us slower, both Service and control alike.
    p = make_point(datapath="nftables", variant="nftables", services=10, endpoints=1,
                   workload="udp-new", rate_pps=1000, position="last", position_index=9,
                   repetitions=[_rep(10_000, cpu_ns=4000), _rep(15_000, cpu_ns=4000)],
                   control=[_rep(7_000, delivered=500, sent=500, cpu_ns=2500),
                            _rep(12_000, delivered=500, sent=500, cpu_ns=2500)])
    s = summarise_point(p)
    assert s["control"]["latency_ns"]["count"] == 1000
    assert s["service_minus_control_cpu_ns_per_packet"] == pytest.approx(1500)
    assert s["service_minus_control_p50_ns"] == pytest.approx(
        s["latency_ns"]["p50"] - s["control"]["latency_ns"]["p50"])
    diffs = METRICS_BY_NAME["service_minus_control_p50_ns"].samples(p)
    assert diffs == pytest.approx([3000, 3000], rel=2 * stats.MAX_RELATIVE_ERROR)
    assert METRICS_BY_NAME["service_minus_control_cpu_ns_per_packet"].samples(p) == \
        pytest.approx([1500, 1500])
    # The measured repetitions' own figures do not include the control's.
    assert s["latency_ns"]["count"] == 2000 and s["cpu_ns_per_packet"] == pytest.approx(4000)


def test_a_settle_that_timed_out_is_not_a_settle_time() -> None:
    from bench.analysis.metrics import METRICS_BY_NAME

    p = make_point(datapath="nftables", variant="nftables", services=10, endpoints=1,
                   workload="udp-new", rate_pps=1000, position="last", position_index=9,
                   settle_seconds=60.0, settle_converged=False, repetitions=[_rep(10_000)])
    settle = METRICS_BY_NAME["settle"]
    assert settle.samples(p) == [] and settle.pooled(p) is None
    p["setup"]["settle_converged"] = True
    assert settle.samples(p) == [60.0]
@pytest.mark.parametrize(("delivered", "drops", "ok"), [
    (990, {"NETFILTER_DROP": 10}, True), (990, {"NETFILTER_DROP": 4, "NO_ROUTE": 6}, True),
    (1000, {}, True), (1000, {"TC_INGRESS": 1000}, False), (990, {"NETFILTER_DROP": 11}, False)])
def test_writer_refuses_drops_beyond_the_lost_packets(tmp_path: Path, delivered: int,
                                                      drops: dict[str, int], ok: bool) -> None:
    """Drops attributed to the datapath <= sent - delivered, in every stored repetition
    (the harness's own drop at the backend once showed as 1000 drops at loss 0)."""
    w = ResultWriter(tmp_path / "r.json", scenario=SCENARIO, environment=ENV)
    p = point(0)
    p["repetitions"] = [make_repetition(sent=1000, delivered=delivered, drops=drops)]
    if ok:
        w.add_point(p)
        assert load_result(w.path)["points"][0]["repetitions"][0]["drops"] == drops
    else:
        with pytest.raises(ValueError, match="drops attributed to the datapath"):
            w.add_point(p)
        assert load_result(w.path)["points"] == []
    apart = point(1)  # a breakdown repetition kept apart is held to it too
    apart["breakdown"] = make_repetition(sent=1000, delivered=1000,  # type: ignore[typeddict-unknown-key]
                                         drops={"TC_INGRESS": 1000})
    with pytest.raises(ValueError, match=r"breakdown\[0\]"):
        w.add_point(apart)


def test_cpu_per_packet_is_softirq_plus_process_with_the_split_kept(tmp_path: Path) -> None:
    """A userspace proxy's own CPU counts in cpu_ns_per_packet, next to NET_RX time,
    in the summary, the CSV and `show` (a datapath without processes: process 0)."""
    from bench.present import export
    from bench.present.summary import overhead_line, points_table
    from bench.present.tables import render

    reps = [make_repetition(sent=1000, delivered=1000, softirq_ns=1000 * 2_000,
                            process_ns=1000 * 18_000, cpu_ns_per_packet=20_000.0),
            make_repetition(sent=1000, delivered=500, softirq_ns=500 * 2_000,
                            process_ns=500 * 18_000, cpu_ns_per_packet=20_000.0)]
    p = make_point(datapath="userspace", variant="userspace", services=1, endpoints=1,
                   workload="udp-new", rate_pps=1000, position="last", position_index=0,
                   repetitions=reps, probe_overhead={"main_ns_per_packet": 400.0})
    s = summarise_point(p)
    assert s["cpu_ns_per_packet"] == pytest.approx(20_000)
    assert s["softirq_ns_per_packet"] == pytest.approx(2_000)
    assert s["process_ns_per_packet"] == pytest.approx(18_000)
    assert s["probe_overhead_pct"] == {"main": pytest.approx(2.0)}
    old = point(0)  # written before process time was measured: softirq only, no split
    assert summarise_point(old)["process_ns_per_packet"] is None
    assert summarise_point(old)["cpu_ns_per_packet"] == pytest.approx(2_000)

    with ResultWriter(tmp_path / "r.json", scenario=SCENARIO, environment=ENV) as w:
        w.add_point(p)
    doc = load_result(w.path)
    rows = {(r["metric"], r["repetition"]): r["value"] for r in export.rows(doc)}
    assert float(rows[("process_ns_per_packet", "all")]) == pytest.approx(18_000)
    assert float(rows[("softirq_ns_per_packet", "all")]) == pytest.approx(2_000)
    assert float(rows[("process_ns", 0)]) == 18_000_000
    assert float(rows[("probe_overhead_pct.main", "all")]) == pytest.approx(2.0)
    assert overhead_line(doc) == ("probe overhead (sender CPU, ? paired rounds): main +400 "
                                  "ns/packet (rounds +400 to +400, 2.0 % of cpu/pkt at "
                                  "userspace udp-new)")
    table = render(points_table(doc), "table")
    assert "process" in table and "18,000 ns" in table and "20,000 ns" in table
def test_schema_1_is_read_with_its_mixed_sync_times_dropped(tmp_path: Path) -> None:
    """Schema 1's sync_seconds was render + apply (summed over nodes in packet
    scenarios): not the per-node apply time schema 2 means, so it is dropped with the
    reason; sync repetitions keep their apply and render, which were measured apart."""
    packet = make_point(datapath="iptables", variant="iptables-legacy", services=10,
                        endpoints=2, workload="udp-new", rate_pps=1000, position="last",
                        position_index=9, sync_seconds=2.5)
    sync = make_point(datapath="nftables", variant="nftables", services=10, endpoints=2,
                      workload="sync-full", rate_pps=None, position="last", position_index=9,
                      sync_seconds=1.5, repetitions=[make_repetition(
                          sent=0, delivered=0,
                          sync={"render": 0.25, "apply": 1.0, "total": 1.25})])
    for p in (packet, sync):
        p["summary"] = summarise.summarise_point(p)
        del p["setup"]["sync_render_seconds"], p["setup"]["sync_node_seconds"]
    path = write_doc(tmp_path, schema_version=1, points=[packet, sync])
    doc = load_result(path)
    assert doc["schema_version"] == schema.SCHEMA_VERSION and doc["upgraded_from"] == 1
    for p in doc["points"]:
        assert p["setup"]["sync_seconds"] is None and p["setup"]["sync_node_seconds"] == []
        assert "schema 1" in p["missing"]["sync_seconds"]
    rep_sync = doc["points"][1]["repetitions"][0]["sync"]
    assert rep_sync == {"render": 0.25, "apply": 1.0}
    assert doc["points"][1]["summary"]["sync"]["apply"] == 1.0
    assert "total" not in doc["points"][1]["summary"]["sync"]


# Every third measured point (14) of the schema 1 baseline this project committed before
# schema 2 (five
# pooled runs, each point 5 x (3 measured + 1 breakdown) repetitions).
V1_BASELINE = Path(__file__).resolve().parents[1] / "data/good/baseline-v1-excerpt.json"


def test_a_schema_1_baseline_still_loads() -> None:
    doc = load_result(V1_BASELINE)
    assert doc["upgraded_from"] == 1 and doc["points"]
    assert all(p["setup"]["sync_seconds"] is None for p in doc["points"])


def test_schema_1_breakdown_repetitions_leave_the_measured_ones() -> None:
    """Version 1 appended the breakdown repetition (drops, transit; no latency) to
    ``repetitions``, where loss and delivered pps pooled it: read as version 2 it is the
    point's ``breakdown``, and each run's share of a pooled baseline counts only its own
    measured repetitions."""
    raw = json.loads(V1_BASELINE.read_text())
    assert raw["schema_version"] == 1
    before = {p["id"]: len(p["repetitions"]) for p in raw["points"]}
    doc = load_result(V1_BASELINE)
    moved = 0
    for p in doc["points"]:
        assert all(r.get("latency_hist") is not None or r.get("drops") is None
                   for r in p["repetitions"]), p["id"]
        if p.get("breakdown") is not None:
            moved += 1
            assert len(p["repetitions"]) < before[p["id"]]
            if p.get("per_run"):
                assert sum(r["repetitions"] for r in p["per_run"]) == len(p["repetitions"])
    assert moved == len(doc["points"])


def test_latency_by_path_is_pooled_per_path_and_paired_with_the_control() -> None:
    """A Service whose flows took the other node's path 12 times in 16 against a control
    that took it 6 times: the pooled p50s sit on different paths' modes, each path's own
    p50 compares like with like."""
    from bench.analysis.metrics import METRICS_BY_NAME
    from bench.present.export import summary_metrics
    from bench.results.model import as_point

    def rep(near: int, far: int, near_ns: float, far_ns: float) -> Any:
        near_s, far_s = np.full(near, near_ns), np.full(far, far_ns)
        return make_repetition(
            sent=near + far, delivered=near + far,
            latency_hist=stats.Histogram.from_samples(np.concatenate([near_s, far_s])),
            latency_by_path={"entry_node": stats.Histogram.from_samples(near_s),
                             "other_node": stats.Histogram.from_samples(far_s)})

    p = make_point(datapath="nftables", variant="nftables", services=10, endpoints=10,
                   workload="udp-established", rate_pps=1000, position="last",
                   position_index=9, repetitions=[rep(100, 300, 1900, 3800)] * 2,
                   control=[rep(120, 80, 1850, 3700)] * 2)
    s = summarise_point(p)
    assert s["service_minus_control_p50_ns"] == pytest.approx(3800 - 1850, rel=0.02)
    assert s["latency_by_path_ns"]["other_node"]["share"] == pytest.approx(0.75)
    assert s["control"]["latency_by_path_ns"]["entry_node"]["share"] == pytest.approx(0.6)
    by_path = s["service_minus_control_p50_by_path_ns"]
    assert by_path["entry_node"] == pytest.approx(50, abs=40)
    assert by_path["other_node"] == pytest.approx(100, abs=80)
    assert METRICS_BY_NAME["p50_latency_other_node"].pooled(p) == pytest.approx(3800, rel=0.02)
    assert METRICS_BY_NAME["service_minus_control_p50_other_node_ns"].samples(p) == \
        pytest.approx([100, 100], abs=80)
    rows = {m: (v, unit) for m, v, unit in summary_metrics(as_point(p))}
    assert rows["latency_other_node_share"] == (pytest.approx(0.75), "fraction")
    assert rows["control.latency_entry_node_p50"][0] == pytest.approx(1850, rel=0.02)
    assert "service_minus_control_p50_other_node_ns" in rows
