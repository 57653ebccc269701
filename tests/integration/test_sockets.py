"""Socket workloads on known paths: a plain veth pair, then a real datapath.

The pair is two run namespaces joined by a veth (no rules, no conntrack). The
kernel here has no netem, so a known latency comes from the responder's own
hold time (``kpb-crr serve --delay-us``), which the generator's clock must see.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bench.cluster import cgroups
from bench.cluster.testbed import Testbed
from bench.cluster.topology import new_prefix, register_run, remove_run
from bench.datapaths import make_variant
from bench.errors import KpbenchError
from bench.measure import socket_tools as T
from bench.measure import sockets as S
from bench.model.generate import GenSpec, generate
from tests.conftest import require_feature
from tests.helpers.runs import run_points

pytestmark = pytest.mark.privileged

CLIENT_IP, SERVER_IP, OTHER_IP = "10.99.0.1", "10.99.0.2", "10.99.0.3"


@dataclass(frozen=True)
class Pair:
    prefix: str
    client: str
    server: str

    def path(self, port: int, dst_ip: str = SERVER_IP) -> S.SocketPath:
        return S.SocketPath(self.client, dst_ip, port, (S.Responder(self.server, SERVER_IP),),
                            client_ip=CLIENT_IP)


def ns_run(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], check=True,
                          capture_output=True, text=True, timeout=30).stdout


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    prefix = new_prefix()
    register_run(prefix)
    p = Pair(prefix, f"{prefix}-sc", f"{prefix}-ss")
    try:
        for ns in (p.client, p.server):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            ns_run(ns, "ip", "link", "set", "lo", "up")
        # Made inside the client namespace, its peer moved straight into the server's.
        ns_run(p.client, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
               "netns", p.server)
        ns_run(p.client, "ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
        # OTHER_IP is the server's too, but no responder binds it.
        for ip in (SERVER_IP, OTHER_IP):
            ns_run(p.server, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        for ns in (p.client, p.server):
            ns_run(ns, "ip", "link", "set", "eth0", "up")
        yield p
    finally:
        remove_run(prefix)


def live_pids(*spaces: str) -> list[str]:
    return [pid for ns in spaces for pid in
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                           text=True).stdout.split()]


# --- kpb-crr on its own ------------------------------------------------------

def crr_serve(pair: Pair, port: int, *extra: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(["ip", "netns", "exec", pair.server, str(T.crr_binary()), "serve",
                          "--listen", f"{SERVER_IP}:{port}", "--duration", "30", *extra],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def crr_client(pair: Pair, dst: str, port: int, samples: Path, *extra: str) -> T.CrrClientStats:
    return T.parse_crr_client(ns_run(pair.client, str(T.crr_binary()), "client", "--connect",
                                     f"{dst}:{port}", "--samples", str(samples), *extra))


def stop(p: subprocess.Popen[str]) -> T.CrrServerStats:
    p.terminate()
    return T.parse_crr_server(p.communicate(timeout=10)[0])


def test_crr_latency_is_the_responders_hold_time_and_every_transaction_is_served(
        pair: Pair, tmp_path: Path) -> None:
    delay_ns = 2_000_000
    server = crr_serve(pair, 9001, "--delay-us", str(delay_ns // 1000))
    try:
        s = crr_client(pair, SERVER_IP, 9001, tmp_path / "s", "--flows", "4", "--count", "300",
                       "--duration", "20")
    finally:
        srv = stop(server)
    assert (s.transactions, s.failed, srv.served, srv.errors, srv.connections) == (
        300, 0, 300, 0, 300)
    rtt = T.read_crr_samples(tmp_path / "s", 300)
    p50 = float(sorted(rtt)[149])
    # Never below the hold time; above it by the connect/close round trips on a veth
    # (tens of us here, a busy 2-core machine adds some): a clock in the wrong unit or
    # a latency that misses the response is far outside.
    assert delay_ns <= rtt.min() and p50 < delay_ns + 1_500_000


def test_crr_open_loop_offers_its_rate_and_not_more(pair: Pair, tmp_path: Path) -> None:
    server = crr_serve(pair, 9002)
    try:
        s = crr_client(pair, SERVER_IP, 9002, tmp_path / "s", "--flows", "2", "--rate", "400",
                       "--count", "200", "--duration", "20")
    finally:
        served = stop(server).served
    assert s.loop == "open" and s.transactions == served == 200 and s.failed == 0
    # 200 transactions due over 0.5 s: a closed loop would finish them far sooner.
    assert 0.49 <= s.seconds < 2.0


def test_crr_counts_refused_connections_and_binds_only_its_address(pair: Pair,
                                                                  tmp_path: Path) -> None:
    server = crr_serve(pair, 9003)
    try:
        s = crr_client(pair, OTHER_IP, 9003, tmp_path / "s", "--count", "50", "--duration", "10")
    finally:
        served = stop(server).served
    assert (s.transactions, s.connect_failed, served) == (0, 50, 0)


def test_crr_spreads_transactions_over_its_destinations(pair: Pair, tmp_path: Path) -> None:
    # OTHER_IP is the server's too: a second responder binds it (a second backend).
    servers = [crr_serve(pair, 9004)]
    other = subprocess.Popen(["ip", "netns", "exec", pair.server, str(T.crr_binary()), "serve",
                              "--listen", f"{OTHER_IP}:9005", "--duration", "30"],
                             stdout=subprocess.PIPE, text=True)
    assert other.stdout is not None and other.stdout.readline().strip() == "ready"
    servers.append(other)
    try:
        s = crr_client(pair, SERVER_IP, 9004, tmp_path / "s", "--connect", f"{OTHER_IP}:9005",
                       "--flows", "3", "--count", "101", "--duration", "20")
    finally:
        served = [stop(p).served for p in servers]
    # Transaction i goes to destination i mod 2: 51 and 50.
    assert s.transactions == 101 and s.failed == 0 and served == [51, 50]


def test_keep_latency_is_the_hold_time_on_one_connection_per_flow(pair: Pair,
                                                                  tmp_path: Path) -> None:
    # tcp-rr's mode: 300 transactions over 4 flows are 300 requests on 4 connections.
    delay_ns = 2_000_000
    server = crr_serve(pair, 9010, "--keep", "--delay-us", str(delay_ns // 1000))
    try:
        s = crr_client(pair, SERVER_IP, 9010, tmp_path / "s", "--keep", "--flows", "4",
                       "--count", "300", "--duration", "20")
    finally:
        srv = stop(server)
    assert (s.transactions, s.failed) == (300, 0)
    assert (srv.served, srv.errors, srv.connections) == (300, 0, 4)
    rtt = T.read_crr_samples(tmp_path / "s", 300)
    # No connect or close in a transaction: just above the hold time (one round trip
    # on a veth; a busy 2-core machine adds some).
    assert delay_ns <= rtt.min() and float(sorted(rtt)[149]) < delay_ns + 1_000_000
    # The client closed its 4 connections at the end (tcp-crr's responder closes first).
    assert len(ns_run(pair.client, "ss", "-Htan", "state", "time-wait", "dport",
                      "= :9010").splitlines()) == 4


def test_keep_spreads_flows_over_its_destinations(pair: Pair, tmp_path: Path) -> None:
    servers = [crr_serve(pair, 9011, "--keep")]
    other = subprocess.Popen(["ip", "netns", "exec", pair.server, str(T.crr_binary()), "serve",
                              "--listen", f"{OTHER_IP}:9012", "--duration", "30", "--keep"],
                             stdout=subprocess.PIPE, text=True)
    assert other.stdout is not None and other.stdout.readline().strip() == "ready"
    servers.append(other)
    try:
        s = crr_client(pair, SERVER_IP, 9011, tmp_path / "s", "--connect", f"{OTHER_IP}:9012",
                       "--keep", "--flows", "3", "--count", "90", "--duration", "20")
    finally:
        stats = [stop(p) for p in servers]
    # Flow i to destination i mod 2: flows 0 and 2 to the first, flow 1 to the second.
    assert s.transactions == 90 and s.failed == 0
    assert [st.connections for st in stats] == [2, 1] and sum(st.served for st in stats) == 90


def test_keep_counts_failed_transactions_and_reconnects(pair: Pair, tmp_path: Path) -> None:
    # A responder that closes after each response (tcp-crr's): the kept connection's
    # second request finds it closed (an error), the third reconnects and succeeds.
    server = crr_serve(pair, 9013)
    try:
        s = crr_client(pair, SERVER_IP, 9013, tmp_path / "s", "--keep", "--count", "50",
                       "--duration", "20")
    finally:
        srv = stop(server)
    assert (s.transactions, s.errors, s.connect_failed, s.timeouts) == (25, 25, 0, 0)
    assert (srv.served, srv.connections) == (25, 25)
    # A response later than the timeout: each transaction times out, closes its
    # connection, and the next reconnects.
    server = crr_serve(pair, 9014, "--keep", "--delay-us", "300000")
    try:
        s = crr_client(pair, SERVER_IP, 9014, tmp_path / "s", "--keep", "--count", "4",
                       "--timeout-ms", "100", "--duration", "20")
    finally:
        srv = stop(server)
    assert (s.transactions, s.timeouts, s.failed) == (0, 4, 4) and srv.connections == 4


def test_records_hold_each_transactions_due_time_rtt_and_status(pair: Pair,
                                                                 tmp_path: Path) -> None:
    # The disruption timeline's source (tcp-rr background): open loop, 100 transactions
    # due every 2 ms over 2 kept connections, each held 1 ms by the responder.
    delay_ns, rate = 1_000_000, 500
    server = crr_serve(pair, 9015, "--keep", "--delay-us", str(delay_ns // 1000))
    before = time.monotonic_ns()
    try:
        s = crr_client(pair, SERVER_IP, 9015, tmp_path / "s", "--keep", "--flows", "2",
                       "--rate", str(rate), "--count", "100", "--duration", "20",
                       "--records", str(tmp_path / "r"))
    finally:
        stop(server)
    after = time.monotonic_ns()
    r = T.read_crr_records(tmp_path / "r")
    assert s.transactions == len(r) == 100
    # Transaction i due at start + i/rate, on this process's CLOCK_MONOTONIC.
    assert before < r["due_ns"][0] < after
    assert (r["due_ns"] - r["due_ns"][0] == np.arange(100) * (10**9 // rate)).all()
    assert (r["status"] == 0).all() and (r["flags"] == 0).all()
    assert set(r["flow"]) == {0, 1}
    rtt = r["rtt_ns"].astype(np.int64)
    assert delay_ns <= rtt.min() and np.median(rtt) < delay_ns + 1_000_000
    # The same latencies as --samples (completion order there, due order here).
    assert sorted(rtt) == sorted(T.read_crr_samples(tmp_path / "s", 100).astype(np.int64))


def test_records_show_failures_reconnects_and_what_was_due_but_not_started(
        pair: Pair, tmp_path: Path) -> None:
    # A responder that closes after each response: on the kept connection, transaction
    # 1 fails (error), 2 reconnects first and succeeds, and so on.
    server = crr_serve(pair, 9016)
    try:
        crr_client(pair, SERVER_IP, 9016, tmp_path / "s", "--keep", "--count", "10",
                   "--duration", "20", "--records", str(tmp_path / "r"))
    finally:
        stop(server)
    r = T.read_crr_records(tmp_path / "r")
    assert list(r["status"]) == [0, 3] * 5
    assert list(r["flags"]) == [0, 0] + [T.CRR_RECONNECTED, 0] * 4
    # Open loop, one flow, every response held 300 ms, 100 due per second, stopped by
    # SIGTERM after ~1 s: the flow ran a few; every other transaction due before the
    # stop is recorded as not started (status 4), none due after it.
    server = crr_serve(pair, 9017, "--keep", "--delay-us", "300000")
    try:
        client = subprocess.Popen(
            ["ip", "netns", "exec", pair.client, str(T.crr_binary()), "client", "--connect",
             f"{SERVER_IP}:9017", "--keep", "--rate", "100", "--duration", "20",
             "--records", str(tmp_path / "r")], stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdout.readline().strip() == "running"
        time.sleep(1.0)
        stopped = time.monotonic_ns()
        client.terminate()
        out = client.communicate(timeout=10)[0]
    finally:
        stop(server)
    s = T.parse_crr_client(out)
    r = T.read_crr_records(tmp_path / "r")
    ran = r["status"] == 0
    assert s.transactions == ran.sum() and 3 <= ran.sum() <= 6, (s, r["status"])
    assert ran[:ran.sum()].all() and (r["status"][~ran] == 4).all()
    assert (r["due_ns"] - r["due_ns"][0] == np.arange(len(r)) * 10_000_000).all()
    assert 90 <= len(r) <= 130 and r["due_ns"][-1] < stopped + 50_000_000
    assert (r["rtt_ns"][~ran] == 0).all()


# --- every workload through bench.measure.sockets --------------------------------

def test_tcp_crr_run_matches_the_responders_count(pair: Pair) -> None:
    r = S.run(S.SocketWorkload("tcp-crr", flows=8, count=500, duration_s=20), pair.path(9101))
    assert (r.transactions, r.served, r.failed) == (500, 500, 0)
    assert r.rtt.count == 500 and r.transactions_per_s and r.transactions_per_s > 0
    assert r.generator_cpu_ns and r.responder_cpu_ns  # both did work in their own cgroups
    assert r.counters[pair.client]["resets_sent"] == 0
    assert not live_pids(pair.client, pair.server)
    # The responder closes first: a client left in TIME_WAIT would run out of ports
    # after ~28,000 transactions (60 s each) and then crawl.
    assert ns_run(pair.client, "ss", "-Htan", "state", "time-wait", "dport",
                  "= :9101").strip() == ""


@pytest.mark.parametrize("workload", ["tcp-crr", "tcp-rr", "udp-rr"])
def test_responders_started_once_serve_every_run_of_a_point(pair: Pair, workload: str) -> None:
    """A point's runs share one start of its responders (serve): the same processes answer
    each run in full, their CPU is counted per run, and they are gone after the block."""
    work = S.SocketWorkload(workload, flows=2, count=200 if workload == "tcp-crr" else None,
                            duration_s=1 if workload != "tcp-crr" else 20)
    path = pair.path(9120)
    with S.serve(work, path, runs=3) as serving:
        assert serving is not None
        first = live_pids(pair.server)
        assert first  # the responder is up before any run
        for _ in range(3):
            r = S.run(work, path, serving=serving)
            assert r.transactions > 0 and r.failed == 0, r.summary()
            if workload == "tcp-crr":
                assert r.transactions == 200
            assert r.served is None  # read only when the responders stop
            assert r.responder_cpu_ns and r.generator_cpu_ns
            assert live_pids(pair.server) == first  # the same processes, still serving
    assert not live_pids(pair.client, pair.server)
    with S.serve(S.SocketWorkload("tcp-stream"), path, runs=3) as serving:
        assert serving is None  # iperf3 -s -1 serves one test: each run starts its own


@pytest.mark.parametrize("workload", ["tcp-rr", "udp-rr"])
def test_rr_closed_loop_one_sample_per_message_over_several_flows(pair: Pair,
                                                                  workload: str) -> None:
    r = S.run(S.SocketWorkload(workload, flows=2, duration_s=1), pair.path(9200))
    assert r.transactions > 100 and r.rtt.count == r.transactions and r.failed == 0
    assert r.transactions_per_s and r.rtt.percentiles((50,))["p50"]
    if workload == "tcp-rr":  # kpb-crr --keep: every request answered, one connection a flow
        assert (r.served, r.connections) == (r.transactions, 2)
    assert not live_pids(pair.client, pair.server)


def test_tcp_rr_right_after_tcp_crr_on_the_same_port(pair: Pair) -> None:
    # The responder of tcp-crr closes first: its TIME_WAIT sockets hold the port.
    S.run(S.SocketWorkload("tcp-crr", count=50, duration_s=10), pair.path(9250))
    r = S.run(S.SocketWorkload("tcp-rr", duration_s=1), pair.path(9250))
    assert r.transactions > 100


@pytest.mark.parametrize("workload", ["udp-rr", "tcp-rr"])
def test_rr_open_loop_achieves_the_offered_rate(pair: Pair, workload: str) -> None:
    r = S.run(S.SocketWorkload(workload, flows=2, loop="open", rate_tps=1000, duration_s=1),
              pair.path(9300))
    assert r.failed == 0 and r.rtt.count == r.transactions
    # 1000/s offered (sockperf: 500 msg/s per flow; kpb-crr: transaction i due at
    # i/1000 s); a closed loop would reach tens of thousands.
    assert r.transactions_per_s is not None and 700 < r.transactions_per_s < 1100


@pytest.mark.parametrize("streams", [1, 3])
def test_tcp_stream_reports_throughput(pair: Pair, streams: int) -> None:
    r = S.run(S.SocketWorkload("tcp-stream", flows=streams, duration_s=1), pair.path(9400))
    assert r.throughput_bps and r.throughput_bps > 1e8  # a veth carries Gbit/s here
    assert r.transactions == 0 and r.rtt.count == 0


def test_a_failed_stream_over_several_backends_says_why(pair: Pair) -> None:
    # Through a Service with several endpoints, iperf3's control and data connections
    # may land on different backends and the test never starts (a timeout, or a
    # refusal as here): the error says what to give tcp-stream instead.
    path = S.SocketPath(pair.client, OTHER_IP, 9702, (S.Responder(pair.server, SERVER_IP),
                                                      S.Responder(pair.server, OTHER_IP, 9701)))
    with pytest.raises(KpbenchError, match="Connection refused .*iperf3 needs all its "
                                           "connections on one backend"):
        S.run(S.SocketWorkload("tcp-stream", duration_s=1), path)


def test_an_interrupted_run_leaves_no_process_and_no_cgroup(pair: Pair,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    def interrupted(*a: object, **kw: object) -> T.CrrClientStats:
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "parse_crr_client", interrupted)
    with pytest.raises(KeyboardInterrupt):
        S.run(S.SocketWorkload("tcp-crr", flows=2, duration_s=1), pair.path(9500))
    assert not live_pids(pair.client, pair.server)
    root = cgroups.cgroup2_root()
    assert not [p for p in root.glob(f"{pair.prefix}-*")]


def test_a_process_past_its_bound_is_killed_and_named(pair: Pair) -> None:
    from bench.measure.processes import Processes

    with Processes() as procs:
        p = procs.start("sleeper", pair.client, ["sleep", "60"], None)
        with pytest.raises(KpbenchError, match="sleeper did not finish within 0.5 s; killed"):
            procs.finish(p, 0.5, "sleeper")
        assert p.poll() is not None
    assert not live_pids(pair.client)


def test_a_failing_responder_is_an_error_naming_it(pair: Pair) -> None:

    bad = S.SocketPath(pair.client, SERVER_IP, 9600, (S.Responder(pair.server, "10.98.0.1"),))
    with pytest.raises(KpbenchError, match="kpb-crr serve in .* did not start: kpb-crr: "
                                           "cannot listen on 10.98.0.1:9600"):
        S.run(S.SocketWorkload("tcp-crr", duration_s=1), bad)


# --- through a datapath ---------------------------------------------------------

@pytest.fixture(scope="module")
def iptables_bed() -> Iterator[Testbed]:
    require_feature("iptables-legacy")
    services, slices = generate(GenSpec(services=1, endpoints=2, nodes=1))
    with Testbed(make_variant("iptables-legacy"), services, slices, nodes=1,
                 echo=False) as tb:
        yield tb


def test_tcp_crr_through_a_clusterip_one_conntrack_entry_per_transaction(
        iptables_bed: Testbed) -> None:
    tb, svc = iptables_bed, iptables_bed.services[0]
    port = svc.ports[0]
    # The responders listen on the target port of their own pod address only, and the
    # client connects to the ClusterIP: a completed transaction went through DNAT and
    # its reply came back from the service address (else the client's TCP resets it).
    path = S.SocketPath(tb.cluster.client_pod_ns, svc.cluster_ip, port.port,
                        tuple(S.Responder(tb.cluster.pod_ns(p), p.ip, p.tcp_ports[0])
                              for p in tb.layout.pods),
                        node_netns=(tb.cluster.node_ns(0),))
    r = S.run(S.SocketWorkload("tcp-crr", flows=4, count=300, duration_s=20), path,
              conntrack_events=True)
    assert (r.transactions, r.served, r.failed) == (300, 300, 0)
    assert (r.conntrack_created, r.conntrack_new) == (300, 300)
    # Client ports repeat (1,000 of them here, as a long run wraps the default range):
    # a SYN on a 4-tuple whose entry is in TIME_WAIT replaces that entry, so the count
    # grows by at most 1,000, yet every connection made a NEW entry, none lost
    # (conntrack -E's own total; ENOBUFS is an error).
    ns_run(path.client_netns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40999")
    n = 3000
    r = S.run(S.SocketWorkload("tcp-crr", flows=4, count=n, duration_s=60), path,
              conntrack_events=True)
    assert r.conntrack_created is not None and r.conntrack_created <= 1000
    assert (r.transactions, r.served, r.failed, r.conntrack_new) == (n, n, 0, n)


def test_tcp_rr_through_a_clusterip_one_conntrack_entry_per_flow(
        iptables_bed: Testbed) -> None:
    tb, svc = iptables_bed, iptables_bed.services[0]
    path = S.SocketPath(tb.cluster.client_pod_ns, svc.cluster_ip, svc.ports[0].port,
                        tuple(S.Responder(tb.cluster.pod_ns(p), p.ip, p.tcp_ports[0])
                              for p in tb.layout.pods),
                        node_netns=(tb.cluster.node_ns(0),))
    r = S.run(S.SocketWorkload("tcp-rr", flows=3, count=600, duration_s=20), path,
              conntrack_events=True)
    # 600 requests, each answered through DNAT and reverse NAT, on 3 connections:
    # 3 entries (tcp-crr makes one per transaction).
    assert (r.transactions, r.served, r.failed) == (600, 600, 0)
    assert (r.connections, r.conntrack_new) == (3, 3)


def test_socket_lb_balances_only_the_run_cgroups_sockets() -> None:
    require_feature("socket-lb")
    services, slices = generate(GenSpec(services=1, endpoints=2, nodes=1))
    with Testbed(make_variant("socket-lb"), services, slices, nodes=1, echo=False) as tb:
        svc, pods = tb.services[0], tb.layout.pods
        path = S.SocketPath(tb.cluster.client_pod_ns, svc.cluster_ip, svc.ports[0].port,
                            tuple(S.Responder(tb.cluster.pod_ns(p), p.ip, p.tcp_ports[0])
                                  for p in pods))
        cgroup = tb.datapath.client_cgroup()  # type: ignore[attr-defined]
        assert cgroup is not None
        r = S.run(S.SocketWorkload("tcp-crr", flows=4, count=200, duration_s=20), path,
                  cgroup=cgroup)
        assert (r.transactions, r.served, r.failed) == (200, 200, 0)
        # The same connects from outside that cgroup reach no one: nothing else
        # translates the ClusterIP under socket-lb.
        outside = S.run(S.SocketWorkload("tcp-crr", count=3, duration_s=10, timeout_ms=300),
                        path)
        assert (outside.transactions, outside.served, outside.failed) == (0, 0, 3)
        for i in range(tb.cluster.node_count):
            tb.datapath.cleanup(tb.cluster.node_ns(i))



def test_udp_rr_through_a_clusterip_one_conntrack_entry_per_flow() -> None:
    require_feature("iptables-legacy")
    services, slices = generate(GenSpec(services=1, endpoints=2, nodes=1, protocol="UDP"))
    with Testbed(make_variant("iptables-legacy"), services, slices, nodes=1,
                 echo=False) as tb:
        svc, node = tb.services[0], tb.cluster.node_ns(0)
        path = S.SocketPath(tb.cluster.client_pod_ns, svc.cluster_ip, svc.ports[0].port,
                            tuple(S.Responder(tb.cluster.pod_ns(p), p.ip, p.udp_ports[0])
                                  for p in tb.layout.pods), node_netns=(node,))
        r = S.run(S.SocketWorkload("udp-rr", flows=3, duration_s=1), path,
                  conntrack_events=True)
        # Every request after a flow's first hits its entry: 3 flows, 3 entries.
        assert r.transactions > 100 and r.failed == 0 and r.conntrack_new == 3
        tb.datapath.cleanup(node)


# --- socket points through the runner ------------------------------------------------

SOCKET_SCENARIO = """
name = "socket-points"
[sweep]
datapaths = ["direct", "iptables-legacy", "socket-lb", "xdp"]
services = [20]
endpoints = 2
nodes = 1
[traffic]
workloads = ["tcp-crr", "tcp-rr"]
flows = [2]
duration_s = 1
repetitions = 2
[measure]
probes = ["cpu"]
overhead = false
"""


def test_socket_points_measure_the_service_and_the_direct_path(tmp_path: Path) -> None:
    """A run of socket workloads: each point measured through the Service and, right after
    each repetition, on the direct path; socket-lb measured (its client sockets are in
    the run's cgroup), xdp's ClusterIP recorded as not applicable with the reason; the
    direct datapath measured to the backend pods' own addresses, with no control and its
    sync not applicable; each workload's generator ceiling measured once for the run and
    stored in every point of it."""

    for name in ("iptables-legacy", "socket-lb", "xdp"):
        require_feature(name)
    points = {pt["id"]: pt for pt in run_points(tmp_path, SOCKET_SCENARIO)}
    assert len(points) == 8, sorted(points)
    ceilings: dict[str, list[dict]] = {}
    for pid, pt in points.items():
        if pt["datapath"] == "xdp":
            assert pt["status"] == "failed" and pt["error"].startswith("not applicable")
            continue
        ceilings.setdefault(pt["workload"], []).append(pt["generator_ceiling"])
        assert isinstance(pt["summary"]["at_generator_ceiling"], bool), pid
        assert pt["summary"]["offered_not_reached"] is None  # closed loop
        if pt["datapath"] == "direct":
            assert pt["status"] == "ok", (pid, pt["error"], pt.get("failed_repetitions"))
            assert "control" not in pt and "this point is the direct path" in pt["missing"][
                "direct"]
            assert pt["setup"]["sync_seconds"] is None
            assert pt["missing"]["sync_seconds"].startswith("not applicable: direct")
            assert len(pt["repetitions"]) == 2 and pt["summary"]["transactions_per_s"] > 100
            assert pt["summary"]["rtt_ns"]["count"] > 100
            continue
        assert pt["status"] == "ok", (pid, pt["error"], pt.get("failed_repetitions"))
        assert pt["flows"] == 2 and pt["loop"] == "closed" and pt["rate_pps"] is None
        assert len(pt["repetitions"]) == 2 and len(pt["control"]) == 2
        s = pt["summary"]
        for rep in pt["repetitions"] + pt["control"]:
            sock = rep["socket"]
            assert sock["transactions"] > 100 and sock["failed"] == 0, (pid, sock)
            assert (rep["sent"], rep["delivered"], rep["latency_hist"]) == (0, 0, None)
        assert s["transactions_per_s"] > 100 and s["rtt_ns"]["count"] > 100
        assert s["direct"]["transactions_per_s"] > 100
        assert s["service_minus_direct_rtt_p50_ns"] is not None
        cpu = s["cpu_ns_per_transaction"]
        assert cpu["softirq"] > 0 and cpu["generator"] > 0 and cpu["responder"] > 0
        assert "conntrack_entries_created" in pt["missing"]
    # One ceiling per workload for the whole run (three clusters), stored in each point.
    assert set(ceilings) == {"tcp-crr", "tcp-rr"}
    for workload, found in ceilings.items():
        assert len(found) == 3 and all(c == found[0] for c in found), (workload, found)
        c = found[0]
        assert c["transactions_per_s"] > 100 and 0 < c["seconds"] <= 1.5 and c["measured_at"]
